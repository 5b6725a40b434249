"""torchvision's ImageNet weights for ``alexnet-owt``: a checked loader, the 1000 class names, and
torchvision's preprocessing for them.

The file is the user's own (``alexnet-owt-7be5be79.pth``, 233 MB; nothing is downloaded here). The
loader checks what can be checked before trusting it: when the name carries torchvision's hash
(``NAME-<first hex digits of the sha256>.pth``, as torch.hub names its downloads), the file's sha256
must start with it; every key and every shape must be the network's. A wrong network or a truncated
file is one line naming the file.

torchvision's preprocessing for these weights (``AlexNet_Weights.IMAGENET1K_V1.transforms``):
shorter side to 256 (bilinear), centre crop 224, scale to [0, 1], ImageNet's channel mean and std.
The class names are torchvision's (``torchvision.models._meta._IMAGENET_CATEGORIES``) in its order,
shipped as ``alexnet/imagenet_classes.txt``.
"""

from __future__ import annotations

import hashlib
import os
import re
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import torch

from .runs import RunError
from .weights import Loaded, open_model_file, torch_runner

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE, CROP = 256, 224
# torch.hub's convention: the digits after the last '-' of the file name begin the file's sha256.
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")
# The networks torchvision publishes ImageNet weights for, in the key layout they load into here.
TORCHVISION_MODELS = ("alexnet-owt",)


class WeightsError(RunError):
    """A weights file that cannot be used; one line naming it."""


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (index = the network's output unit)."""
    names = resources.files("alexnet").joinpath("imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
    assert len(names) == 1000, "the package's imagenet_classes.txt is damaged"
    return names


def sha256_of(f: BinaryIO) -> str:
    """The sha256 of an open file's content, read from its start; the file is left at its start."""
    h = hashlib.sha256()
    f.seek(0)
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    f.seek(0)
    return h.hexdigest()


def read_torchvision(path: str | os.PathLike, model: str = "alexnet-owt") -> dict[str, torch.Tensor]:
    """The state dict in ``path``, checked against ``model`` (3 channels, 1000 classes): hash prefix
    in the name, every key, every shape."""
    from .models import build_model

    p = Path(path)
    if model not in TORCHVISION_MODELS:
        raise WeightsError(
            f"--weights reads torchvision's ImageNet files, which fit {', '.join(TORCHVISION_MODELS)}; not {model}"
        )
    if not os.path.lexists(p):
        raise WeightsError(f"{p}: no such weights file")
    with open_model_file(p, error=WeightsError) as f:  # one open file: hashed, then loaded
        m = HASH_IN_NAME.search(p.name)
        if m:
            digest = sha256_of(f)
            if not digest.startswith(m.group(1)):
                raise WeightsError(
                    f"{p}: sha256 starts {digest[: len(m.group(1))]}, the name says {m.group(1)}: the file "
                    f"is truncated or not the one published under that name"
                )
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # zip, pickle and torch errors alike: not a weights file
            raise WeightsError(f"{p}: not a readable PyTorch weights file ({e.__class__.__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a checkpoint that wraps its weights
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{p}: not a state dict (a mapping of names to tensors)")
    expected = {k: tuple(v.shape) for k, v in build_model(model, 3, 1000).state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has {unexpected[0]}, which {model} does not"
        more = len(missing) + len(unexpected) - 1
        raise WeightsError(f"{p}: not {model}'s weights: it {what}" + (f" ({more} more keys differ)" if more else ""))
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise WeightsError(
                f"{p}: not {model}'s ImageNet weights: {k} has shape {tuple(state[k].shape)}, {model} needs {shape}"
            )
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad:
        raise WeightsError(f"{p}: {bad} holds non-finite values")
    return state


def describe_torchvision(model: str) -> dict:
    """The description (export.describe's fields) of torchvision's ImageNet network."""
    return {
        "format_version": 1,
        "model": model,
        "in_channels": 3,
        "num_classes": 1000,
        "classes": imagenet_classes(),
        "resolution": CROP,
        "native": CROP,
        "resize": RESIZE,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "dataset": "imagenet",
        "epoch": 0,
    }


def load_torchvision(path: str | os.PathLike, model: str = "alexnet-owt"):
    """torchvision's weights as a runnable network with ImageNet class names (a weights.Loaded)."""
    from .models import build_model

    net = build_model(model, 3, 1000)
    net.load_state_dict(read_torchvision(path, model))
    return Loaded(torch_runner(net), describe_torchvision(model), "torchvision", net)
