"""Numbers about a network, computed from its layers and checked against PyTorch's own counters.

Four parts, in this order in the file:
- tracing: ``walk`` and ``trace`` run a zero input through any network and record each leaf layer's
  shapes, parameters and FLOPs (``alexnet summary``);
- costs: ``layer_costs`` adds both passes' FLOPs, bytes, what autograd saves, arithmetic intensity;
  ``training_memory``/``inference_memory``; roofline times against a ``DeviceSpec`` (datasheet
  peaks in DEVICES, or this machine's, measured: ``measure_device``, ``measure_peak``, the ceiling
  an MFU divides by, timed with alexnet.measure);
- ``analyze`` and its printing (table, Markdown, CSV, JSON) and roofline plot (``alexnet analyze``);
- ``chapter_figures``: the chapter's "164 MB" and "81 MFLOPs" explained (``alexnet analyze --chapter``).

Units, stated once: a multiply-add is 2 FLOPs, and only convolutions and matrix products are
counted, the convention of ``torch.utils.flop_counter.FlopCounterMode`` (activations, pooling
and bias additions are a fraction of a percent of AlexNet's arithmetic).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
from torch import nn

from .measure import best_time
from .models import build_model, get_spec
from .tables import grid


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


def _is_view(layer: nn.Module, in_shape, out_shape) -> bool:
    return (isinstance(layer, (nn.Flatten, nn.Identity)) or (isinstance(layer, nn.Dropout) and layer.p == 0)
            or (out_shape == in_shape and layer.__class__.__name__ == "PadTo"))  # fmt: skip


def _too_small(input_shape, i: int, layer: nn.Module, shape) -> InputTooSmall:
    size, got = "x".join(map(str, input_shape[1:])), "x".join(map(str, shape[1:]))
    if isinstance(layer, nn.Linear) and shape[-1] != layer.in_features:
        # The classifier's width is fixed: an input of another size reaches it with the wrong width.
        what = "too large" if shape[-1] > layer.in_features else "too small"
        return InputTooSmall(f"input {size} is {what} for this network: layer {i} (Linear) takes "
                             f"{layer.in_features} features but would receive {got}")  # fmt: skip
    return InputTooSmall(f"input {size} is too small for this network: layer {i} ({layer.__class__.__name__}) "
                         f"receives {got} and its output would be empty")  # fmt: skip


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
            view = _is_view(layer, tuple(x.shape), tuple(y.shape))
            inplace = getattr(layer, "inplace", False) and not isinstance(layer, nn.Dropout)
            out_id = in_id if view or inplace else i
            self.names[id(y)] = out_id
            self.keep.append(y)
            params = 0 if id(layer) in self.seen_modules else sum(p.numel() for p in layer.parameters())
            self.seen_modules.add(id(layer))
            self.calls.append(Call(i, path, layer, tuple(x.shape), tuple(y.shape), in_id, out_id, x.requires_grad,
                                   layer_flops(layer, x, y), params))  # fmt: skip
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
    handles = [h for path, m in leaves
               for h in (m.register_forward_pre_hook(rec.pre), m.register_forward_hook(rec.post(path)))]  # fmt: skip
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
    return [LayerRow(c.index, c.layer.__class__.__name__, c.output_shape, c.params, c.flops, c.path)
            for c in walk(model, input_shape, device)]  # fmt: skip


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
    lines.append(f"    ({params * 4 / 2**20:.1f} MiB of fp32 weights; {flops / 1e9:.3f} GFLOPs forward, "
                 f"1 multiply-add = 2 FLOPs)")  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Compute analysis: FLOPs of both passes, bytes, arithmetic intensity, roofline, memory.
#
# Bytes are counted for one kernel per pass of a layer reading its inputs and weights once from
# memory and writing its outputs once: the floor on memory traffic, as a roofline needs it.

DTYPE_BYTES = {"fp32": 4, "bf16": 2}
MASTER_BYTES = 4  # weights, gradients and optimizer state stay fp32 under bf16 autocast
OPTIMIZER_STATE = {"sgd": 0, "sgd-momentum": 1, "adam": 2}  # fp32 tensors per parameter
KINDS = ("conv", "fc", "rest")


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str  # 'cuda' or 'cpu': decides what dropout saves (a bool mask on CUDA, a float one on CPU)
    peak_flops: dict  # dtype -> FLOP/s
    bandwidth: float  # bytes/s
    about: str

    def peak(self, dtype: str) -> float:
        return self.peak_flops[dtype]

    def ridge(self, dtype: str) -> float:
        """The arithmetic intensity (FLOPs/byte) above which a kernel is compute-bound."""
        return self.peak(dtype) / self.bandwidth


# Dense (no sparsity) datasheet peaks. fp32 on the GPUs is the CUDA-core rate: PyTorch runs fp32
# matmuls without TF32 unless asked to.
DEVICES: dict[str, DeviceSpec] = {
    "h100": DeviceSpec("h100", "cuda", {"fp32": 66.9e12, "bf16": 989.4e12}, 3.35e12,
                       "NVIDIA H100 SXM5 80GB datasheet: 66.9 TFLOP/s fp32, 989 TFLOP/s bf16 dense, 3.35 TB/s HBM3"),
    "a100": DeviceSpec("a100", "cuda", {"fp32": 19.5e12, "bf16": 312e12}, 2.039e12,
                       "NVIDIA A100 SXM4 80GB datasheet: 19.5 TFLOP/s fp32, 312 TFLOP/s bf16 dense, 2.04 TB/s HBM2e"),
    # A reference server socket, from first principles: 32 cores x 2.0 GHz x 2 AVX-512 FMA units x
    # 16 fp32 lanes x 2 FLOPs; 8 channels of DDR4-3200 x 25.6 GB/s. No bf16 matrix units assumed.
    "cpu": DeviceSpec("cpu", "cpu", {"fp32": 4.096e12, "bf16": 4.096e12}, 204.8e9,
                      "reference CPU socket: 32 cores, 2.0 GHz, AVX-512 (4.1 TFLOP/s), 8x DDR4-3200 (204.8 GB/s)"),
}  # fmt: skip


# (M, K, N) of the GEMMs whose best rate is the peak: squares, and the tall-skinny products that
# convolutions lower to (many pixels by few channels). One shape alone understates the peak: the
# fp32 convolutions of AlexNet outran a 2048x2048 GEMM on the 2-core CPU (106 % "MFU").
GEMM_SHAPES = {"cpu": ((1024, 1024, 1024), (2048, 2048, 2048), (3072, 3072, 3072), (12544, 576, 128),
                       (3136, 1152, 256), (25088, 288, 64)),
               "cuda": ((4096, 4096, 4096), (8192, 8192, 8192), (16384, 4096, 4096))}  # fmt: skip
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gemm_peak(device, dtype: str, shapes=None, repeats: int = 3) -> tuple[float, tuple[int, int, int]]:
    """The best FLOP/s over several GEMM shapes in ``dtype``, and the shape that reached it."""
    device = torch.device(device)
    best = (0.0, (0, 0, 0))
    for m, k, n in shapes or GEMM_SHAPES["cuda" if device.type == "cuda" else "cpu"]:
        a = torch.randn(m, k, device=device, dtype=TORCH_DTYPES[dtype])
        b = torch.randn(k, n, device=device, dtype=TORCH_DTYPES[dtype])
        rate = 2 * m * k * n / best_time(lambda a=a, b=b: torch.mm(a, b), device, repeats)
        best = max(best, (rate, (m, k, n)))
    return best


def conv_rate(conv: nn.Conv2d, input_shape: tuple[int, ...], dtype: str, device, repeats: int = 3) -> float:
    """FLOP/s of one convolution at ``input_shape``, channels_last, in ``dtype``: the better of its
    forward pass alone (what evaluation runs) and its training kernels (forward, input and weight
    gradients), so no pass of the network's dominant layer runs faster than this."""
    device = torch.device(device)
    layer = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      groups=conv.groups, bias=conv.bias is not None, device=device, dtype=TORCH_DTYPES[dtype])  # fmt: skip
    layer = layer.to(memory_format=torch.channels_last)
    x = torch.randn(*input_shape, device=device, dtype=TORCH_DTYPES[dtype]).contiguous(
        memory_format=torch.channels_last).requires_grad_()  # fmt: skip
    flops = layer_flops(layer, x, layer(x))  # the two gradients are GEMMs of the forward's size

    def forward():
        with torch.no_grad():
            layer(x)

    def step():
        layer(x).sum().backward()

    return max(flops / best_time(forward, device, repeats), 3 * flops / best_time(step, device, repeats))


