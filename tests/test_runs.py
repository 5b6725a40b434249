"""The run directory never lies and never loses data: exact resume from any step, kills at every
write, concurrent runs, divergence, and settings that a resume may or may not change."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

from alexnet import data as D
from alexnet import runs as R
from alexnet import train as T
from alexnet.config import PRESETS, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


def recipe(data_dir, **kw):
    """The cpu preset's recipe (crop, flip, dropout, warm-up, cosine, label smoothing) on a tiny
    dataset, in fp32 so that a resumed run can be bit-identical."""
    base = dict(
        model="lenet-relu", dataset="mnist", data_dir=str(data_dir), epochs=3, batch_size=16, amp="off", log_every=1
    )
    return PRESETS["cpu"].replace(**{**base, **kw})


def quiet_fit(cfg, run_dir, **kw):
    return T.fit(cfg, run_dir, progress=False, quiet=True, **kw)


def assert_identical(a_dir, b_dir):
    """Same weights bit for bit, same metrics (timings aside), and every derived file agrees."""
    a, b = R.load_checkpoint(a_dir / "last.pt"), R.load_checkpoint(b_dir / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [{k: m[k] for k in KEYS} for m in a["metrics"]] == [{k: m[k] for k in KEYS} for m in b["metrics"]]
    assert_consistent(b_dir)


def assert_consistent(run):
    """metrics.jsonl, metrics.csv and best.pt agree with last.pt; no temporary file is left."""
    last = R.load_checkpoint(run / "last.pt")
    assert R.read_metrics(run) == last["metrics"]
    assert len((run / "metrics.csv").read_text().splitlines()) == len(last["metrics"]) + 1
    best = R.load_checkpoint(run / "best.pt")
    assert best["epoch"] == R.best_epoch_of(last["metrics"])
    assert not list(run.glob(".*.tmp"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import make_idx_dataset

    return make_idx_dataset(tmp_path_factory.mktemp("data") / "mnist-like")


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    run = tmp_path_factory.mktemp("straight") / "run"
    quiet_fit(recipe(data), run)
    return run


# ---------------------------------------------------------------------------------------------
# 1, 2: resume continues the run's own plan, exactly, from any step


def test_resume_without_epochs_keeps_the_runs_own_length(data, tmp_path):
    quiet_fit(recipe(data, epochs=2), tmp_path / "run")
    again = quiet_fit(recipe(data), tmp_path / "run", resume=True)  # the preset says 3: the run says 2
    assert [m["epoch"] for m in again.metrics] == [1, 2]


def test_explicit_epochs_extend_the_run_and_are_recorded(data, tmp_path, capsys):
    quiet_fit(recipe(data, epochs=2), tmp_path / "run")
    T.fit(recipe(data), tmp_path / "run", resume=True, overrides={"epochs": 3}, progress=False)
    out = capsys.readouterr().out
    assert "epochs 2 -> 3" in out and "schedule is recomputed" in out
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["train"]["epochs"] == 3
    assert record["changes"] == [{"epoch": 3, "setting": "epochs", "from": 2, "to": 3}]
    assert_consistent(tmp_path / "run")


def _signal_at_batch(monkeypatch, n, sig=signal.SIGINT):
    """Deliver a real signal to this process when the n-th batch (training or evaluation) is drawn."""
    real, calls = D.loader, {"n": 0}

    def signalling(*a, **k):
        for batch in real(*a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), sig)
            yield batch

    monkeypatch.setattr(D, "loader", signalling)
    return lambda: monkeypatch.setattr(D, "loader", real)


# 4 training batches and 1 evaluation batch per epoch: 2 and 3 are mid-epoch, 5 the evaluation,
# 7 the second epoch, 13 the third.
@pytest.mark.parametrize(
    "at,sig", [(2, signal.SIGINT), (3, signal.SIGTERM), (5, signal.SIGINT), (7, signal.SIGINT), (13, signal.SIGTERM)]
)
def test_interrupted_at_any_step_resumes_to_bit_identical_weights_and_metrics(
    data, straight, tmp_path, monkeypatch, at, sig
):
    restore = _signal_at_batch(monkeypatch, at, sig)
    assert quiet_fit(recipe(data), tmp_path / "run").interrupted
    restore()
    ckpt = R.load_checkpoint(tmp_path / "run" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) != (0, 0) or at < 2
    quiet_fit(recipe(data), tmp_path / "run", resume=True)
    assert_identical(straight, tmp_path / "run")


def test_interrupted_twice_still_resumes_exactly(data, straight, tmp_path, monkeypatch):
    for at in (2, 3):
        restore = _signal_at_batch(monkeypatch, at)
        assert quiet_fit(recipe(data), tmp_path / "run", resume=(tmp_path / "run" / "last.pt").exists()).interrupted
        restore()
    quiet_fit(recipe(data), tmp_path / "run", resume=True)
    assert_identical(straight, tmp_path / "run")


def test_sigterm_during_evaluation_resumes_with_no_repair_line_and_the_epochs_own_rate(
    data, tmp_path, monkeypatch, capsys
):
    restore = _signal_at_batch(monkeypatch, 5, signal.SIGTERM)  # the first epoch's evaluation
    assert quiet_fit(recipe(data), tmp_path / "run").interrupted
    restore()
    saved = R.load_checkpoint(tmp_path / "run" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (0, 4) and saved["epoch_train_s"] > 0
    capsys.readouterr()
    first = quiet_fit(recipe(data), tmp_path / "run", resume=True).metrics[0]
    assert "repaired" not in capsys.readouterr().err  # no metrics.jsonl yet is not a repair
    # The epoch's 64 images over the epoch's training time, the part before the interruption included
    # (it was 64 images over the few microseconds after it: 2,030,562 images/s).
    assert first["train_time_s"] >= saved["epoch_train_s"]
    assert first["train_images_per_s"] == pytest.approx(64 / first["train_time_s"])
    # and its wall time holds that training and the evaluation (it was the evaluation's seconds alone)
    assert first["epoch_time_s"] >= first["train_time_s"] + first["eval_time_s"]


def test_a_second_signal_raises_nothing_in_the_running_code_and_exits_130():
    # An exception raised from a handler lands wherever the interpreter is: inside a C extension's
    # first import it aborted the process ("Fatal Python error: PyThreadState_Get").
    exits = []
    with T.StopFlag(exit=exits.append) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and exits == []  # the first one only asks the loop to stop
        try:
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # a few bytecodes, where the handler runs
        except KeyboardInterrupt:
            pytest.fail("the second Ctrl-C raised inside the running code")
    assert exits == [130]


# Runs the command line with a first Ctrl-C at the second training batch, and a second one from
# inside the write of the checkpoint that the first one saves.
SECOND_CTRL_C_IN_THE_SAVE = """
import os, signal, sys
from pathlib import Path
from alexnet import data as D, runs as R
from alexnet.cli import main

