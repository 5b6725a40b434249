"""The dataset files read and verified: IDX (MNIST, Fashion-MNIST) and CIFAR-10's python batches.

Each reader streams a file into uint8 arrays, refusing what is not the format before anything is
allocated for it: a header that declares more than the file can hold, a gzip bomb, a pickle that
names anything but numpy's pieces, a label out of range. Every refusal is a ``DataError`` of one
line. Where a dataset lives (--data-dir, $ALEXNET_DATA, the cache, the download) and how it reaches
the device is data.py's.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .runs import not_regular


class DataError(RuntimeError):
    """A dataset that is missing, truncated, corrupt or of the wrong kind; the message is one line."""


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class Split:
    """One split of a dataset: uint8 images (N, C, H, W) and int64 labels (N,), on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, n: int) -> Split:
        return Split(self.images[:n], self.labels[:n])


# ---------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)

# The largest IDX payload we agree to read. MNIST's training images are 47 MB and EMNIST's largest
# split 0.7 GB; a header declaring more is damaged or hostile, and is refused before any allocation.
MAX_IDX_BYTES = 4 * 2**30
_CHUNK = 2**22  # read in 4 MiB pieces, so memory follows the bytes that exist, not the bytes declared


class _Hashing:
    """A read-only stream that hashes what is read from it (the sha256 check of Fashion-MNIST)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def read(self, n: int) -> bytes:
        b = self.f.read(n)
        self.sha.update(b)
        return b


# The IDX datasets known here: images of 28x28, at most this many per split (MNIST's and
# Fashion-MNIST's own counts; Fashion-MNIST's files are checksummed, so its counts are exact).
IDX_IMAGES = {"train": 60000, "test": 10000}
IDX_SIDE = 28
# Deflate never expands more than 1032:1, so a gzip of N bytes holds at most 1032 N.
GZIP_RATIO = 1032


def _read_idx_stream(
    f,
    name: str,
    expect_dims: int,
    known: tuple[int, ...] | None = None,
    exact: bool = False,
    max_bytes: int = MAX_IDX_BYTES,
) -> np.ndarray:
    """Read one IDX array of unsigned bytes from a stream: the header first, then exactly the bytes
    it declares, then one more to detect excess. A gzip bomb is therefore never inflated beyond
    the declared size (which is itself bounded), and a forged size never reaches numpy.

    ``known``: the most each dimension may declare (all of them with ``exact``), checked before a
    byte of the payload is read; ``max_bytes``: what the file can honestly hold."""
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(head)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", head)
    if zero != 0 or dtype != 0x08 or ndim != expect_dims:
        magic = int.from_bytes(head, "big")
        raise DataError(f"{name}: wrong magic number 0x{magic:08x}, expected 0x{0x0800 + expect_dims:08x}")
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{name}: truncated header")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    shape = "x".join(map(str, dims))
    size = math.prod(dims)  # Python ints: 2^32 x 2^32 x 2^32 does not wrap around as numpy int64 would
    if size > MAX_IDX_BYTES:
        raise DataError(
            f"{name}: header declares {shape} ({size} bytes), more than the {MAX_IDX_BYTES} "
            f"an IDX dataset may hold: the header is damaged"
        )
    if size == 0:
        raise DataError(f"{name}: header declares an empty array ({shape})")
    if expected := _unexpected(dims, known, exact):
        raise DataError(f"{name}: header declares {shape}, but this dataset's file holds {expected}")
    if size > max_bytes:
        raise DataError(
            f"{name}: header declares {shape} ({size} bytes), more than the file can hold "
            f"({max_bytes} bytes at most): the header is damaged"
        )
    buf = bytearray()
    while len(buf) < size:
        chunk = f.read(min(_CHUNK, size - len(buf)))
        if not chunk:
            break
        buf += chunk
    header = 4 + 4 * ndim
    if len(buf) < size:
        raise DataError(
            f"{name}: truncated: header declares {shape} ({header + size} bytes) but the file holds {header + len(buf)}"
        )
    if f.read(1):
        raise DataError(
            f"{name}: has trailing bytes: header declares {shape} ({header + size} bytes) but the file holds more"
        )
    return np.frombuffer(buf, dtype=np.uint8).reshape(dims)


def _unexpected(dims: tuple[int, ...], shape: tuple[int, ...] | None, exact: bool) -> str | None:
    """What a known dataset's file holds, when ``dims`` is not that; else None."""
    if shape is None:
        return None
    if exact and tuple(dims) != shape:
        return "x".join(map(str, shape))
    if len(dims) != len(shape) or dims[0] > shape[0] or tuple(dims[1:]) != shape[1:]:
        return "at most " + "x".join(map(str, shape))
    return None


