"""What a training step costs, layer by layer: FLOPs of both passes, bytes moved, what autograd
saves, and the memory of training and inference.

``layer_costs`` gives one :class:`LayerCost` per leaf layer (from :func:`alexnet.tracing.walk`);
``training_flops`` sums a step's FLOPs, the figure an MFU divides; ``training_memory`` and
``inference_memory`` add weights, gradients, optimizer state and activations. FLOPs follow
:mod:`alexnet.tracing`'s units (a multiply-add is 2 FLOPs); MB is 10^6 bytes.

Bytes are counted for one kernel per pass of a layer reading its inputs and weights once from
memory and writing its outputs once: the floor on memory traffic, as a roofline needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .tracing import Call, is_view, layer_kind, layer_labels, walk

DTYPE_BYTES = {"fp32": 4, "bf16": 2}
MASTER_BYTES = 4  # weights, gradients and optimizer state stay fp32 under bf16 autocast
OPTIMIZER_STATE = {"sgd": 0, "sgd-momentum": 1, "adam": 2}  # fp32 tensors per parameter


@dataclass(frozen=True)
class LayerCost:
    """One layer at one batch size. FLOPs and bytes are for the whole batch."""

    index: int
    label: str  # conv1, fc2, relu3, ...
    kind: str  # conv, fc or rest
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    weight_bytes: int  # what the kernels read: parameters in the compute dtype
    fwd_flops: int
    bwd_input_flops: int  # dL/dx; zero for the first layer, whose input (the image) needs no gradient
    bwd_weight_flops: int  # dL/dW
    act_bytes: int  # the output this layer produces in the forward pass
    saved_bytes: int  # what autograd keeps for backward, counted at the first layer that saves it
    fwd_bytes: int  # bytes moved: weights read + inputs read + outputs written
    bwd_input_bytes: int  # grad_out + weights (or saved tensors) read, grad_in written
    bwd_weight_bytes: int  # grad_out + saved input read, weight gradient written

    @property
    def bwd_flops(self) -> int:
        return self.bwd_input_flops + self.bwd_weight_flops

    @property
    def bwd_bytes(self) -> int:
        return self.bwd_input_bytes + self.bwd_weight_bytes

    @property
    def fwd_intensity(self) -> float:
        return self.fwd_flops / self.fwd_bytes if self.fwd_bytes else 0.0

    @property
    def bwd_intensity(self) -> float:
        return self.bwd_flops / self.bwd_bytes if self.bwd_bytes else 0.0


def layer_costs(
    model: nn.Module, input_shape: tuple[int, ...], dtype: str = "fp32", device_kind: str = "cpu"
) -> list[LayerCost]:
    """Per-layer FLOPs and bytes of a training step on ``input_shape`` (N, C, H, W), one row per
    leaf module in the order the forward pass calls them (:func:`walk`).

    What autograd saves, by layer (tensors shared between layers are counted once, at the first):
    conv and linear their input; ReLU and sigmoid their output (an in-place ReLU's output is its
    input's storage); max-pools their input and int64 indices; average pools and batch norm their
    input; dropout its mask (bool on CUDA; on the CPU dropout is ``x * mask`` with a float mask);
    local response norm, per group of c channels, its input, the squares padded to c + size - 1
    channels, the base and the power of ``(k + alpha * mean)^beta``; flatten and padding save
    nothing. A residual sum between modules saves nothing and its bytes are not counted.
    """
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPE_BYTES)}")
    # Shapes do not depend on the batch: trace one image, then scale.
    calls = walk(model, (1, *input_shape[1:]), device=next(model.parameters()).device)
    labels = layer_labels([c.layer for c in calls])
    saved_ids: set = set()  # the tensors an earlier layer already saved
    return [
        _layer_cost(call, label, input_shape[0], DTYPE_BYTES[dtype], device_kind, saved_ids)
        for call, label in zip(calls, labels)
    ]


def _trained(layer: nn.Module) -> bool:
    return any(p.requires_grad for p in layer.parameters())


def _saved_tensors(call: Call, in_shape, out_shape, e: int, view: bool, device_kind: str) -> list[tuple[object, int]]:
    """What autograd keeps for one layer's backward, as (tensor name, bytes), by the rules in the
    docstring of :func:`layer_costs`; at ``in_shape`` / ``out_shape`` with ``e`` bytes an element."""
    layer, in_id, out_id = call.layer, call.in_id, call.out_id
    n_out = _numel(out_shape)
    x, y = _numel(in_shape) * e, n_out * e
    trained = _trained(layer)
    if not call.input_needs_grad and not trained:  # a frozen stem: autograd records nothing there
        return []
    if layer_kind(layer) in ("conv", "fc"):
        return [(in_id, x)] if trained else []  # the input, for the weight gradient
    if isinstance(layer, (nn.ReLU, nn.Sigmoid, nn.Tanh)):
        return [(out_id, y)]
    if isinstance(layer, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        return [(in_id, x), (("indices", call.index), n_out * 8)]
    if isinstance(layer, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm2d)):
        return [(in_id, x)]
    if isinstance(layer, nn.Dropout) and not view:
        return [(("mask", call.index), n_out * (1 if device_kind == "cuda" else e))]
    if isinstance(layer, nn.LocalResponseNorm):
        groups, (b, c, h, wd) = getattr(layer, "groups", 1), in_shape
        padded = b * (c + groups * (layer.size - 1)) * h * wd * e
        return [
            (in_id, x),
            (("lrn-padded", call.index), padded),
            (("lrn-base", call.index), x),
            (("lrn-power", call.index), x),
        ]
    return []


def _layer_cost(call: Call, label: str, batch: int, e: int, device_kind: str, saved_ids: set) -> LayerCost:
    """One row of :func:`layer_costs`: ``call``, traced at batch 1, scaled to ``batch`` with ``e``
    bytes an element. Adds what it saves to ``saved_ids``, and counts only what was not there."""
    layer = call.layer
    in_shape, out_shape = (batch, *call.input_shape[1:]), (batch, *call.output_shape[1:])
    x, y = _numel(in_shape) * e, _numel(out_shape) * e
    kind = layer_kind(layer)
    w = call.params * e
    fwd_flops = call.flops * batch
    view = is_view(layer, call.input_shape, call.output_shape)
    inplace = call.out_id == call.in_id and not view
    grads_flow = call.input_needs_grad

    saves = _saved_tensors(call, in_shape, out_shape, e, view, device_kind)
    saved = 0
    for tid, nbytes in saves:
        if tid not in saved_ids:
            saved_ids.add(tid)
            saved += nbytes

    if kind in ("conv", "fc"):
        bwd_in_flops = fwd_flops if grads_flow else 0  # the same GEMM shapes, transposed
        trained = _trained(layer)  # a frozen layer has no weight gradient
        bwd_w_flops = fwd_flops if trained else 0
        fwd_bytes = w + x + y
        bwd_in_bytes = (y + w + x) if grads_flow else 0
        bwd_w_bytes = (y + x + w) if trained else 0
    elif view:
        bwd_in_flops = bwd_w_flops = fwd_bytes = bwd_in_bytes = bwd_w_bytes = 0
    else:
        bwd_in_flops = bwd_w_flops = bwd_w_bytes = 0
        extra = sum(b for tid, b in saves if isinstance(tid, tuple))  # indices, mask, LRN buffers
        fwd_bytes = x + y + extra
        # grad_out read and grad_in written, plus what the backward formula reads from the save
        reads = {"ReLU": y, "Sigmoid": y, "Tanh": y, "BatchNorm2d": x}.get(layer.__class__.__name__, extra)
        bwd_in_bytes = (y + x + reads) if grads_flow else 0
    return LayerCost(
        call.index,
        label,
        kind,
        in_shape,
        out_shape,
        call.params,
        w,
        fwd_flops,
        bwd_in_flops,
        bwd_w_flops,
        0 if view or inplace else y,
        saved,
        fwd_bytes,
        bwd_in_bytes,
        bwd_w_bytes,
    )


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def training_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one training step (forward, input and weight gradients) on ``input_shape``, as
    :func:`layer_costs` counts them: AlexNet's is 2.96x its forward, not 3x, since the image
    needs no gradient."""
    return sum(c.fwd_flops + c.bwd_flops for c in layer_costs(model, input_shape))


def inference_memory(costs: list[LayerCost], dtype: str) -> dict:
    """Weights plus the largest input + output pair: without autograd, a layer's input is freed
    as soon as the next layer has consumed its output."""
    e = DTYPE_BYTES[dtype]
    live = max(_numel(c.input_shape) * e + c.act_bytes for c in costs)
    weights = sum(c.weight_bytes for c in costs)
    return {"weights": weights, "gradients": 0, "optimizer": 0, "activations": live, "total": weights + live}


def training_memory(costs: list[LayerCost], dtype: str, optimizer: str) -> dict:
    """Weights + gradients + optimizer state (all fp32) + what autograd saves at this batch size.

    Under bf16 autocast the bf16 copies of the weights are kept for the backward pass too. The
    transient term is the largest gradient pair alive at once in the backward pass (grad_out of a
    layer and its grad_in); allocator rounding and library workspaces are not modelled.
    """
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZER_STATE)}")
    e = DTYPE_BYTES[dtype]
    params = sum(c.params for c in costs)
    weights = params * MASTER_BYTES + (params * e if e != MASTER_BYTES else 0)
    transient = max((_numel(c.input_shape) + _numel(c.output_shape)) * e for c in costs if c.bwd_input_bytes)
    saved = sum(c.saved_bytes for c in costs)
    out = {
        "weights": weights,
        "gradients": params * MASTER_BYTES,
        "optimizer": OPTIMIZER_STATE[optimizer] * params * MASTER_BYTES,
        "activations": saved + transient,
    }
    out["total"] = sum(out.values())
    return out
