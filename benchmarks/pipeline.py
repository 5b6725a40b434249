"""The chapter's training pipeline and this project's, side by side, in one process.

    .venv/bin/python benchmarks/pipeline.py --batch-size 64 --steps 10      # ~3 min on a 2-core CPU

Reference (D2L §8.1 as written): a Dataset that converts each 28×28 image with Pillow, resizes it
to 224×224 (bilinear) and turns it into a float tensor in [0, 1]; a DataLoader with 4 workers and
shuffling; `alexnet` in fp32, NCHW, eager; SGD lr 0.01; the loss read on the host every step.

Project: `alexnet train` as shipped. The step is alexnet.train.train_one_epoch fed by
alexnet.data.loader, with make_transform, make_optimizer, use_amp, use_compile and CompiledOrEager
deciding precision, layout, optimizer and compilation, so what is timed is the shipped code.

Both train the same network for the same number of steps after the same warm-up on the same device.
Reported per row (as timm's benchmark.py): images/s, step ms, batch size, dtype, parameters, FLOPs,
peak memory; and MFU = achieved FLOP/s (a training step's exact FLOPs as alexnet.costs counts
them, 2.96 forward passes for AlexNet since the image needs no gradient) / the peak in the row's
dtype, measured in this run: the better of the best of several GEMM shapes and the network's own
dominant convolution, so that no layer of the network can outrun it; and the fraction of step time
spent outside the network's forward and backward passes, from torch.profiler.
Units: a multiply-add is 2 FLOPs; MiB is 2^20 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import itertools
import json
import math
import resource
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from alexnet import data as D
from alexnet import device as V
from alexnet import runs as R
from alexnet import train as T
from alexnet.config import PRESETS, ConfigError
from alexnet.costs import training_flops
from alexnet.hardware import Peak, measure_peak
from alexnet.measure import PeakMemory, machine, time_once, time_turns
from alexnet.models import build_model, get_spec
from alexnet.tables import Column
from alexnet.tables import markdown as markdown_table
from alexnet.tracing import trace

NETWORK = "network.forward"  # the profiler label of the forward pass; backward has the engine's own


# ---------------------------------------------------------------------------------------------
# Measuring: timing, memory, peak FLOP/s, the profiler split


DTYPES = {"fp32": "fp32", "bf16 autocast": "bf16"}  # a row's dtype -> the arithmetic its peak is measured in


def peaks(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> dict[str, Peak]:
    """Per row dtype, the ceiling MFU divides by (alexnet.hardware.measure_peak)."""
    return {row: measure_peak(model, input_shape, dt, device, repeats=5) for row, dt in DTYPES.items()}


def forward_flops(model: nn.Module, channels: int, resolution: int) -> int:
    """Forward FLOPs of one image, from the project's own layer trace (checked in its tests
    against torch.utils.flop_counter)."""
    return sum(r.flops for r in trace(model, (1, channels, resolution, resolution)))


def cold_compile_cache(compiling: bool):
    """torch.compile's cost measured cold, as on a user's first run: inductor's on-disk cache from
    an earlier run would hide most of it."""
    if not compiling:
        return contextlib.nullcontext()
    from torch._inductor.utils import fresh_cache

    return fresh_cache()


class Labelled(nn.Module):
    """The network, with its forward pass marked for the profiler."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        with record_function(NETWORK):
            return self.net(x)


def outside_fraction(run_steps, device: torch.device) -> tuple[float, dict[str, float]]:
    """Share of wall time not spent in the network's forward or backward pass, and where the
    largest parts of it went (ms per top-level profiler event name).

    Run under the profiler, the network's time is the forward pass (labelled by ``Labelled``) plus
    every autograd-engine function (the backward pass: convolution, linear, ReLU, pooling, dropout,
    gradient accumulation; the loss's backward too, a few microseconds). The rest, data loading,
    resize, augmentation, the loss, zero_grad, the optimizer step and metrics, is outside. On CUDA
    the network's share is the device time of the kernels those regions launch.
    """
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        wall = time_once(run_steps, device)
    network_us, outside = 0.0, {}
    for e in prof.events():
        if e.cpu_parent is not None:
            continue
        us = e.device_time_total if device.type == "cuda" else e.cpu_time_total
        if e.name == NETWORK or e.name.startswith("autograd::engine::evaluate_function"):
            network_us += us
        else:
            outside[e.name] = outside.get(e.name, 0.0) + e.cpu_time_total / 1e3
    top = dict(sorted(outside.items(), key=lambda kv: -kv[1])[:8])
    return max(0.0, 1 - network_us / (wall * 1e6)), top


