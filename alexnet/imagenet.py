"""ImageNet-style data: image folders and list files, decoded in worker processes, with the
paper's augmentation (Krizhevsky et al. 2012, §4.1) and evaluation (§4.1, the 10-crop test).

Unlike the in-memory datasets in data.py, ImageNet (1.28 M JPEGs, ~140 GB) cannot sit on the
device, so decoding is the one per-image step: Pillow in DataLoader workers decodes, resizes the
shorter side, crops and flips, and ships uint8 (4x smaller than float32) through pinned memory.
Everything per-pixel after that (scaling, lighting, normalisation) runs batched on the device.

Every random choice for an image is drawn from a generator seeded by (seed, epoch, index) (seeds.py): the
augmentation does not depend on the number of workers or of data-parallel ranks, and a resumed
run sees the same crops as an uninterrupted one.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .config import MAX_CLASSES
from .data import DataError, Transform, epoch_indices
from .runs import atomic_write, not_regular
from .seeds import Seeds, as_seeds

IMAGE_DATASETS = ("imagefolder", "imagelist")
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
# What a broken file raises inside Pillow: truncated data (OSError), not an image at all
# (UnidentifiedImageError), bad headers (ValueError, SyntaxError), absurd sizes (the bomb check).
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
# Bounds on a list file, so a wrong file (a tar, an image) is one line, not all of memory.
MAX_LIST_BYTES = 2**30  # ImageNet-21k's 14 M images take ~0.6 GB as 'path label' lines
MAX_LINE_BYTES = 8192  # twice Linux's PATH_MAX


@dataclass
class ImageList:
    """The files of one split, their integer labels and the class names."""

    paths: list[str]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def scan_folder(root: Path, classes: list[str] | None = None) -> ImageList:
    """``root/<class>/<image>``; classes are the sorted folder names (the training split's for val)."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected {root.parent}/train/<class>/*.jpg and val/<class>/*.jpg)")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    training = classes is None
    if training:
        classes = folders
    unknown = sorted(set(folders) - set(classes))
    if unknown:
        raise DataError(f"{root}: class folder {unknown[0]!r} is not among the training classes")
    paths, labels = [], []
    for label, name in enumerate(classes):
        if not (root / name).is_dir():
            continue
        found = [p for p in sorted((root / name).iterdir()) if p.suffix.lower() in EXTENSIONS and p.is_file()]
        # An empty training class folder is refused rather than skipped: it would still take a label
        # id (the classes are the sorted folder names) that no image teaches, and skipping it would
        # silently shift the ids of every later class against a checkpoint or a list file.
        if not found and training:
            raise DataError(f"{root / name}: empty class folder (no image files); add images or remove it")
        paths += map(str, found)
        labels += [label] * len(found)
    if not paths:
        raise DataError(f"{root}: no images found (expected {root}/<class>/*.jpg)")
    return ImageList(paths, labels, classes)


def _lines(path: Path):
    """(number, text) for each line of a UTF-8 file, never holding more than one bounded line."""
    size = path.stat().st_size
    if size > MAX_LIST_BYTES:
        raise DataError(
            f"{path}: {size / 1e9:.2f} GB, more than the {MAX_LIST_BYTES / 1e9:.2f} GB an image list "
            f"needs; is this the right file?"
        )
    with open(path, "rb") as f:
        for n, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            raw = raw.rstrip(b"\n")
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a byte-order mark (Windows editors write one) is not part of the first path
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(
                    f"{path}:{n}: line longer than {MAX_LINE_BYTES} bytes; not a list of 'path label' lines"
                )
            try:
                yield n, raw.decode()
            except UnicodeDecodeError:
                raise DataError(f"{path}:{n}: not UTF-8 text; expected lines 'relative/path label'") from None


def read_list(path: Path, classes: list[str] | None = None) -> ImageList:
    """A list file: one ``path label`` per line, integer labels from 0, blank lines and ``#``
    comments passed over; class names from ``classes.txt`` beside it when there is one.

    An absolute path is taken as written: lists generated over a shared store often are. A relative
    path is relative to the list's folder and must stay inside it (``a/../b.jpg`` is fine,
    ``../b.jpg`` is refused with its line number): one that climbs out reads files the --data-dir
    the user named does not hold, and breaks when the folder is moved; write it absolute instead.
    The check reads the text, not the disk, so a symlinked folder inside the list's folder counts
    as inside. A file, a line or a label beyond the MAX_* bounds above is refused in one line.
    """
    if not path.is_file():
        raise DataError(f"{path}: no such list file (expected lines 'relative/path label')")
    paths, labels = [], []
    for n, line in _lines(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        # isascii: str.isdigit accepts '²', which int() then refuses.
        if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()):
            shown = repr(line) if len(line) <= 100 else repr(line[:100]) + "..."
            raise DataError(f"{path}:{n}: expected 'relative/path label' with an integer label >= 0, got {shown}")
        entry, label = parts[0], int(parts[1])
        if label >= MAX_CLASSES:
            raise DataError(f"{path}:{n}: label {label} is not below {MAX_CLASSES}; is it a typo?")
        if ".." in entry and not os.path.isabs(entry) and os.path.normpath(entry).split(os.sep)[0] == "..":
            raise DataError(
                f"{path}:{n}: {entry!r} climbs out of {path.parent}; write it relative to that folder "
                f"or as an absolute path"
            )
        paths.append(str(path.parent / entry))
        labels.append(label)
    if not paths:
        raise DataError(f"{path}: the list holds no images")
    if classes is None:
        names = path.parent / "classes.txt"
        classes = [c for _, c in _lines(names)] if names.is_file() else [str(i) for i in range(max(labels) + 1)]
        classes = [c for c in classes if c.strip()]
    if max(labels) >= len(classes):
        raise DataError(f"{path}: label {max(labels)} but only {len(classes)} classes")
    return ImageList(paths, labels, classes)


def find_images(dataset: str, data_dir: str | None) -> tuple[ImageList, ImageList]:
    if not data_dir:
        raise DataError(f"--dataset {dataset} needs --data-dir DIR (holding train/ and val/, or train.txt and val.txt)")
    root = Path(data_dir)
    if dataset == "imagefolder":
        train = scan_folder(root / "train")
        return train, scan_folder(root / "val", train.classes)
    train = read_list(root / "train.txt")
    return train, read_list(root / "val.txt", train.classes)


# ---------------------------------------------------------------------------------------------
# Decoding: any file Pillow reads, any mode, to 8-bit RGB


WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_TILE_BYTES = 2**22  # the wide pixels converted at once: 4 MiB, whatever the image's size


def to_rgb(im: Image.Image, shorter: int | None = None) -> Image.Image:
    """8-bit RGB. 16-bit and 32-bit greyscale are rescaled (Pillow's convert would clip at 255), in
    tiles of rows, each first averaged over k x k blocks when ``shorter`` leaves room: a 9400² 16-bit
    PNG then never exists as float64 (707 MB and its copies), only as its 8-bit, k-times smaller self."""
    if im.mode not in WIDE_MODES:
        return im if im.mode == "RGB" else im.convert("RGB")  # P, L, LA, RGBA, CMYK, YCbCr, 1, ...
    w, h = im.size
    # Keep twice the side asked for, so the bilinear resize after this still antialiases.
    k = max(1, min(w, h) // (2 * shorter)) if shorter else 1
    out_w, out_h = w // k, h // k
    out = np.empty((out_h, out_w), dtype=np.uint8)
    rows = max(1, _TILE_BYTES // (4 * w * k))  # output rows per tile
    top = 65535 if im.mode != "F" else 255
    scale = 257 if im.mode != "F" else 1
    for r0 in range(0, out_h, rows):
        r1 = min(out_h, r0 + rows)
        tile = np.asarray(im.crop((0, r0 * k, out_w * k, r1 * k)))
        tile = tile.reshape(r1 - r0, k, out_w, k).mean(axis=(1, 3)) if k > 1 else tile.astype(np.float64)
        out[r0:r1] = (tile.clip(0, top) / scale).round() if scale != 1 else tile.clip(0, top)
    return Image.fromarray(out).convert("RGB")


def open_rgb(path: str, shorter: int | None = None) -> Image.Image:
    """Decode ``path`` to RGB. With ``shorter``, a JPEG is decoded at the smallest 1/2, 1/4 or 1/8
    scale whose shorter side is still >= ``shorter``: libjpeg then skips most of the IDCT work.

    An image of more than Image.MAX_IMAGE_PIXELS is refused (DecompressionBombError, one of
    UNREADABLE), like one past twice that. Pillow itself refuses only the latter; between, it
    decodes hundreds of MB per worker after a warning, a stray stderr line beside ours.
    Anything but a regular file (a FIFO would block forever) is refused before it is opened."""
    # A path (not a file object, as serve passes) that exists but is no regular file: a missing one
    # is left to Image.open's FileNotFoundError.
    if isinstance(path, (str, os.PathLike)) and os.path.exists(path) and (why := not_regular(path)):
        raise OSError(f"{path}: {why}")
    with warnings.catch_warnings():  # workers are processes: no other thread shares these filters
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                if shorter is not None:
                    w, h = im.size
                    s = shorter / min(w, h)
                    im.draft(None, (math.ceil(w * s), math.ceil(h * s)))
                im.load()  # GIF frames and icons are checked here, not in open
                return to_rgb(im, shorter)
        except Image.DecompressionBombWarning as e:
            raise Image.DecompressionBombError(str(e)) from None


# The chapter's datasets are stored at this side; an image given to a trained network (predict,
# activations, serve) is first shrunk to it, as the training images were, then resized as they are.
NATIVE_SIDE = {"fashion-mnist": 28, "mnist": 28, "cifar10": 32}


def checkpoint_input(source, ckpt: dict, invert: bool = False) -> torch.Tensor:
    """An image file (a path or a binary file object) of any size and mode as uint8 (1, C, side, side)
    for a checkpoint's network: 8-bit RGB as image folders do (16-bit rescaled, not clipped), grey for a
    1-channel network, at its dataset's native side; ``invert`` flips the grey levels (Fashion-MNIST
    items are light on black, photos usually dark on light). Raises one of UNREADABLE."""
    channels = int(ckpt["in_channels"])
    side = NATIVE_SIDE.get(ckpt["dataset"], int(ckpt["resolution"]))
    img = open_rgb(source, side).convert("L" if channels == 1 else "RGB").resize((side, side), Image.BILINEAR)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(side, side, -1).permute(2, 0, 1)[None]
    return 255 - x if invert else x


def checkpoint_transform(ckpt: dict):
    """The evaluation transform a checkpoint's run used: its resolution and input normalisation."""
    from .data import STATS

    mean = std = None
    if not ckpt["cfg"].data.normalize:
        pass  # the chapter's plain [0, 1] pixels
    elif ckpt.get("normalization"):
        mean, std = tuple(ckpt["normalization"][0]), tuple(ckpt["normalization"][1])
    elif ckpt.get("stats"):  # image folders: the run's own colour statistics
        mean, std = tuple(ckpt["stats"]["mean"]), tuple(ckpt["stats"]["std"])
    else:
        mean, std = STATS.get(ckpt["dataset"], (None, None))
    return Transform(int(ckpt["resolution"]), mean, std, channels_last=False)


def resize_shorter(im: Image.Image, side: int) -> Image.Image:
    w, h = im.size
    if min(w, h) == side:
        return im
    s = side / min(w, h)
    # Pillow's bilinear filter widens its support when shrinking, so it antialiases.
    return im.resize((max(side, round(w * s)), max(side, round(h * s))), Image.BILINEAR)


def ten_crops(im: Image.Image, size: int) -> list[Image.Image]:
    """§4.1's test-time crops: the four corners and the centre, and their mirror images."""
    w, h = im.size
    boxes = [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size), ((w - size) // 2, (h - size) // 2)]
    crops = [im.crop((x, y, x + size, y + size)) for x, y in boxes]
    return crops + [c.transpose(Image.FLIP_LEFT_RIGHT) for c in crops]


def _tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W) uint8


class ImageDataset(torch.utils.data.Dataset):
    """One split; ``dataset[(index, epoch)]`` -> (uint8 image(s), label, lighting alphas, error).

    ``mode``: 'train' (random crop + flip), 'center' or 'ten' (the 10 crops, stacked).
    A file that cannot be decoded comes back as error text instead of a crash mid-epoch.
    """

    def __init__(
        self,
        images: ImageList,
        resize: int,
        crop: int,
        mode: str,
        flip: bool = True,
        lighting: float = 0.0,
        seed: int | Seeds = 0,
    ):
        self.images, self.resize, self.crop, self.mode = images, resize, crop, mode
        self.flip, self.lighting, self.seed = flip, lighting, as_seeds(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        index, epoch = key
        path, label = self.images.paths[index], self.images.labels[index]
        try:
            im = resize_shorter(open_rgb(path, self.resize), self.resize)
        except UNREADABLE as e:
            return None, label, None, f"{path} ({e.__class__.__name__}: {e})"
        if min(im.size) < self.crop:
            return None, label, None, f"{path} (shorter side {min(im.size)} < crop {self.crop}: raise --resize)"
        rng = np.random.default_rng(self.seed.image(epoch, index))
        w, h = im.size
        alpha = torch.zeros(3)
        if self.mode == "train":
            x, y = int(rng.integers(0, w - self.crop + 1)), int(rng.integers(0, h - self.crop + 1))
            im = im.crop((x, y, x + self.crop, y + self.crop))
            if self.flip and rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            if self.lighting:
                alpha = torch.from_numpy(rng.normal(0.0, self.lighting, 3)).float()
            return _tensor(im), label, alpha, None
        if self.mode == "ten":
            return torch.stack([_tensor(c) for c in ten_crops(im, self.crop)]), label, alpha, None
        x, y = (w - self.crop) // 2, (h - self.crop) // 2
        return _tensor(im.crop((x, y, x + self.crop, y + self.crop))), label, alpha, None


def collate(samples):
    """Stack the decodable images; the others travel as error text so the main process can log them."""
    good = [s for s in samples if s[0] is not None]
    errors = [s[3] for s in samples if s[0] is None]
    if not good:
        return None, None, None, errors
    return (
        torch.stack([s[0] for s in good]),
        torch.tensor([s[1] for s in good]),
        torch.stack([s[2] for s in good]),
        errors,
    )


class EpochBatches(torch.utils.data.Sampler):
    """This rank's batches of (index, epoch) keys: the shard of data.epoch_indices, from ``skip`` on."""

    def __init__(self, n: int, batch_size: int, train: bool, seed: int | Seeds, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.train, self.seed = n, batch_size, train, seed
        self.rank, self.world_size, self.epoch, self.skip = rank, world_size, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> torch.Tensor:
        if self.train:
            return epoch_indices(self.n, self.epoch, self.seed, True, self.rank, self.world_size)
        return torch.arange(self.n)[self.rank :: self.world_size]  # evaluation: every image, uneven shards

    def __iter__(self):
        idx = self._indices().tolist()
        stop = len(idx) - len(idx) % self.batch_size if self.train else len(idx)
        for start in range(self.skip * self.batch_size, stop, self.batch_size):
            yield [(i, self.epoch) for i in idx[start : start + self.batch_size]]

    def __len__(self) -> int:
        m = len(self._indices())
        return m // self.batch_size - self.skip if self.train else -(-m // self.batch_size)


# ---------------------------------------------------------------------------------------------
# Channel statistics and the lighting eigenvectors (§4.1)


def channel_stats(images: ImageList, sample: int = 1000, side: int = 64, seed: int | Seeds = 0) -> dict:
    """Mean, std and the eigen-decomposition of the RGB covariance over a sample of training images,
    on the [0, 1] scale. Colour statistics do not need resolution: the images are decoded at a
    shorter side of ``side`` pixels, which JPEG draft mode makes ~30x cheaper than full size."""
    g = torch.Generator().manual_seed(as_seeds(seed).stats())
    chosen = torch.randperm(len(images), generator=g)[: min(sample, len(images))].tolist()
    pixels, used, first_error = [], 0, None
    for i in chosen:
        try:
            im = resize_shorter(open_rgb(images.paths[i], side), side)
        except UNREADABLE as e:
            first_error = first_error or f"{images.paths[i]} ({e.__class__.__name__}: {e})"
            continue
        pixels.append(np.asarray(im, dtype=np.float64).reshape(-1, 3) / 255)
        used += 1
    if not pixels:
        raise DataError(
            f"none of the {len(chosen)} training images sampled for the colour statistics could be "
            f"read; the first: {first_error}"
        )
    p = np.concatenate(pixels)
    eigval, eigvec = np.linalg.eigh(np.cov(p, rowvar=False))
    # A channel constant over the sample (a greyscale-only or a pure-colour dataset) would be divided
    # by a std of 0 under --normalize and turn the first batch into NaN: floor it at one grey level.
    std = np.maximum(p.std(0), 1 / 255)
    return {
        "mean": p.mean(0).tolist(),
        "std": std.tolist(),
        "eigval": eigval.clip(min=0).tolist(),
        "eigvec": eigvec.tolist(),
        "images": used,
        "pixels": len(p),
    }


# ---------------------------------------------------------------------------------------------
# The pipeline a run uses


class ImagePipeline:
    """Both splits of an image dataset as loaders that yield device batches, and the skip count:
    a run's data source (data.Source), as data.InMemory is for the chapter's datasets.

    Unreadable files are reported once each (with the path) and skipped; ``skipped`` counts them
    per epoch for the run's metrics.
    """

    normalization = None  # a checkpoint holds image folders' mean and std in ``stats``
    resident = False  # decoded batch by batch in workers: no sample to fit to, nothing computed once
    precomputable = False
    uniform_batches = False  # the workers start and prefetch: only a whole evaluation says how long one takes

    def __init__(
        self,
        cfg,
        device: torch.device,
        resolution: int,
        train_batch: int,
        eval_batch: int,
        rank: int = 0,
        world_size: int = 1,
        stats: dict | None = None,
        channels_last: bool = True,
    ):
        d = cfg.data
        self.train_images, self.val_images = find_images(d.dataset, d.data_dir)
        self.name, self.classes, self.channels, self.resolution = d.dataset, self.train_images.classes, 3, resolution
        if d.resize < resolution:
            raise DataError(f"--resize {d.resize} is smaller than the crop {resolution}; use --resize >= {resolution}")
        seed = Seeds(cfg.train.seed, cfg.train.seed_streams)
        self.stats = stats or channel_stats(self.train_images, d.stats_images, seed=seed)
        s = self.stats
        # The workers crop at the resolution: nothing to resize on the device.
        self.transform = Transform(
            None,
            tuple(s["mean"]) if d.normalize else None,
            tuple(s["std"]) if d.normalize else None,
            channels_last=channels_last,
            lighting=(tuple(s["eigval"]), tuple(map(tuple, s["eigvec"]))),
        )
        self.device, self.seen_bad, self.skipped = device, set(), 0
        train_ds = ImageDataset(self.train_images, d.resize, resolution, "train", d.flip, d.lighting, seed)
        val_ds = ImageDataset(self.val_images, d.resize, resolution, "ten" if d.ten_crop else "center", seed=seed)
        self.train_sampler = EpochBatches(len(train_ds), train_batch, True, seed, rank, world_size)
        self.val_sampler = EpochBatches(len(val_ds), eval_batch, False, seed, rank, world_size)
        self._train = self._loader(train_ds, self.train_sampler, d.workers, device)
        self._val = self._loader(val_ds, self.val_sampler, d.workers, device)

    @staticmethod
    def _loader(ds, sampler, workers: int, device: torch.device):
        # Persistent workers are forked once per run, not once per epoch; pinned pages let the
        # host-to-GPU copy run asynchronously (non_blocking) while the previous step computes.
        extra = {"persistent_workers": True, "prefetch_factor": 4} if workers > 0 else {}
        return torch.utils.data.DataLoader(
            ds,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            **extra,
        )

    def __len__(self) -> int:
        return len(self.train_images)

    def _batches(self, loader, train: bool):
        for x, y, alpha, errors in loader:
            for e in errors:
                self.skipped += 1
                if e not in self.seen_bad:
                    self.seen_bad.add(e)
                    print(f"skipping unreadable image {e}", file=sys.stderr, flush=True)
            if x is None:
                continue
            x = x.to(self.device, non_blocking=True)
            yield self.transform(x, train, alpha=alpha), y.to(self.device, non_blocking=True)

    def train(self, epoch: int, skip: int = 0):
        self.skipped = 0
        self.train_sampler.set_epoch(epoch, skip)
        return self._batches(self._train, True)

    def val(self, limit: int | None = None):
        return itertools.islice(self._batches(self._val, False), limit)

    @property
    def val_steps(self) -> int:
        return len(self.val_sampler)

    def epoch_metrics(self, ev: dict) -> dict:
        """The paper's figures, top-1 and top-5 error, and the files that could not be read."""
        return {"val_top1_err": 1 - ev["acc"], "val_top5_err": 1 - ev["top5"], "skipped_images": ev["skipped"]}

    def record(self, run_path: Path) -> None:
        """The colour statistics, which a resumed run reuses rather than resampling (train.load_data)."""
        save_stats(self.stats, run_path / STATS_FILE)


STATS_FILE = "lighting.json"  # in the run directory


def save_stats(stats: dict, path: Path) -> None:
    atomic_write(path, json.dumps(stats, indent=2) + "\n")


def load_stats(path: Path) -> dict | None:
    if not path.exists():
        return None
    if why := not_regular(path):
        raise DataError(f"{path}: {why}")
    return json.loads(path.read_text())
