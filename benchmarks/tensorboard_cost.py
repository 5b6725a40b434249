"""What `alexnet train --tensorboard` costs: a small run's training images/s and epoch time with and
without it, in alternating turns (off, on, off, on, ...), each turn a fresh run, and the size of
the event files per epoch; plus the one-time import of torch.utils.tensorboard.

    python benchmarks/tensorboard_cost.py --out runs/tensorboard-cost
    python benchmarks/tensorboard_cost.py --out /tmp/tb --turns 1 --warmup 0 --epochs 1 --limit-train 256  # smoke

Timings go through the package's harness (alexnet.measure): the turns alternate through
``reported_turns`` (one warm-up turn of each kind first), each returning the run's own seconds per
training image from its metrics.jsonl; the import is ``time_once`` in a fresh interpreter per round.
The table (results.md) is alexnet.tables', stamped with ``measure.machine``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from alexnet.measure import machine, reported_turns
from alexnet.tables import Column, markdown

ROOT = Path(__file__).resolve().parents[1]
# A fresh interpreter with torch already imported times the import of TensorBoard's writer alone.
IMPORT = (
    "import importlib, torch; from alexnet.measure import time_once; "
    "print(time_once(lambda: importlib.import_module('torch.utils.tensorboard'), 'cpu'))"
)
COLUMNS = [
    Column("turn"),
    Column("tensorboard", "--tensorboard", lambda on: "on" if on else "off", left=True),
    Column("warm_up", "warm-up", lambda w: "yes" if w else "", left=True),
    Column("images_per_s", "training images/s", "{:.0f}"),
    Column("epoch_s", "epoch s", "{:.2f}"),
    Column("event_bytes_per_epoch", "event bytes per epoch", "{:,.0f}"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/tensorboard-cost")
    p.add_argument("--turns", type=int, default=3, help="turns of each kind")
    p.add_argument("--warmup", type=int, default=1, help="warm-up turns of each kind, not counted")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit-train", type=int, default=6000)
    p.add_argument("--preset", default="cpu")
    args = p.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    stamp = machine("cpu").line()
    print(stamp, flush=True)

    def import_once() -> float:
        return float(
            subprocess.run(
                [sys.executable, "-c", IMPORT], env=env, capture_output=True, text=True, check=True
            ).stdout.strip()
        )

    rows = []

    def turn(on: bool):
        def run_turn() -> float:
            k = len(rows)
            run = out / f"turn{k}"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "alexnet",
                    "train",
                    "--preset",
                    args.preset,
                    "--epochs",
                    str(args.epochs),
                    "--limit-train",
                    str(args.limit_train),
                    "--limit-test",
                    "1000",
                    "--run-dir",
                    str(run),
                    "--no-progress",
                    "--tensorboard" if on else "--no-tensorboard",
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            ms = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            events = sum(f.stat().st_size for f in run.glob("events.out.tfevents.*"))
            seconds = sum(m["train_time_s"] for m in ms)
            images = sum(m["train_time_s"] * m["train_images_per_s"] for m in ms)
            rows.append(
                {
                    "turn": k,
                    "tensorboard": on,
                    "warm_up": k < 2 * args.warmup,
                    "images_per_s": images / seconds,
                    "epoch_s": statistics.median(m["epoch_time_s"] for m in ms),
                    "event_bytes_per_epoch": events / len(ms),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            return seconds / images

        return run_turn

    imported = reported_turns({"import": import_once}, rounds=3)["import"]
    by_kind = reported_turns({"off": turn(False), "on": turn(True)}, rounds=args.turns, warmup=args.warmup)
    off, on = by_kind["off"], by_kind["on"]  # seconds per training image
    counted = [r for r in rows if not r["warm_up"]]
    result = {
        "machine": stamp,
        "import_s": imported.median,
        "import_s_best": imported.best,
        "turns": rows,
        "preset": args.preset,
        "limit_train": args.limit_train,
        "epochs": args.epochs,
        "warmup_turns": args.warmup,
        "images_per_s_off": off.per_second(),
        "images_per_s_on": on.per_second(),
        "on_over_off": off.median / on.median,
        "pairwise_on_over_off": [a / b for a, b in zip(off.seconds, on.seconds)],
        "epoch_s_off": statistics.median(r["epoch_s"] for r in counted if not r["tensorboard"]),
        "epoch_s_on": statistics.median(r["epoch_s"] for r in counted if r["tensorboard"]),
        "event_bytes_per_epoch": statistics.median(r["event_bytes_per_epoch"] for r in counted if r["tensorboard"]),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = (
        f"Training images/s, median of {args.turns} turns: off {result['images_per_s_off']:.0f}, on "
        f"{result['images_per_s_on']:.0f}; on / off {result['on_over_off']:.2f} (per pair: "
        + ", ".join(f"{r:.2f}" for r in result["pairwise_on_over_off"])
        + f"). Importing "
        f"torch.utils.tensorboard: {result['import_s']:.2f} s (median of 3, fresh interpreters)."
    )
    (out / "results.md").write_text(f"Machine: {stamp}\n\n{markdown(rows, COLUMNS)}\n\n{summary}\n")
    print(json.dumps({k: v for k, v in result.items() if k != "turns"}))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")


if __name__ == "__main__":
    main()
