"""Data-parallel training with torchrun: 2 Gloo processes on the CPU train what 1 process trains."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import make_idx_dataset, make_image_folder

from alexnet import runs as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# lenet has no dropout, and no augmentation is asked for: with the same global batch, the only
# difference left between 1 and 2 processes is the order of floating-point sums. In fp32: bf16
# autocast (the default on CPUs with bf16 units) rounds each half-batch's products apart, which
# is a difference of 1e-3, not of the algorithm. A constant rate, because a cosine schedule is
# laid over --epochs, which a resumed run extends.
RECIPE = [
    "--preset",
    "cpu",
    "--model",
    "lenet",
    "--dataset",
    "mnist",
    "--batch-size",
    16,
    "--lr",
    0.1,
    "--warmup-epochs",
    0,
    "--schedule",
    "constant",
    "--amp",
    "off",
    "--crop-padding",
    0,
    "--no-flip",
    "--no-progress",
]


def train(nproc: int, cwd, *args):
    # --standalone: a rendezvous on localhost only; one thread per process on this 2-core machine.
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    r = subprocess.run(
        [sys.executable, *launch, "-m", "alexnet", "train", *map(str, RECIPE), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def weights(run):
    return R.load_checkpoint(run / "last.pt")["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    data = make_idx_dataset(d / "mnist-like", n_train=96, n_test=40)
    train(1, d, "--data-dir", data, "--epochs", 2, "--run-dir", "one")
    two = train(2, d, "--data-dir", data, "--epochs", 2, "--run-dir", "two")
    # Half a run on two processes, finished on one: resuming with another world size.
    train(2, d, "--data-dir", data, "--epochs", 1, "--run-dir", "two-then-one")
    train(1, d, "--resume", "two-then-one", "--epochs", 2)
    return d, two


def test_two_processes_train_the_same_weights_as_one_with_the_same_global_batch(runs):
    d, two = runs
    assert "data-parallel over 2 ranks (gloo)" in two.stdout
    assert two.stdout.count("run directory: two") == 1  # rank 0 alone reports
    one_w, two_w = weights(d / "one"), weights(d / "two")
    assert_same_weights(one_w, two_w)
    one_m = [json.loads(ln) for ln in (d / "one" / "metrics.jsonl").read_text().splitlines()]
    two_m = [json.loads(ln) for ln in (d / "two" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(one_m, two_m, strict=True):  # metrics reduced over both ranks: every image counted once
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key


def test_only_rank_zero_writes_the_run_directory(runs):
    d, _ = runs
    assert sorted(p.name for p in (d / "two").iterdir()) == sorted(p.name for p in (d / "one").iterdir())
    assert not list(d.glob("runs"))  # no other rank wrote a default run directory


def test_resume_with_a_different_world_size(runs):
    d, _ = runs
    assert_same_weights(weights(d / "one"), weights(d / "two-then-one"))


def test_image_folder_augmentation_does_not_depend_on_the_number_of_processes(tmp_path):
    # Crops, flips and lighting noise are drawn per (seed, epoch, image): 2 ranks draw what 1 draws.

    folder = make_image_folder(tmp_path / "images", corrupt=False)
    args = [
        "--dataset",
        "imagefolder",
        "--data-dir",
        folder,
        "--resize",
        32,
        "--resolution",
        28,
        "--lighting",
        0.1,
        "--flip",
        "--normalize",
        "--workers",
        0,
        "--stats-images",
        50,
        "--epochs",
        2,
    ]
    train(1, tmp_path, *args, "--run-dir", "one")
    train(2, tmp_path, *args, "--run-dir", "two")
    assert_same_weights(weights(tmp_path / "one"), weights(tmp_path / "two"))
