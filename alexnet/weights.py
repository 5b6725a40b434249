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
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from .models import UnknownModel, build_model
from .runs import RunError, not_regular

META_KEY = "alexnet"  # where each exported format keeps the description
# The fields every description has; predict needs each of them.
META_FIELDS = ("model", "in_channels", "num_classes", "classes", "resolution", "native", "dataset")


# The largest model file read (ONNX, safetensors, torchvision's .pth): the largest registered network
# at the most classes a run may have (alexnet-owt at 100,000 classes: 1.78 GB of fp32 weights) fits,
# and so does ONNX's own 2 GiB protobuf limit. A checkpoint also holds the optimizer's state, up to two
# tensors per weight (Adam): three times that.
MAX_MODEL_BYTES = 2 * 2**30
MAX_CHECKPOINT_BYTES = 3 * MAX_MODEL_BYTES


class ExportError(RunError):
    """An export that cannot be made, does not match its checkpoint, or cannot be read back; one line."""


def open_model_file(path: str | os.PathLike, limit: int | None = None, error: type[RunError] = ExportError) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file of at most ``limit`` bytes; else one line
    (``error``). A FIFO would block open() (and a signal with it) and /dev/zero never ends, so the
    path is checked before it is opened, opened without blocking, and checked again on the open
    file: what was checked is what is read. ``limit``: MAX_MODEL_BYTES unless given."""
    limit = MAX_MODEL_BYTES if limit is None else limit
    if why := not_regular(path):
        raise error(f"{path}: {why}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: not a regular file")
        if st.st_size > limit:
            raise error(
                f"{path}: {st.st_size / 1e9:.2f} GB, more than the {limit / 1e9:.2f} GB a model file may hold "
                "here (the largest registered network at the most classes a run may have)"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_model_file(path: str | os.PathLike, limit: int | None = None, error: type[RunError] = ExportError) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them (open_model_file)."""
    limit = MAX_MODEL_BYTES if limit is None else limit
    with open_model_file(path, limit, error) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"{path}: cannot read ({e.strerror})") from None
    if len(data) > limit:  # it grew while it was read
        raise error(f"{path}: more than the {limit / 1e9:.2f} GB a model file may hold here")
    return data


def check_checkpoint_file(path: str | os.PathLike, error: type[RunError] = ExportError) -> None:
    """Before runs.load_checkpoint reads a checkpoint (given, or a run directory's best.pt else last.pt):
    a regular file of at most MAX_CHECKPOINT_BYTES. load_checkpoint opens it by name again."""
    p = Path(path)
    if p.is_dir():
        p = next((p / n for n in ("best.pt", "last.pt") if os.path.lexists(p / n)), None)
        if p is None:
            return  # load_checkpoint says the run holds no checkpoint
    open_model_file(p, MAX_CHECKPOINT_BYTES, error).close()


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
    return safetensors_from_bytes(read_model_file(path), str(path))
