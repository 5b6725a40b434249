"""The speedrun networks' training step on this CPU: its time on 1 and on all threads, and its MFU.

    .venv/bin/python benchmarks/steps.py                       # speednet-white, -2x, speednet-wide; ~2 min
    .venv/bin/python benchmarks/steps.py --models speednet-white --batch-size 128

A step is what `alexnet train --preset speedrun` runs: alexnet.train.train_step with the preset's
optimizer (alexnet.train.make_optimizer: fused Nesterov SGD, weight decay), bf16 autocast,
channels_last and label smoothing, on a batch already in memory. For a network that starts with a
`Frozen` block the trainer computes that block once per image before training, so only the rest is
timed, on the frozen block's output for a random batch (alexnet.bench.trained_part, as `alexnet
bench` does). All (network, threads) pairs run in alternating turns (alexnet.measure.time_turns: a
shared machine's load falls on all of them alike); the figure is the median step.
MFU = the step's exact training FLOPs (alexnet.costs.training_flops of the timed part) per
second / the better of the best GEMM shape and the network's dominant convolution in bf16
(alexnet.hardware.measure_peak), measured before and after the turns on all threads, the better
kept. Units: a multiply-add is 2 FLOPs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from alexnet.bench import step_recipe, trained_part
from alexnet.costs import training_flops
from alexnet.device import keep_freed_memory
from alexnet.hardware import measure_peak
from alexnet.measure import machine, time_turns
from alexnet.models import build_model
from alexnet.tables import Column, markdown
from alexnet.train import make_optimizer, train_step

CPU = torch.device("cpu")


def network(name: str, batch: int):
    """The part of ``name`` a speedrun step trains, a batch of its input, and the preset's recipe."""
    cfg = step_recipe("speedrun", name, CPU)
    model = build_model(name, seed=0).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    part, x = trained_part(model, x.contiguous(memory_format=torch.channels_last), amp=True)
    return part, x, cfg


def stepper(model, x, cfg, threads: int):
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(1))
    opt = make_optimizer(model, cfg, CPU)

    def run(k: int) -> None:
        torch.set_num_threads(threads)
        for _ in range(k):
            train_step(model, opt, x, y, device=CPU, amp=True, label_smoothing=cfg.train.label_smoothing)

    return run


COLUMNS = [
    Column("model", "network (trained part)", left=True),
    Column("threads"),
    Column("step_ms", "step ms", "{:.1f}"),
    Column("images_per_s", "img/s", "{:,.0f}"),
    Column("gflop_per_step", "GFLOP/step", "{:.3f}"),
    Column("gflop_per_s", "GFLOP/s", "{:.1f}"),
    Column("peak", left=True),
    Column("mfu", "MFU", "{:.1%}"),
]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="speednet-white,speednet-white-2x,speednet-wide", help="comma-separated")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", default=f"1,{torch.get_num_threads()}", help="comma-separated thread counts")
    p.add_argument("--block", type=int, default=10, help="steps per turn")
    p.add_argument("--rounds", type=int, default=5, help="turns per (network, threads)")
    p.add_argument("--out", default="runs/steps-bench", help="directory for results.md and results.json")
    args = p.parse_args(argv)
    names, threads = args.models.split(","), sorted({int(t) for t in args.threads.split(",")})
    keep_freed_memory()  # as the trainer's steps run (--malloc keep)
    nets = {n: network(n, args.batch_size) for n in names}
    flops = {n: training_flops(m, tuple(x.shape)) for n, (m, x, _) in nets.items()}
    before = {n: measure_peak(m, tuple(x.shape), "bf16", CPU) for n, (m, x, _) in nets.items()}
    runs = {f"{n}@{t}": stepper(m, x, cfg, t) for n, (m, x, cfg) in nets.items() for t in threads}
    # Warm-up: oneDNN picks its kernels, the allocator grows.
    timings = time_turns(runs, CPU, rounds=args.rounds, block=args.block, warmup=2)
    torch.set_num_threads(max(threads))
    after = {n: measure_peak(m, tuple(x.shape), "bf16", CPU) for n, (m, x, _) in nets.items()}
    rows = []
    for name, t in timings.items():
        n, th = name.rsplit("@", 1)
        peak = max(before[n], after[n], key=lambda q: q.flops)
        rate = flops[n] / t.median
        rows.append(
            {
                "model": n,
                "threads": int(th),
                "batch_size": args.batch_size,
                "step_ms": t.median * 1e3,
                "best_step_ms": t.best * 1e3,
                "images_per_s": args.batch_size / t.median,
                "gflop_per_step": flops[n] / 1e9,
                "gflop_per_s": rate / 1e9,
                "peak": peak.describe(),
                "peak_gflop_per_s": peak.flops / 1e9,
                "mfu": rate / peak.flops,
            }
        )
    m = machine(CPU)
    lines = [f"Training steps, batch {args.batch_size}, bf16, channels_last; {m.line()}", "", markdown(rows, COLUMNS)]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    result = {"rows": rows, "machine": m.asdict()}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(text, end="")
    return result


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"{time.perf_counter() - t0:.0f} s")
