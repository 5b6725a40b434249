"""The one way to measure: keyed random streams, the timing harness, the table writer, the machine
stamp, and the one training step that `alexnet bench` times and `alexnet train` runs."""

import csv as csvlib
import io
import itertools
from pathlib import Path

import pytest
import torch

from alexnet import bench, measure, tables
from alexnet import data as D
from alexnet import train as T
from alexnet.config import PRESETS, Config
from alexnet.models import build_model
from alexnet.seeds import PURPOSES, Seeds, derive

# ---------------------------------------------------------------------------------------------
# Random streams


def test_every_random_stream_is_distinct_across_purpose_epoch_step_and_rank():
    keys = list(itertools.product((0, 1), PURPOSES, range(4), range(40), range(2)))
    seeds = {derive(*k) for k in keys}
    assert len(seeds) == len(keys)
    # ... and none is a plain small seed, which model initialisation uses (torch.manual_seed(seed)).
    assert not seeds & set(range(1000))


def test_a_runs_streams_are_distinct_through_its_seeds_object():
    s = Seeds(3)
    drawn = (
        [s.order(e) for e in range(10)]
        + [s.augment(e, i) for e in range(10) for i in range(50)]
        + [s.dropout(e, t, r) for e in range(2) for t in range(200) for r in range(2)]
        + [s.image(e, i) for e in range(3) for i in range(50)]
        + [s.stats()]
    )
    assert len(set(drawn)) == len(drawn)


def test_offsets_reproduce_the_earlier_derivation_which_collided():
    old = Seeds(5, "offsets")
    assert old.order(2) == 5 * 1_000_003 + 2
    assert old.augment(2, 9) == (5 * 1_000_003 + 2) * 1_000_033 + 9 + 7_777
    assert old.dropout(0, 11, rank=1) == 5 * 1_000_003 + 1_000_033 + 7 * 11
    assert old.image(2, 9) == [5, 2, 9] and old.stats() == 5
    # Why they were replaced: step 0's dropout masks were drawn from epoch 0's order seed.
    assert old.dropout(0, 0) == old.order(0) and Seeds(5).dropout(0, 0) != Seeds(5).order(0)


def test_the_data_order_is_drawn_from_the_runs_own_stream():
    for seeds in (Seeds(4), Seeds(4, "offsets")):
        expected = torch.randperm(50, generator=torch.Generator().manual_seed(seeds.order(3)))
        assert torch.equal(D.epoch_indices(50, 3, seeds), expected)
    assert torch.equal(D.epoch_indices(50, 3, 4), D.epoch_indices(50, 3, Seeds(4)))  # an int means keyed


def test_a_config_saved_before_keyed_streams_keeps_offsets_so_it_resumes_exactly():
    saved = PRESETS["cpu"].to_dict()
    del saved["train"]["seed_streams"]  # what a config.json written before this change holds
    assert Config.from_dict(saved).train.seed_streams == "offsets"
    assert PRESETS["cpu"].train.seed_streams == "keyed"
    assert Config.from_dict(PRESETS["cpu"].to_dict()).train.seed_streams == "keyed"


def test_an_unknown_stream_is_refused():
    with pytest.raises(ValueError, match="unknown random stream"):
        derive(0, "weights")


# ---------------------------------------------------------------------------------------------
# Timing


def test_candidates_warm_up_then_alternate_with_the_device_synchronised_around_each_timing(monkeypatch):
    events = []
    monkeypatch.setattr(measure, "sync", lambda device: events.append("sync"))
    durations = iter([0.30, 0.10, 0.20, 0.50, 0.40, 0.60])  # a, b, a, b, a, b: one unit per timing on a CPU
    clock = iter(itertools.accumulate(itertools.chain.from_iterable((0.0, d) for d in durations)))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))

    def candidate(name):
        return lambda k: events.append(f"{name}x{k}")

    out = measure.time_turns({"a": candidate("a"), "b": candidate("b")}, "cpu", rounds=3, warmup=2)
    assert events[:3] == ["ax2", "bx2", "sync"]  # warm-up first, each candidate in turn
    assert [e for e in events[3:] if e != "sync"] == ["ax1", "bx1"] * 3  # then alternating turns
    assert events[3:] == [e for pair in zip(["sync"] * 6, ["ax1", "bx1"] * 3, ["sync"] * 6) for e in pair]
    assert out["a"].seconds == pytest.approx([0.30, 0.20, 0.40]) and out["b"].seconds == pytest.approx(
        [0.10, 0.50, 0.60]
    )
    assert out["a"].median == pytest.approx(0.30) and out["a"].best == pytest.approx(0.20)
    assert out["b"].median == pytest.approx(0.50) and out["b"].best == pytest.approx(0.10)


def test_a_block_per_candidate_and_best_time_for_peaks(monkeypatch):
    calls = []
    out = measure.time_turns(
        {"train": lambda k: calls.append(("train", k)), "eval": lambda k: calls.append(("eval", k))},
        "cpu",
        rounds=2,
        block={"train": 3, "eval": 1},
        warmup=0,
    )
    assert len(out["train"].seconds) == 6 and len(out["eval"].seconds) == 2
    assert calls == [("train", 1)] * 3 + [("eval", 1)] + [("train", 1)] * 3 + [("eval", 1)]
    n = []
    assert measure.best_time(lambda: n.append(1), "cpu", repeats=4) >= 0 and len(n) == 5  # 1 warm-up + 4