# ---------------------------------------------------------------------------------------------
# The reference pipeline: the chapter's, in plain torch + Pillow


class ReferenceFashionMNIST(torch.utils.data.Dataset):
    """What d2l.FashionMNIST(resize=(224, 224)) does per item: torchvision's FashionMNIST builds
    a PIL image from the uint8 array, transforms.Resize resizes it (bilinear), ToTensor makes a
    float tensor in [0, 1]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, resolution: int):
        self.images, self.labels, self.resolution = images, labels, resolution

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L")
        img = img.resize((self.resolution, self.resolution), Image.BILINEAR)
        x = torch.from_numpy(np.array(img, np.uint8, copy=True))  # ToTensor, step by step
        x = x.view(img.size[1], img.size[0], 1).permute(2, 0, 1).contiguous()
        return x.float().div(255), int(self.labels[i])


class Reference:
    """The chapter's training loop: d2l.Trainer.fit_epoch's body, without the plotting."""

    def __init__(
        self,
        model_name: str,
        split: D.Split,
        channels: int,
        classes: int,
        resolution: int,
        batch_size: int,
        workers: int,
        device: torch.device,
    ):
        self.device = device
        self.model = build_model(model_name, channels, classes, seed=0).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)
        ds = ReferenceFashionMNIST(split.images[:, 0].cpu().numpy(), split.labels.cpu().numpy(), resolution)
        with warnings.catch_warnings():
            # The chapter's 4 workers exceed this machine's cores; that is the pipeline being measured.
            warnings.filterwarnings("ignore", message=".*worker processes in total.*")
            loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers)
            self.batches = iter(loader)

    def steps(self, n: int, labelled: bool = False) -> None:
        model = Labelled(self.model) if labelled else self.model
        model.train()
        for _, (x, y) in zip(range(n), self.batches):
            x, y = x.to(self.device), y.to(self.device)
            loss = F.cross_entropy(model(x), y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()  # d2l's ProgressBoard takes every step's loss to the host


# ---------------------------------------------------------------------------------------------
# This project's pipeline: alexnet train's pieces, assembled as T.fit assembles them


@dataclass
class Project:
    cfg: object
    device: torch.device
    amp: bool
    ds: D.Dataset
    transform: D.Transform
    model: nn.Module
    optimizer: torch.optim.Optimizer
    net: nn.Module

    @classmethod
    def build(cls, cfg, ds_cpu: D.Dataset) -> Project:
        # These lines follow T.fit's set-up, in its order; the step itself is T.train_one_epoch.
        device = V.select_device(cfg.system.device)
        amp, compiled = V.bf16_autocast(cfg.system.amp, device), V.use_compile(cfg.system.compile, device)
        ds = D.Dataset(ds_cpu.name, ds_cpu.train.to(device), ds_cpu.test.to(device), ds_cpu.classes)
        transform = D.make_transform(cfg, ds.name, device)
        model = build_model(cfg.train.model, ds.channels, len(ds.classes), seed=cfg.train.seed).to(device)
        if transform.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = T.make_optimizer(model, cfg, device)
        return cls(cfg, device, amp, ds, transform, model, optimizer, V.CompiledOrEager(model, compiled))

    def __post_init__(self):
        self.batches = D.loader(self.ds.train, self.transform, self.cfg.train.batch_size, True, 0, self.cfg.train.seed)

    def train_steps(self, n: int, labelled: bool = False) -> dict:
        cfg = self.cfg
        steps = D.steps_per_epoch(len(self.ds.train), cfg.train.batch_size)
        return T.train_one_epoch(
            Labelled(self.net) if labelled else self.net,
            self.optimizer,
            itertools.islice(self.batches, n),
            device=self.device,
            amp=self.amp,
            label_smoothing=cfg.train.label_smoothing,
            lr_fn=lambda s: T.lr_at(s, steps * cfg.train.epochs, steps, cfg),
            log_every=cfg.system.log_every,
        )

    def evaluate(self, n: int) -> dict:
        batches = D.loader(self.ds.test, self.transform, self.cfg.train.eval_batch_size, False)
        return T.evaluate(
            self.net, itertools.islice(batches, n), device=self.device, amp=self.amp, num_classes=len(self.ds.classes)
        )


# ---------------------------------------------------------------------------------------------
# Rows and the run


@dataclass
class Row:
    pipeline: str
    model: str
    resolution: int
    mode: str  # train or eval
    batch_size: int
    dtype: str
    params: int
    gflops_per_image: float  # forward FLOPs for eval; a training step's exact FLOPs (costs.training_flops)
    images_per_s: float
    step_ms: float
    mfu: float  # achieved FLOP/s / the peak (best GEMM or the dominant conv) measured in this run
    outside_network: float | None  # share of step time outside forward and backward (profiler)
    peak_memory_mib: float | None  # measured with the pipeline alone; None for the variants
    compile_s: float | None = None
    note: str = ""


def run_model(
    args, model_name: str, preset: str, batch: int, measure_compile: bool, ds_cpu: D.Dataset, mem: PeakMemory, log
) -> tuple[list[Row], dict]:
    """One model's rows: reference and project (training and evaluation), the layout flipped, the
    precision flipped and,
    if asked, compilation flipped. Memory and the profiler's split come from each pipeline run
    alone; speeds from all of them run in turns (alexnet.measure.time_turns)."""
    res = get_spec(model_name).resolution
    cfg = PRESETS[preset].replace(
        model=model_name, batch_size=batch, device=args.device, eval_batch_size=args.eval_batch_size
    )
    device = V.select_device(args.device)
    channels, classes = ds_cpu.channels, len(ds_cpu.classes)
    probe = build_model(model_name, channels, classes).to(device)
    params = sum(p.numel() for p in probe.parameters())
    fwd = forward_flops(probe, channels, res)
    step_flops = training_flops(probe, (1, channels, res, res))
    b, w = batch, args.warmup
    extra: dict = {}
    # The ceiling is measured before the pipelines and after; other work on the machine can only lower
    # it, so the better of the two stands.
    log(f"{model_name}: peaks before the pipelines (GEMM shapes and the dominant conv, fp32 and bf16)")
    before = peaks(probe, (b, channels, res, res), device)

    def dtype(c) -> str:
        return "bf16 autocast" if V.bf16_autocast(c.system.amp, device) else "fp32"

    def reference() -> Reference:
        return Reference(model_name, ds_cpu.train, channels, classes, res, b, args.workers, device)

    # Alone: peak memory and where the step time goes.
    log(f"{model_name}: reference alone: {w} + {args.profile_steps} profiled steps, {args.workers} workers")
    mem.reset()
    ref = reference()
    ref.steps(w)
    ref_outside, extra["reference_outside_ms"] = outside_fraction(
        functools.partial(ref.steps, args.profile_steps, True), device
    )
    ref_mem = mem.peak_bytes()
    del ref
    gc.collect()
    # The workers are separate processes, reaped when their loader is gone; this is the largest one.
    extra["reference_worker_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    log(f"{model_name}: project alone: {w} + {args.profile_steps} profiled steps, 1 evaluation batch")
    mem.reset()
    with cold_compile_cache(V.use_compile(cfg.system.compile, device)):
        p = Project.build(cfg, ds_cpu)
        p.train_steps(w)
        proj_outside, extra["project_outside_ms"] = outside_fraction(
            functools.partial(p.train_steps, args.profile_steps, labelled=True), device
        )
        proj_mem = mem.peak_bytes()
        mem.reset()
        p.evaluate(1)
        eval_mem = mem.peak_bytes()
        del p
    gc.collect()

    # In turns: every pipeline alive at once, warmed up, then timed block by block.
    shipped = f"project (alexnet train --preset {preset})"
    layout = not cfg.system.channels_last
    amp = "off" if V.bf16_autocast(cfg.system.amp, device) else "bf16"
    variants = [
        (shipped, cfg),
        (f"project --{'' if layout else 'no-'}channels-last", cfg.replace(channels_last=layout)),
        (f"project --amp {amp}", cfg.replace(amp=amp)),
    ]
    if measure_compile:
        on = not V.use_compile(cfg.system.compile, device)
        variants.append((f"project --compile {'on' if on else 'off'}", cfg.replace(compile="on" if on else "off")))
    rounds = max(1, math.ceil(args.steps / args.block))
    with contextlib.ExitStack() as stack:
        stack.enter_context(cold_compile_cache(any(V.use_compile(c.system.compile, device) for _, c in variants)))
        log(f"{model_name}: building and warming up {len(variants) + 1} pipelines ({w} steps each)")
        ref = reference()
        ref.steps(w)
        contestants, blocks = {"reference": ref.steps}, {"reference": args.block, "evaluation": 1}
        projects, first = {}, {}
        for name, c in variants:
            p = projects[name] = Project.build(c, ds_cpu)
            # The first step compiles forward and backward when compile is on; timed apart to show it.
            first[name] = time_once(functools.partial(p.train_steps, 1), device)
            p.train_steps(max(0, w - 1))
            contestants[name], blocks[name] = p.train_steps, args.block
        evaluation = projects[shipped]
        evaluation.evaluate(1)
        contestants["evaluation"] = evaluation.evaluate
        log(
            f"{model_name}: timing {', '.join(contestants)}: {rounds} rounds of {args.block} steps "
            f"(evaluation: 1 batch of {args.eval_batch_size} per round)"
        )
        times = {
            name: t.median for name, t in time_turns(contestants, device, rounds=rounds, block=blocks, warmup=0).items()
        }
        compiled = {name: p.net.compiled is not None for name, p in projects.items()}
        nhwc = {name: p.transform.channels_last for name, p in projects.items()}
        del ref, projects, contestants, evaluation, p
    gc.collect()

    log(f"{model_name}: peaks after the pipelines")
    after = peaks(probe, (b, channels, res, res), device)
    best = {k: max(before[k], after[k], key=lambda p: p.flops) for k in DTYPES}
    extra["peaks"] = {
        k: {
            "flops": best[k].flops,
            "gemm": best[k].gemm,
            "gemm_shape": best[k].gemm_shape,
            "conv": best[k].conv,
            "conv_label": best[k].conv_label,
            "flops_before": before[k].flops,
            "flops_after": after[k].flops,
        }
        for k in DTYPES
    }
    del probe

    def row(pipeline, mode, step_s, batch, outside=None, memory=None, compile_s=None, note="", c=cfg):
        per_image = step_flops if mode == "train" else fwd
        dt = dtype(c) if pipeline != "reference" else "fp32"
        return Row(
            pipeline,
            model_name,
            res,
            mode,
            batch,
            dt,
            params,
            per_image / 1e9,
            batch / step_s,
            1e3 * step_s,
            per_image * batch / step_s / best[dt].flops,
            outside,
            None if memory is None else memory / 2**20,
            compile_s,
            note,
        )

    rows = [
        row(
            "reference",
            "train",
            times["reference"],
            b,
            ref_outside,
            ref_mem,
            note=f"Pillow resize in {args.workers} DataLoader workers, NCHW, eager",
        )
    ]
    for name, c in variants:
        setup = (
            f"{'channels_last' if nhwc[name] else 'NCHW'}, {'compiled' if compiled[name] else 'eager'}, "
            f"device-side resize"
        )
        compile_s = max(0.0, first[name] - times[name]) if V.use_compile(c.system.compile, device) else None
        if V.use_compile(c.system.compile, device) and not compiled[name]:
            setup += " (compile failed: ran eager)"
        alone = name == shipped
        rows.append(
            row(
                name,
                "train",
                times[name],
                b,
                proj_outside if alone else None,
                proj_mem if alone else None,
                compile_s,
                setup,
                c,
            )
        )
        if alone:
            rows.append(
                row(
                    name,
                    "eval",
                    times["evaluation"],
                    args.eval_batch_size,
                    memory=eval_mem,
                    note="inference_mode, alexnet.train.evaluate",
                )
            )
    ship, flipped = times[shipped], times[variants[1][0]]
    extra["channels_last_speedup"] = flipped / ship if not layout else ship / flipped
    fp32 = times[variants[2][0]] if amp == "off" else ship
    extra["bf16_speedup"] = fp32 / (ship if amp == "off" else times[variants[2][0]])
    if measure_compile:
        by_name = {r.pipeline: r for r in rows if r.mode == "train"}
        eager, comp = (by_name[shipped], by_name[variants[3][0]])
        if comp.compile_s is None:
            eager, comp = comp, eager
        run_steps = D.steps_per_epoch(len(ds_cpu.train), b) * cfg.train.epochs
        extra["compile"] = compile_verdict(comp.compile_s, eager.step_ms / 1e3, comp.step_ms / 1e3, run_steps)
    return rows, extra


def compile_verdict(compile_s: float, eager_step_s: float, compiled_step_s: float, run_steps: int) -> dict:
    """Whether compiling pays for itself within a run of ``run_steps`` training steps."""
    saved = eager_step_s - compiled_step_s
    break_even = math.ceil(compile_s / saved) if saved > 0 else None
    return {
        "compile_s": compile_s,
        "eager_step_s": eager_step_s,
        "compiled_step_s": compiled_step_s,
        "break_even_steps": break_even,
        "typical_run_steps": run_steps,
        "net_saving_s": run_steps * saved - compile_s,
        "pays": break_even is not None and break_even <= run_steps,
    }


ROW_COLUMNS = [
    Column("pipeline", left=True),
    Column("model", left=True),
    Column("resolution", "input", lambda r: f"{r}x{r}"),
    Column("mode", left=True),
    Column("batch_size", "batch"),
    Column("dtype", left=True),
    Column("params", "params", lambda n: f"{n / 1e6:.2f} M"),
    Column("gflops_per_image", "GFLOPs/img", "{:.3f}"),
    Column("images_per_s", "img/s", "{:.1f}"),
    Column("step_ms", "step ms", "{:.1f}"),
    Column("mfu", "MFU", "{:.1%}"),
    Column("outside_network", "outside net", "{:.1%}"),
    Column("peak_memory_mib", "peak MiB", "{:.0f}"),
    Column("compile_s", "compile s", "{:.1f}"),
    Column("note", "notes", left=True),
]


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# Pipeline benchmark: {m['device']}",
        "",
        f"{m['line']}; 1-min load average {m['load_average_1m_start']:.2f} at start, "
        f"{m['load_average_1m_end']:.2f} at end.",
        "Peaks (GFLOP/s; each the better of a measurement before the pipelines and one after): "
        + "; ".join(
            f"{model} {k}: {g['flops'] / 1e9:.1f} = max(best GEMM {'x'.join(map(str, g['gemm_shape']))} "
            f"{g['gemm'] / 1e9:.1f}, dominant conv {g['conv_label']} {g['conv'] / 1e9:.1f})"
            for model, e in result["extras"].items()
            for k, g in e["peaks"].items()
        )
        + ". "
        "Training FLOPs: the step's exact count (forward, input and weight gradients; alexnet.costs); "
        "MFU = achieved FLOP/s / the peak of the row's model and dtype. "
        f"Step ms: the median over the turns ({'single steps' if m['gpu'] is None else 'per-step mean of each block'}). "
        f"Memory: {result['memory']}.",
        "",
        markdown_table(result["rows"], ROW_COLUMNS),
    ]
    lines += ["", *result["summary"]]
    return "\n".join(lines) + "\n"


def summarise(rows: list[Row], extras: dict) -> list[str]:
    out = []
    for model, extra in extras.items():
        mine = [r for r in rows if r.model == model]
        ref = next(r for r in mine if r.pipeline == "reference")
        proj, ev = (
            next(r for r in mine if r.pipeline.startswith("project (") and r.mode == m) for m in ("train", "eval")
        )
        res = f"{model} {proj.resolution}x{proj.resolution}"
        out.append(
            f"- {res} training: project {proj.images_per_s:.1f} img/s vs reference {ref.images_per_s:.1f} img/s "
            f"= {proj.images_per_s / ref.images_per_s:.2f}x."
        )
        pk = extra["peaks"][proj.dtype]
        out.append(
            f"- {res} MFU: {proj.images_per_s * proj.gflops_per_image:.1f} GFLOP/s achieved ({proj.dtype}) / "
            f"{pk['flops'] / 1e9:.1f} GFLOP/s peak (GEMM {pk['gemm'] / 1e9:.1f}, {pk['conv_label']} "
            f"{pk['conv'] / 1e9:.1f}) = {100 * proj.mfu:.1f}% (reference, fp32: {100 * ref.mfu:.1f}%)."
        )
        out.append(
            f"- {res} time outside the network: project {100 * proj.outside_network:.1f}%, "
            f"reference {100 * ref.outside_network:.1f}% of step time."
        )
        out.append(
            f"- {res} evaluation {ev.images_per_s:.1f} img/s (batch {ev.batch_size}) vs training "
            f"{proj.images_per_s:.1f} img/s: {ev.images_per_s / proj.images_per_s:.2f}x."
        )
        out.append(
            f"- {res} channels_last speed-up over NCHW: {extra['channels_last_speedup']:.2f}x; "
            f"bf16 autocast over fp32: {extra['bf16_speedup']:.2f}x."
        )
        c = extra.get("compile")
        if c:
            pays = (
                f"pays after {c['break_even_steps']} steps"
                if c["break_even_steps"] is not None
                else "never pays (compiled steps are not faster)"
            )
            out.append(
                f"- {res} torch.compile: {c['compile_s']:.1f} s to compile, step {1e3 * c['compiled_step_s']:.0f} ms "
                f"vs {1e3 * c['eager_step_s']:.0f} ms eager: {pays}; a 10-epoch run at this batch size is "
                f"{c['typical_run_steps']} steps, so compile {'pays' if c['pays'] else 'does not pay'} "
                f"({c['net_saving_s']:+.0f} s)."
            )
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--steps", type=int, default=10, help="timed training steps per pipeline (evaluation: one batch per --block)"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--profile-steps", type=int, default=3, help="steps run under torch.profiler")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size (the chapter's is 128)")
    p.add_argument("--eval-batch-size", type=int, default=512, help="evaluation batch size")
    p.add_argument("--block", type=int, default=5, help="steps per turn when the pipelines are timed in turns")
    p.add_argument("--model", default="alexnet", help="the network compared at its own resolution")
    p.add_argument("--preset", default="d2l", help="the first network's recipe")
    p.add_argument("--native-model", default="alexnet28", help="second network, at its own resolution ('none': skip)")
    p.add_argument("--native-preset", default="cpu", help="the second network's recipe (speedrun for speednet)")
    p.add_argument(
        "--native-batch-size", type=int, help="the second network's training batch size (default: --batch-size)"
    )
    p.add_argument("--workers", type=int, default=4, help="reference DataLoader workers (the chapter's 4)")
    p.add_argument(
        "--compile",
        choices=["native", "both", "none"],
        default="native",
        help="which models get the torch.compile measurement (compiling alexnet on a CPU takes minutes)",
    )
    p.add_argument("--data-dir", help="Fashion-MNIST directory (default: as alexnet train finds it)")
    p.add_argument("--out", default="runs/benchmark", help="directory for results.md and results.json")
    args = p.parse_args(argv)
    for name in ("steps", "profile_steps", "batch_size", "eval_batch_size", "block"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.workers < 0:
        p.error("--warmup and --workers must not be negative")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = V.select_device(args.device)
    about = machine(device)
    stamp = {**about.asdict(), "line": about.line(), "load_average_1m_start": about.load_average_1m}

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    ds = D.load_dataset("fashion-mnist", args.data_dir)
    # Every row is held to the peak of its own arithmetic: fp32 rows to fp32 kernels, bf16 ones to bf16.
    mem = PeakMemory(device)
    rows, extras = [], {}
    plan = [(args.model, args.preset, args.batch_size, args.compile == "both")]
    if args.native_model != "none":
        plan.append(
            (args.native_model, args.native_preset, args.native_batch_size or args.batch_size, args.compile != "none")
        )
    for model_name, preset, batch, measure_compile in plan:
        r, extra = run_model(args, model_name, preset, batch, measure_compile, ds, mem, log)
        rows += r
        extras[model_name] = extra
    stamp["load_average_1m_end"] = machine(device).load_average_1m
    result = {
        "machine": stamp,
        "args": vars(args),
        "memory": mem.what,
        "rows": [asdict(r) for r in rows],
        "extras": extras,
        "summary": summarise(rows, extras),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    R.atomic_write(out / "results.json", json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    R.atomic_write(out / "results.md", text)
    print(text, end="")
    log(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (D.DataError, R.RunError, ConfigError) as e:  # a user's mistake: one line, no traceback
        sys.exit(f"pipeline.py: error: {e}")