@dataclass(frozen=True)
class Peak:
    """The ceiling an MFU divides by: the better of the best GEMM and the network's own dominant
    convolution, both measured in the same run and dtype. So no layer of the network ran faster
    than the peak, and MFU cannot pass 100 % merely because one GEMM shape was slow."""

    dtype: str
    gemm: float  # FLOP/s
    gemm_shape: tuple[int, int, int]
    conv: float  # FLOP/s; 0.0 when the network has no convolution
    conv_label: str

    @property
    def flops(self) -> float:
        return max(self.gemm, self.conv)

    def describe(self) -> str:
        m, k, n = self.gemm_shape
        conv = f", {self.conv_label} {self.conv / 1e9:.1f}" if self.conv else ""
        return f"{self.dtype} peak {self.flops / 1e9:.1f} GFLOP/s (GEMM {m}x{k}x{n} {self.gemm / 1e9:.1f}{conv})"


def measure_peak(model: nn.Module, input_shape: tuple[int, ...], dtype: str, device, repeats: int = 3,
                 shapes=None) -> Peak:  # fmt: skip
    """:class:`Peak` for ``model`` training on ``input_shape`` (N, C, H, W) in ``dtype``; ``shapes``
    replaces the GEMM shapes tried (GEMM_SHAPES)."""
    gemm, shape = gemm_peak(device, dtype, shapes, repeats)
    calls = walk(model, (1, *input_shape[1:]), device=next(model.parameters()).device)
    convs = [c for c in calls if isinstance(c.layer, nn.Conv2d)]
    if not convs:
        return Peak(dtype, gemm, shape, 0.0, "")
    top = max(convs, key=lambda c: c.flops)
    label = _labels([c.layer for c in calls])[top.index]
    rate = conv_rate(top.layer, (input_shape[0], *top.input_shape[1:]), dtype, device, repeats)
    return Peak(dtype, gemm, shape, rate, label)


