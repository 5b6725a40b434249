"""A network read from a file of weights, ready to run, and the safetensors files `alexnet export`
writes: the weights, plus (in the header's metadata, key ``alexnet``) the JSON description of the
network and its input, from which the network is rebuilt by its registry name.

    from alexnet.weights import open_safetensors

    loaded = open_safetensors(path)     # Loaded: run(x) -> logits, meta, kind, module
    loaded.module.state_dict()           # what --init-from FILE.safetensors loads
    loaded.meta["classes"]               # the description (export.describe's fields)

It sits below export.py (which writes and checks these files, and opens ONNX and .pt2 the same way),
finetune.py (``--init-from``) and pretrained.py (torchvision's weights, returned as a ``Loaded``), so
that all three read weights without importing a room above them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .models import UnknownModel, build_model
from .runs import RunError

META_KEY = "alexnet"  # where each exported format keeps the description
# The fields every description has; predict needs each of them.
META_FIELDS = ("model", "in_channels", "num_classes", "classes", "resolution", "native", "dataset")


class ExportError(RunError):
    """An export that cannot be made, does not match its checkpoint, or cannot be read back; one line."""


@dataclass
class Loaded:
    """A network ready to run on float batches, and its description."""

    run: Callable[[torch.Tensor], torch.Tensor]  # (B, C, R, R) -> (B, classes) logits
    meta: dict
    kind: str  # "checkpoint", "onnx", "safetensors", "pt2", "torchvision"
    module: nn.Module | None = None  # the PyTorch network, where there is one

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def torch_runner(model: nn.Module) -> Callable:
    model.eval()

    def run(x):
        with torch.inference_mode():
            return model(x)

    return run


def parse_meta(text: str | None, where: str) -> dict:
    """The description an exported file carries (JSON text), checked for every field predict reads."""
    if not text:
        raise ExportError(f"{where}: carries no '{META_KEY}' description (not exported by `alexnet export`)")
    try:
        meta = json.loads(text)
    except ValueError:
        raise ExportError(f"{where}: its '{META_KEY}' description is not JSON") from None
    missing = [k for k in META_FIELDS if k not in meta] if isinstance(meta, dict) else list(META_FIELDS)
    if missing:
        raise ExportError(f"{where}: its description lacks {', '.join(missing)}")
    return meta


def first_line(e: BaseException) -> str:
    text = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (text[0][:200] if text else "") or e.__class__.__name__


def safetensors_from_bytes(data: bytes, where: str) -> Loaded:
    """The network in a safetensors file's bytes: rebuilt by name from the registry, the weights
    loaded strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        weights = load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise ExportError(f"{where}: not a readable safetensors file ({first_line(e)})") from None
    meta = parse_meta((header.get("__metadata__") or {}).get(META_KEY), where)
    try:
        model = build_model(meta["model"], meta["in_channels"], meta["num_classes"])
    except UnknownModel:
        raise ExportError(f"{where}: network {meta['model']!r} is not registered in this version") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        why = str(e).splitlines()[-1].strip()[:200]
        raise ExportError(f"{where}: the weights do not fit {meta['model']}: {why}") from None
    return Loaded(torch_runner(model), meta, "safetensors", model)


def open_safetensors(path: str | os.PathLike) -> Loaded:
    """The network in the safetensors file at ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ExportError(f"{path}: cannot read ({e.strerror})") from None
    return safetensors_from_bytes(data, str(path))
