"""Training to a clock (`--time-budget`, alexnet/budget.py): the plan comes from the measured step
time, the schedule is drawn for the planned steps and always finishes, the clock re-plans under a
changing load, a resumed run keeps its plan, and a budget that holds nothing is one line."""

import json
import re

import pytest
import torch
from conftest import tiny_cfg

from alexnet import budget as B
from alexnet import data as D
from alexnet import runs as R
from alexnet import session as S
from alexnet import train as T
from alexnet.cli import main
from alexnet.config import PRESETS, Config, ConfigError, parse_duration


def tiny(data_dir, **kw) -> Config:
    """conftest's tiny recipe on lenet-relu, as a short budget-style run: linear schedule, one evaluation."""
    budget = dict(model="lenet-relu", epochs=4, warmup_epochs=1.0, schedule="linear", evaluate="end")
    return tiny_cfg(data_dir, **{**budget, **kw})


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90s", 90),
        ("5min", 300),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2.5min", 150),
        ("1h0m30s", 3630),
        (" 60S ", 60),
    ],
)
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["90", "5 minutes", "1m1h", "-5s", "0s", "soon", "", "1.5.2h", "5min5min", "1000h"])
def test_duration_parser_refuses_nonsense(text):
    with pytest.raises(ConfigError, match="--time-budget"):
        parse_duration(text)