def training_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one training step (forward, input and weight gradients) on ``input_shape``, as
    :func:`layer_costs` counts them: AlexNet's is 2.96x its forward, not 3x, since the image
    needs no gradient."""
    return sum(c.fwd_flops + c.bwd_flops for c in layer_costs(model, input_shape))


def measure_device(device="cpu", dtypes=("fp32", "bf16"), repeats: int = 3, gemm_n: int | None = None,
                   copy_numel: int | None = None) -> DeviceSpec:  # fmt: skip
    """This machine's roofline: the best of several GEMMs for FLOP/s and a large copy for bandwidth."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    shapes = ((gemm_n, gemm_n, gemm_n),) if gemm_n else None
    peaks, best_shapes = {}, {}
    for name in dtypes:
        peaks[name], best_shapes[name] = gemm_peak(device, name, shapes, repeats)
    # 256 MiB on the CPU (far beyond any cache), 1 GiB on a GPU; a copy reads and writes each byte.
    numel = copy_numel or (2**28 if cuda else 2**26)
    src, dst = torch.ones(numel, device=device), torch.empty(numel, device=device)
    bandwidth = 2 * src.nbytes / best_time(lambda: dst.copy_(src), device, repeats)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    about = (f"measured on this machine ({where}): "
             + ", ".join(f"{peaks[k] / 1e9:.0f} GFLOP/s {k} (GEMM {'x'.join(map(str, best_shapes[k]))})"
                         for k in peaks)
             + f"; {src.nbytes // 2**20} MiB copy {bandwidth / 1e9:.1f} GB/s")  # fmt: skip
    if "fp32" in peaks and "bf16" not in peaks:
        peaks["bf16"] = peaks["fp32"]
    return DeviceSpec("measured", device.type, peaks, bandwidth, about)


def get_device_spec(name: str) -> DeviceSpec:
    if name == "measured":
        return measure_device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES:
        raise ValueError(f"unknown device spec {name!r}; choose one of: {', '.join(DEVICES)}, measured")
    return DEVICES[name]


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


def _kind(layer: nn.Module) -> str:
    return "conv" if isinstance(layer, nn.Conv2d) else "fc" if isinstance(layer, nn.Linear) else "rest"


def _labels(layers: list[nn.Module]) -> list[str]:
    counts: dict[str, int] = {}
    out = []
    for layer in layers:
        k = _kind(layer)
        base = k if k != "rest" else layer.__class__.__name__.lower().replace("2d", "")
        counts[base] = counts.get(base, 0) + 1
        out.append(f"{base}{counts[base]}")
    return out


def layer_costs(model: nn.Module, input_shape: tuple[int, ...], dtype: str = "fp32",
                device_kind: str = "cpu") -> list[LayerCost]:  # fmt: skip
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
    labels = _labels([c.layer for c in calls])
    saved_ids: set = set()  # the tensors an earlier layer already saved
    return [_layer_cost(call, label, input_shape[0], DTYPE_BYTES[dtype], device_kind, saved_ids)
            for call, label in zip(calls, labels)]  # fmt: skip


def _trained(layer: nn.Module) -> bool:
    return any(p.requires_grad for p in layer.parameters())


def _saved_tensors(call: Call, in_shape, out_shape, e: int, view: bool,
                   device_kind: str) -> list[tuple[object, int]]:  # fmt: skip
    """What autograd keeps for one layer's backward, as (tensor name, bytes), by the rules in the
    docstring of :func:`layer_costs`; at ``in_shape`` / ``out_shape`` with ``e`` bytes an element."""
    layer, in_id, out_id = call.layer, call.in_id, call.out_id
    n_out = _numel(out_shape)
    x, y = _numel(in_shape) * e, n_out * e
    trained = _trained(layer)
    if not call.input_needs_grad and not trained:  # a frozen stem: autograd records nothing there
        return []
    if _kind(layer) in ("conv", "fc"):
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
        return [(in_id, x), (("lrn-padded", call.index), padded), (("lrn-base", call.index), x),
                (("lrn-power", call.index), x)]  # fmt: skip
    return []


