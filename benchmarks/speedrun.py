"""The speedrun over fixed seeds: test accuracy (mean, std, min) and time, per preset.

    .venv/bin/python benchmarks/speedrun.py                                    # speedrun, seeds 0-4, ~6 min
    .venv/bin/python benchmarks/speedrun.py --preset speedrun-long --seeds 0,1,2

Each seed is its own `alexnet train --preset P --seed S` process, as a reader would run it, timed
three ways: training (the sum of the epochs' training loops), training + the final evaluation
(what the issue's 60 s and 5 min budgets count), and the whole command's wall time (Python start,
imports, data load and the run directory included). The seeds and the test set are for reporting
only; the recipes were tuned on the last 10,000 training images held out (`--holdout 10000`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from alexnet.measure import machine as this_machine
from alexnet.measure import timed
from alexnet.tables import Column, markdown

ROOT = Path(__file__).resolve().parent.parent  # the runs start here, as a reader would start them


def run_seed(preset: str, seed: int, run_dir: Path, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "alexnet",
        "train",
        "--preset",
        preset,
        "--seed",
        str(seed),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *extra,
    ]
    proc, wall = timed(lambda: subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False), "cpu")
    if proc.returncode:
        sys.exit(f"speedrun.py: seed {seed} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = sum(m["train_time_s"] for m in metrics)
    evaluation = sum(m.get("eval_time_s", 0.0) for m in metrics)
    return {
        "seed": seed,
        "acc": metrics[-1]["val_acc"],
        "epochs": metrics[-1]["epoch"],
        "train_s": train,
        "train_eval_s": train + evaluation,
        "wall_s": wall,
    }


def summarise(preset: str, runs: list[dict], extra: list[str]) -> dict:
    accs = [r["acc"] for r in runs]
    return {
        "preset": preset,
        "flags": " ".join(extra),
        "seeds": [r["seed"] for r in runs],
        "mean": statistics.mean(accs),
        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "min": min(accs),
        "max": max(accs),
        "train_s": statistics.mean(r["train_s"] for r in runs),
        "train_eval_s": statistics.mean(r["train_eval_s"] for r in runs),
        "max_train_eval_s": max(r["train_eval_s"] for r in runs),
        "wall_s": statistics.mean(r["wall_s"] for r in runs),
    }


def report(s: dict, runs: list[dict], machine: str) -> str:
    command = " ".join(filter(None, ["alexnet train --preset", s["preset"], s["flags"]]))
    cols = [
        Column("seed"),
        Column("acc", "test acc", "{:.4f}"),
        Column("epochs"),
        Column("train_s", "train s", "{:.1f}"),
        Column("train_eval_s", "train + eval s", "{:.1f}"),
        Column("wall_s", "command wall s", "{:.1f}"),
    ]
    lines = [f"`{command}`, seeds {','.join(map(str, s['seeds']))}; {machine}", "", markdown(runs, cols)]
    lines += [
        "",
        (
            f"test accuracy mean {s['mean']:.4f}, std {s['std']:.4f}, min {s['min']:.4f}, max {s['max']:.4f}; "
            f"training + evaluation {s['train_eval_s']:.1f} s mean ({s['max_train_eval_s']:.1f} s max), "
            f"whole command {s['wall_s']:.1f} s mean"
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="speedrun", help="the recipe to run")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    p.add_argument("--out", default="runs/speedrun-bench", help="directory for the runs and results.md")
    p.add_argument("extra", nargs="*", help="more `alexnet train` flags, after --")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out) / args.preset
    out.mkdir(parents=True, exist_ok=True)
    machine = this_machine("cpu").line()
    runs = []
    for seed in seeds:
        runs.append(run_seed(args.preset, seed, out / f"seed{seed}-{int(time.time())}", args.extra))
        r = runs[-1]
        print(
            f"seed {seed}: test acc {r['acc']:.4f}, train + eval {r['train_eval_s']:.1f} s, wall {r['wall_s']:.1f} s",
            flush=True,
        )
    s = summarise(args.preset, runs, args.extra)
    text = report(s, runs, machine)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"summary": s, "runs": runs, "machine": machine}, indent=2) + "\n")
    print(text, end="")
    return s


if __name__ == "__main__":
    main()
