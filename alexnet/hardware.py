"""What the hardware can do: a device's peak FLOP/s and memory bandwidth, from its datasheet or
measured on this machine.

``DeviceSpec`` is the roofline of one device (datasheet ones in ``DEVICES``, this machine's from
``measure_device``); ``measure_peak`` finds the ceiling an MFU divides by, the better of the best
GEMM and the network's own dominant convolution. Timed with :mod:`alexnet.measure` (best of the
repeats: a peak is the most the hardware did).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .measure import best_time
from .tracing import layer_flops, layer_labels, walk


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
    "h100": DeviceSpec(
        "h100",
        "cuda",
        {"fp32": 66.9e12, "bf16": 989.4e12},
        3.35e12,
        "NVIDIA H100 SXM5 80GB datasheet: 66.9 TFLOP/s fp32, 989 TFLOP/s bf16 dense, 3.35 TB/s HBM3",
    ),
    "a100": DeviceSpec(
        "a100",
        "cuda",
        {"fp32": 19.5e12, "bf16": 312e12},
        2.039e12,
        "NVIDIA A100 SXM4 80GB datasheet: 19.5 TFLOP/s fp32, 312 TFLOP/s bf16 dense, 2.04 TB/s HBM2e",
    ),
    # A reference server socket, from first principles: 32 cores x 2.0 GHz x 2 AVX-512 FMA units x
    # 16 fp32 lanes x 2 FLOPs; 8 channels of DDR4-3200 x 25.6 GB/s. No bf16 matrix units assumed.
    "cpu": DeviceSpec(
        "cpu",
        "cpu",
        {"fp32": 4.096e12, "bf16": 4.096e12},
        204.8e9,
        "reference CPU socket: 32 cores, 2.0 GHz, AVX-512 (4.1 TFLOP/s), 8x DDR4-3200 (204.8 GB/s)",
    ),
}


# (M, K, N) of the GEMMs whose best rate is the peak: squares, and the tall-skinny products that
# convolutions lower to (many pixels by few channels). One shape alone understates the peak: the
# fp32 convolutions of AlexNet outran a 2048x2048 GEMM on the 2-core CPU (106 % "MFU").
GEMM_SHAPES = {
    "cpu": (
        (1024, 1024, 1024),
        (2048, 2048, 2048),
        (3072, 3072, 3072),
        (12544, 576, 128),
        (3136, 1152, 256),
        (25088, 288, 64),
    ),
    "cuda": ((4096, 4096, 4096), (8192, 8192, 8192), (16384, 4096, 4096)),
}
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
    layer = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        groups=conv.groups,
        bias=conv.bias is not None,
        device=device,
        dtype=TORCH_DTYPES[dtype],
    )
    layer = layer.to(memory_format=torch.channels_last)
    x = (
        torch.randn(*input_shape, device=device, dtype=TORCH_DTYPES[dtype])
        .contiguous(memory_format=torch.channels_last)
        .requires_grad_()
    )
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


def measure_peak(
    model: nn.Module, input_shape: tuple[int, ...], dtype: str, device, repeats: int = 3, shapes=None
) -> Peak:
    """:class:`Peak` for ``model`` training on ``input_shape`` (N, C, H, W) in ``dtype``; ``shapes``
    replaces the GEMM shapes tried (GEMM_SHAPES)."""
    gemm, shape = gemm_peak(device, dtype, shapes, repeats)
    calls = walk(model, (1, *input_shape[1:]), device=next(model.parameters()).device)
    convs = [c for c in calls if isinstance(c.layer, nn.Conv2d)]
    if not convs:
        return Peak(dtype, gemm, shape, 0.0, "")
    top = max(convs, key=lambda c: c.flops)
    label = layer_labels([c.layer for c in calls])[top.index]
    rate = conv_rate(top.layer, (input_shape[0], *top.input_shape[1:]), dtype, device, repeats)
    return Peak(dtype, gemm, shape, rate, label)


def measure_device(
    device="cpu", dtypes=("fp32", "bf16"), repeats: int = 3, gemm_n: int | None = None, copy_numel: int | None = None
) -> DeviceSpec:
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
    about = (
        f"measured on this machine ({where}): "
        + ", ".join(f"{peaks[k] / 1e9:.0f} GFLOP/s {k} (GEMM {'x'.join(map(str, best_shapes[k]))})" for k in peaks)
        + f"; {src.nbytes // 2**20} MiB copy {bandwidth / 1e9:.1f} GB/s"
    )
    if "fp32" in peaks and "bf16" not in peaks:
        peaks["bf16"] = peaks["fp32"]
    return DeviceSpec("measured", device.type, peaks, bandwidth, about)


def get_device_spec(name: str) -> DeviceSpec:
    if name == "measured":
        return measure_device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES:
        raise ValueError(f"unknown device spec {name!r}; choose one of: {', '.join(DEVICES)}, measured")
    return DEVICES[name]
