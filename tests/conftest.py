import contextlib
import gzip
import os
import signal
import struct
from pathlib import Path

import numpy as np
import pytest

from alexnet import data as D

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
    from test_cli import alexnet

    r = alexnet("train", "--preset", "cpu", "--model", "lenet-relu", "--dataset", "mnist", "--data-dir", idx_dir,
                "--epochs", 2, "--batch-size", 16, "--run-dir", "run", "--no-progress", cwd=tmp_path)  # fmt: skip
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
