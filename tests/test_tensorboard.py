"""`alexnet train --tensorboard`: event files in the run directory that TensorBoard's own reader
reads back as the run's numbers, filters and weights."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (
    HISTOGRAMS,
    IMAGES,
    SCALARS,
    EventAccumulator,
)

from alexnet.config import PRESETS
from alexnet.models import build_model
from alexnet.train import fit


def events(run):
    acc = EventAccumulator(str(run), size_guidance={SCALARS: 0, IMAGES: 0, HISTOGRAMS: 0})
    acc.Reload()
    return acc


def tiny(idx_dir, **kw):
    return PRESETS["cpu"].replace(
        model="lenet-relu", dataset="mnist", data_dir=str(idx_dir), epochs=2, batch_size=16, log_every=2, **kw
    )


def test_tensorboard_events_hold_the_runs_scalars_filters_and_weights(idx_dir, tmp_path):
    run = tmp_path / "run"
    fit(tiny(idx_dir, tensorboard=True), run, progress=False, quiet=True)
    ev = events(run)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tags = ev.Tags()
    # Each epoch's row, as written to metrics.jsonl, at x = the epoch.
    for key in ("train_loss", "val_loss", "train_acc", "val_acc", "lr", "train_images_per_s"):
        got = [(e.step, e.value) for e in ev.Scalars(f"epoch/{key}")]
        assert got == [(m["epoch"], pytest.approx(m[key], rel=1e-6)) for m in metrics], key
    # Every log interval: 64 images / 16 = 4 steps an epoch, logged every 2 steps.
    for key in ("train/loss", "train/acc", "train/lr", "train/images_per_s"):
        assert [e.step for e in ev.Scalars(key)] == [2, 4, 6, 8], key
    # The interval's running mean at the epoch's last step is the epoch's training loss.
    assert ev.Scalars("train/loss")[1].value == pytest.approx(metrics[0]["train_loss"], rel=1e-5)
    assert ev.Scalars("train/acc")[3].value == pytest.approx(metrics[1]["train_acc"], rel=1e-5)
    images = ev.Images("filters/first_layer")
    assert [i.step for i in images] == [1, 2]
    # LeNet's 6 first-layer kernels of 5x5 in a 3x2 grid with 1-pixel gaps.
    assert (images[0].width, images[0].height) == (3 * 5 + 2, 2 * 5 + 1)
    names = {n for n, _ in build_model("lenet-relu", 1, 10).named_parameters()}
    assert {t.removeprefix("weights/") for t in tags["histograms"]} == names
    w = ev.Histograms("weights/" + sorted(names)[0])
    assert [h.step for h in w] == [1, 2] and w[0].histogram_value.num > 0


def test_a_resumed_run_continues_its_event_steps(idx_dir, tmp_path):
    run = tmp_path / "run"
    fit(tiny(idx_dir, tensorboard=True), run, progress=False, quiet=True)
    fit(None, run, resume=True, overrides={"epochs": 3}, progress=False, quiet=True)
    ev = events(run)
    assert [e.step for e in ev.Scalars("epoch/val_acc")] == [1, 2, 3]
    assert [e.step for e in ev.Scalars("train/loss")] == [2, 4, 6, 8, 10, 12]


# The run of ``tiny`` with every step logged, killed (-9) at global step 10, mid-epoch 3, after its
# event writer flushed (as its 10-second timer does): its last checkpoint is epoch 2's, at step 8.
KILLED_AT_STEP_10 = """
import os, signal, sys
from alexnet import tensorboard
from alexnet.cli import main

logged = tensorboard.Board.interval

def then_killed(self, step, *a):
    logged(self, step, *a)
    if step == 10:
        self.writer.flush()
        os.kill(os.getpid(), signal.SIGKILL)

tensorboard.Board.interval = then_killed
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_and_resumed_has_exactly_one_point_per_step_and_epoch(idx_dir, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = ["train", "--preset", "cpu", "--model", "lenet-relu", "--dataset", "mnist", "--data-dir", str(idx_dir)]
    args += ["--epochs", "3", "--batch-size", "16", "--log-every", "1", "--tensorboard", "--no-progress"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT_STEP_10, *args, "--run-dir", "run"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=240,
    )
    run = tmp_path / "run"
    assert killed.returncode == -9, killed.stderr
    assert [e.step for e in events(run).Scalars("train/loss")] == list(range(1, 11))  # 9 and 10 are past last.pt
    fit(None, run, resume=True, progress=False, quiet=True)
    ev = events(run)
    for key in ("train/loss", "train/acc", "train/lr", "train/images_per_s"):
        assert [e.step for e in ev.Scalars(key)] == list(range(1, 13)), key  # 14 points before the purge
    assert [e.step for e in ev.Scalars("epoch/val_acc")] == [1, 2, 3]
    assert [i.step for i in ev.Images("filters/first_layer")] == [1, 2, 3]
    # The points kept are the resumed run's: its step 9 follows epoch 2's checkpoint, as the killed run's did.
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert ev.Scalars("train/loss")[11].value == pytest.approx(metrics[2]["train_loss"], rel=1e-5)


def test_without_the_flag_no_event_file_is_written(idx_dir, tmp_path):
    run = tmp_path / "run"
    fit(tiny(idx_dir), run, progress=False, quiet=True)
    assert not list(run.glob("events.out.tfevents.*"))


def test_a_resumed_runs_event_file_sorts_after_one_written_in_the_same_second(tmp_path):
    """TensorBoard reads a run's event files in name order; a killed run's file named in this very
    second with a pid that sorts after ours must still be read first, so the resumed points win."""
    import time

    from torch.utils.tensorboard import SummaryWriter

    from alexnet.tensorboard import Board

    killed = SummaryWriter(log_dir=str(tmp_path / "k"))
    for step in range(1, 11):
        killed.add_scalar("train/loss", 1.0, step)
    killed.close()
    (old,) = (tmp_path / "k").glob("events.out.tfevents.*")
    host = old.name.split(".", 4)[4].rsplit(".", 2)[0]  # this machine's name as written: only the pid differs
    old.rename(tmp_path / f"events.out.tfevents.{int(time.time())}.{host}.99999999.0")
    board = Board()
    board.open(tmp_path, step=8)  # resumed after step 8's checkpoint: 9 and 10 are logged again
    for step in range(9, 13):
        board.interval(step, 0.5, 0.5, 0.1, 100.0)
    board.close()
    loss = events(tmp_path).Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 13))
    assert [e.value for e in loss[8:]] == [0.5] * 4  # the resumed run's points, not the killed one's
