"""Images/s one CPU core decodes and augments with alexnet.imagenet, on generated ImageNet-sized JPEGs.

    .venv/bin/python benchmarks/decode.py --images 300      # ~1 min on one core

The JPEGs are 500x375 (ImageNet's most common size), quality 90, with smooth structure plus
texture so that they compress to about the ~110 kB of an average ImageNet photo (random noise
would compress far worse and decode slower). Timed per image, in one process with one thread:
  train: open + decode + resize shorter side to 256 + random 227 crop + flip + uint8 tensor
         + the lighting alphas (ImageDataset in 'train' mode, what a DataLoader worker runs);
  center: the same with the centre crop; ten: the 10-crop evaluation.
The four paths take alternating turns (alexnet.measure.time_turns: 20 warm-up images each, then
--rounds turns of --images images, each image timed alone); a rate is images over the median
image's seconds. Then the train path through a DataLoader with every core as a worker, to check
the scaling: one warm-up epoch, then each epoch timed as one unit (its batches arrive from
parallel workers, so a batch's own wait says nothing), images/s at the median epoch.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alexnet.imagenet import EpochBatches, ImageDataset, ImageList, collate
from alexnet.measure import machine, time_turns


def make_jpegs(root: Path, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        coarse = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)  # low-frequency layout
        im = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), dtype=np.int16)
        im = im + rng.normal(0, 20, im.shape)  # texture and sensor noise
        p = root / f"{i:05d}.jpg"
        Image.fromarray(im.clip(0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


def decoder(ds: ImageDataset, n: int):
    """run(k): the next k images of the dataset, epoch after epoch (each epoch its own random crops)."""
    seen = itertools.count()

    def run(k):
        for _ in range(k):
            j = next(seen)
            assert ds[(j % n, j // n)][3] is None

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=2, help="turns of --images images per path (and DataLoader epochs)")
    args = ap.parse_args()
    if min(args.images, args.workers, args.rounds) < 1:
        ap.error("--images, --workers and --rounds must be at least 1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        kb = np.mean([os.path.getsize(p) for p in paths]) / 1e3
        images = ImageList(paths, [0] * len(paths), ["x"])
        print(f"{len(paths)} JPEGs 500x375 q90, mean {kb:.0f} kB; {machine('cpu').line()}, Pillow {Image.__version__}")
        decoders = {
            f"{mode:<6} {crop}": decoder(ImageDataset(images, 256, crop, mode, lighting=0.1), len(paths))
            for mode, crop in (("train", 227), ("center", 227), ("ten", 227), ("train", 224))
        }
        # 20 warm-up images each: the page cache and Pillow's first-call setup
        for label, t in time_turns(decoders, "cpu", rounds=args.rounds, block=len(paths), warmup=20).items():
            print(
                f"one core, {label}: {t.per_second():6.0f} images/s  ({1e3 * t.median:.2f} ms/image at the median, "
                f"best {1e3 * t.best:.2f})"
            )
        ds = ImageDataset(images, 256, 227, "train", lighting=0.1)
        sampler = EpochBatches(len(ds), 32, True, seed=0)
        loader = torch.utils.data.DataLoader(
            ds,
            batch_sampler=sampler,
            num_workers=args.workers,
            collate_fn=collate,
            persistent_workers=True,
            prefetch_factor=4,
        )
        epochs = itertools.count()

        def run_epochs(k):
            for _ in range(k):
                sampler.set_epoch(next(epochs))
                for _ in loader:
                    pass

        # One warm-up epoch: starts the workers and warms the cache.
        t = time_turns({"loader": run_epochs}, "cpu", rounds=args.rounds, warmup=1)["loader"]
        rate = t.per_second(len(sampler) * 32)
        per = rate / args.workers
        print(f"DataLoader, {args.workers} workers, train 227: {rate:6.0f} images/s ({per:.0f} per worker)")


if __name__ == "__main__":
    main()
