"""Where a run executes and in what precision: device choice, the bf16 rule, torch.compile with an
eager fallback, and the data-parallel process group under torchrun."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available on this machine")
    return device


@functools.cache
def cpu_info() -> tuple[str | None, frozenset[str]]:
    """The first core's model name and feature flags, from /proc/cpuinfo (Linux; elsewhere none)."""
    name, flags = None, frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name, flags
    for line in text.splitlines():
        if line.startswith("model name") and name is None:
            name = line.split(":", 1)[1].strip()
        elif line.startswith(("flags", "Features")) and not flags:
            flags = frozenset(line.split(":", 1)[1].split())
    return name, flags


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86: AVX512-BF16 or AMX; Arm: BF16). Only
    then does bf16 autocast pay on a CPU: on the 2-core AVX512-BF16 machine this project is
    developed on, an `alexnet` training step runs 1.9x faster in bf16 than in fp32; without the
    instructions, bf16 is emulated and slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & cpu_info()[1])


# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a training step frees, for the next step's tensors.

    As it comes, malloc hands large blocks back to the OS as they are freed (each its own ``mmap``
    above a threshold, and the heap's top trimmed), and every step faults the same pages in again,
    zero-filled by the kernel: 5,000 faults a step for ``alexnet28`` at batch 128, 250,000 for the
    224×224 ``alexnet``, 17 and 26 % of their steps' CPU time (docs/performance.md,
    ``benchmarks/malloc.py``). Without ``mmap`` and trimming, freed blocks stay in the heap and the
    next step reuses them; a process that trains holds its peak anyway. What preloading jemalloc or
    tcmalloc would do. A no-op on other C libraries (macOS, musl). Returns whether it applied; it
    changes the process for good."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def bf16_autocast(setting: str, device: torch.device) -> bool:
    """Whether ``--amp SETTING`` means bf16 autocast on ``device``. auto: where it pays, on CUDA
    GPUs with bf16 units (Ampere and later) and CPUs with bf16 instructions. Weights, gradients
    and optimizer state stay fp32 either way."""
    if setting != "auto":
        return setting == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def use_compile(setting: str, device: torch.device) -> bool:
    # On this project's CPU, compiled AlexNet measured slower than eager (docs/performance.md).
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def channels_last_on(setting: bool, device: torch.device) -> bool:
    return setting and device.type != "mps"  # MPS convolutions want NCHW


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def sync(device: torch.device) -> None:
    """Wait for the device, so that a timer around the work measures the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def free_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: the GPU's free memory, or the host's
    MemAvailable (what Linux can hand out without swapping), less where an address-space limit
    (ulimit -v) leaves less; None where neither can be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        available = _host_available()
        limit = _address_space_left()
        return limit if available is None else available if limit is None else min(available, limit)
    return None


def _address_space_left() -> int | None:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, soft - int(line.split()[1]) * 1024)
    except OSError:
        pass
    return soft


def _host_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads{', no GPU found' if not torch.cuda.is_available() else ''})"
    return str(device)


class CompiledOrEager(nn.Module):
    """``torch.compile`` the model, and fall back to eager if compilation fails on first use.

    Only the first call may fall back: a failure later (out of memory at step 500, a bad input)
    is the run's error, not a reason to quietly turn compilation off."""

    def __init__(self, model: nn.Module, enabled: bool):
        super().__init__()
        self.model = model
        self.compiled = torch.compile(model) if enabled else None
        self._proven = not enabled

    def forward(self, x):
        if self.compiled is None:
            return self.model(x)
        if self._proven:
            return self.compiled(x)
        try:
            out = self.compiled(x)
        except Exception as e:  # a backend missing (no C compiler, old GPU) is not fatal
            warnings.warn(f"torch.compile failed ({e.__class__.__name__}); running eager", stacklevel=2)
            self.compiled = None
            return self.model(x)
        self._proven = True
        return out


def init_distributed(device_name: str) -> tuple[torch.device, int, int]:
    """(device, rank, world size). Under torchrun (WORLD_SIZE > 1) this joins the process group:
    NCCL between GPUs, one GPU per process (LOCAL_RANK), and Gloo between CPU processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(device_name)
    if world == 1:
        return device, 0, 1
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"data-parallel training runs on CUDA (NCCL) or the CPU (Gloo), not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def reduce_means(m: dict, keys: tuple[str, ...], device, world: int, sums: tuple[str, ...] = ()) -> dict:
    """Rank-local means (over m['images']) -> means over all ranks' images; ``sums`` are added up."""
    if world == 1:
        return m
    t = torch.tensor(
        [m["images"], *(m[k] * m["images"] for k in keys), *(m[k] for k in sums)], dtype=torch.float64, device=device
    )
    dist.all_reduce(t)
    n = max(t[0].item(), 1)
    out = {**m, "images": int(t[0].item())}
    out.update({k: t[1 + i].item() / n for i, k in enumerate(keys)})
    out.update({k: int(t[1 + len(keys) + i].item()) for i, k in enumerate(sums)})
    return out
