"""Fine-tuning: start a run from trained weights (``--init-from``), with a new last layer for the
data's classes, the features frozen (``--freeze features``) or trained at a fraction of the
learning rate (``--pretrained-lr-scale``).

The weights may come from torchvision's ImageNet file (checked as pretrained.read_torchvision
checks it), from a run directory or checkpoint of this package, or from an exported .safetensors
file. Every tensor but the last layer's must fit the network exactly; the last layer is always
built afresh for the data's classes (it is what changes between tasks). One exception is made,
because it is exact: 3-channel weights given a 1-channel dataset have their first convolution's
kernels summed over the colour channels, which is what the RGB network computes on a grey image
(R = G = B).

"Features" are the layers before the network's ``Flatten``: the convolutional stages, as in
torchvision's ``features``/``classifier`` split.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .runs import RunError, say
from .weights import open_safetensors


class InitError(RunError):
    """--init-from weights that do not fit; one line."""


def last_layer(model: nn.Module) -> str:
    """The state-dict prefix of the network's last layer with weights (the classifier head)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return names[-1]


def feature_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the layers before the first ``Flatten`` (iterating as the forward does)."""
    params = []
    for layer in model:  # Blocks (alexnet-owt) walk their inner layers in call order
        if isinstance(layer, nn.Flatten):
            return params
        params += list(layer.parameters())
    raise InitError(f"{type(model).__name__}: no Flatten layer separates features from the classifier")


# What --init-from reads, for the lines that say so.
INIT_KINDS = "a run directory, a checkpoint (.pt), a .safetensors export or torchvision's .pth weights"


def _source_state(path: str, model_name: str) -> tuple[dict, str]:
    """(state dict, what it is) of --init-from FILE."""
    p = Path(path)
    if not os.path.lexists(p):
        raise InitError(f"{p}: no such file or run directory (--init-from takes {INIT_KINDS})")
    suffix = p.suffix.lower()
    if suffix in (".onnx", ".pt2") and not p.is_dir():
        raise InitError(
            f"{p}: a {suffix} export holds a compiled graph, not weights --init-from can load; give {INIT_KINDS} "
            f"(alexnet export RUN --format safetensors writes one)"
        )
    if suffix == ".safetensors":
        loaded = open_safetensors(p)
        if loaded.meta["model"] != model_name:
            raise InitError(f"{p}: holds {loaded.meta['model']}, not --model {model_name}")
        return loaded.module.state_dict(), f"exported {loaded.meta['model']} ({loaded.meta['dataset']})"
    if p.is_dir() or suffix == ".pt":
        from .runs import load_checkpoint

        ckpt = load_checkpoint(p, InitError)
        if ckpt["cfg"].train.model != model_name:
            raise InitError(f"{p}: holds {ckpt['cfg'].train.model}, not --model {model_name}")
        return ckpt["model"], f"{ckpt['path']} ({ckpt['dataset']}, epoch {ckpt['epoch']})"
    from .pretrained import TORCHVISION_MODELS, read_torchvision

    if model_name not in TORCHVISION_MODELS:
        what = (
            "a .pth file" if suffix == ".pth" else "a file that is not a run, a .pt checkpoint or a .safetensors export"
        )
        raise InitError(
            f"{p}: {what} is read as torchvision's ImageNet weights, which fit "
            f"{', '.join(TORCHVISION_MODELS)}; give a run, a checkpoint or a .safetensors export for {model_name}"
        )
    return read_torchvision(p, model_name), "torchvision's ImageNet weights"


def init_from(model: nn.Module, path: str, model_name: str, quiet: bool = False) -> None:
    """Load --init-from into ``model``, all but its last layer."""
    state, what = _source_state(path, model_name)
    own = model.state_dict()
    head = last_layer(model) + "."
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise InitError(
            f"{path}: does not fit {model_name}: "
            + (f"lacks {missing[0]}" if missing else f"has {unexpected[0]}, which the network does not")
        )
    loaded, notes = {}, []
    for k, target in own.items():
        if k.startswith(head):
            continue  # built afresh for the data's classes
        src = state[k]
        if (
            src.shape != target.shape
            and src.ndim == 4
            and src.shape[1] == 3
            and target.shape[1] == 1
            and src.shape[0] == target.shape[0]
            and src.shape[2:] == target.shape[2:]
        ):
            src = src.sum(1, keepdim=True)  # grey input: R = G = B, so the RGB kernels add up
            notes.append(f"{k}'s RGB kernels summed for grey input")
        if src.shape != target.shape:
            raise InitError(f"{path}: {k} has shape {tuple(src.shape)}, {model_name} here needs {tuple(target.shape)}")
        loaded[k] = src
    model.load_state_dict({**own, **loaded})
    say(
        f"initialised from {what}: {len(loaded)} tensors; {head[:-1]} new for the data's classes"
        + "".join(f"; {n}" for n in notes),
        quiet,
    )


def freeze(model: nn.Module, what: str) -> int:
    """``features``: no gradient for the layers before Flatten. Returns the parameters frozen."""
    if what == "none":
        return 0
    params = feature_parameters(model)
    for p in params:
        p.requires_grad_(False)
    return sum(p.numel() for p in params)


def is_pretrained(model: nn.Module) -> dict[int, bool]:
    """id(parameter) -> whether --init-from set it: every parameter but the last layer's. A function of
    the network alone, so a resumed run splits its optimiser's groups exactly as the first start did."""
    head = last_layer(model) + "."
    return {id(p): not n.startswith(head) for n, p in model.named_parameters()}
