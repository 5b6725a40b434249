"""The one metrics reader, the one status vocabulary and the one checkpoint rule that serve (and
the report) read runs through: alexnet.runs.read_metrics_rows, run_status, network_checkpoint."""

import json
import math
import os

import pytest

from alexnet.runs import RUN_STATUSES, RunError, network_checkpoint, read_bounded, read_metrics_rows, run_status


def rows(n: int, start: int = 1) -> str:
    return "".join(json.dumps({"epoch": e, "val_acc": 0.5}) + "\n" for e in range(start, start + n))


def test_a_half_written_last_line_is_left_out_and_named(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(rows(2) + '{"epoch": 3, "val_')
    got, note = read_metrics_rows(f)
    assert [r["epoch"] for r in got] == [1, 2] and "being written" in note


def test_a_bad_line_in_the_middle_is_corruption_and_the_rows_before_it_are_kept(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(rows(1) + "garbage\n" + rows(1, 2))
    got, note = read_metrics_rows(f)
    assert [r["epoch"] for r in got] == [1] and "line 2" in note and "corrupt" in note


def test_a_file_over_the_cap_is_read_from_its_end_in_whole_rows(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text(rows(1000))
    got, note = read_metrics_rows(f, cap=2000)
    assert got[-1]["epoch"] == 1000 and got[0]["epoch"] == 1001 - len(got) and 0 < len(got) < 1000
    assert f"showing its last {len(got)} rows" in note


def test_a_complete_file_has_no_note_and_keeps_a_diverged_value(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"epoch": 1, "val_acc": NaN}\n')
    got, note = read_metrics_rows(f)
    assert note is None and math.isnan(got[0]["val_acc"])


def test_the_reader_never_opens_a_fifo_or_follows_a_last_symlink(tmp_path):
    os.mkfifo(tmp_path / "metrics.jsonl")
    with pytest.raises(RunError, match="not a regular file"):
        read_metrics_rows(tmp_path / "metrics.jsonl")  # returns at once: opened O_NONBLOCK, then fstat
    (tmp_path / "real").write_text(rows(1))
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(RunError, match="cannot be opened"):
        read_bounded(tmp_path / "link", 100)
    with pytest.raises(RunError, match="over"):
        read_bounded(tmp_path / "real", 10)  # a file past its cap without tail=True is refused whole


@pytest.mark.parametrize(
    "metrics, planned, live, checkpoint, epoch, step, state",
    [
        ([{"epoch": 1, "val_acc": float("nan")}], 2, "pid 1 on h", True, None, 0, "diverged"),
        ([{"epoch": 1}], 2, "pid 1 on h", True, None, 0, "live"),
        ([{"epoch": 2}], 2, None, True, None, 0, "finished"),
        ([{"epoch": 2}], 2, None, True, 2, 5, "interrupted"),  # a checkpoint taken mid-epoch 3 of a 2-epoch plan
        ([{"epoch": 1}], 2, None, True, None, 0, "interrupted"),
        ([{"epoch": 1}], None, None, True, None, 0, "interrupted"),  # plan unknown: never finished
        ([], 2, None, False, None, 0, "empty"),
        ([{"val_acc": 0.9}], 3, None, True, None, 0, "interrupted"),  # no epoch field: one row, one epoch
    ],
)
def test_run_status_speaks_one_vocabulary(metrics, planned, live, checkpoint, epoch, step, state):
    s = run_status(metrics, planned, live, checkpoint, epoch, step)
    assert s.state == state and s.state in RUN_STATUSES
    assert s.sentence().startswith(state)


def test_a_run_that_evaluates_only_at_the_end_is_finished_by_its_last_rows_epoch():
    assert run_status([{"epoch": 10, "val_acc": 0.9}], 10).done == 10
    assert run_status([{"epoch": 10, "val_acc": 0.9}], 10).state == "finished"


def test_the_network_comes_from_best_pt_else_last_pt(tmp_path):
    assert network_checkpoint(tmp_path) is None
    (tmp_path / "last.pt").write_bytes(b"")
    assert network_checkpoint(tmp_path) == tmp_path / "last.pt"
    (tmp_path / "best.pt").write_bytes(b"")
    assert network_checkpoint(tmp_path) == tmp_path / "best.pt"