def test_candidates_that_time_themselves_warm_up_then_alternate_and_their_seconds_are_kept():
    events, reported = [], iter([9.0, 9.0, 0.3, 0.1, 0.2, 0.5, 0.4, 0.6])  # two warm-ups, then a, b, a, b, a, b

    def candidate(name):
        return lambda: events.append(name) or next(reported)

    out = measure.reported_turns({"a": candidate("a"), "b": candidate("b")}, rounds=3, warmup=1)
    assert events == ["a", "b"] + ["a", "b"] * 3
    assert out["a"].seconds == [0.3, 0.2, 0.4] and out["b"].seconds == [0.1, 0.5, 0.6]  # no warm-up among them
    assert out["a"].median == 0.3 and out["b"].best == 0.1
    with pytest.raises(ValueError):
        measure.reported_turns({"a": candidate("a")}, rounds=0)


def test_work_done_once_gives_its_result_and_its_seconds_between_synchronisations(monkeypatch):
    events, clock = [], iter([10.0, 12.5])
    monkeypatch.setattr(measure, "sync", lambda device: events.append(("sync", device.type)))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    assert measure.timed(lambda: events.append("work") or "result", "cpu") == ("result", 2.5)
    assert events == [("sync", "cpu"), "work", ("sync", "cpu")]


def test_a_latency_percentile_is_the_nearest_rank_of_the_tail():
    t = measure.Timing("predict", [float(i) for i in range(100, 0, -1)])  # 1..100 s, unsorted
    assert (t.percentile(50), t.percentile(90), t.percentile(99), t.percentile(100)) == (51.0, 90.0, 99.0, 100.0)
    assert measure.Timing("one", [0.2]).percentile(99) == 0.2


def test_the_machine_is_described_with_its_bf16_flags_threads_and_torch():
    m = measure.machine("cpu")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith(("flags", "Features")))
        assert set(m.cpu_flags) == set(measure.CPU_FLAGS) & set(flags.split(":", 1)[1].split())
    line = m.line()
    assert torch.__version__ in line and f"{torch.get_num_threads()} torch threads" in line
    assert all(f in line for f in m.cpu_flags) and m.cpu_count >= 1


# ---------------------------------------------------------------------------------------------
# Tables


def test_one_table_writer_for_markdown_text_and_csv():
    rows = [{"name": "alexnet", "acc": 0.91234, "ms": 12.0}, {"name": "lenet", "acc": 0.8, "note": "slow"}]
    cols = [
        tables.Column("name", left=True),
        tables.Column("acc", "test acc", "{:.3f}"),
        tables.Column("ms"),
        tables.Column("note", fmt=str.upper, left=True),
        tables.Column("unused"),
    ]
    cols = tables.present(cols, rows)
    assert tables.markdown(rows, cols).splitlines() == [
        "| name | test acc | ms | note |",
        "|---|---:|---:|---|",
        "| alexnet | 0.912 | 12.0 |  |",
        "| lenet | 0.800 |  | SLOW |",
    ]
    assert tables.text(rows, cols).splitlines() == [
        "name     test acc    ms  note",
        "alexnet     0.912  12.0",
        "lenet       0.800        SLOW",
    ]
    parsed = list(csvlib.DictReader(io.StringIO(tables.csv(rows, cols))))
    assert parsed[0] == {"name": "alexnet", "acc": "0.91234", "ms": "12", "note": ""}  # raw values, not formatted


# ---------------------------------------------------------------------------------------------
# One training step


def test_bench_times_the_step_and_optimizer_that_train_runs(monkeypatch, idx_dir):
    """The step `alexnet bench` times is the one `alexnet train` runs, with the preset's optimizer."""
    seen = []
    real = T.train_step

    def recording(model, optimizer, x, y, **kw):
        g = optimizer.param_groups[0]
        seen.append(
            (
                type(optimizer).__name__,
                g["lr"],
                g["momentum"],
                g["nesterov"],
                g["weight_decay"],
                g.get("fused"),
                kw["label_smoothing"],
            )
        )
        return real(model, optimizer, x, y, **kw)

    monkeypatch.setattr(T, "train_step", recording)
    cpu = torch.device("cpu")
    cfg = bench.step_recipe("cpu", "lenet-relu", cpu)
    bench.time_training("lenet-relu", 8, steps=2, warmup=1, device=cpu, cfg=cfg)
    timed = set(seen)
    seen.clear()
    ds = D.load_dataset("mnist", idx_dir)
    model = build_model("lenet-relu", seed=0)
    opt = T.make_optimizer(model, cfg, cpu)
    T.train_one_epoch(
        model,
        opt,
        D.loader(ds.train, D.make_transform(cfg, ds.name, cpu), 16, True),
        device=cpu,
        amp=False,
        label_smoothing=cfg.train.label_smoothing,
    )
    assert timed == set(seen) and len(timed) == 1
    assert next(iter(timed)) == ("SGD", 0.05, 0.9, True, 5e-4, True, 0.1)  # the cpu preset's recipe