def parse_idx(data: bytes, name: str, expect_dims: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes held in memory, checking magic number and declared sizes."""
    return _read_idx_stream(io.BytesIO(data), name, expect_dims)


def read_idx(
    path: Path, expect_dims: int, sha256: str | None = None, shape: tuple[int, ...] | None = None, exact: bool = False
) -> np.ndarray:
    """Read an IDX file, gzipped or not, streaming; with ``sha256``, check the decompressed content;
    with ``shape``, refuse a header that does not declare it (see _read_idx_stream)."""
    if why := not_regular(path):  # a FIFO would block open() forever
        raise DataError(f"{path}: {why}")
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            size = os.fstat(raw.fileno()).st_size
            f = _Hashing(gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw)
            bound = size * GZIP_RATIO if gzipped else MAX_IDX_BYTES  # an uncompressed read stops at its end
            array = _read_idx_stream(f, str(path), expect_dims, shape, exact, bound)
    except (OSError, EOFError, zlib.error, ValueError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read or decompressed ({e})") from None
    if sha256 is not None and f.sha.hexdigest() != sha256:
        raise DataError(f"{path}: sha256 of the decompressed content does not match {path.name.removesuffix('.gz')}")
    return array


def _idx_path(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    return None


def read_idx_split(directory: Path, split: str, checksums: dict[str, str] | None, num_classes: int = 10) -> Split:
    arrays = []
    n = IDX_IMAGES[split]
    for stem, ndim, shape in zip(IDX_FILES[split], (3, 1), ((n, IDX_SIDE, IDX_SIDE), (n,))):
        path = _idx_path(directory, stem)
        if path is None:
            raise DataError(f"{directory}: missing {stem}.gz")
        digest = checksums[stem] if checksums is not None else None
        arrays.append((path, read_idx(path, ndim, digest, shape, exact=digest is not None)))
    (_, images), (label_path, labels) = arrays
    if len(images) != len(labels):
        raise DataError(f"{directory}: {len(images)} {split} images but {len(labels)} labels")
    # MNIST carries no checksum: a label out of range would otherwise crash the loss mid-epoch.
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise DataError(
            f"{label_path}: label {labels[bad[0]]} at index {bad[0]} is outside 0..{num_classes - 1} "
            f"({bad.size} such labels)"
        )
    # The arrays own writable buffers (bytearrays), so torch shares them without another copy.
    return Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def has_idx(directory: Path) -> bool:
    return all(_idx_path(directory, stem) for pair in IDX_FILES.values() for stem in pair)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (the "python version": pickled dicts of 10000x3072 uint8 rows)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; refuse anything but the numpy pieces they are made of."""

    ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _check_range(values: np.ndarray, path: Path, what: str, top: int) -> None:
    """Integers in 0..top, one row per image, or a DataError naming the first image that is not.
    Casting first would hide it: numpy's cast to uint8 wraps 300 to 44 and truncates 1.7 to 1."""
    if values.dtype == np.uint8 and top >= 255:  # the real batches: nothing to look at
        return
    if not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"{path}: {what}s are {values.dtype}, expected integers 0..{top}")
    bad = ((values < 0) | (values > top)).reshape(len(values), -1)
    if bad.any():
        image = int(bad.any(1).argmax())
        value = values[image][bad[image].argmax()] if values.ndim > 1 else values[image]
        raise DataError(f"{path}: {what} {value} (image {image}) is outside 0..{top}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DataError(f"{path.parent}: missing CIFAR-10 batch {path.name}")
    if why := not_regular(path):
        raise DataError(f"{path}: {why}")
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    except DataError:
        raise
    except Exception as e:  # any structural problem in a batch file is the same user error
        raise DataError(f"{path}: not a CIFAR-10 python batch ({e.__class__.__name__}: {e})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: expected N x 3072 pixel values and N labels, got {data.shape}, {labels.shape}")
    _check_range(data, path, "pixel value", 255)
    _check_range(labels, path, "label", 9)
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels.astype(np.int64)
