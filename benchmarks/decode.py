"""Images/s one CPU core decodes and augments with alexnet.imagenet, on generated ImageNet-sized JPEGs.

    .venv/bin/python benchmarks/decode.py --images 300      # ~1 min on one core

The JPEGs are 500x375 (ImageNet's most common size), quality 90, with smooth structure plus
texture so that they compress to about the ~110 kB of an average ImageNet photo (random noise
would compress far worse and decode slower). Timed per image, in one process with one thread:
  train: open + decode + resize shorter side to 256 + random 227 crop + flip + uint8 tensor
         + the lighting alphas (ImageDataset in 'train' mode, what a DataLoader worker runs);
  center: the same with the centre crop; ten: the 10-crop evaluation.
Then the train path through a DataLoader with every core as a worker, to check the scaling.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alexnet.imagenet import EpochBatches, ImageDataset, ImageList, collate
from alexnet.measure import machine


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


def per_image_rate(ds: ImageDataset, n: int, epochs: int = 2) -> float:
    for i in range(min(n, 20)):  # warm the page cache and Pillow's first-call setup
        ds[(i, 99)]
    t0 = time.perf_counter()
    for e in range(epochs):
        for i in range(n):
            x = ds[(i, e)]
            assert x[3] is None
    return epochs * n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()
    if args.images < 1 or args.workers < 1:
        ap.error("--images and --workers must be at least 1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        kb = np.mean([os.path.getsize(p) for p in paths]) / 1e3
        images = ImageList(paths, [0] * len(paths), ["x"])
        print(f"{len(paths)} JPEGs 500x375 q90, mean {kb:.0f} kB; {machine('cpu').line()}, Pillow {Image.__version__}")
        for mode, crop in (("train", 227), ("center", 227), ("ten", 227), ("train", 224)):
            rate = per_image_rate(ImageDataset(images, 256, crop, mode, lighting=0.1), len(paths))
            print(f"one core, {mode:<6} {crop}: {rate:6.0f} images/s  ({1e3 / rate:.2f} ms/image)")
        ds = ImageDataset(images, 256, 227, "train", lighting=0.1)
        sampler = EpochBatches(len(ds), 32, True, seed=0)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=args.workers, collate_fn=collate,
                                             persistent_workers=True, prefetch_factor=4)  # fmt: skip
        for _ in loader:  # start the workers, warm the cache
            pass
        t0, seen = time.perf_counter(), 0
        for epoch in (1, 2):
            sampler.set_epoch(epoch)
            for x, *_ in loader:
                seen += len(x)
        rate = seen / (time.perf_counter() - t0)
        per = rate / args.workers
        print(f"DataLoader, {args.workers} workers, train 227: {rate:6.0f} images/s ({per:.0f} per worker)")


if __name__ == "__main__":
    main()