def test_nonsense_budget_on_the_command_line_is_one_line(capsys, tmp_path):
    assert main(["train", "--preset", "speedrun", "--time-budget", "soon", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--time-budget 'soon' is not a duration" in err
    assert not (tmp_path / "r").exists()


def test_epochs_alone_drops_a_budget_and_both_keep_it():
    cfg = Config().replace(time_budget="60s")
    assert cfg.replace(epochs=3).train.time_budget is None
    assert cfg.replace(epochs=3, time_budget="2min").train.time_budget == "2min"
    assert cfg.replace(lr=0.1).train.time_budget == "60s"


# ---------------------------------------------------------------------------------------------
# The plan


def test_steps_that_fit_pay_for_the_evaluations_and_nothing_more():
    # 10 s at 0.1 s a step, a 1 s final evaluation: 90 steps.
    assert B.steps_that_fit(10.0, 0.1, 0, 30, 1.0) == 90
    # An evaluation after each epoch (1 s, 30 steps an epoch) as well: 70 steps = 2 whole epochs +
    # 10 steps, 2 boundaries + the final evaluation -> 7 + 2 + 1 s.
    assert B.steps_that_fit(10.0, 0.1, 0, 30, 1.0, boundary_s=1.0) == 70
    # From step 50 with 3 s left: 20 more steps; none when the evaluation alone does not fit.
    assert B.steps_that_fit(3.0, 0.1, 50, 30, 1.0) == 70
    assert B.steps_that_fit(0.5, 0.1, 50, 30, 1.0) == 50


def _no_start_up(monkeypatch, eval_s: float = 0.01) -> None:
    """Plan as if start-up took no time and an evaluation ``eval_s``: on a loaded machine a tiny run's
    start-up alone can take seconds, and these tests are about the steps, not the load."""
    real_plan = B.first_plan
    monkeypatch.setattr(
        B, "first_plan", lambda cfg, step_s, _eval_s, startup, spe: real_plan(cfg, step_s, eval_s, 0.0, spe)
    )
    monkeypatch.setattr(S, "measure_evaluation", lambda *a: eval_s)


def _planned(cfg, tmp_path, monkeypatch, slow_s: float) -> dict:
    """Prepare (not train) a budgeted run whose every measured step takes ``slow_s`` longer."""
    real = T.train_one_epoch

    def slow(model, optimizer, batches, **kw):
        out = real(model, optimizer, batches, **kw)
        T.time.sleep(slow_s * (out["steps"] - kw.get("step0", 0)))
        return out

    monkeypatch.setattr(T, "train_one_epoch", slow)
    _no_start_up(monkeypatch)
    with T.Session(cfg, torch.device("cpu"), 0, 1, quiet=True, progress=False) as s:
        s.prepare(tmp_path, None, [])
        s.run_dir.release()
        s.run_dir = None
    return json.loads((tmp_path / "config.json").read_text())["plan"]


def test_the_plan_shrinks_when_the_measured_step_is_slower(idx_dir, tmp_path, monkeypatch):
    cfg = tiny(idx_dir, time_budget="60s")  # planned, not trained
    fast = _planned(cfg, tmp_path / "fast", monkeypatch, 0.0)
    slow = _planned(cfg, tmp_path / "slow", monkeypatch, 0.2)
    assert slow["step_s"] >= 0.2  # a sleep is never shorter than asked: the measurement saw the slow step
    # and the plan holds no more steps than such a step allows (compared with the plan at the fast step,
    # this failed on a loaded machine, whose fast step measured twice the slow one)
    assert slow["steps"] <= B.steps_that_fit(60.0, 0.2, 0, slow["steps_per_epoch"], 0.01)
    for plan in (fast, slow):  # and the plan is the steps that fit at the step it measured
        assert plan["steps"] == B.steps_that_fit(60.0, plan["step_s"], 0, plan["steps_per_epoch"], 0.01)
    # The warm-up keeps its share of the run (1 of 4 epochs), whatever the length.
    for plan in (fast, slow):
        assert plan["warmup_epochs"] == pytest.approx(plan["steps"] / plan["steps_per_epoch"] / 4)


def test_a_budget_that_holds_no_useful_run_is_one_line_before_anything_trains(idx_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(S, "measure_step", lambda *a: 0.5)  # a 0.5 s step: 1 s holds at most 2
    trained = []
    monkeypatch.setattr(T, "train_one_epoch", lambda *a, **k: trained.append(1))
    args = [
        "train",
        "--model",
        "lenet-relu",
        "--dataset",
        "mnist",
        "--data-dir",
        str(idx_dir),
        "--time-budget",
        "1s",
        "--batch-size",
        "16",
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--time-budget 1s holds" in err and "10 steps needs at least" in err
    assert trained == [] and not (tmp_path / "run").exists()


def test_a_start_up_that_eats_the_budget_is_one_line_without_measuring(idx_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(T, "prepare_frozen", lambda model, net, *a: T.time.sleep(1.1) or net)  # a loaded machine's stem
    monkeypatch.setattr(S, "measure_step", lambda *a: pytest.fail("measured after the budget was spent"))
    args = [
        "train",
        "--model",
        "lenet-relu",
        "--dataset",
        "mnist",
        "--data-dir",
        str(idx_dir),
        "--time-budget",
        "1s",
        "--batch-size",
        "16",
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--time-budget 1s holds no training: the start-up" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# The schedule, drawn for the planned steps


def _plan(steps=100, spe=30, warmup=0.5) -> B.Plan:
    return B.Plan(
        budget_s=10.0,
        step_s=0.1,
        eval_s=0.0,
        startup_s=0.0,
        steps=steps,
        steps_per_epoch=spe,
        schedule_steps=steps,
        warmup_epochs=warmup,
    )


def test_a_re_plan_stretches_what_is_left_of_the_schedule_without_a_jump():
    plan = _plan()
    before = [plan.schedule_step(s) for s in range(100)]
    assert before == list(range(100))  # no re-plan: the schedule's own steps
    plan.replan(40, 160, elapsed_s=4.0, step_s=0.05)  # faster than planned: 160 steps in all
    after = [plan.schedule_step(s) for s in range(160)]
    assert after[:41] == before[:41]  # the steps taken keep their rates
    assert after[-1] == 99  # the run's last step is the schedule's last
    gaps = [b - a for a, b in zip(after, after[1:])]
    assert all(g == pytest.approx(59 / 119) for g in gaps[40:])  # the rest, evenly stretched
    plan.replan(100, 120, elapsed_s=9.0, step_s=0.2)  # slower again: squeezed
    assert plan.schedule_step(119) == 99 and plan.schedule_step(100) == pytest.approx(after[100])
    assert [r["steps"] for r in plan.replans] == [160, 120]


def test_the_clock_re_plans_the_remaining_steps_when_the_step_slows_down():
    """A run planned at 10 ms a step whose steps take 30 ms from step 200 on (another job starts):
    the clock shrinks the plan, ends within the budget, and the schedule still finishes."""
    plan = _plan(steps=900, spe=100, warmup=1.0)
    plan.budget_s, plan.step_s, plan.eval_s = 10.0, 0.01, 0.5
    t = {"now": 0.5}  # the start-up took 0.5 s
    clock = B.Pacer(plan, 0.0, evaluate_each_epoch=False, now=lambda: t["now"], every=20)
    taken = 0
    for epoch in range(100):
        if epoch * plan.steps_per_epoch >= plan.steps:
            break
        for step in clock.steps(range(epoch * 100, epoch * 100 + 100), epoch * 100):
            t["now"] += 0.01 if step < 200 else 0.03
            taken = step + 1
    end = t["now"] + plan.eval_s  # the evaluation as measured
    assert taken == plan.steps < 900 and plan.replans
    assert 9.7 < end <= 10.0 + 0.03 * 20  # within a look's window of the budget
    assert plan.schedule_step(taken - 1) == plan.schedule_steps - 1


def test_a_load_that_arrives_near_the_end_slows_the_evaluation_and_the_clock_reserves_for_it():
    """Steps at 10 ms, then 4x slower from step 600 (another job starts): the evaluation, measured at
    0.5 s, will take about 2 s, and the clock leaves room for that, not for the 0.5 s measured."""
    plan = _plan(steps=900, spe=100, warmup=1.0)
    plan.budget_s, plan.step_s, plan.eval_s = 10.0, 0.01, 0.5
    t = {"now": 0.5}
    clock = B.Pacer(plan, 0.0, evaluate_each_epoch=False, now=lambda: t["now"], every=20)
    taken = 0
    for epoch in range(100):
        if epoch * plan.steps_per_epoch >= plan.steps:
            break
        for step in clock.steps(range(epoch * 100, epoch * 100 + 100), epoch * 100):
            t["now"] += 0.01 if step < 600 else 0.04
            taken = step + 1
    end = t["now"] + plan.eval_s * 4  # the evaluation slows down as much as the steps
    assert taken == plan.steps < 700
    assert 9.5 < end <= 10.0 + 0.04 * 20


def test_a_budgeted_run_ends_with_a_finished_schedule(idx_dir, tmp_path, monkeypatch):
    # The measurement says 0.1 s a step, the steps take a few ms alone: the clock sees it and re-plans
    # (upwards, unless the machine is as loaded); whatever it did, the last step's rate is the schedule's last.
    monkeypatch.setattr(S, "measure_step", lambda *a: 0.1)
    _no_start_up(monkeypatch, eval_s=0.05)
    cfg = tiny(idx_dir, time_budget="3s")
    result = T.fit(cfg, tmp_path / "run", progress=False, quiet=True)
    plan = B.Plan.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())["plan"])
    assert result.final["epoch"] == plan.whole_epochs
    shape = plan.shape(cfg)
    end = T.lr_at(plan.schedule_steps - 1, plan.schedule_steps, plan.steps_per_epoch, shape)
    assert result.final["lr"] == pytest.approx(end) and 0 < end < cfg.train.lr / 10
    assert T.lr_at(plan.schedule_steps, plan.schedule_steps, plan.steps_per_epoch, shape) == 0.0


def test_a_resumed_budget_run_keeps_its_plan_and_trains_as_if_uninterrupted(idx_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "measure_step", lambda *a: 0.05)
    monkeypatch.setattr(B.Pacer, "look", lambda self, step: None)  # hold the first plan
    real_plan = B.first_plan  # and make it the same for both runs: start-up times differ
    monkeypatch.setattr(B, "first_plan", lambda cfg, step_s, eval_s, startup, spe: real_plan(cfg, step_s, 0.01, 0, spe))
    cfg = tiny(idx_dir, time_budget="1s", evaluate="epoch")
    straight = T.fit(cfg, tmp_path / "a", progress=False, quiet=True)
    real, calls = D.loader, {"n": 0}

    def interrupting(*a, **k):  # the 7th batch drawn (6 trained, or 5 and an evaluation) interrupts
        for batch in real(*a, **k):
            calls["n"] += 1
            if calls["n"] == 7:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(D, "loader", interrupting)
    assert T.fit(cfg, tmp_path / "b", progress=False, quiet=True).interrupted
    monkeypatch.setattr(D, "loader", real)
    saved = R.load_checkpoint(tmp_path / "b" / "last.pt")["plan"]
    # Another machine, ten times slower: the recorded plan stands.
    monkeypatch.setattr(S, "measure_step", lambda *a: 0.5)
    resumed = T.fit(cfg, tmp_path / "b", resume=True, progress=False, quiet=True)
    plan = json.loads((tmp_path / "b" / "config.json").read_text())["plan"]
    assert plan["steps"] == saved["steps"] and plan["anchors"] == saved["anchors"] and plan["step_s"] == 0.05
    for a, b in zip(straight.metrics, resumed.metrics, strict=True):
        assert (a["epoch"], a["lr"]) == (b["epoch"], b["lr"])
        assert a["val_acc"] == pytest.approx(b["val_acc"])
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_replan_on_resume_measures_here_and_re_plans_what_remains(idx_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "measure_step", lambda *a: 0.05)
    monkeypatch.setattr(B.Pacer, "look", lambda self, step: None)
    monkeypatch.setattr(S, "measure_evaluation", lambda *a: 0.01)
    cfg = tiny(idx_dir, time_budget="10s")  # room for a loaded machine's start-up, twice
    real = D.loader

    def interrupting(*a, **k):
        for i, batch in enumerate(real(*a, **k)):
            if k.get("epoch", a[4] if len(a) > 4 else 0) == 1 and i == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(D, "loader", interrupting)
    assert T.fit(cfg, tmp_path / "run", progress=False, quiet=True).interrupted
    monkeypatch.setattr(D, "loader", real)
    saved = R.load_checkpoint(tmp_path / "run" / "last.pt")["plan"]
    monkeypatch.setattr(S, "measure_step", lambda *a: 0.1)  # twice as slow here
    T.fit(cfg, tmp_path / "run", resume=True, replan=True, progress=False, quiet=True)
    plan = json.loads((tmp_path / "run" / "config.json").read_text())["plan"]
    assert plan["step_s"] == 0.1 and plan["replans"][-1]["step"] == 4 + 2  # epoch 2, step 3
    assert plan["steps"] < saved["steps"] and plan["schedule_steps"] == saved["schedule_steps"]


def test_replan_without_resume_is_one_line(capsys):
    assert main(["train", "--replan"]) == 2
    assert "--replan re-plans a resumed" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A preset's network, chosen by the step time measured here


_WIDE, _NARROW, _AT14 = "speednet-white-2x", "speednet-white", "speednet-white-2x-14"


@pytest.mark.parametrize(
    "preset, step_s, chosen, timed_names",
    [
        ("speedrun", {_WIDE: 0.5, _NARROW: 0.1}, _WIDE, {_WIDE, _NARROW}),
        ("speedrun", {_WIDE: 2.0, _NARROW: 0.1}, _NARROW, {_WIDE, _NARROW}),
        # At the narrow network's own 2 s a step, 60 s hold 7.5 epochs: the wide one, with more
        # arithmetic a step, cannot reach its 12, so it is ruled out without being built or timed.
        ("speedrun", {_WIDE: 0.5, _NARROW: 2.0}, _NARROW, {_NARROW}),
        # The long run's 300 s: 25 epochs at 3 s a step reach the 14x14 network's need, 12.5 do not.
        ("speedrun-long", {_AT14: 3.0, _WIDE: 2.0, _NARROW: 1.0}, _AT14, {_AT14, _WIDE, _NARROW}),
        ("speedrun-long", {_AT14: 6.0, _WIDE: 2.0, _NARROW: 1.0}, _WIDE, {_AT14, _WIDE, _NARROW}),
    ],
)
def test_a_speedrun_preset_takes_a_wider_network_only_where_enough_of_its_epochs_fit(
    idx_dir, tmp_path, monkeypatch, capsys, preset, step_s, chosen, timed_names
):
    from alexnet.measure import Timing

    timed, real = set(), S.time_turns

    def fake_turns(runs, device, **kw):  # the candidates as the harness would time them, at injected speeds
        if not set(runs) <= set(step_s):
            return real(runs, device, **kw)
        for run in runs.values():
            run(1)  # each one's training step runs
        timed.update(runs)
        return {name: Timing(name, [step_s[name]]) for name in runs}

    monkeypatch.setattr(S, "time_turns", fake_turns)
    monkeypatch.setattr(S, "measure_step", lambda *a: 0.01)
    # 64 images in batches of 16: 4 steps an epoch; 60 s holds 7.5 epochs at 2 s a step, 30 at 0.5 s.
    cfg = PRESETS[preset].replace(dataset="mnist", data_dir=str(idx_dir), batch_size=16, eval_batch_size=16)
    with T.Session(cfg, torch.device("cpu"), 0, 1, quiet=False, progress=False) as s:
        s.prepare(tmp_path / "run", None, [])
        s.run_dir.release()
        assert s.model is not None and sum(p.numel() for p in s.model.parameters()) == sum(
            p.numel() for p in S.build_model(chosen).parameters()
        )
    assert timed == timed_names
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved["model"] == chosen and saved["choose_from"] == cfg.train.choose_from
    out = capsys.readouterr().out
    assert f"network: {chosen}, chosen by the step time measured here" in out and "needs 12" in out
    assert ("speednet-white-2x not timed" in out) == (timed_names == {"speednet-white"})


def test_a_wider_network_is_ruled_out_untimed_only_where_it_has_no_less_arithmetic():
    from alexnet.budget import out_of_reach

    options = [("wide", 12.0), ("narrow", 0.0)]
    # 60 s at the narrow network's 0.1 s a step and 10 steps an epoch: 60 epochs.
    assert out_of_reach(options, 0.1, {"wide": 4, "narrow": 1}, 60.0, 10) == []
    # 0.6 s a step: 10 epochs, short of 12; ruled out only when the wide one has no less arithmetic.
    assert out_of_reach(options, 0.6, {"wide": 4, "narrow": 1}, 60.0, 10) == ["wide"]
    assert out_of_reach(options, 0.6, {"wide": 1, "narrow": 4}, 60.0, 10) == []


def test_a_network_named_on_the_command_line_is_the_one_trained():
    cfg = PRESETS["speedrun-long"].replace(model="alexnet28")
    assert cfg.train.choose_from is None and cfg.train.time_budget == "5min"
    with pytest.raises(ConfigError, match="--choose-from"):
        Config().replace(choose_from="speednet-white-2x:twelve")


def test_a_budgeted_runs_epoch_count_reads_as_an_estimate_while_the_clock_may_re_plan(
    idx_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(S, "measure_step", lambda *a: 0.05)
    _no_start_up(monkeypatch, eval_s=0.01)
    T.fit(tiny(idx_dir, time_budget="2s", evaluate="epoch"), tmp_path / "run", progress=False, quiet=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert lines and all(re.match(r"epoch +\d+/~\d+  ", line) for line in lines), lines


def test_budgeted_runs_read_as_finished_and_their_report_draws_accuracy_against_the_budget(
    idx_dir, tmp_path, monkeypatch
):
    # A slow machine: 0.1 s a step leaves 3 s for about 29 steps, 8 of the 20 epochs the recipe names.
    monkeypatch.setattr(S, "measure_step", lambda *a: 0.1)
    monkeypatch.setattr(B.Pacer, "look", lambda self, step: None)  # hold the first plan
    _no_start_up(monkeypatch)
    runs = tmp_path / "runs"
    for budget in ("2s", "3s"):
        T.fit(tiny(idx_dir, epochs=20, time_budget=budget), runs / budget, progress=False, quiet=True)
    plan = json.loads((runs / "3s" / "config.json").read_text())["plan"]
    planned = B.Plan.from_dict(plan).whole_epochs
    assert planned < 20
    from alexnet import report, serve

    facts = report.read_facts(runs / "3s")
    assert facts.status() == f"finished: {planned} of {planned} epochs"  # not "stopped after epoch 8 of 20"
    ran = dict((r[""], r["value"]) for r in report.section_what_ran(facts, 2)[1].rows)
    assert ran["time budget"].startswith(f"3 s: {plan['steps']} steps = ") and "100.0 ms a step" in ran["time budget"]
    assert f"{plan['spent_s']:.1f} s spent" in ran["time budget"]
    record = serve.run_record(serve.RunsFolder(runs), "3s")
    assert (record["status"], record["epochs"], record["epochs_planned"]) == ("finished", planned, planned)
    # Two budgets compared: the accuracy each bought, and the curve.
    blocks = report.comparison_blocks([runs / "2s", runs / "3s"])
    table = next(b for b in blocks if b.kind == "table" and "budget" in b.rows[0])
    finals = [json.loads((runs / b / "metrics.jsonl").read_text().splitlines()[-1])["val_acc"] for b in ("2s", "3s")]
    assert [(r["budget"], r["test acc"].mean) for r in table.rows] == [("2 s", finals[0]), ("3 s", finals[1])]
    assert any(b.kind == "figure" and b.name == "accuracy-vs-budget.png" and b.png for b in blocks)