def _layer_cost(call: Call, label: str, batch: int, e: int, device_kind: str, saved_ids: set) -> LayerCost:
    """One row of :func:`layer_costs`: ``call``, traced at batch 1, scaled to ``batch`` with ``e``
    bytes an element. Adds what it saves to ``saved_ids``, and counts only what was not there."""
    layer = call.layer
    in_shape, out_shape = (batch, *call.input_shape[1:]), (batch, *call.output_shape[1:])
    x, y = _numel(in_shape) * e, _numel(out_shape) * e
    kind = _kind(layer)
    w = call.params * e
    fwd_flops = call.flops * batch
    view = _is_view(layer, call.input_shape, call.output_shape)
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
    return LayerCost(call.index, label, kind, in_shape, out_shape, call.params, w, fwd_flops, bwd_in_flops,
                     bwd_w_flops, 0 if view or inplace else y, saved, fwd_bytes, bwd_in_bytes, bwd_w_bytes)  # fmt: skip


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def roofline_time(flops: int, nbytes: int, spec: DeviceSpec, dtype: str) -> float:
    """Seconds for a kernel that overlaps arithmetic and memory traffic perfectly."""
    return max(flops / spec.peak(dtype), nbytes / spec.bandwidth)


def is_memory_bound(flops: int, nbytes: int, spec: DeviceSpec, dtype: str) -> bool:
    return nbytes / spec.bandwidth > flops / spec.peak(dtype)


def compute_bound_from(c1: LayerCost, spec: DeviceSpec, dtype: str) -> int | None:
    """The smallest batch at which a layer's forward pass is compute-bound, from its batch-1 cost.

    FLOPs grow as B * f and bytes as W + B * a (weights are read once per batch), so the layer is
    compute-bound once B * f / peak >= (W + B * a) / bandwidth. None: memory-bound at any batch.
    """
    f, w = c1.fwd_flops, c1.weight_bytes
    a = c1.fwd_bytes - w
    slack = f / spec.peak(dtype) - a / spec.bandwidth
    if f == 0 or slack <= 0:
        return None
    return max(1, math.ceil(w / spec.bandwidth / slack))


def layer_times(c: LayerCost, spec: DeviceSpec, dtype: str) -> tuple[float, float]:
    """Roofline seconds of the forward pass and of the backward pass (its two kernels) of a layer."""
    fwd = roofline_time(c.fwd_flops, c.fwd_bytes, spec, dtype)
    bwd = roofline_time(c.bwd_input_flops, c.bwd_input_bytes, spec, dtype) + roofline_time(
        c.bwd_weight_flops, c.bwd_weight_bytes, spec, dtype
    )
    return fwd, bwd


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
    out = {"weights": weights, "gradients": params * MASTER_BYTES,
           "optimizer": OPTIMIZER_STATE[optimizer] * params * MASTER_BYTES,
           "activations": saved + transient}  # fmt: skip
    out["total"] = sum(out.values())
    return out


