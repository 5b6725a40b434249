"""Datasets held once on the training device as uint8, and the batched ops that feed the network.

The chapter's loader resizes every 28×28 image to 224×224 with PIL in worker processes, then
ships float32 tensors 64× larger than the source to the device. Here each split is read once into
a uint8 tensor on the device (Fashion-MNIST's 70k images are 55 MB), a batch is a gather by
shuffled indices, and crop / flip / resize / scaling run as a handful of batched tensor ops
inside the step: no per-image Python, no worker processes, nothing 224×224 stored.

The files themselves are read and verified in readers.py; here they are found (or downloaded),
assembled into a Dataset and placed on the device. readers.py's DataError, Split, read_idx,
parse_idx and IDX_* are also importable from here, where the package and its tests read them.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import typing
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .readers import IDX_FILES as IDX_FILES
from .readers import IDX_IMAGES as IDX_IMAGES
from .readers import IDX_SIDE as IDX_SIDE
from .readers import DataError, Split, _Hashing, _read_cifar_batch, _read_idx_stream, has_idx, read_idx_split
from .readers import parse_idx as parse_idx
from .readers import read_idx as read_idx
from .runs import atomic_write
from .seeds import Seeds, as_seeds

FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# sha256 of the *decompressed* files: Debian's dataset-fashion-mnist re-gzips them, so the .gz
# bytes differ from the official ones while the content is identical.
FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# Per-channel mean and std of the training images on the [0, 1] scale, for --normalize.
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: list[str]

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def size(self) -> int:
        return self.train.images.shape[-1]


# ---------------------------------------------------------------------------------------------
# Where each dataset lives (found or downloaded), read into a Dataset on the device


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alexnet"


def find_idx_dir(name: str, data_dir: str | os.PathLike | None, download: bool = True) -> Path:
    """Where an IDX dataset lives: --data-dir, $ALEXNET_DATA, the user cache, Debian's package."""
    sub = name
    candidates: list[tuple[str, Path]] = []
    if data_dir is not None:
        # An explicit directory is authoritative: it may hold the files or a <name>/ folder.
        d = Path(data_dir)
        for c in (d, d / sub):
            if has_idx(c):
                return c
        folders = (d / "train").is_dir() and (d / "val").is_dir()  # the layout fine-tuning on your own images uses
        raise DataError(
            f"--data-dir {d}: no {name} IDX files (train-images-idx3-ubyte.gz, ...) there"
            + ("; it holds train/ and val/: for image folders give --dataset imagefolder" if folders else "")
        )
    if os.environ.get("ALEXNET_DATA"):
        d = Path(os.environ["ALEXNET_DATA"])
        candidates += [("$ALEXNET_DATA", d), ("$ALEXNET_DATA", d / sub)]
    candidates.append(("cache", cache_dir() / sub))
    if name == "fashion-mnist":
        candidates.append(("debian", DEBIAN_FASHION_DIR))
    for _, c in candidates:
        if has_idx(c):
            return c
    if name == "fashion-mnist" and download:
        target = cache_dir() / sub
        try:
            download_fashion_mnist(target)
            return target
        except OSError as e:
            reason = f"download failed ({e.__class__.__name__}: {e})"
    else:
        reason = "no download source"
    raise DataError(
        f"{name} not found ({reason}); provide it by --data-dir DIR, by $ALEXNET_DATA, "
        f"or by `apt-get install dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist)"
    )


def download_fashion_mnist(target: Path, timeout: float = 20) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for stem, digest in FASHION_SHA256.items():
        dest = target / f"{stem}.gz"
        if dest.exists():
            continue
        with urllib.request.urlopen(FASHION_URL + stem + ".gz", timeout=timeout) as r:
            payload = r.read(2**26 + 1)  # the largest file is 26 MB; never hold an unbounded response
        # Verified the way it will be read: streaming, never inflated beyond its declared size.
        f = _Hashing(gzip.GzipFile(fileobj=io.BytesIO(payload), mode="rb"))
        try:
            _read_idx_stream(f, f"downloaded {stem}.gz", 3 if "images" in stem else 1)
        except (DataError, EOFError, zlib.error) as e:
            raise OSError(str(e)) from None
        if len(payload) > 2**26 or f.sha.hexdigest() != digest:
            raise OSError(f"downloaded {stem}.gz does not match its sha256")
        atomic_write(dest, payload)


