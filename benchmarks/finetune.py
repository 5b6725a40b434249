"""Does pretraining help when a new task has only a few hundred images? (docs/export.md)

Pretrain a network on Fashion-MNIST's classes 0-4 (t-shirt, trouser, pullover, dress, coat: 30,000
images), then learn classes 5-9 (sandal, shirt, sneaker, bag, ankle boot) from ``--per-class`` images
each, three ways, with the same recipe and steps:

    frozen    --init-from the pretrained run, --freeze features: only the classifier trains
    lower-lr  --init-from the pretrained run, the whole network, pretrained layers at 0.1 x lr
    scratch   the same network from its initialisation

each over ``--seeds`` seeds (the seed draws the few hundred images, the new layer and the data
order), tested on all 5,000 test images of classes 5-9. Everything runs through ``alexnet train``'s
own code (train.fit) on MNIST-format files holding the class subsets (read as ``--dataset mnist``:
its loader does not insist on Fashion-MNIST's checksums; MNIST's normalisation is used throughout,
the same for every arm).

    python benchmarks/finetune.py --out runs/finetune        # ~20 min beside other jobs, 2 cores
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import struct
from pathlib import Path

import numpy as np

from alexnet import data as D
from alexnet.config import PRESETS
from alexnet.data import IDX_FILES
from alexnet.measure import timed
from alexnet.tables import grid
from alexnet.train import fit

ARMS = {
    "frozen": dict(freeze="features"),
    "lower-lr": dict(pretrained_lr_scale=0.1),
    "scratch": dict(),
}


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))


def write_subset(ds, directory: Path, train_idx: np.ndarray, test_idx: np.ndarray) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, idx in (("train", train_idx), ("test", test_idx)):
        part = getattr(ds, split)
        images_name, labels_name = IDX_FILES[split]
        write_idx(directory / f"{images_name}.gz", part.images[idx, 0].numpy())
        write_idx(directory / f"{labels_name}.gz", part.labels[idx].numpy())
    return directory


def train(data_dir: Path, run_dir: Path, **settings) -> dict:
    cfg = PRESETS["cpu"].replace(dataset="mnist", data_dir=str(data_dir), **settings)
    result, wall = timed(lambda: fit(cfg, run_dir, progress=False), "cpu")
    m = result.metrics
    return {"acc": m[-1]["val_acc"], "train_s": sum(r["train_time_s"] for r in m), "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/finetune")
    p.add_argument("--model", default="alexnet28")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--per-class", type=int, default=100, help="training images per new class")
    p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs (the same for every arm)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    out = Path(args.out)
    ds = D.load_dataset("fashion-mnist")
    tr, te = ds.train.labels.numpy(), ds.test.labels.numpy()
    old = write_subset(ds, out / "data-0-4", np.flatnonzero(tr < 5), np.flatnonzero(te < 5))
    pre_run = out / "pretrain"
    if not (pre_run / "last.pt").exists():
        pre = train(old, pre_run, model=args.model, epochs=args.pretrain_epochs)
        print(
            f"pretrained {args.model} on classes 0-4: test accuracy {pre['acc']:.4f} in {pre['train_s']:.0f} s",
            flush=True,
        )
    rows = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        few = np.concatenate([rng.choice(np.flatnonzero(tr == k), args.per_class, replace=False) for k in range(5, 10)])
        new = write_subset(ds, out / f"data-5-9-seed{seed}", np.sort(few), np.flatnonzero(te >= 5))
        for arm, extra in ARMS.items():
            init = {"init_from": str(pre_run)} if arm != "scratch" else {}
            r = train(
                new,
                out / f"{arm}-seed{seed}",
                model=args.model,
                epochs=args.epochs,
                batch_size=args.batch_size,
                seed=seed,
                evaluate="end",
                **init,
                **extra,
            )
            rows.append({"arm": arm, "seed": seed, **r})
            print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    cells = []
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        accs = [r["acc"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        cells.append(
            [
                arm,
                f"{statistics.mean(accs):.4f} ± {sd:.4f}",
                ", ".join(f"{a:.4f}" for a in accs),
                f"{statistics.mean(r['train_s'] for r in rs):.1f}",
                f"{statistics.mean(r['wall_s'] for r in rs):.1f}",
            ]
        )
    table = grid(
        [
            "arm",
            f"test accuracy on classes 5-9 (mean ± sd, {args.seeds} seeds)",
            "per seed",
            "training s (mean)",
            "wall s (mean)",
        ],
        cells,
        left=(0, 1, 2),
    )
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
