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
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import torch
from torch import nn

from .config import DataConfig
from .models import UnknownModel, build_model
from .runs import CHECKPOINT_BOUNDS, RunError, first_line
from .status import open_regular

META_KEY = "alexnet"  # where each exported format keeps the description
# The fields every description has; predict needs each of them.
META_FIELDS = ("model", "in_channels", "num_classes", "classes", "resolution", "native", "dataset")


# The largest model file read (ONNX, safetensors, torchvision's .pth): the largest registered network
# at the most classes a run may have (alexnet-owt at 100,000 classes: 1.78 GB of fp32 weights) fits,
# and so does ONNX's own 2 GiB protobuf limit (runs.MAX_CHECKPOINT_BYTES adds the optimizer's state).
MAX_MODEL_BYTES = 2 * 2**30


class ExportError(RunError):
    """An export that cannot be made, does not match its checkpoint, or cannot be read back; one line."""


def open_model_file(path: str | os.PathLike, limit: int | None = None, error: type[RunError] = ExportError) -> BinaryIO:
    """``path`` opened for reading if it is a regular file of at most ``limit`` bytes (MAX_MODEL_BYTES
    unless given); else one line (``error``). See status.open_regular."""
    limit = MAX_MODEL_BYTES if limit is None else limit
    return open_regular(path, limit, error, what="a model file")


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
    """The description an exported file carries (JSON text), every field checked (check_meta)."""
    if not text:
        raise ExportError(f"{where}: carries no '{META_KEY}' description (not exported by `alexnet export`)")
    try:
        meta = json.loads(text)
    except ValueError:
        raise ExportError(f"{where}: its '{META_KEY}' description is not JSON") from None
    missing = [k for k in META_FIELDS if k not in meta] if isinstance(meta, dict) else list(META_FIELDS)
    if missing:
        raise ExportError(f"{where}: its description lacks {', '.join(missing)}")
    if why := check_meta(meta):
        raise ExportError(f"{where}: its description is not usable: {why}")
    return meta


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _numbers(v, n: int) -> bool:
    return (
        isinstance(v, list)
        and len(v) == n
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    )


def check_meta(meta: dict) -> str | None:
    """What is wrong with a description (export.describe's fields), or None. A file's description is
    data from elsewhere: every field is bounded as load_checkpoint bounds a checkpoint's (the same
    CHECKPOINT_BOUNDS, so one class limit), and the fields that must agree do (class names and class
    count, normalisation and channels), before anything is built from it."""
    bounds = {
        **{k: CHECKPOINT_BOUNDS[k] for k in ("in_channels", "num_classes", "resolution", "epoch")},
        "native": CHECKPOINT_BOUNDS["resolution"],
    }
    if meta.get("format_version", 1) != 1 or isinstance(meta.get("format_version"), bool):
        return f"format_version {meta['format_version']!r} is not 1 (written by a later version?)"
    for key in ("model", "dataset"):
        if not isinstance(meta[key], str) or not 0 < len(meta[key]) <= 100:
            return f"{key} {repr(meta[key])[:40]} is not a name"
    for key, (lo, hi) in bounds.items():
        if key not in meta:
            continue  # epoch: a note, not needed to predict
        if not _count(meta[key]) or not lo <= meta[key] <= hi:
            return f"{key} {repr(meta[key])[:40]} is not a whole number in {lo}..{hi}"
    n, c = meta["num_classes"], meta["in_channels"]
    classes = meta["classes"]
    if not isinstance(classes, list) or len(classes) != n:
        got = f"{len(classes)} class names" if isinstance(classes, list) else "no list of class names"
        return f"{got} for its {n} classes"
    if not all(isinstance(name, str) and len(name) <= 1000 for name in classes):
        return "a class name that is not a string of at most 1000 characters"
    resize = meta.get("resize")
    most = DataConfig._AT_MOST["resize"]
    if resize is not None and (not _count(resize) or not meta["resolution"] <= resize <= most):
        return f"resize {repr(resize)[:40]} is not a whole number in {meta['resolution']}..{most} (the resolution up)"
    mean, std = meta.get("mean"), meta.get("std")
    if (mean is None) != (std is None):
        return "a normalisation mean without a std, or a std without a mean"
    if mean is not None and not (_numbers(mean, c) and _numbers(std, c)):
        return f"the normalisation mean and std are not {c} finite numbers each (one per channel)"
    if std is not None and not all(x > 0 for x in std):
        return f"the normalisation std {std} is not positive (dividing by it gives NaN)"
    if meta.get("precision", "int8") != "int8":
        return f"precision {repr(meta['precision'])[:40]} is not int8"
    return None


