"""The speedrun networks' training step on this CPU: its time on 1 and on all threads, and its MFU.

    .venv/bin/python benchmarks/steps.py                       # speednet-white, -2x, speednet-wide; ~2 min
    .venv/bin/python benchmarks/steps.py --models speednet-white --batch-size 128

A step is what `alexnet train --preset speedrun` runs: bf16 autocast, channels_last, fused Nesterov
SGD, label smoothing 0.1, on a batch already in memory. For a network that starts with a `Frozen`
block the trainer computes that block once per image before training, so only the rest is timed,
on the frozen block's output for a random batch. All (network, threads) pairs run in alternating
turns (benchmarks/pipeline.py's `interleave`: a shared machine's load falls on all of them alike).
MFU = the step's exact training FLOPs (alexnet.analysis.training_flops of the timed part) per
second / the better of the best GEMM shape and the network's dominant convolution in bf16
(alexnet.analysis.measure_peak), measured before and after the turns on all threads, the better
kept. Units: a multiply-add is 2 FLOPs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout
sys.path.insert(0, str(ROOT / "benchmarks"))

from alexnet.analysis import measure_peak, training_flops  # noqa: E402
from alexnet.models import Frozen, build_model  # noqa: E402
from pipeline import Contestant, interleave, machine  # noqa: E402


def trained_part(name: str, batch: int):
    """The network as a step trains it, and a batch of its input: after a Frozen stem, the stem's output."""
    torch.manual_seed(0)
    model = build_model(name).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    if isinstance(model, torch.nn.Sequential) and isinstance(model[0], Frozen):
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            x = model[0](x)  # bf16, as InMemory.precompute keeps it
        model = model[1:]
    return model, x


def stepper(model, x, threads: int):
    y = torch.randint(0, 10, (len(x),))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, fused=True)

    def run(k: int) -> None:
        torch.set_num_threads(threads)
        for _ in range(k):
            with torch.autocast("cpu", torch.bfloat16):
                loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


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
    cpu = torch.device("cpu")
    nets = {n: trained_part(n, args.batch_size) for n in names}
    flops = {n: training_flops(m, tuple(x.shape)) for n, (m, x) in nets.items()}
    before = {n: measure_peak(m, tuple(x.shape), "bf16", cpu) for n, (m, x) in nets.items()}
    contestants = []
    for n, (m, x) in nets.items():
        for t in threads:
            run = stepper(m, x, t)
            run(2)  # warm-up: oneDNN picks its kernels, the allocator grows
            contestants.append(Contestant(f"{n}@{t}", run, args.block))
    interleave(contestants, args.rounds, cpu)
    torch.set_num_threads(max(threads))
    after = {n: measure_peak(m, tuple(x.shape), "bf16", cpu) for n, (m, x) in nets.items()}
    rows = []
    for c in contestants:
        n, t = c.name.rsplit("@", 1)
        peak = max(before[n], after[n], key=lambda q: q.flops)
        rate = flops[n] / c.step_s
        rows.append({"model": n, "threads": int(t), "batch_size": args.batch_size, "step_ms": c.step_s * 1e3,
                     "images_per_s": args.batch_size / c.step_s, "gflop_per_step": flops[n] / 1e9,
                     "gflop_per_s": rate / 1e9, "peak": peak.describe(), "peak_gflop_per_s": peak.flops / 1e9,
                     "mfu": rate / peak.flops})  # fmt: skip
    m = machine(cpu)
    stamp = f"{m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']}, {m['date_utc']} UTC"
    lines = [f"Training steps, batch {args.batch_size}, bf16, channels_last; {stamp}", "",
             "| network (trained part) | threads | step ms | img/s | GFLOP/step | GFLOP/s | peak | MFU |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip
    lines += [(f"| {r['model']} | {r['threads']} | {r['step_ms']:.1f} | {r['images_per_s']:,.0f} | "
               f"{r['gflop_per_step']:.3f} | {r['gflop_per_s']:.1f} | {r['peak']} | {r['mfu']:.1%} |") for r in rows]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    result = {"rows": rows, "machine": m}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(text, end="")
    return result


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"{time.perf_counter() - t0:.0f} s")