@dataclass
class Analysis:
    """Everything `alexnet analyze` prints, for one model, input, batch size, dtype and device."""

    model: str
    input_shape: tuple[int, ...]  # (C, H, W)
    batch: int
    dtype: str
    spec: DeviceSpec
    layers: list[LayerCost]  # at the batch size
    layers1: list[LayerCost]  # at batch 1

    def times(self, layers=None) -> list[tuple[float, float]]:
        return [layer_times(c, self.spec, self.dtype) for c in (layers or self.layers)]

    def totals(self) -> dict[str, dict]:
        """Sums by kind (conv, fc, rest) and over all layers, at the batch size."""
        out = {}
        t_b, t_1 = self.times(), self.times(self.layers1)
        for kind in (*KINDS, "all"):
            idx = [i for i, c in enumerate(self.layers) if kind in ("all", c.kind)]
            s = {f: sum(getattr(self.layers[i], f) for i in idx)
                 for f in ("params", "weight_bytes", "fwd_flops", "bwd_flops", "act_bytes", "saved_bytes",
                           "fwd_bytes", "bwd_bytes")}  # fmt: skip
            s["fwd_time"] = sum(t_b[i][0] for i in idx)
            s["bwd_time"] = sum(t_b[i][1] for i in idx)
            s["fwd_time_batch1"] = sum(t_1[i][0] for i in idx)
            out[kind] = s
        return out

    def memory(self) -> dict[str, dict]:
        rows = {"inference, batch 1": inference_memory(self.layers1, self.dtype),
                f"inference, batch {self.batch}": inference_memory(self.layers, self.dtype)}  # fmt: skip
        for opt in OPTIMIZER_STATE:
            rows[f"training {opt}, batch {self.batch}"] = training_memory(self.layers, self.dtype, opt)
        return rows

    def answers(self) -> list[str]:
        """One sentence per question: which kind of layer dominates parameters, FLOPs, memory and time."""
        t = self.totals()
        a, B = t["all"], self.batch
        names = {"conv": "convolutions", "fc": "fully connected layers", "rest": "layers without weights"}

        def top(field):
            k = max(KINDS, key=lambda k: t[k][field])
            return k, t[k][field] / a[field] if a[field] else 0.0

        kp, fp = top("params")
        kf, ff = top("fwd_flops")
        kt, ft = top("fwd_time_batch1")
        for s in t.values():
            s["step_time"] = s["fwd_time"] + s["bwd_time"]
        kT, fT = top("step_time")
        inf1 = inference_memory(self.layers1, self.dtype)
        adam = training_memory(self.layers, self.dtype, "adam")
        sgd = training_memory(self.layers, self.dtype, "sgd")
        state = adam["weights"] + adam["gradients"] + adam["optimizer"]
        mb = 1e6
        out = [
            (f"Parameters: the {names[kp]} hold {fp:.1%} of the {a['params']:,} parameters "
             f"({a['params'] * MASTER_BYTES / mb:.1f} MB in fp32)."),
            (f"Compute: the {names[kf]} do {ff:.1%} of the {a['fwd_flops'] / B / 1e9:.3f} GFLOPs of a forward pass "
             f"per image; the backward pass costs {a['bwd_flops'] / a['fwd_flops']:.2f}x the forward."),
            (f"Inference memory: at batch 1 the weights ({inf1['weights'] / mb:.1f} MB) "
             f"{'outweigh' if inf1['weights'] > inf1['activations'] else 'are outweighed by'} the live activations "
             f"({inf1['activations'] / mb:.1f} MB)."),
            (f"Training memory at batch {B}: autograd keeps {a['saved_bytes'] / mb:.1f} MB of activations for the "
             f"backward pass ({adam['activations'] / mb:.1f} MB with the largest gradient pair in flight) against "
             f"{state / mb:.1f} MB of weights, gradients and Adam state "
             f"({(sgd['weights'] + sgd['gradients']) / mb:.1f} MB with plain SGD), so "
             f"{'activations' if adam['activations'] > state else 'parameters and their state'} dominate."),
            (f"Time on {self.spec.name} ({self.dtype}): at batch 1 the {names[kt]} take {ft:.1%} of the roofline "
             f"inference time ({a['fwd_time_batch1'] * 1e3:.4g} ms); a training step at batch {B} takes "
             f"{(a['fwd_time'] + a['bwd_time']) * 1e3:.4g} ms, {fT:.1%} of it in the {names[kT]}."),
        ]
        fc1 = [c for c in self.layers1 if c.kind == "fc"]
        fcB = [c for c in self.layers if c.kind == "fc"]
        if fc1:
            big1 = max(fc1, key=lambda c: c.params)
            bigB = next(c for c in fcB if c.index == big1.index)
            ridge = self.spec.ridge(self.dtype)

            def bound(c):
                slow = is_memory_bound(c.fwd_flops, c.fwd_bytes, self.spec, self.dtype)
                return "memory-bound" if slow else "compute-bound"

            turn = compute_bound_from(big1, self.spec, self.dtype)
            out.append(
                f"Bound: {big1.label} runs at {big1.fwd_intensity:.2f} FLOPs/byte at batch 1 ({bound(big1)}) and "
                f"{bigB.fwd_intensity:.1f} at batch {B} ({bound(bigB)}); this device's ridge point is {ridge:.1f}, "
                + (f"which {big1.label} reaches from batch {turn}." if turn else f"which {big1.label} never reaches.")
            )
        return out


