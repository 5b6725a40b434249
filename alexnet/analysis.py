"""Numbers about a network: the layer summary (output shape, parameters, FLOPs per layer).

Units, stated once: a multiply-add is 2 FLOPs, and only convolutions and matrix products are
counted, the convention of ``torch.utils.flop_counter.FlopCounterMode`` (activations, pooling
and bias additions are a fraction of a percent of AlexNet's arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import build_model


class InputTooSmall(ValueError):
    pass


@dataclass(frozen=True)
class LayerRow:
    index: int
    name: str
    output_shape: tuple[int, ...]
    params: int
    flops: int  # forward FLOPs for the whole input batch


def layer_flops(layer: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(layer, nn.Conv2d):
        k = layer.weight.shape[1] * layer.weight.shape[2] * layer.weight.shape[3]  # Cin/groups * kh * kw
        return 2 * out.numel() * k
    if isinstance(layer, nn.Linear):
        return 2 * out.numel() * layer.in_features
    return 0


def trace(model: nn.Sequential, input_shape: tuple[int, ...], device="cpu") -> list[LayerRow]:
    """Run a zero input through the layers one by one, recording what each produces.

    An input too small for the network raises :class:`InputTooSmall` naming the layer whose
    output would be empty.
    """
    x = torch.zeros(*input_shape, device=device)
    rows = []
    with torch.no_grad():
        for i, layer in enumerate(model):
            try:
                y = layer(x)
            except RuntimeError:
                y = None
            if y is None or y.numel() == 0:
                raise InputTooSmall(
                    f"input {'x'.join(map(str, input_shape[1:]))} is too small for this network: "
                    f"layer {i} ({layer.__class__.__name__}) receives {'x'.join(map(str, x.shape[1:]))} "
                    f"and its output would be empty"
                )
            params = sum(p.numel() for p in layer.parameters())
            rows.append(LayerRow(i, layer.__class__.__name__, tuple(y.shape), params, layer_flops(layer, x, y)))
            x = y
    return rows


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,1,224,224' or '1x1x224x224' -> (1, 1, 224, 224); a 3-tuple gets batch 1 prepended."""
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"malformed input shape {text!r}: expected C,H,W or N,C,H,W, e.g. 1,1,224,224") from None
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) <= 0:
        raise ValueError(f"malformed input shape {text!r}: expected C,H,W or N,C,H,W of positive integers")
    return shape


def summary(model_name: str, input_shape: tuple[int, ...], num_classes: int = 10) -> list[LayerRow]:
    model = build_model(model_name, in_channels=input_shape[1], num_classes=num_classes)
    return trace(model, input_shape)


def format_summary(rows: list[LayerRow]) -> str:
    def shape(s):
        return "x".join(map(str, s))

    lines = [f"{'#':>2}  {'layer':<10} {'output shape':<18} {'params':>12} {'FLOPs':>16}"]
    for r in rows:
        lines.append(f"{r.index:>2}  {r.name:<10} {shape(r.output_shape):<18} {r.params:>12,} {r.flops:>16,}")
    params, flops = sum(r.params for r in rows), sum(r.flops for r in rows)
    lines.append(f"{'':>2}  {'total':<10} {'':<18} {params:>12,} {flops:>16,}")
    lines.append(f"    ({params * 4 / 2**20:.1f} MiB of fp32 weights; {flops / 1e9:.3f} GFLOPs forward, "
                 f"1 multiply-add = 2 FLOPs)")  # fmt: skip
    return "\n".join(lines)