loader, write, drawn = D.loader, R.atomic_write, [0]

def signalling(*a, **k):
    for batch in loader(*a, **k):
        drawn[0] += 1
        if drawn[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        yield batch

def interrupted_write(path, content):
    if Path(path).name == "last.pt" and callable(content) and drawn[0] >= 2:
        def half(f):
            f.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGINT)
            content(f)
        return write(path, half)
    return write(path, content)

D.loader, R.atomic_write = signalling, interrupted_write
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_ctrl_c_inside_the_interrupted_save_exits_130_at_once_and_keeps_the_last_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    quiet_fit(recipe(data, epochs=1), run)
    before = (run / "last.pt").read_bytes()
    r = subprocess.run(
        [sys.executable, "-c", SECOND_CTRL_C_IN_THE_SAVE, "train", "--resume", "run", "--epochs", "2", "--no-progress"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().splitlines() == [
        "alexnet: interrupted again: stopped at once; the last checkpoint is whole"
    ], r.stderr
    assert "interrupted: saved" not in r.stdout  # nothing after the second Ctrl-C
    assert (run / "last.pt").read_bytes() == before
    assert list(run.glob(".last.pt.*.tmp"))  # the cut write's temporary, as a kill -9 leaves it
    assert len(quiet_fit(recipe(data), run, resume=True, overrides={"epochs": 2}).metrics) == 2
    assert_consistent(run)  # the resume removed it


def test_a_ctrl_c_after_the_run_has_ended_is_one_line_and_exit_130(data, tmp_path, monkeypatch, capsys):
    from alexnet.cli import main

    real = T.fit

    def fit_then_ctrl_c(*a, **k):
        result = real(*a, **k)
        os.kill(os.getpid(), signal.SIGINT)  # the run's own handler is gone: Python's raises KeyboardInterrupt
        return result

    monkeypatch.setattr(T, "fit", fit_then_ctrl_c)
    args = [str(a) for a in cli_recipe(data)] + ["--epochs", "1", "--run-dir", str(tmp_path / "run")]
    try:
        code = main(args)
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped main as a traceback")
    assert code == 130 and capsys.readouterr().err.strip().splitlines() == ["alexnet: interrupted"]


# From at once to past the end of the save: the first Ctrl-C lands as the first epoch's checkpoint
# is written, when the curves' first plot imports matplotlib (a second Ctrl-C raised inside that
# import aborted the interpreter about one time in ten at 20 ms).
GAPS_MS = (0, 1, 2, 3, 5, 8, 12, 16, 20, 25, 30, 40, 50, 70, 100, 150, 250, 400)


@pytest.mark.parametrize("gap_ms", GAPS_MS)
def test_a_second_ctrl_c_ends_the_process_cleanly_wherever_it_lands(data, tmp_path, gap_ms):
    run = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "-m", "alexnet", *map(str, cli_recipe(data)), "--epochs", "40", "--run-dir", "run"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists():  # the handshake: training, and saving at each epoch's end
            assert p.poll() is None and time.monotonic() < deadline, "the run never wrote its first checkpoint"
            time.sleep(0.002)
        p.send_signal(signal.SIGINT)
        time.sleep(gap_ms / 1000)  # the spacing under test, not a wait for something
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 130 and "Traceback" not in err and "Fatal" not in err, err
    assert len(err.strip().splitlines()) <= 1, err
    ckpt = R.load_checkpoint(run / "last.pt")
    done = ckpt["epoch"] + (1 if ckpt["step"] else 0)
    assert quiet_fit(recipe(data), run, resume=True, overrides={"epochs": max(done, 1)}).metrics
    assert_consistent(run)


# ---------------------------------------------------------------------------------------------
# 4: a kill -9 at any write leaves a run that resumes, repairs itself and ends identical


def cli(*args, cwd, env_extra=None, timeout=240):
    env = {**os.environ, "PYTHONPATH": ROOT, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "alexnet", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_recipe(data):
    return [
        "train",
        "--preset",
        "cpu",
        "--model",
        "lenet-relu",
        "--dataset",
        "mnist",
        "--data-dir",
        data,
        "--epochs",
        3,
        "--batch-size",
        16,
        "--amp",
        "off",
        "--log-every",
        1,
        "--no-progress",
    ]


@pytest.mark.parametrize("kill_at", ["last.pt:2", "best.pt:1", "metrics.jsonl:3", "curves.png:1", "config.json:1"])
def test_kill_during_any_write_then_resume_repairs_the_run_and_matches(data, straight, tmp_path, kill_at):
    r = cli(*cli_recipe(data), "--run-dir", "run", cwd=tmp_path, env_extra={"ALEXNET_KILL_BEFORE_RENAME": kill_at})
    assert r.returncode == -signal.SIGKILL, r.stderr
    run = tmp_path / "run"
    if not (run / "last.pt").exists():  # killed before the first checkpoint: nothing to resume, start again
        r = cli(*cli_recipe(data), "--run-dir", "run", cwd=tmp_path)
    else:
        assert list(run.glob(".*.tmp"))  # the killed write's temporary is still there
        r = cli("train", "--resume", "run", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert_identical(straight, run)


def test_resuming_a_finished_run_repairs_what_a_crash_left(data, straight, tmp_path):
    run = tmp_path / "run"
    quiet_fit(recipe(data), run)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')  # a full disk cut it short
    (run / "metrics.csv").unlink()
    (run / "curves.png").write_bytes(b"")
    (run / ".last.pt.x.tmp").write_bytes(b"half a checkpoint")
    result = quiet_fit(recipe(data), run, resume=True)
    assert len(result.metrics) == 3 and (run / "curves.png").stat().st_size > 1000
    assert_identical(straight, run)


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    R.atomic_write(path, b"good")

    def full(f):
        raise OSError(28, "No space left on device")

    with pytest.raises(R.RunError, match=r"no space left on the device holding .* the previous last.pt is kept"):
        R.atomic_write(path, full)
    assert path.read_bytes() == b"good" and list(tmp_path.iterdir()) == [path]


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 1.2 MB filesystem: a real tmpfs where this test may mount one (root), else one whose writes
    fail with ENOSPC past 1.2 MB (injected under atomic_write's file)."""
    where = tmp_path / "small"
    where.mkdir()
    try:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(where)], capture_output=True
            ).returncode
            == 0
        )
    except OSError:  # no mount(8)
        mounted = False
    if not mounted:
        real_fdopen = os.fdopen

        class Full:
            def __init__(self, f):
                self._f, self._n = f, 0

            def write(self, b):
                self._n += len(b)
                if self._n > 1_200_000:
                    raise OSError(28, "No space left on device")
                return self._f.write(b)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

        monkeypatch.setattr(R.os, "fdopen", lambda *a, **k: Full(real_fdopen(*a, **k)))
    yield where
    if mounted:
        subprocess.run(["umount", str(where)], check=True)


def test_a_full_disk_under_torchs_zip_writer_is_one_line_and_keeps_the_old_checkpoint(small_disk):
    last = small_disk / "last.pt"
    R.save_checkpoint({"model": {"w": torch.ones(10)}}, last)
    with pytest.raises(
        R.RunError,
        match=r"^no space left on the device holding .* while writing last.pt; the "
        r"previous last.pt is kept$",
    ):
        R.save_checkpoint({"model": {"w": torch.zeros(10**6)}}, last)  # 4 MB of weights
    assert torch.equal(torch.load(last, weights_only=True)["model"]["w"], torch.ones(10))
    assert [p.name for p in small_disk.iterdir()] == ["last.pt"]


# ---------------------------------------------------------------------------------------------
# 5: divergence never overwrites a good checkpoint


def test_ctrl_c_after_divergence_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    quiet_fit(recipe(data, epochs=1), run)
    good = R.load_checkpoint(run / "last.pt")
    bad = {k: v for k, v in good.items() if k not in ("cfg", "path")}
    bad["config"]["train"]["lr"] = 1e30  # the weights blow up at the first step of epoch 2
    bad["config"]["system"]["log_every"] = 1000  # and the loss is not looked at before the Ctrl-C
    R.save_checkpoint(bad, run / "last.pt")
    restore = _signal_at_batch(monkeypatch, 3)
    assert T.fit(recipe(data), run, resume=True, overrides={"epochs": 2}, progress=False).interrupted
    restore()
    assert "are not finite" in capsys.readouterr().err
    kept = R.load_checkpoint(run / "last.pt")
    assert all(torch.equal(good["model"][k], kept["model"][k]) for k in good["model"])


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    with pytest.raises(R.RunError, match="not finite"):
        R.save_checkpoint({"model": {"w": torch.tensor([1.0, float("nan")])}}, tmp_path / "last.pt")
    assert not (tmp_path / "last.pt").exists()


# ---------------------------------------------------------------------------------------------
# 6: resume keeps the recorded settings; the allowed changes are recorded


def test_resume_refuses_a_change_of_recipe(data, tmp_path):
    quiet_fit(recipe(data, epochs=1), tmp_path / "run")
    for change in ({"lr": 0.5}, {"model": "lenet"}, {"batch_size": 8}, {"dataset": "fashion-mnist"}):
        with pytest.raises(T.TrainingError, match=f"--{next(iter(change)).replace('_', '-')} cannot change"):
            quiet_fit(recipe(data), tmp_path / "run", resume=True, overrides=change)


def test_precision_is_recorded_as_used_and_kept_on_resume(data, tmp_path):
    run = tmp_path / "run"
    quiet_fit(recipe(data, epochs=1, amp="auto"), run)
    used = json.loads((run / "config.json").read_text())["system"]["amp"]
    assert used in ("bf16", "off")  # what 'auto' meant here, not 'auto'
    quiet_fit(recipe(data), run, resume=True, overrides={"epochs": 2})
    assert json.loads((run / "config.json").read_text())["system"]["amp"] == used
    quiet_fit(recipe(data), run, resume=True, overrides={"epochs": 3, "amp": "off" if used == "bf16" else "bf16"})
    record = json.loads((run / "config.json").read_text())
    assert {"epoch": 3, "setting": "amp", "from": used, "to": record["system"]["amp"]} in record["changes"]


def test_cli_resume_refuses_a_changed_flag_in_one_line(data, tmp_path):
    quiet_fit(recipe(data, epochs=1), tmp_path / "run")
    r = cli("train", "--resume", "run", "--lr", "0.3", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--lr cannot change" in r.stderr


# ---------------------------------------------------------------------------------------------
# 3, 7: concurrent runs and foreign directories


def test_default_run_names_are_unique_within_a_second(tmp_path):
    a = R.RunDir.new(None, "cpu-lenet-20260101-000000", parent=tmp_path)
    b = R.RunDir.new(None, "cpu-lenet-20260101-000000", parent=tmp_path)
    assert a.path != b.path and a.path.exists() and b.path.exists()


def test_a_live_run_directory_is_refused_naming_its_holder_and_a_dead_ones_lock_is_not(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from alexnet.runs import RunDir; "
            "RunDir.open(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(R.RunError, match=rf"in use by a live run \(pid {holder.pid} on "):
            R.RunDir.open(tmp_path)
    finally:
        holder.kill()  # kill -9: the lock file stays, the lock does not
        holder.wait()
    R.RunDir.open(tmp_path).release()


def test_two_runs_on_one_directory_the_second_is_refused(data, tmp_path):
    first = subprocess.Popen(
        [sys.executable, "-m", "alexnet", *map(str, cli_recipe(data)), "--epochs", "40", "--run-dir", "run"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while not (tmp_path / "run" / "config.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        r = cli(*cli_recipe(data), "--run-dir", "run", cwd=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
        assert f"in use by a live run (pid {first.pid}" in r.stderr
    finally:
        first.kill()
        first.wait()


def test_run_dir_into_a_users_folder_is_refused_and_nothing_is_touched(data, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "config.json").write_text("mine")
    (folder / "thesis.tex").write_text("mine")
    with pytest.raises(R.RunError, match="already holds a run|not empty and holds no run"):
        quiet_fit(recipe(data), folder)
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    with pytest.raises(R.RunError, match="not empty and holds no run"):
        quiet_fit(recipe(data), other)
    assert (other / "thesis.tex").read_text() == "mine" and sorted(p.name for p in other.iterdir()) == ["thesis.tex"]


def _wait_stopped(proc, timeout=120):
    """Until ``proc`` stops itself at its pause point (state T in /proc), or fails."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before its pause point: {proc.stderr.read()}")
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.1)
    pytest.fail("never reached its pause point")


def test_a_resume_paused_between_lock_and_read_loses_no_epoch_of_a_run_that_overtakes_it(data, tmp_path):
    # The race: resume B reads last.pt, resume A finishes more epochs, B then derives every file (and
    # its own training) from its stale copy. B pauses at the point between lock and read (SIGSTOP).
    run = tmp_path / "run"
    quiet_fit(recipe(data, epochs=1), run)
    b = subprocess.Popen(
        [sys.executable, "-m", "alexnet", "train", "--resume", run, "--epochs", "2", "--no-progress"],
        env={**os.environ, "PYTHONPATH": ROOT, "ALEXNET_PAUSE_AT": "resume"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_stopped(b)
        try:
            quiet_fit(recipe(data), run, resume=True, overrides={"epochs": 3})
            finished = 3
        except R.RunError as e:
            assert "in use by a live run" in str(e)
            finished = 1
        os.kill(b.pid, signal.SIGCONT)
        _, err = b.communicate(timeout=240)
    finally:
        b.kill()
        b.wait()
    last = R.load_checkpoint(run / "last.pt")
    assert last["epoch"] >= finished, f"epochs {last['epoch'] + 1}..{finished} were lost"
    assert [m["epoch"] for m in last["metrics"]] == list(range(1, last["epoch"] + 1))
    assert b.returncode == 0, err
    assert_consistent(run)


def test_a_users_folder_holding_a_file_named_lock_is_not_a_run_and_is_not_touched(data, tmp_path):
    folder = tmp_path / "u"
    folder.mkdir()
    mine = {"config.json": "{}", ".lock": "x", ".notes.tmp": "k"}
    for name, text in mine.items():
        (folder / name).write_text(text)
    with pytest.raises(R.RunError, match="not empty and holds no run"):
        quiet_fit(recipe(data), folder)
    with pytest.raises(R.RunError, match="no last.pt"):
        quiet_fit(recipe(data), folder, resume=True)
    assert {p.name: p.read_text() for p in folder.iterdir()} == mine


def test_a_fifo_standing_in_as_last_pt_is_refused_on_resume_before_it_is_opened(data, tmp_path):
    from conftest import no_hang

    run = tmp_path / "run"
    quiet_fit(recipe(data, epochs=1), run)
    (run / "last.pt").unlink()
    os.mkfifo(run / "last.pt")
    with no_hang(), pytest.raises(R.RunError, match=r"no last.pt to resume from .*not a regular file \(a FIFO\)"):
        quiet_fit(recipe(data), run, resume=True)


def test_a_run_killed_after_its_config_is_still_a_run_and_only_its_temporaries_go(data, tmp_path):
    run = tmp_path / "run"
    with R.RunDir.new(run, "x") as held:
        held.write_config(recipe(data), [])
    (run / ".last.pt.abc123.tmp").write_bytes(b"half")
    (run / ".notes.tmp").write_text("mine")
    quiet_fit(recipe(data, epochs=1), run)
    assert not (run / ".last.pt.abc123.tmp").exists() and (run / ".notes.tmp").read_text() == "mine"


@pytest.mark.parametrize("where", ["afile/run", "/proc/alexnet-run"])
def test_unwritable_run_directory_is_one_line(data, tmp_path, where):
    (tmp_path / "afile").write_text("x")
    r = cli(*cli_recipe(data), "--run-dir", where, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "run directory" in r.stderr or "cannot write" in r.stderr


def test_run_files_follow_the_umask(data, tmp_path):
    old = os.umask(0o022)
    try:
        quiet_fit(recipe(data, epochs=1), tmp_path / "run")
    finally:
        os.umask(old)
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "curves.png"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name


# ---------------------------------------------------------------------------------------------
# 11, 12, 13: settings and checkpoints that cannot make a run are one line


@pytest.mark.parametrize(
    "args,message",
    [
        (["--amp", "foo"], "invalid choice: 'foo'"),
        (["--compile", "foo"], "invalid choice: 'foo'"),
        (["--schedule", "exponential"], "invalid choice: 'exponential'"),  # linear is one: the speedrun's
        (["--warmup-epochs", "inf"], "--warmup-epochs must be a finite number"),
        (["--crop-padding", "100000"], "--crop-padding must be at most 64"),
        (["--resolution", "100000"], "--resolution must be at most 1024"),
        (["--model", "vgg"], "--model 'vgg' is not one of"),
    ],
)
def test_invalid_settings_are_one_line(args, message, tmp_path):
    r = cli("train", *args, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in r.stderr


def test_a_config_that_cannot_run_cannot_be_built():
    for bad in ({"amp": "foo"}, {"compile": "yes"}, {"warmup_epochs": float("nan")}, {"epochs": 0}, {"lr": 0}):
        with pytest.raises(ConfigError):
            PRESETS["cpu"].replace(**bad)


def test_the_checkpoint_checked_is_the_checkpoint_loaded(data, tmp_path, monkeypatch):
    # The file is opened once, checked on the open descriptor and loaded from it: a name swapped for a
    # FIFO after the check (another program racing the load) is never opened, so nothing hangs.
    run = tmp_path / "run"
    quiet_fit(recipe(data, epochs=1), run)
    opened = R.open_regular

    def then_swap(path, *args, **kwargs):
        f = opened(path, *args, **kwargs)
        os.unlink(path)
        os.mkfifo(path)
        return f

    from conftest import no_hang

    monkeypatch.setattr(R, "open_regular", then_swap)
    with no_hang():
        ckpt = R.load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1 and (run / "last.pt").is_fifo()


def test_checkpoint_faults_name_the_file_and_the_reason(data, tmp_path):
    run = tmp_path / "run"
    quiet_fit(recipe(data, epochs=1), run)
    ckpt = {k: v for k, v in R.load_checkpoint(run / "last.pt").items() if k not in ("cfg", "path")}
    mismatched = {**ckpt, "in_channels": 3}
    R.save_checkpoint(mismatched, tmp_path / "mismatch.pt")
    with pytest.raises(
        R.RunError, match=r"mismatch.pt: the weights do not fit lenet-relu \(in_channels 3, 10 classes\): size mismatch"
    ):
        R.model_from_checkpoint(R.load_checkpoint(tmp_path / "mismatch.pt"))
    R.save_checkpoint({k: v for k, v in ckpt.items() if k != "in_channels"}, tmp_path / "old.pt")
    with pytest.raises(R.RunError, match="old.pt: checkpoint lacks 'in_channels'"):
        R.load_checkpoint(tmp_path / "old.pt")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(
        R.RunError, match=r"junk.pt: not a readable checkpoint \(not a checkpoint file, or a damaged one \(.+\)\)"
    ):
        R.load_checkpoint(tmp_path / "junk.pt")


def test_compare_counts_parameters_in_the_shape_the_checkpoint_records(tmp_path, capsys):
    from conftest import make_image_folder

    from alexnet.cli import main

    folder = make_image_folder(tmp_path / "images", corrupt=False)
    cfg = PRESETS["cpu"].replace(
        model="lenet-relu",
        dataset="imagefolder",
        data_dir=str(folder),
        resize=32,
        resolution=28,
        workers=0,
        stats_images=20,
        epochs=1,
        batch_size=8,
        amp="off",
    )
    quiet_fit(cfg, tmp_path / "run")
    ckpt = R.load_checkpoint(tmp_path / "run")
    assert main(["compare", str(tmp_path / "run"), "--out", str(tmp_path / "c.png")]) == 0
    params = sum(v.numel() for v in ckpt["model"].values())
    assert f"{params / 1e6:.2f}" in capsys.readouterr().out
    image = next(p for p in (folder / "val").rglob("*") if p.is_file())
    assert main(["predict", str(tmp_path / "run"), str(image)]) == 0  # was: unknown setting 'imagefolder'


def test_checkpoint_fields_of_the_wrong_type_are_one_line(data, tmp_path):
    quiet_fit(recipe(data, epochs=1), tmp_path / "run")
    ckpt = {k: v for k, v in R.load_checkpoint(tmp_path / "run" / "last.pt").items() if k not in ("cfg", "path")}
    for field, value, message in (
        ("in_channels", "x", "'in_channels' is 'x', not a count"),
        ("classes", None, "class names do not match"),
        ("metrics", "none", "metrics are not a list"),
    ):
        R.save_checkpoint({**ckpt, field: value}, tmp_path / "bad.pt")
        with pytest.raises(R.RunError, match=message):
            R.load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize(
    "field, value",
    [("resolution", 12000), ("resolution", 0), ("in_channels", 0), ("num_classes", 10**9), ("epoch", 10**9)],
)
def test_checkpoint_counts_are_bounded_as_the_configuration_bounds_its_flags(data, tmp_path, field, value):
    quiet_fit(recipe(data, epochs=1), tmp_path / "run")
    ckpt = {k: v for k, v in R.load_checkpoint(tmp_path / "run" / "last.pt").items() if k not in ("cfg", "path")}
    R.save_checkpoint({**ckpt, field: value}, tmp_path / "bad.pt")
    with pytest.raises(R.RunError, match=rf"bad.pt: checkpoint field '{field}' is {value}, outside \d+\.\.\d+"):
        R.load_checkpoint(tmp_path / "bad.pt")


def test_a_fifo_named_like_the_lock_is_no_holder_and_hangs_nothing(tmp_path):
    import threading

    from alexnet.runs import live_holder

    os.mkfifo(tmp_path / ".lock")
    out = []
    reader = threading.Thread(target=lambda: out.append(live_holder(tmp_path)), daemon=True)
    reader.start()
    reader.join(30)  # a blocking open of the FIFO would never return
    assert out == [None]