def read_cifar10(data_dir: str | os.PathLike | None) -> Dataset:
    roots = [Path(data_dir)] if data_dir else []
    if os.environ.get("ALEXNET_DATA"):
        roots.append(Path(os.environ["ALEXNET_DATA"]))
    roots.append(cache_dir())
    for root in roots:
        for d in (root, root / "cifar-10-batches-py", root / "cifar10" / "cifar-10-batches-py"):
            if (d / "data_batch_1").exists():
                parts = [_read_cifar_batch(d / f"data_batch_{i}") for i in range(1, 6)]
                x_test, y_test = _read_cifar_batch(d / "test_batch")
                x = np.concatenate([p[0] for p in parts])
                y = np.concatenate([p[1] for p in parts])
                return Dataset(
                    "cifar10",
                    Split(torch.from_numpy(x), torch.from_numpy(y)),
                    Split(torch.from_numpy(x_test), torch.from_numpy(y_test)),
                    CIFAR10_CLASSES,
                )
    where = ", ".join(str(r) for r in roots)
    raise DataError(
        f"cifar10 not found in {where}; download cifar-10-python.tar.gz from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html, extract it and pass --data-dir"
    )


DATASETS = ("fashion-mnist", "mnist", "cifar10")


def load_dataset(name: str, data_dir=None, device="cpu", download: bool = True) -> Dataset:
    """Read a dataset, verified, and place both splits on ``device`` as uint8."""
    if name == "cifar10":
        ds = read_cifar10(data_dir)
    elif name in ("fashion-mnist", "mnist"):
        directory = find_idx_dir(name, data_dir, download=download)
        checks = FASHION_SHA256 if name == "fashion-mnist" else None
        classes = FASHION_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
        ds = Dataset(
            name,
            read_idx_split(directory, "train", checks, len(classes)),
            read_idx_split(directory, "test", checks, len(classes)),
            classes,
        )
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, imagefolder, imagelist")
    ds.train, ds.test = ds.train.to(device), ds.test.to(device)
    return ds


# ---------------------------------------------------------------------------------------------
# Batches: indices -> uint8 gather -> augment -> resize -> float


