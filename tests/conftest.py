"""Fixtures and the helpers that several test files share (imported as ``from conftest import ...``)."""

import contextlib
import gzip
import os
import pickle
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet import data as D

ROOT = Path(__file__).resolve().parent.parent

REAL_FASHION = D.DEBIAN_FASHION_DIR


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def make_idx_dataset(directory: Path, n_train=64, n_test=32, seed=0) -> Path:
    """A small MNIST-format dataset: class k is a bright square at a position that depends on k."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        for i, k in enumerate(labels):
            r, c = 2 + (k // 5) * 12, 2 + (k % 5) * 5
            images[i, r : r + 10, c : c + 5] = 250
        img_name, lbl_name = D.IDX_FILES[split]
        write_idx(directory / f"{img_name}.gz", images)
        write_idx(directory / f"{lbl_name}.gz", labels)
    return directory


def write_cifar(root, n=20, corrupt=None, replace=None):
    """Six python batches of ``n`` random images; ``replace`` maps a batch name to fields that
    overwrite its generated ones (as the pickle would hold them)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"batch_label": name.encode(),
        }
        batch.update((replace or {}).get(name, {}))
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    if corrupt:
        (d / corrupt).write_bytes(b"not a pickle")
    return d


FORMATS = [
    ("RGB", "jpg"),
    ("RGBA", "png"),
    ("L", "png"),
    ("CMYK", "jpg"),
    ("I;16", "png"),
    ("P", "gif"),
    ("RGB", "png"),
]


def picture(k: int, rng, w: int, h: int) -> np.ndarray:
    """Class k: a bright band across the k-th third of the picture, tinted with the k-th primary."""
    a = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    a[:, :, k] += 60
    a[k * h // 3 : (k + 1) * h // 3] = np.minimum(255, a[k * h // 3 : (k + 1) * h // 3].astype(int) + 150)
    return a


def save_image(a: np.ndarray, mode: str, path):
    if mode == "I;16":  # genuine 16-bit data, not 8-bit values in a 16-bit container
        grey = np.asarray(Image.fromarray(a).convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(path)
    else:
        Image.fromarray(a).convert(mode).save(path)


def make_image_folder(root, per_class=(14, 5), seed=0, corrupt=True):
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for k, name in enumerate(("red", "green", "blue")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                mode, ext = FORMATS[(i + k) % len(FORMATS)]
                w, h = int(rng.integers(36, 65)), int(rng.integers(36, 65))
                save_image(picture(k, rng, w, h), mode, root / split / name / f"{i:03d}.{ext}")
    if corrupt:
        good = (root / "train" / "red" / "000.jpg").read_bytes()
        (root / "train" / "red" / "999-truncated.jpg").write_bytes(good[: len(good) // 2])
    return root


# ---------------------------------------------------------------------------------------------
# Running the command line, and interrupting a run


def alexnet(*args, cwd, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "alexnet", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_error_line(result):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def interrupt_at_batch(monkeypatch, n):
    """Make the n-th batch drawn (training and evaluation alike) raise KeyboardInterrupt."""
    real, calls = D.loader, {"n": 0}

    def interrupting(*a, **k):
        for batch in real(*a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(D, "loader", interrupting)
    return lambda: monkeypatch.setattr(D, "loader", real)


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def idx_dir(tmp_path):
    return make_idx_dataset(tmp_path / "mnist-like")


@pytest.fixture
def fashion_dir():
    """The real Fashion-MNIST. CI installs it (ALEXNET_REQUIRE_DATA=1 makes its absence a failure)."""
    if not D.has_idx(REAL_FASHION):
        if os.environ.get("ALEXNET_REQUIRE_DATA"):
            pytest.fail(f"Fashion-MNIST missing at {REAL_FASHION}: apt-get install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST not installed")
    return REAL_FASHION


@pytest.fixture(scope="session")
def fashion():
    if not D.has_idx(REAL_FASHION):
        if os.environ.get("ALEXNET_REQUIRE_DATA"):
            pytest.fail(f"Fashion-MNIST missing at {REAL_FASHION}")
        pytest.skip("Fashion-MNIST not installed")
    return D.load_dataset("fashion-mnist", REAL_FASHION)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    # No test reads the developer's cache or $ALEXNET_DATA by accident.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ALEXNET_DATA", raising=False)


@pytest.fixture
def trained_run(idx_dir, tmp_path):
    """A LeNet-ReLU run of 2 epochs on the tiny MNIST files, made by the command line: (run dir, result)."""
    r = alexnet(
        "train",
        "--preset",
        "cpu",
        "--model",
        "lenet-relu",
        "--dataset",
        "mnist",
        "--data-dir",
        idx_dir,
        "--epochs",
        2,
        "--batch-size",
        16,
        "--run-dir",
        "run",
        "--no-progress",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    return tmp_path / "run", r


class Hung(BaseException):
    """Raised by ``no_hang``: a BaseException, so no ``except OSError`` in the code under test eats it."""


@contextlib.contextmanager
def no_hang(seconds: float = 30):
    """Fail instead of hanging: SIGALRM interrupts a blocking open() (of a FIFO, say) after ``seconds``."""

    def fail(*_):
        raise Hung(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def memory_cap(extra_bytes: int):
    """Let this process map at most ``extra_bytes`` more than it has now (RLIMIT_AS, soft, raised back
    after): torch's CPU buffers are invisible to tracemalloc, but not to the kernel."""
    import resource

    with open("/proc/self/status") as f:
        size = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + extra_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def resize_reference(images, size: tuple[int, int], antialias: bool):
    """Float images (B, C, h, w) bilinearly resized one plane at a time, outside torch: by Pillow's
    float-mode resize (half-pixel centres; antialiased when shrinking, as Pillow always is), or, for a
    shrink without antialiasing, by the two interpolation matrices of half-pixel bilinear, edges clamped."""
    import torch

    b, c, h, w = images.shape
    if (size[0] < h or size[1] < w) and not antialias:

        def taps(n_in: int, n_out: int) -> np.ndarray:  # (n_out, n_in): each output row's two weights
            src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
            lo = np.floor(src).astype(int)
            m = np.zeros((n_out, n_in))
            np.add.at(m, (np.arange(n_out), lo), 1 - (src - lo))
            np.add.at(m, (np.arange(n_out), np.minimum(lo + 1, n_in - 1)), src - lo)
            return m

        return torch.from_numpy(taps(h, size[0]) @ images.double().numpy() @ taps(w, size[1]).T).float()
    planes = [
        np.asarray(Image.fromarray(p.numpy()).resize(size[::-1], Image.BILINEAR))
        for p in images.float().reshape(-1, h, w)
    ]
    return torch.from_numpy(np.stack(planes)).view(b, c, *size)


def tiny_cfg(data_dir, **kw):
    """A 2-epoch alexnet28 recipe on the tiny MNIST-like files (make_idx_dataset)."""
    from alexnet.config import Config

    base = dict(
        model="alexnet28",
        dataset="mnist",
        data_dir=str(data_dir),
        epochs=2,
        batch_size=16,
        lr=0.05,
        momentum=0.9,
        log_every=2,
    )
    return Config(preset="test").replace(**{**base, **kw})


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory):
    """Two finished alexnet28 runs of 2 epochs on the tiny MNIST-like files (seeds 0 and 1)."""
    from alexnet import train as T

    root = tmp_path_factory.mktemp("report")
    data = make_idx_dataset(root / "data")
    for seed in (0, 1):
        T.fit(tiny_cfg(data, seed=seed), root / f"s{seed}", progress=False, quiet=True)
    return root
