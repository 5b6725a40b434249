"""How this project times things, and the machine it timed them on: the one harness.

How to use it (every timed figure in the package and in benchmarks/ goes through here):

    from alexnet.measure import machine, time_turns

    timings = time_turns({"eager": run_eager, "compiled": run_compiled}, device, rounds=5, block=3)
    timings["compiled"].median, timings["compiled"].best      # seconds per unit of work
    timings["eager"].median / timings["compiled"].median        # a ratio measured in one run
    print(machine(device).line())                               # stamp it: CPU, flags, threads, torch, GPU

A candidate is a function ``run(k)`` that does k units of work (k training steps, k batches).
``time_turns`` warms each up, then times them in alternating turns, ``block`` units per turn,
``rounds`` times over, with the device synchronised around every timing. On a CPU each unit is
timed alone; on a GPU a block is timed as one (no synchronisation added between its units).

Conventions, stated once: the **median** per-unit time is the figure for speed (robust to a turn
that another job slowed); the **best** is for peaks (the most the hardware did: GEMM rates,
bandwidth); never the mean of a block, which a single stall skews. Ratios come from candidates
timed in the same call. One call to ``time_once`` is for work that happens once (a compilation);
``timed`` returns its result too.
``reported_turns`` alternates candidates that time themselves (a child process reporting its own
figure); ``Timing.percentile`` gives a latency's tail under load.
``best_time(fn, device, repeats)`` is the shortcut for one candidate's best.

Memory: ``PeakMemory`` reads one phase's peak (CUDA allocator, or the process's resident set on
Linux, reset per phase); ``peak_rss_bytes`` is the whole process's peak.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from .device import cpu_info, describe, sync

# The CPU features that decide how fast this project's kernels can be: bf16 in hardware (AVX512-BF16,
# AMX), AVX-512 and AVX2 for fp32; "bf16" is Arm's.
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "bf16")
T = TypeVar("T")


@dataclass
class Timing:
    """The per-unit seconds of one candidate, one entry per timed unit (CPU) or block (GPU)."""

    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    def per_second(self, units: float = 1.0) -> float:
        """``units`` per second at the median time (e.g. images/s with units = batch size)."""
        return units / self.median

    def percentile(self, q: float) -> float:
        """The nearest-rank ``q``-th percentile: for latencies under load (p90, p99), where the tail is the figure."""
        xs = sorted(self.seconds)
        return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def timed(fn: Callable[[], T], device: torch.device | str) -> tuple[T, float]:
    """``fn()``'s result and its wall seconds, the device drained on both sides (CUDA runs
    asynchronously): for work done once whose result is wanted too (a child process, an export)."""
    device = torch.device(device)
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def time_once(fn: Callable[[], object], device: torch.device | str) -> float:
    """Wall seconds of one ``fn()``, with the device drained on both sides."""
    return timed(fn, device)[1]


def time_turns(
    candidates: dict[str, Callable[[int], object]],
    device,
    *,
    rounds: int = 5,
    block: int | dict[str, int] = 1,
    warmup: int = 1,
) -> dict[str, Timing]:
    """Time ``candidates`` (name -> ``run(k)``) in alternating turns; returns name -> Timing.
    ``block`` may differ by candidate (a dict by name), e.g. one costly evaluation batch per turn.

    This machine is shared: load that arrives halfway would otherwise fall on whichever candidate
    ran last, and a ratio would measure it. In turns, every candidate sees the same conditions.
    ``warmup`` units each are run first (allocator growth, kernel selection, compilation). A
    DataLoader refills its prefetch queue while the next candidate runs: blocks of 3 or more keep
    that first unit out of the median.
    """
    device = torch.device(device)
    blocks = block if isinstance(block, dict) else dict.fromkeys(candidates, block)
    if rounds < 1 or min(blocks.values()) < 1 or warmup < 0:
        raise ValueError("rounds and block must be at least 1, warmup not negative")
    for run in candidates.values():
        if warmup:
            run(warmup)
    sync(device)
    out = {name: Timing(name) for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            block = blocks[name]
            if device.type == "cuda":
                out[name].seconds.append(time_once(lambda: run(block), device) / block)  # noqa: B023 (called at once)
            else:
                out[name].seconds += [time_once(lambda: run(1), device) for _ in range(block)]  # noqa: B023
    return out


def reported_turns(
    candidates: dict[str, Callable[[], float]], *, rounds: int = 5, warmup: int = 1
) -> dict[str, Timing]:
    """``time_turns`` for work that times itself: each ``run()`` does one unit and returns the seconds
    it measured, e.g. a child training run's seconds per image from its metrics.jsonl (its own
    clock leaves out the interpreter's start and the imports). The same warm-up, alternating turns
    and Timing. A child process's whole wall time needs none of this: ``time_turns`` with a
    ``run(k)`` that starts k processes times it."""
    if rounds < 1 or warmup < 0:
        raise ValueError("rounds must be at least 1, warmup not negative")
    for run in candidates.values():
        for _ in range(warmup):
            run()
    out = {name: Timing(name) for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            out[name].seconds.append(float(run()))
    return out


def best_time(fn: Callable[[], object], device, repeats: int = 3) -> float:
    """The best of ``repeats`` single calls after one warm-up call: for peaks (GEMM, copy, conv)."""
    return time_turns({"fn": lambda k: [fn() for _ in range(k)]}, device, rounds=repeats)["fn"].best


# ---------------------------------------------------------------------------------------------
# The machine


@dataclass(frozen=True)
class Machine:
    """What a timing depends on, described once; ``line()`` stamps a table, ``asdict`` a JSON file."""

    cpu: str  # model name and architecture
    cpu_count: int
    cpu_flags: tuple[str, ...]  # those of CPU_FLAGS this CPU has
    torch_threads: int
    torch: str
    python: str
    device: str  # what the timed work ran on
    gpu: str | None
    date_utc: str
    load_average_1m: float | None

    def line(self) -> str:
        flags = " ".join(self.cpu_flags) or "none of " + "/".join(CPU_FLAGS[:3])
        gpu = self.gpu or "no GPU"
        load = f", 1-min load {self.load_average_1m:.2f}" if self.load_average_1m is not None else ""
        return (
            f"{self.cpu}, {self.cpu_count} CPUs (flags: {flags}), {self.torch_threads} torch threads, {gpu}, "
            f"torch {self.torch}, Python {self.python}, {self.date_utc} UTC{load}"
        )

    def asdict(self) -> dict:
        """Plain values only (a checkpoint records it and loads with weights_only=True; JSON too)."""
        return {**asdict(self), "cpu_flags": list(self.cpu_flags)}


def machine(device: torch.device | str = "cpu") -> Machine:
    """This machine, as a timing made on ``device`` depends on it."""
    device = torch.device(device)
    name, flags = cpu_info()
    name = name or platform.processor() or platform.machine()
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device if device.type == "cuda" else 0)
    load = None
    with contextlib.suppress(OSError, AttributeError):
        load = os.getloadavg()[0]
    return Machine(
        cpu=f"{name} ({platform.machine()})",
        cpu_count=os.cpu_count() or 1,
        cpu_flags=tuple(f for f in CPU_FLAGS if f in flags),
        torch_threads=torch.get_num_threads(),
        torch=str(torch.__version__),
        python=platform.python_version(),
        device=describe(device),
        gpu=gpu,
        date_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        load_average_1m=load,
    )


# ---------------------------------------------------------------------------------------------
# Memory


def peak_rss_bytes() -> int:
    """The process's peak resident set since it started (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if platform.system() == "Darwin" else rss * 1024


class PeakMemory:
    """Peak memory of one phase. CUDA: the allocator's peak. CPU: the resident set's high-water
    mark, reset per phase through /proc/self/clear_refs (Linux); getrusage's ru_maxrss is the peak
    of the whole process, so after the largest phase every later one would read the same."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.resettable = self.device.type == "cpu" and Path("/proc/self/clear_refs").exists()

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.resettable = False

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if self.resettable:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return peak_rss_bytes()

    @property
    def what(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated"
        return "peak RSS of this process (VmHWM, reset per phase)" if self.resettable else "peak RSS (ru_maxrss)"
