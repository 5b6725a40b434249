"""The layer table: each leaf layer of any network, traced in call order with its shapes,
parameters and forward FLOPs (``alexnet summary``).

``walk`` runs a zero input through a network and records each leaf module's :class:`Call` (the
tensors it read and wrote, so :mod:`alexnet.costs` can tell what autograd saves); ``trace`` makes
them the rows of the table; ``meta_model`` builds a network without storage, so tracing AlexNet
at any batch costs nothing; ``layer_kind`` and ``layer_labels`` name layers (conv1, fc2, relu3).

Units, stated once: a multiply-add is 2 FLOPs, and only convolutions and matrix products are
counted, the convention of ``torch.utils.flop_counter.FlopCounterMode`` (activations, pooling
and bias additions are a fraction of a percent of AlexNet's arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import build_model, get_spec


class InputTooSmall(ValueError):
    pass


@dataclass(frozen=True)
class LayerRow:
    index: int  # position in the order the forward pass calls the leaf modules
    name: str
    output_shape: tuple[int, ...]
    params: int
    flops: int  # forward FLOPs for the whole input batch
    path: str = ""  # the module's qualified name in the network ("3.f.0.0" inside a residual block)


def layer_flops(layer: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(layer, nn.Conv2d):
        k = layer.weight.shape[1] * layer.weight.shape[2] * layer.weight.shape[3]  # Cin/groups * kh * kw
        return 2 * out.numel() * k
    if isinstance(layer, nn.Linear):
        return 2 * out.numel() * layer.in_features
    return 0


@dataclass(frozen=True)
class Call:
    """One leaf module's call in a forward pass, and the tensors it read and wrote.

    ``in_id`` / ``out_id`` name tensors: the network's input is "input", a leaf's output is its
    index, and a tensor made between modules (the sum of a residual connection) gets its own name.
    An in-place layer's or a view's output keeps its input's name: it is the same memory.
    """

    index: int
    path: str
    layer: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    in_id: object
    out_id: object
    input_needs_grad: bool  # False for the image: backward stops at the first layer with weights
    flops: int
    params: int  # counted at a module's first call only


def is_view(layer: nn.Module, in_shape, out_shape) -> bool:
    """Whether the layer's output is its input's memory (flatten, identity, dropout with p = 0, a PadTo that pads nothing)."""
    return (
        isinstance(layer, (nn.Flatten, nn.Identity))
        or (isinstance(layer, nn.Dropout) and layer.p == 0)
        or (out_shape == in_shape and layer.__class__.__name__ == "PadTo")
    )


def _too_small(input_shape, i: int, layer: nn.Module, shape) -> InputTooSmall:
    size, got = "x".join(map(str, input_shape[1:])), "x".join(map(str, shape[1:]))
    if isinstance(layer, nn.Linear) and shape[-1] != layer.in_features:
        # The classifier's width is fixed: an input of another size reaches it with the wrong width.
        what = "too large" if shape[-1] > layer.in_features else "too small"
        return InputTooSmall(
            f"input {size} is {what} for this network: layer {i} (Linear) takes "
            f"{layer.in_features} features but would receive {got}"
        )
    return InputTooSmall(
        f"input {size} is too small for this network: layer {i} ({layer.__class__.__name__}) "
        f"receives {got} and its output would be empty"
    )


class _CallRecorder:
    """The forward hooks of :func:`walk`: each leaf's call becomes a :class:`Call`, and every tensor
    it reads or writes gets a name."""

    def __init__(self, input_shape: tuple[int, ...]):
        self.input_shape = input_shape
        self.calls: list[Call] = []
        self.names: dict[int, object] = {}  # id(tensor) -> its name; `keep` holds the tensors so ids stay unique
        self.keep: list[torch.Tensor] = []
        self.seen_modules: set[int] = set()
        self.current: list = []  # [index, layer, input shape] of the leaf running now, for InputTooSmall

    def name_of(self, t: torch.Tensor) -> object:
        if id(t) not in self.names:
            # A string, like "input": tuple names are reserved for a layer's own buffers (indices, masks).
            self.names[id(t)] = f"op{len(self.names)}"
            self.keep.append(t)
        return self.names[id(t)]

    def pre(self, layer, args):
        self.current[:] = [len(self.calls), layer, tuple(args[0].shape)]

    def post(self, path: str):
        def hook(layer, args, y):
            x, i = args[0], len(self.calls)
            if not isinstance(y, torch.Tensor) or y.numel() == 0:
                raise _too_small(self.input_shape, i, layer, x.shape)
            in_id = self.name_of(x)
            view = is_view(layer, tuple(x.shape), tuple(y.shape))
            inplace = getattr(layer, "inplace", False) and not isinstance(layer, nn.Dropout)
            out_id = in_id if view or inplace else i
            self.names[id(y)] = out_id
            self.keep.append(y)
            params = 0 if id(layer) in self.seen_modules else sum(p.numel() for p in layer.parameters())
            self.seen_modules.add(id(layer))
            self.calls.append(
                Call(
                    i,
                    path,
                    layer,
                    tuple(x.shape),
                    tuple(y.shape),
                    in_id,
                    out_id,
                    x.requires_grad,
                    layer_flops(layer, x, y),
                    params,
                )
            )
            self.current.clear()  # an error between modules (a residual sum) is not this layer's

        return hook


def walk(model: nn.Module, input_shape: tuple[int, ...], device="cpu") -> list[Call]:
    """Run a zero input through ``model`` and record every leaf module's call, in order.

    Forward hooks on the leaves (modules without children) see any network, not only an
    ``nn.Sequential``: residual blocks and other ``forward`` code included. Operations between
    modules (a residual sum) do no convolution or matrix product, so no FLOPs are missed; they are
    not rows. The network runs in eval mode, so batch-norm statistics are left as they were; an
    input too small for it raises :class:`InputTooSmall` naming the layer whose output would be empty.
    """
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    rec = _CallRecorder(input_shape)
    handles = [
        h for path, m in leaves for h in (m.register_forward_pre_hook(rec.pre), m.register_forward_hook(rec.post(path)))
    ]
    modes = {m: m.training for m in model.modules()}
    x = torch.zeros(*input_shape, device=device)
    rec.names[id(x)] = "input"
    try:
        model.eval()
        with torch.enable_grad():  # requires_grad of each input says where backward must reach
            model(x)
    except RuntimeError:
        if not rec.current:
            raise
        raise _too_small(input_shape, *rec.current) from None
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    return rec.calls


def trace(model: nn.Module, input_shape: tuple[int, ...], device="cpu") -> list[LayerRow]:
    """The layer summary: each leaf module's output shape, parameters and FLOPs, in call order."""
    return [
        LayerRow(c.index, c.layer.__class__.__name__, c.output_shape, c.params, c.flops, c.path)
        for c in walk(model, input_shape, device)
    ]


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

    w = max(10, *(len(r.name) for r in rows))
    lines = [f"{'#':>2}  {'layer':<{w}} {'output shape':<18} {'params':>12} {'FLOPs':>16}"]
    for r in rows:
        lines.append(f"{r.index:>2}  {r.name:<{w}} {shape(r.output_shape):<18} {r.params:>12,} {r.flops:>16,}")
    params, flops = sum(r.params for r in rows), sum(r.flops for r in rows)
    lines.append(f"{'':>2}  {'total':<{w}} {'':<18} {params:>12,} {flops:>16,}")
    lines.append(
        f"    ({params * 4 / 2**20:.1f} MiB of fp32 weights; {flops / 1e9:.3f} GFLOPs forward, "
        f"1 multiply-add = 2 FLOPs)"
    )
    return "\n".join(lines)


KINDS = ("conv", "fc", "rest")  # what layer_kind returns: the layers' totals are summed by kind


def layer_kind(layer: nn.Module) -> str:
    return "conv" if isinstance(layer, nn.Conv2d) else "fc" if isinstance(layer, nn.Linear) else "rest"


def layer_labels(layers: list[nn.Module]) -> list[str]:
    """Each layer's short name, numbered within its kind in call order: conv1, fc2, relu3, maxpool1."""
    counts: dict[str, int] = {}
    out = []
    for layer in layers:
        k = layer_kind(layer)
        base = k if k != "rest" else layer.__class__.__name__.lower().replace("2d", "")
        counts[base] = counts.get(base, 0) + 1
        out.append(f"{base}{counts[base]}")
    return out


def meta_model(name: str, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """The network with shapes but no storage: tracing it costs nothing, even for AlexNet at
    batch 512, and it raises the same errors for an input that is too small."""
    spec = get_spec(name)
    with torch.device("meta"):
        return spec.build(in_channels, num_classes)
