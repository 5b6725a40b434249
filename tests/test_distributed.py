"""Data-parallel training with torchrun: 2 Gloo processes on the CPU train what 1 process trains."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import make_idx_dataset, make_image_folder

from alexnet import runs as R
from alexnet.config import PRESETS

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


# A worker that kills itself (-9) when rank 1 is about to take training step STEP, once in the
# whole job (the marker file): the same command line, restarted by torchrun, then runs in full.
KILLED_ONCE = """
import os, signal, sys
from alexnet import train as T
from alexnet.cli import main

marker, at = sys.argv[1], int(sys.argv[2])
step, taken = T.train_step, [0]

def then_killed(*a, **k):
    taken[0] += 1
    if os.environ["RANK"] == "1" and taken[0] == at:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return step(*a, **k)

T.train_step = then_killed
sys.exit(main(sys.argv[3:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_elastic_run_survives_a_kill_of_one_rank_mid_epoch_and_ends_with_the_uninterrupted_weights(runs):
    d, _ = runs
    (d / "killed_once.py").write_text(KILLED_ONCE)
    # Two torchrun agents, as on two machines, meeting at a c10d rendezvous on localhost; each may
    # restart its worker once. 96 images in global batches of 16: 6 steps an epoch, rank 1 dies
    # before step 9 (epoch 2, step 3), after epoch 1's checkpoint.
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--rdzv-id=elastic-test",
        "--max-restarts=1",
        str(d / "killed_once.py"),
        str(d / "killed.marker"),
        "9",
        "train",
        *map(str, RECIPE),
        "--data-dir",
        str(d / "mnist-like"),
        "--epochs",
        "2",
        "--run-dir",
        "elastic",
    ]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    # A fresh store for each attempt's process group: in the store the rendezvous shares, an attempt
    # is named by each agent's own restart count, which an agent restarted for the other's failure
    # does not advance, so its worker read the dead attempt's addresses (pytorch/pytorch#135712).
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    logs = [(open(d / f"agent{i}.out", "w+"), open(d / f"agent{i}.err", "w+")) for i in range(2)]
    agents = [subprocess.Popen(launch, cwd=d, env=env, stdout=out, stderr=err, text=True) for out, err in logs]
    try:
        for a in agents:
            a.wait(timeout=300)
    finally:
        for a in agents:
            a.kill()
            a.wait()
    outs = []
    for out, err in logs:
        out.seek(0), err.seek(0)
        outs.append((out.read(), err.read()))
        out.close(), err.close()
    for a, (_, err) in zip(agents, outs):
        assert a.returncode == 0, err[-3000:]
    assert (d / "killed.marker").exists()  # rank 1 was killed, and the job went on
    assert any("(exitcode: -9)" in err for _, err in outs)  # as an agent saw it
    assert "resuming" in "".join(out for out, _ in outs)  # from epoch 1's checkpoint, not from scratch
    two, elastic = weights(d / "two"), weights(d / "elastic")
    assert two.keys() == elastic.keys()
    for k in two:
        assert torch.equal(two[k], elastic[k]), k
    assert [m["epoch"] for m in R.read_metrics(d / "elastic")] == [1, 2]


def test_a_rank_that_read_an_older_checkpoint_resumes_from_rank_zeros(tmp_path, monkeypatch):
    from alexnet import position as P
    from alexnet import train as T

    data = make_idx_dataset(tmp_path / "mnist-like", n_train=32, n_test=16)
    cfg = PRESETS["cpu"].replace(model="lenet", dataset="mnist", data_dir=str(data), batch_size=16, epochs=1)
    T.fit(cfg, tmp_path / "run", progress=False, quiet=True)
    older = R.load_checkpoint(tmp_path / "run" / "last.pt")  # what rank 1 read before rank 0 took the lock
    T.fit(None, tmp_path / "run", resume=True, overrides={"epochs": 2}, progress=False, quiet=True)

    def rank_zero_says(epoch, step):
        monkeypatch.setattr(P.dist, "broadcast", lambda t, src: t.copy_(torch.tensor([epoch, step])))

    rank_zero_says(2, 0)
    assert P.rank_zeros_checkpoint(older, tmp_path / "run", 1, torch.device("cpu"))["epoch"] == 2
    rank_zero_says(3, 0)  # last.pt is not what rank 0 read: a one-line error, not a silent divergence
    with pytest.raises(T.TrainingError, match=r"rank 1 reads epoch 2 step 0, rank 0 epoch 3 step 0"):
        P.rank_zeros_checkpoint(older, tmp_path / "run", 1, torch.device("cpu"))


# A worker whose command has finished: its output, buffered in a pipe, and its exit code.
FINISHED_WORKER = """
import atexit, sys
from alexnet import cli

atexit.register(lambda: print("the interpreter's shutdown ran"))
cli._main = lambda argv: print("trained") or 3
sys.exit(cli.main(["train"]))
"""


@pytest.mark.parametrize("world", [1, 2])
def test_a_torchrun_worker_ends_without_the_interpreters_shutdown_and_keeps_its_output(world):
    # At the shutdown, a Gloo thread still freeing the last collective's tensors aborted one worker
    # in about 30 on a loaded machine (SIGABRT, "terminate called without an active exception").
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the output waits in its buffer
    env.update(PYTHONPATH=ROOT, WORLD_SIZE=str(world))
    r = subprocess.run([sys.executable, "-c", FINISHED_WORKER], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr[-2000:]
    if world > 1:
        assert r.stdout == "trained\n"
    else:  # a plain process ends as any Python program does
        assert r.stdout == "trained\nthe interpreter's shutdown ran\n"
