"""What `alexnet train --tensorboard` costs: a small run's training images/s and epoch time with and
without it, in alternating turns (off, on, off, on, ...), each turn a fresh run, and the size of
the event files per epoch; plus the one-time import of torch.utils.tensorboard.

    python benchmarks/tensorboard_cost.py --out runs/tensorboard-cost
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

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/tensorboard-cost")
    p.add_argument("--turns", type=int, default=3, help="turns of each kind")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit-train", type=int, default=6000)
    p.add_argument("--preset", default="cpu")
    args = p.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    imp = subprocess.run([sys.executable, "-c", "import time, torch; t = time.perf_counter(); "
                          "import torch.utils.tensorboard; print(time.perf_counter() - t)"],
                         env=env, capture_output=True, text=True, check=True)  # fmt: skip
    rows = []
    for turn in range(2 * args.turns):
        on = turn % 2 == 1
        run = out / f"turn{turn}"
        subprocess.run([sys.executable, "-m", "alexnet", "train", "--preset", args.preset, "--epochs", str(args.epochs),
                        "--limit-train", str(args.limit_train), "--limit-test", "1000", "--run-dir", str(run),
                        "--no-progress", "--tensorboard" if on else "--no-tensorboard"],
                       env=env, check=True, capture_output=True)  # fmt: skip
        ms = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        events = sum(f.stat().st_size for f in run.glob("events.out.tfevents.*"))
        rows.append({"turn": turn, "tensorboard": on,
                     "images_per_s": statistics.mean(m["train_images_per_s"] for m in ms),
                     "epoch_s": statistics.mean(m["epoch_time_s"] for m in ms),
                     "event_bytes_per_epoch": events / len(ms)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    off = [r for r in rows if not r["tensorboard"]]
    on = [r for r in rows if r["tensorboard"]]
    result = {
        "import_s": float(imp.stdout.strip()), "turns": rows, "preset": args.preset, "limit_train": args.limit_train,
        "images_per_s_off": statistics.median(r["images_per_s"] for r in off),
        "images_per_s_on": statistics.median(r["images_per_s"] for r in on),
        "on_over_off": statistics.median(b["images_per_s"] / a["images_per_s"] for a, b in zip(off, on)),
        "epoch_s_off": statistics.median(r["epoch_s"] for r in off),
        "epoch_s_on": statistics.median(r["epoch_s"] for r in on),
        "event_bytes_per_epoch": statistics.median(r["event_bytes_per_epoch"] for r in on),
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "turns"}))


if __name__ == "__main__":
    main()
