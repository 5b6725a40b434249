"""The one way to measure: the timing harness, the machine stamp, and the one training step that
`alexnet bench` times and `alexnet train` runs (keyed random streams: test_seeds.py; the table
writer: test_tables.py)."""

import itertools
from pathlib import Path

import pytest
import torch

from alexnet import bench, measure
from alexnet import data as D
from alexnet import train as T
from alexnet.models import build_model

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