def epoch_indices(
    n: int, epoch: int, seed: int | Seeds, shuffle: bool = True, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """The order in which one rank sees the examples in one epoch.

    The permutation is a pure function of (seed, epoch): resuming needs no saved RNG state, and
    data-parallel ranks each take every world_size-th index of the same permutation. The tail
    that does not divide evenly is dropped so all ranks step the same number of times.
    """
    if shuffle:
        g = as_seeds(seed).generator("order", epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    usable = n - n % world_size
    return order[rank:usable:world_size]


def batches(indices: torch.Tensor, batch_size: int, drop_last: bool = False):
    stop = len(indices) - len(indices) % batch_size if drop_last else len(indices)
    for start in range(0, stop, batch_size):
        yield indices[start : start + batch_size]


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut a random window of the original size from each image."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator, device="cpu").to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator, device="cpu").to(x.device)
    rows = (oy + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (ox + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def flip_draws(n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which of a batch's ``n`` images to mirror: one draw each, on the CPU (resumable anywhere)."""
    return (torch.rand(n, generator=generator, device="cpu") < 0.5).to(device)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    flip = flip_draws(x.shape[0], x.device, generator)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@dataclass(frozen=True)
class Transform:
    """A uint8 batch on the device -> the network's float input, in a few batched ops: augment
    (train only), scale to [0, 1], resize, lighting (train only), normalise, memory layout.

    The one such step of the package: the chapter's datasets (InMemory), image folders (imagenet.py,
    whose workers crop at the resolution, so ``resolution=None``, and which add §4.1's lighting) and
    the d2l API's loaders (d2l.py: a (height, width), antialiased when shrinking, as PIL resizes)."""

    resolution: int | tuple[int, int] | None  # output side, or (height, width); None: the input's own
    mean: tuple[float, ...] | None = None  # None: plain [0, 1] pixels, as the chapter
    std: tuple[float, ...] | None = None
    crop_padding: int = 0  # random crop after zero-padding by this many pixels (train only)
    flip: bool = False  # random horizontal flip (train only)
    channels_last: bool = True
    dtype: torch.dtype = torch.float32
    # §4.1's lighting, (eigval, eigvec) of the RGB covariance; each image's alphas come with the
    # batch (drawn per image in imagenet.py's workers), applied in training only.
    lighting: tuple[tuple[float, ...], tuple[tuple[float, ...], ...]] | None = None
    # Antialias when shrinking (d2l: PIL filters over the whole footprint). Off for training runs:
    # their checkpoints were trained and are evaluated without it.
    antialias: bool = False

    @property
    def size(self) -> tuple[int, int] | None:
        r = self.resolution
        return None if r is None else (r, r) if isinstance(r, int) else (int(r[0]), int(r[1]))

    def __call__(
        self,
        x: torch.Tensor,
        train: bool = False,
        generator: torch.Generator | None = None,
        alpha: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: uint8 (B, C, h, w), or (B, n, C, h, w) for n crops per image (not resized);
        ``alpha``: (B, 3) lighting draws."""
        # Augment at native resolution (28×28), 64× fewer pixels than after the resize.
        if train and self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if train and self.flip:
            x = random_flip(x, generator)
        x = x.to(self.dtype).div_(255)
        size = self.size
        if size is not None and tuple(x.shape[-2:]) != size:
            shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            # Bilinear, align_corners=False: what PIL's bilinear resize does when upsampling.
            x = F.interpolate(
                x, size=size, mode="bilinear", align_corners=False, antialias=self.antialias and shrinking
            )
        if train and self.lighting is not None and alpha is not None and alpha.abs().sum() > 0:
            # §4.1: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T to every pixel, a ~ N(0, 0.1) per image.
            val, vec = (torch.tensor(t, device=x.device) for t in self.lighting)
            x = x + ((alpha.to(x.device) * val) @ vec.T)[:, :, None, None]  # (B, 3) -> (B, 3, 1, 1)
        if self.mean is not None:  # (C, 1, 1): one per channel, whatever the dimensions before
            mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(-1, 1, 1)
            x = (x - mean) / torch.tensor(self.std, device=x.device, dtype=x.dtype).view(-1, 1, 1)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def batch_generator(seed: int | Seeds, epoch: int, index: int) -> torch.Generator:
    """The random numbers of one training batch's augmentation: a function of (seed, epoch, batch),
    drawn on the CPU, so a run resumed at any step draws exactly what the uninterrupted one did."""
    return as_seeds(seed).generator("augment", epoch, index)


def loader(
    split: Split,
    transform: Transform,
    batch_size: int,
    train: bool,
    epoch: int = 0,
    seed: int | Seeds = 0,
    rank: int = 0,
    world_size: int = 1,
    skip: int = 0,
):
    """Yield (inputs, labels) for one epoch; the first ``skip`` batches are passed over (mid-epoch resume)."""
    idx = epoch_indices(len(split), epoch, seed, shuffle=train, rank=rank, world_size=world_size)
    idx = idx.to(split.images.device)
    for i, b in enumerate(batches(idx, batch_size, drop_last=train)):
        if i < skip:
            continue
        g = batch_generator(seed, epoch, i * world_size + rank) if train else None
        yield transform(split.images[b], train, g), split.labels[b]


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1, train: bool = True) -> int:
    per_rank = (n - n % world_size) // world_size
    return per_rank // batch_size if train else -(-per_rank // batch_size)


# ---------------------------------------------------------------------------------------------
# The run's data source


def make_transform(cfg: Config, name: str, device: torch.device) -> Transform:
    mean, std = STATS[name] if cfg.data.normalize else (None, None)
    return Transform(
        cfg.resolution(),
        mean,
        std,
        cfg.data.crop_padding,
        cfg.data.flip,
        channels_last=cfg.system.channels_last and device.type != "mps",
    )


class CacheTooLarge(MemoryError):
    def __init__(self, need: int, free: int):
        super().__init__(f"the frozen layers' outputs would take {need / 1e9:.2f} GB of the {free / 1e9:.2f} GB free")
        self.need, self.free = need, free


@typing.runtime_checkable
class Source(typing.Protocol):
    """What a run (train.Session) asks of its data, so that it never asks which data it has:
    InMemory (the chapter's datasets) and imagenet.ImagePipeline (image folders) answer it."""

    name: str
    classes: list[str]
    channels: int
    resolution: int
    normalization: tuple | None  # (mean, std) for the checkpoint, or None
    stats: dict | None  # image folders' colour statistics for the checkpoint, or None
    skipped: int  # unreadable images met in this epoch
    resident: bool  # the training images sit on the device: ``sample`` and ``precompute`` can read them
    precomputable: bool  # resident, and a batch is a fixed function of its images (no random crop)
    uniform_batches: bool  # every evaluation batch costs the same, so a few time an evaluation
    val_steps: int  # batches in one evaluation

    def __len__(self) -> int: ...  # training images (all ranks)

    def train(self, epoch: int, skip: int = 0) -> typing.Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's (inputs, labels) device batches of one epoch, the first ``skip`` passed over."""

    def val(self, limit: int | None = None) -> typing.Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's evaluation batches (the first ``limit``)."""

    def epoch_metrics(self, ev: dict) -> dict:
        """Entries this data adds to an epoch's metrics row, from ``evaluate``'s result."""

    def record(self, run_path: Path) -> None:
        """Write into the run directory what a resumed run must reuse and its checkpoint does not hold."""


class InMemory:
    """The chapter's datasets: uint8 on the device, a batch is a gather by indices (a Source).

    Each rank trains on its shard of the permutation and evaluates every world_size-th test image.
    ``train(epoch, skip)`` and ``val()`` yield device batches, as imagenet.ImagePipeline's do.
    """

    skipped = 0  # nothing here can fail to decode
    stats = None  # colour statistics: image folders' (the normalisation is STATS')
    resident = True
    uniform_batches = True
    features: torch.Tensor | None = None  # the frozen layers' outputs, once precompute has run

    def __init__(self, cfg: Config, device, batch: int, eval_batch: int, rank: int = 0, world: int = 1):
        ds = load_dataset(cfg.data.dataset, cfg.data.data_dir, device=device)
        if cfg.data.holdout:  # the last N training images become the evaluation split; the test set is unused
            keep = len(ds.train) - cfg.data.holdout
            if keep < 1:
                raise DataError(f"--holdout {cfg.data.holdout} leaves no training image of {len(ds.train)}")
            ds.test = Split(ds.train.images[keep:], ds.train.labels[keep:])
            ds.train = ds.train.subset(keep)
        if cfg.data.limit_train:
            ds.train = ds.train.subset(cfg.data.limit_train)
        if cfg.data.limit_test:
            ds.test = ds.test.subset(cfg.data.limit_test)
        if cfg.data.crop_padding >= ds.size:
            raise DataError(f"--crop-padding {cfg.data.crop_padding} must be smaller than the {ds.size}-pixel images")
        self.ds, self.name, self.classes, self.channels = ds, ds.name, ds.classes, ds.channels
        self.transform = make_transform(cfg, ds.name, device)
        self.resolution = self.transform.resolution
        self.normalization = (self.transform.mean, self.transform.std)
        self.test = Split(ds.test.images[rank::world], ds.test.labels[rank::world])
        self.seed = Seeds(cfg.train.seed, cfg.train.seed_streams)
        self.batch, self.eval_batch, self.rank, self.world = batch, eval_batch, rank, world

    def __len__(self) -> int:
        return len(self.ds.train)

    def sample(self, n: int) -> torch.Tensor:
        """The first ``n`` training images as the network sees them, unaugmented: the same on every rank."""
        return self.transform(self.ds.train.images[:n], train=False)

    def precompute(self, frozen: torch.nn.Module, amp: bool, batch: int = 256, free: int | None = None) -> None:
        """Run every training image, and its mirror image when training flips, through ``frozen``
        once; ``train`` then yields those outputs, with the same images and flips it would have drawn.
        In batches of 256: the stem's 28×28 maps stay in cache on their way to the pool.

        Where ``free`` bytes are known and the cache would take more than half of them, nothing is
        kept and ``CacheTooLarge`` says why: the caller then runs ``frozen`` in every step instead
        (slower, the same result)."""
        if not self.precomputable:
            raise ValueError("a random crop changes the image every epoch: nothing to compute once")
        images = self.ds.train.images
        views = (False, True) if self.transform.flip else (False,)
        self.features = None
        with torch.no_grad(), torch.autocast(images.device.type, torch.bfloat16, enabled=amp):
            for v, mirror in enumerate(views):
                for i in range(0, len(images), batch):
                    x = self.transform(images[i : i + batch], train=False)  # unaugmented: the mirror is the second view
                    out = frozen(x.flip(-1) if mirror else x)
                    if self.features is None:
                        need = len(views) * len(images) * out[0].numel() * out.element_size()
                        if free is not None and need > free // 2:  # half: the step and the OS need the rest
                            raise CacheTooLarge(need, free)
                        memory = torch.channels_last if self.transform.channels_last else torch.contiguous_format
                        self.features = torch.empty(
                            (len(views) * len(images), *out.shape[1:]), dtype=out.dtype, device=out.device
                        ).contiguous(memory_format=memory)
                    start = v * len(images) + i
                    self.features[start : start + len(out)] = out

    def train(self, epoch: int, skip: int = 0):
        if self.features is not None:
            return self._train_features(epoch, skip)
        return loader(
            self.ds.train, self.transform, self.batch, True, epoch, self.seed, self.rank, self.world, skip=skip
        )

    def _train_features(self, epoch: int, skip: int):
        """``loader``'s batches, as gathers from the precomputed features: the flip that random_flip
        would draw for an image picks its mirror's row (N rows further on)."""
        n = len(self.ds.train)
        idx = epoch_indices(n, epoch, self.seed, shuffle=True, rank=self.rank, world_size=self.world)
        idx = idx.to(self.features.device)
        for i, b in enumerate(batches(idx, self.batch, drop_last=True)):
            if i < skip:
                continue
            rows = b
            if self.transform.flip:
                g = batch_generator(self.seed, epoch, i * self.world + self.rank)
                rows = b + n * flip_draws(len(b), b.device, g).long()
            yield self.features[rows], self.ds.train.labels[b]

    @property
    def precomputable(self) -> bool:
        return not self.transform.crop_padding  # a random crop changes the image every epoch

    def val(self, limit: int | None = None):
        return itertools.islice(loader(self.test, self.transform, self.eval_batch, False), limit)

    @property
    def val_steps(self) -> int:
        return steps_per_epoch(len(self.test), self.eval_batch, train=False)

    def epoch_metrics(self, ev: dict) -> dict:
        return {}  # loss and top-1 accuracy, as the chapter reports

    def record(self, run_path: Path) -> None:
        pass  # the checkpoint holds all a resume needs
