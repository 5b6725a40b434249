"""What `--malloc keep` saves: a CPU training step with glibc's malloc as it comes, and with the
memory a step frees kept for the next (alexnet.device.keep_freed_memory), in alternating turns.

    .venv/bin/python benchmarks/malloc.py                                    # ~3 min on a 2-core CPU
    .venv/bin/python benchmarks/malloc.py --networks alexnet28:128:cpu --rounds 5

The setting is process-wide and cannot be undone, so each measurement is a child process: it
builds the network with its preset's recipe (alexnet.bench.step_recipe: optimizer, bf16 where the
CPU has it, channels_last; for a network with a frozen stem, the part a step trains), warms up,
then times ``--steps`` training steps (alexnet.train.train_step), wall clock and CPU time (all
threads, the kernel's included: with one thread, a figure a loaded machine leaves nearly alone),
and counts the minor page faults they take (getrusage): each is a page the kernel hands back zero-filled, because malloc gave it
away after the last step. The two settings alternate (alexnet.measure.reported_turns), so a shared
machine's load falls on both alike; the figure is the median step of the median child.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import alexnet
from alexnet.bench import step_recipe, trained_part
from alexnet.device import bf16_autocast, keep_freed_memory
from alexnet.measure import machine, reported_turns
from alexnet.models import build_model, get_spec
from alexnet.tables import Column, markdown
from alexnet.train import make_optimizer, train_step

CPU = torch.device("cpu")
MODES = ("system", "keep")


def child(name: str, batch: int, preset: str, mode: str, steps: int, warmup: int) -> dict:
    """One process's measurement (run in a fresh interpreter: ``--child``)."""
    applied = keep_freed_memory() if mode == "keep" else False
    cfg = step_recipe(preset, name, CPU)
    amp = bf16_autocast(cfg.system.amp, CPU)
    res = get_spec(name).resolution
    model = build_model(name, seed=0).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 1, res, res, generator=torch.Generator().manual_seed(0))
    part, x = trained_part(model, x.contiguous(memory_format=torch.channels_last), amp=amp)
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1))
    opt = make_optimizer(part, cfg, CPU)
    smoothing = cfg.train.label_smoothing
    for _ in range(warmup):
        train_step(part, opt, x, y, device=CPU, amp=amp, label_smoothing=smoothing)
    seconds, cpu, faults = [], [], 0
    for _ in range(steps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(part, opt, x, y, device=CPU, amp=amp, label_smoothing=smoothing)
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    return {
        "step_s": statistics.median(seconds),
        "cpu_s": statistics.median(cpu),
        "faults_per_step": faults / steps,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "applied": applied,
    }


def measure(spec: str, mode: str, steps: int, warmup: int) -> dict:
    cmd = [sys.executable, __file__, "--child", spec, mode, str(steps), str(warmup)]
    # The child imports the same alexnet as this process, wherever that came from.
    root = str(Path(alexnet.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{spec} with {mode} malloc failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


COLUMNS = [
    Column("network", left=True),
    Column("batch"),
    Column("preset", left=True),
    Column("system_ms", "step ms, system malloc", "{:.1f}"),
    Column("keep_ms", "step ms, --malloc keep", "{:.1f}"),
    Column("speedup", "speed-up", "{:.2f}x"),
    Column("system_cpu_ms", "CPU ms a step, system", "{:.1f}"),
    Column("keep_cpu_ms", "CPU ms a step, keep", "{:.1f}"),
    Column("system_faults", "page faults a step, system", "{:,.0f}"),
    Column("keep_faults", "page faults a step, keep", "{:,.0f}"),
    Column("system_rss", "peak RSS MiB, system", "{:,.0f}"),
    Column("keep_rss", "peak RSS MiB, keep", "{:,.0f}"),
]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--networks",
        default="speednet-white:256:speedrun,alexnet28:128:cpu,alexnet:128:fast",
        help="comma-separated NETWORK:BATCH:PRESET",
    )
    p.add_argument("--steps", type=int, default=10, help="steps timed per child")
    p.add_argument("--warmup", type=int, default=3, help="steps before the timed ones")
    p.add_argument("--rounds", type=int, default=3, help="children per setting and network, in alternating turns")
    p.add_argument("--out", default="runs/malloc-bench", help="directory for results.md and results.json")
    p.add_argument("--child", nargs=4, metavar=("SPEC", "MODE", "STEPS", "WARMUP"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec, mode, steps, warmup = args.child
        name, batch, preset = spec.split(":")
        print(json.dumps(child(name, int(batch), preset, mode, int(steps), int(warmup))))
        return {}
    rows = []
    for spec in args.networks.split(","):
        seen: dict[str, list[dict]] = {m: [] for m in MODES}

        def run(mode: str, spec: str = spec, seen: dict = seen) -> float:
            r = measure(spec, mode, args.steps, args.warmup)
            seen[mode].append(r)
            return r["step_s"]

        t = reported_turns({m: (lambda m=m: run(m)) for m in MODES}, rounds=args.rounds, warmup=0)
        name, batch, preset = spec.split(":")
        row = {"network": name, "batch": int(batch), "preset": preset}
        for m in MODES:
            row[f"{m}_ms"] = t[m].median * 1e3
            row[f"{m}_faults"] = statistics.median(r["faults_per_step"] for r in seen[m])
            row[f"{m}_cpu_ms"] = statistics.median(r["cpu_s"] for r in seen[m]) * 1e3
            row[f"{m}_rss"] = max(r["max_rss_mib"] for r in seen[m])
            row[f"{m}_steps_ms"] = [r["step_s"] * 1e3 for r in seen[m]]
        row["speedup"] = row["system_ms"] / row["keep_ms"]
        row["applied"] = all(r["applied"] for r in seen["keep"])
        rows.append(row)
        print(
            f"{name} batch {batch}: {row['system_ms']:.1f} -> {row['keep_ms']:.1f} ms ({row['speedup']:.2f}x)",
            flush=True,
        )
    m = machine(CPU)
    text = "\n".join(
        [
            f"Training steps, system malloc against --malloc keep, {args.rounds} children each in turns; {m.line()}",
            "",
            markdown(rows, COLUMNS),
        ]
    )
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    result = {"rows": rows, "machine": m.asdict(), "steps": args.steps, "rounds": args.rounds}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