def meta_model(name: str, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """The network with shapes but no storage: tracing it costs nothing, even for AlexNet at
    batch 512, and it raises the same errors for an input that is too small."""
    spec = get_spec(name)
    with torch.device("meta"):
        return spec.build(in_channels, num_classes)


def analyze(model_name: str, input_chw: tuple[int, ...], batch: int, spec: DeviceSpec, dtype: str = "fp32",
            num_classes: int = 10) -> Analysis:  # fmt: skip
    if batch <= 0:
        raise ValueError(f"batch size must be positive, not {batch}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPE_BYTES)}")
    model = meta_model(model_name, input_chw[0], num_classes)
    kind = spec.kind
    return Analysis(model_name, tuple(input_chw), batch, dtype, spec,
                    layer_costs(model, (batch, *input_chw), dtype, kind),
                    layer_costs(model, (1, *input_chw), dtype, kind))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Printing


def _bound(flops, nbytes, spec, dtype) -> str:
    if not nbytes:
        return "-"
    return "mem" if is_memory_bound(flops, nbytes, spec, dtype) else "comp"


LAYER_COLUMNS = [  # (header, value of (Analysis, LayerCost, (t_fwd, t_bwd)), format in tables)
    ("#", lambda an, c, t: c.index, "{}"),
    ("layer", lambda an, c, t: c.label, "{}"),
    ("output", lambda an, c, t: "x".join(map(str, c.output_shape)), "{}"),
    ("params", lambda an, c, t: c.params, "{:,}"),
    ("weight MB", lambda an, c, t: c.weight_bytes / 1e6, "{:.4g}"),
    ("fwd MFLOP/img", lambda an, c, t: c.fwd_flops / an.batch / 1e6, "{:.4g}"),
    ("fwd GFLOP", lambda an, c, t: c.fwd_flops / 1e9, "{:.4g}"),
    ("bwd-in GFLOP", lambda an, c, t: c.bwd_input_flops / 1e9, "{:.4g}"),
    ("bwd-w GFLOP", lambda an, c, t: c.bwd_weight_flops / 1e9, "{:.4g}"),
    ("act MB", lambda an, c, t: c.act_bytes / 1e6, "{:.4g}"),
    ("saved MB", lambda an, c, t: c.saved_bytes / 1e6, "{:.4g}"),
    ("fwd moved MB", lambda an, c, t: c.fwd_bytes / 1e6, "{:.4g}"),
    ("bwd moved MB", lambda an, c, t: c.bwd_bytes / 1e6, "{:.4g}"),
    ("AI fwd", lambda an, c, t: c.fwd_intensity, "{:.1f}"),
    ("AI bwd", lambda an, c, t: c.bwd_intensity, "{:.1f}"),
    ("fwd ms", lambda an, c, t: t[0] * 1e3, "{:.4g}"),
    ("bwd ms", lambda an, c, t: t[1] * 1e3, "{:.4g}"),
    ("bound", lambda an, c, t: f"{_bound(c.fwd_flops, c.fwd_bytes, an.spec, an.dtype)}/"
                               f"{_bound(c.bwd_flops, c.bwd_bytes, an.spec, an.dtype)}", "{}"),
]  # fmt: skip


def format_analysis(an: Analysis, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(analysis_dict(an), indent=2)
    if fmt == "csv":
        head = ["index", "label", "kind", "output_shape", "params", "weight_bytes", "fwd_flops", "bwd_input_flops",
                "bwd_weight_flops", "act_bytes", "saved_bytes", "fwd_bytes", "bwd_bytes", "fwd_intensity",
                "bwd_intensity", "fwd_time_s", "bwd_time_s", "fwd_bound", "bwd_bound"]  # fmt: skip
        lines = [",".join(head)]
        for c, (tf, tb) in zip(an.layers, an.times()):
            vals = [c.index, c.label, c.kind, "x".join(map(str, c.output_shape)), c.params, c.weight_bytes,
                    c.fwd_flops, c.bwd_input_flops, c.bwd_weight_flops, c.act_bytes, c.saved_bytes, c.fwd_bytes,
                    c.bwd_bytes, f"{c.fwd_intensity:.6g}", f"{c.bwd_intensity:.6g}", f"{tf:.6g}", f"{tb:.6g}",
                    _bound(c.fwd_flops, c.fwd_bytes, an.spec, an.dtype), _bound(c.bwd_flops, c.bwd_bytes, an.spec, an.dtype)]  # fmt: skip
            lines.append(",".join(map(str, vals)))
        return "\n".join(lines)
    if fmt not in ("table", "markdown"):
        raise ValueError(f"unknown format {fmt!r}; choose table, csv, json or markdown")
    md = fmt == "markdown"
    spec = an.spec
    out = [
        (f"{an.model}, input {'x'.join(map(str, an.input_shape))}, batch {an.batch}, {an.dtype}, "
         f"device {spec.name}: {spec.peak(an.dtype) / 1e12:.3g} TFLOP/s, {spec.bandwidth / 1e9:.4g} GB/s, "
         f"ridge {spec.ridge(an.dtype):.1f} FLOPs/byte ({spec.about})"),
        ("FLOPs and bytes per batch unless marked /img; 1 multiply-add = 2 FLOPs; MB = 10^6 bytes; "
         "AI = arithmetic intensity (FLOPs/byte); times are roofline estimates; bound: fwd/bwd (mem or comp)."),
        "",
    ]
    rows = [[f.format(get(an, c, t)) for _, get, f in LAYER_COLUMNS] for c, t in zip(an.layers, an.times())]
    out += grid([h for h, _, _ in LAYER_COLUMNS], rows, "markdown" if md else "text", left=(1, 2)).split("\n")

    out += ["", f"Totals by kind at batch {an.batch} (inference times at batch 1 in the last column):", ""]
    head = ["kind", "params", "share", "weight MB", "fwd GFLOP", "share", "bwd GFLOP", "act MB", "saved MB",
            f"fwd ms (B={an.batch})", f"bwd ms (B={an.batch})", "fwd ms (B=1)"]  # fmt: skip
    t = an.totals()
    a = t["all"]
    rows = [[k, f"{s['params']:,}", f"{s['params'] / max(a['params'], 1):.1%}", f"{s['weight_bytes'] / 1e6:.1f}",
             f"{s['fwd_flops'] / 1e9:.2f}", f"{s['fwd_flops'] / max(a['fwd_flops'], 1):.1%}",
             f"{s['bwd_flops'] / 1e9:.2f}", f"{s['act_bytes'] / 1e6:.1f}", f"{s['saved_bytes'] / 1e6:.1f}",
             f"{s['fwd_time'] * 1e3:.4g}", f"{s['bwd_time'] * 1e3:.4g}", f"{s['fwd_time_batch1'] * 1e3:.4g}"]
            for k, s in t.items()]  # fmt: skip
    out += grid(head, rows, "markdown" if md else "text").split("\n")

    out += ["", ("Memory (MB; weights, gradients and optimizer state in fp32; activations: the live pair of one layer "
                 "for inference, what autograd saves plus the largest gradient pair for training):"), ""]  # fmt: skip
    head = ["what", "weights", "gradients", "optimizer", "activations", "total"]
    rows = [[k, *(f"{m[f] / 1e6:.1f}" for f in head[1:])] for k, m in an.memory().items()]
    out += grid(head, rows, "markdown" if md else "text").split("\n")
    out += [""] + [("- " if md else "") + s for s in an.answers()]
    return "\n".join(out)


def analysis_dict(an: Analysis) -> dict:
    import dataclasses

    layers = []
    for c, (tf, tb) in zip(an.layers, an.times()):
        d = dataclasses.asdict(c)
        d.update(fwd_intensity=c.fwd_intensity, bwd_intensity=c.bwd_intensity, fwd_time_s=tf, bwd_time_s=tb,
                 fwd_bound=_bound(c.fwd_flops, c.fwd_bytes, an.spec, an.dtype),
                 bwd_bound=_bound(c.bwd_flops, c.bwd_bytes, an.spec, an.dtype))  # fmt: skip
        layers.append(d)
    return {"model": an.model, "input": list(an.input_shape), "batch": an.batch, "dtype": an.dtype,
            "device": dataclasses.asdict(an.spec), "units": "FLOPs (1 multiply-add = 2), bytes, seconds",
            "layers": layers, "totals": an.totals(), "memory_bytes": an.memory(), "answers": an.answers()}  # fmt: skip


def plot_roofline(an: Analysis, path) -> None:
    """Every conv and FC layer on the device's roofline: forward and backward at the batch size,
    forward at batch 1 (hollow), so inference vs training and batch size can be read off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec, dt = an.spec, an.dtype
    fig, ax = plt.subplots(figsize=(9, 6))
    pts = []
    k = 0
    for c1, c in zip(an.layers1, an.layers):
        if c.kind == "rest":
            continue
        color = "tab:blue" if c.kind == "conv" else "tab:red"
        for cost, flops, nbytes, marker, filled, text in (
            (c, c.bwd_flops, c.bwd_bytes, "^", True, None),  # the same intensity as forward: same GEMM shapes
            (c, c.fwd_flops, c.fwd_bytes, "o", True, f"{c.label}"),
            (c1, c1.fwd_flops, c1.fwd_bytes, "o", False, f"{c.label} B=1"),
        ):
            if not flops:
                continue
            ai = flops / nbytes
            perf = flops / roofline_time(flops, nbytes, spec, dt)
            ax.scatter([ai], [perf], s=60 if marker == "^" else 36, marker=marker, edgecolors=color,
                       facecolors=color if filled else "none", alpha=0.5 if marker == "^" else 1.0)  # fmt: skip
            pts.append(ai)
            if text:
                k += 1  # stagger the labels: layers of one kind sit close together on the roof
                ax.annotate(text, (ai, perf), fontsize=7, xytext=(4, -10 - 9 * (k % 4)), textcoords="offset points",
                            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "gray"})  # fmt: skip
    lo, hi = min(pts + [0.1]) / 2, max(pts + [spec.ridge(dt) * 10]) * 2
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(xs, [min(spec.peak(dt), x * spec.bandwidth) for x in xs], "k-", lw=1.2)
    ax.axvline(spec.ridge(dt), color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs/byte)")
    ax.set_ylabel("attainable FLOP/s")
    ax.scatter([], [], marker="o", color="tab:blue", label="conv")
    ax.scatter([], [], marker="o", color="tab:red", label="fc")
    ax.scatter([], [], marker="o", color="gray", label=f"forward, batch {an.batch}")
    ax.scatter([], [], marker="^", color="gray", alpha=0.5, label=f"backward, batch {an.batch}")
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="gray", label="forward, batch 1 (inference)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{an.model} {'x'.join(map(str, an.input_shape))} on {spec.name} ({dt}): "
                 f"{spec.peak(dt) / 1e12:.3g} TFLOP/s, {spec.bandwidth / 1e9:.4g} GB/s", fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The chapter's own figures


def chapter_figures() -> dict:
    """§8.1: "the last two hidden layers require matrices of size 6400x4096 and 4096x4096 ...
    164 MB of memory and 81 MFLOPs"; the conv/FC FLOP split; LeNet vs AlexNet."""
    weights = 6400 * 4096 + 4096 * 4096
    biases = 4096 + 4096
    macs = weights  # one multiply-add per weight per image
    figs = {
        "fc_weights": weights,
        "fc_biases": biases,
        "fc_weight_bytes_fp32": 4 * weights,
        "fc_weight_MiB": 4 * weights / 2**20,
        "fc_weight_MB": 4 * weights / 1e6,
        "fc_with_bias_MiB": 4 * (weights + biases) / 2**20,
        "fc_multiply_adds": macs,
        "fc_flops": 2 * macs,
        "fc_MFLOPs": 2 * macs / 1e6,
        "fc_binary_MFLOPs": 2 * macs / 2**20,
    }
    def rows_of(name, shape):
        return trace(meta_model(name, shape[1]), shape, device="meta")

    for ch in (1, 3):
        rows = rows_of("alexnet", (1, ch, 224, 224))
        conv = sum(r.flops for r in rows if r.name == "Conv2d")
        fc = sum(r.flops for r in rows if r.name == "Linear")
        figs[f"conv_flops_{ch}ch"], figs[f"fc_flops_{ch}ch"], figs[f"conv_fc_ratio_{ch}ch"] = conv, fc, conv / fc
    lenet, alex = rows_of("lenet", (1, 1, 28, 28)), rows_of("alexnet", (1, 1, 224, 224))
    figs["lenet_flops"], figs["alexnet_flops"] = sum(r.flops for r in lenet), sum(r.flops for r in alex)
    figs["lenet_params"], figs["alexnet_params"] = sum(r.params for r in lenet), sum(r.params for r in alex)
    figs["flops_ratio"] = figs["alexnet_flops"] / figs["lenet_flops"]
    figs["params_ratio"] = figs["alexnet_params"] / figs["lenet_params"]
    return figs


def format_chapter(f: dict) -> str:
    return "\n".join([
        "The chapter: 'the last two hidden layers (6400x4096 and 4096x4096) ... 164 MB of memory and 81 MFLOPs'",
        f"  weights          {f['fc_weights']:,} (+{f['fc_biases']:,} biases) = 25 Mi + 16 Mi = 41 Mi",
        (f"  fp32 bytes       {f['fc_weight_bytes_fp32']:,} = {f['fc_weight_MiB']:.2f} MiB = {f['fc_weight_MB']:.1f} MB "
         f"(with biases {f['fc_with_bias_MiB']:.2f} MiB): the chapter's '164 MB' is MiB"),
        (f"  multiply-adds    {f['fc_multiply_adds']:,} per image = {f['fc_flops']:,} FLOPs "
         f"= {f['fc_MFLOPs']:.1f} MFLOPs (10^6) = {f['fc_binary_MFLOPs']:.1f} x 2^20 FLOPs"),
        "  no unit gives 81: the nearest reading is 2 x 41 Mi = 82 x 2^20 FLOPs, the same binary prefix as '164 MB';",
        (f"  in the units used here (10^6, a multiply-add = 2 FLOPs) it is {f['fc_MFLOPs']:.1f} MFLOPs, "
         f"or {f['fc_multiply_adds'] / 1e6:.1f} M multiply-adds"),
        "",
        "Convolution vs fully connected FLOPs, alexnet at 224x224, per image:",
        *(f"  {ch} input channel{'s' if ch > 1 else ''}: conv {f[f'conv_flops_{ch}ch']:,}  fc {f[f'fc_flops_{ch}ch']:,}  "
          f"ratio {f[f'conv_fc_ratio_{ch}ch']:.1f}" for ch in (1, 3)),
        "",
        "LeNet (28x28) vs AlexNet (224x224), 1 channel, 10 classes, per image:",
        f"  FLOPs       lenet {f['lenet_flops']:,}  alexnet {f['alexnet_flops']:,}  ratio {f['flops_ratio']:,.0f}x",
        f"  parameters  lenet {f['lenet_params']:,}  alexnet {f['alexnet_params']:,}  ratio {f['params_ratio']:,.0f}x",
    ])  # fmt: skip