def _safetensors_header(data: bytes, where: str) -> dict:
    """The JSON header of a safetensors file's bytes (8 bytes of length, then the header)."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        if not 0 < size <= len(data) - 8:
            raise ValueError(f"header length {size} in a file of {len(data)} bytes")
        header = json.loads(data[8 : 8 + size])
        if not isinstance(header, dict) or not all(isinstance(v, dict) for v in header.values()):
            raise ValueError("the header is not a mapping of names to tensors")
    except (ValueError, UnicodeDecodeError) as e:
        raise ExportError(f"{where}: not a readable safetensors file ({first_line(e)})") from None
    return header


def expected_shapes(meta: dict, where: str) -> dict[str, tuple[int, ...]]:
    """The state dict's shapes of the network a (checked) description names, and a check that it
    takes the description's input and gives its classes: built on the meta device, so nothing is
    allocated before the file's tensors are known to fit."""
    c, r, n = meta["in_channels"], meta["resolution"], meta["num_classes"]
    try:
        with torch.device("meta"):
            net = build_model(meta["model"], c, n)
    except UnknownModel:
        raise ExportError(f"{where}: network {meta['model']!r} is not registered in this version") from None
    try:
        with torch.device("meta"), torch.inference_mode():
            out = net.eval()(torch.empty(1, c, r, r))
    except Exception as e:  # a shape error of any layer: the input does not fit the network
        raise ExportError(
            f"{where}: {meta['model']} does not take its description's {c}x{r}x{r} input ({first_line(e)})"
        ) from None
    if tuple(out.shape) != (1, n):
        raise ExportError(f"{where}: {meta['model']} gives {tuple(out.shape)[1:]} outputs, its description {n} classes")
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def safetensors_from_bytes(data: bytes, where: str) -> Loaded:
    """The network in a safetensors file's bytes: the description checked, every tensor's shape in the
    header checked against the network it names, then the network built and the weights loaded
    strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    header = _safetensors_header(data, where)
    meta = parse_meta((header.pop("__metadata__", None) or {}).get(META_KEY), where)
    expected = expected_shapes(meta, where)
    shapes = {k: v.get("shape") for k, v in header.items()}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has {unexpected[0]}, which the network does not"
        raise ExportError(f"{where}: the weights do not fit {meta['model']}: the file {what}")
    wrong = next((k for k, shape in expected.items() if shapes[k] != list(shape)), None)
    if wrong is not None:
        raise ExportError(
            f"{where}: the weights do not fit {meta['model']}: {wrong} has shape {shapes[wrong]}, "
            f"its description's network needs {list(expected[wrong])}"
        )
    try:
        weights = load(data)
    except (SafetensorError, ValueError) as e:
        raise ExportError(f"{where}: not a readable safetensors file ({first_line(e)})") from None
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise ExportError(f"{where}: {bad} holds non-finite values")
    model = build_model(meta["model"], meta["in_channels"], meta["num_classes"])
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        why = str(e).splitlines()[-1].strip()[:200]
        raise ExportError(f"{where}: the weights do not fit {meta['model']}: {why}") from None
    return Loaded(torch_runner(model), meta, "safetensors", model)


def open_safetensors(path: str | os.PathLike) -> Loaded:
    """The network in the safetensors file at ``path``."""
    return safetensors_from_bytes(read_model_file(path), str(path))
