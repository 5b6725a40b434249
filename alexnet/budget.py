"""Training to a clock (``--time-budget``): the plan that fits a run into a budget, the pacer that
holds it there, and the clock that keeps a run's seconds.

A budgeted run starts its ``Clock`` before anything that the budget pays for (choosing a network,
fitting and computing a frozen stem, measuring). It then times its own training step on the real
network and data with the package's harness (``measure.time_turns``: warm-up steps, then the median;
the weights, optimiser and random state put back afterwards) and one evaluation, and
fixes the number of steps that fit: ``steps_that_fit``. The learning-rate schedule (warm-up, decay
to zero) is drawn for exactly those steps, fractional epochs allowed, so the run ends with a
finished schedule, not a truncated one. The warm-up keeps its share of the run: ``--warmup-epochs``
of ``--epochs`` (the speedrun's 1 of 7) becomes that fraction of the planned steps.

A shared machine's step time moves while a run trains. So a ``Pacer`` looks again every few steps
and, when the time left no longer holds the planned steps (or holds more), re-plans the steps that
remain. It keeps the schedule's shape by stretching what is left of it: the lr of real step ``s``
is the schedule's lr at a *schedule step* ``v(s)``, a piecewise-linear map through the re-planning
points that ends at the schedule's last step on the run's last step. ``lr_at`` stays the one pure
schedule, and the plan (its anchors included) is in the checkpoint, so a resumed run takes the
same steps with the same rates; it re-plans only when asked (``--replan``, or a new budget).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field

from .config import Config, ConfigError, parse_duration

MIN_STEPS = 10  # fewer steps than this train nothing worth the wait
WHOLE_EPOCHS = ("step", "plateau")  # schedules counted in whole epochs: a budget must hold one
WARMUP_STEPS, TIMED_STEPS = 3, 10  # measurement: steps to warm kernels, then steps timed (the clock corrects)


@dataclass
class Plan:
    """How a budgeted run spends its budget; all times in seconds, recorded in config.json and
    the checkpoint. ``steps`` is the run's length now; ``schedule_steps`` the length its schedule
    was drawn for (the first plan's); ``anchors`` the (step, schedule step) points where it was
    re-planned."""

    budget_s: float
    step_s: float  # one training step, measured
    eval_s: float  # one evaluation, measured
    startup_s: float  # the clock when the plan was made: stem, measurement
    steps: int
    steps_per_epoch: int
    schedule_steps: int
    warmup_epochs: float  # of the schedule, in its own epochs
    anchors: list[list[float]] = field(default_factory=lambda: [[0, 0.0]])
    replans: list[dict] = field(default_factory=list)
    spent_s: float = 0.0  # budget used when the plan was last recorded

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch

    @property
    def whole_epochs(self) -> int:
        """Epochs the loop runs: the last one may be partial."""
        return math.ceil(self.steps / self.steps_per_epoch)

    def to_dict(self) -> dict:
        return {**asdict(self), "epochs": round(self.epochs, 4)}

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def schedule_step(self, step: int) -> float:
        """The schedule's step at real step ``step``: the identity until the first re-planning;
        after the last anchor, a line to the schedule's last step at the run's last step."""
        a, v = self.anchors[-1]
        for (a0, v0), (a1, v1) in zip(self.anchors, self.anchors[1:]):
            if step < a1:
                return v0 + (step - a0) * (v1 - v0) / (a1 - a0)
        last, end = self.steps - 1, self.schedule_steps - 1
        if last <= a:
            return float(end)
        return v + (step - a) * (end - v) / (last - a)

    def shape(self, cfg: Config) -> Config:
        """``cfg`` with the schedule's own length and warm-up, for ``lr_at``."""
        epochs = max(1, math.ceil(self.schedule_steps / self.steps_per_epoch), math.ceil(self.warmup_epochs))
        return cfg.replace(epochs=epochs, warmup_epochs=self.warmup_epochs, time_budget=cfg.train.time_budget)

    def replan(self, step: int, steps: int, elapsed_s: float, step_s: float) -> None:
        """From ``step`` on, the run takes ``steps`` in all (at least one more); the schedule's
        remaining part is stretched or squeezed over them."""
        steps = max(steps, step + 1)
        if steps == self.steps:
            return
        self.anchors.append([step, self.schedule_step(step)])
        self.replans.append(
            {"step": step, "steps": steps, "elapsed_s": round(elapsed_s, 3), "step_s": round(step_s, 6)}
        )
        self.steps = steps


def steps_that_fit(
    seconds: float, step_s: float, done: int, steps_per_epoch: int, end_s: float, boundary_s: float = 0.0
) -> int:
    """The largest total step count T (``done`` already taken) whose remaining steps at ``step_s``,
    with ``boundary_s`` after each epoch that ends before the last (an evaluation and a checkpoint
    per epoch) and ``end_s`` after the last (the final evaluation), take at most ``seconds``.
    Returns ``done`` when not one more step fits."""

    def cost(total: int) -> float:
        boundaries = max(0, math.ceil(total / steps_per_epoch) - 1 - done // steps_per_epoch)
        return (total - done) * step_s + boundaries * boundary_s + end_s

    lo, hi = done, done + max(0, int(seconds / step_s)) + 1  # cost(lo) may exceed: then nothing fits
    if cost(lo + 1) > seconds:
        return done
    while hi - lo > 1:  # cost grows with T: bisect for the last T that fits
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= seconds else (lo, mid)
    return lo


def first_plan(cfg: Config, step_s: float, eval_s: float, startup_s: float, steps_per_epoch: int) -> Plan:
    """The plan made at the start: the steps that fit in the budget left after start-up. A budget
    that cannot hold a useful run is a one-line error naming what took the time."""
    t = cfg.train
    budget = parse_duration(t.time_budget)
    per_epoch = eval_s if t.evaluate == "epoch" else 0.0
    steps = steps_that_fit(budget - startup_s, step_s, 0, steps_per_epoch, eval_s, per_epoch)
    need = steps_per_epoch if t.schedule in WHOLE_EPOCHS else MIN_STEPS
    if steps < need:
        least = startup_s + eval_s + need * step_s + (per_epoch if need > steps_per_epoch else 0)
        what = "one epoch" if need == steps_per_epoch else f"{MIN_STEPS} steps"
        raise ConfigError(
            f"--time-budget {t.time_budget} holds {max(steps, 0)} training steps: start-up took "
            f"{startup_s:.1f} s, the evaluation takes {eval_s:.1f} s and a step {step_s * 1e3:.1f} ms; "
            f"{what} needs at least {math.ceil(least)} s"
        )
    return Plan(
        budget_s=budget,
        step_s=step_s,
        eval_s=eval_s,
        startup_s=startup_s,
        steps=steps,
        steps_per_epoch=steps_per_epoch,
        schedule_steps=steps,
        warmup_epochs=t.warmup_epochs / t.epochs * steps / steps_per_epoch,
    )


def out_of_reach(
    options: list[tuple[str, float]], last_step_s: float, flops: dict[str, int], seconds: float, steps_per_epoch: int
) -> list[str]:
    """The networks before the last that need not be timed: each has at least the last one's
    arithmetic a step, so its step is no faster than the last one's, and at that step its epochs
    in ``seconds`` would still fall short of the epochs it needs."""
    last = options[-1][0]
    return [
        name
        for name, need in options[:-1]
        if flops[name] >= flops[last] and seconds / (last_step_s * steps_per_epoch) < need
    ]


def choose(
    options: list[tuple[str, float]], step_s: dict[str, float], seconds: float, steps_per_epoch: int
) -> tuple[str, str]:
    """The first network whose epochs in ``seconds`` (at its measured step) reach the epochs it
    needs, else the last; and a line saying how it was chosen. A network missing from ``step_s``
    was ruled out untimed (``out_of_reach``)."""
    last = options[-1][0]
    epochs = {name: seconds / (s * steps_per_epoch) for name, s in step_s.items()}
    chosen = next((name for name, need in options if name in epochs and epochs[name] >= need), last)
    told = "; ".join(
        f"{name} {step_s[name] * 1e3:.1f} ms a step, {epochs[name]:.1f} epochs" + (f" (needs {need:g})" if need else "")
        if name in step_s
        else f"{name} not timed: at {last}'s step, with no less arithmetic, it would get "
        f"{seconds / (step_s[last] * steps_per_epoch):.1f} epochs (needs {need:g})"
        for name, need in options
    )
    return chosen, f"network: {chosen}, chosen by the step time measured here for the {seconds:.0f} s left: {told}"


def describe(plan: Plan) -> str:
    """The plan in the run's start line."""
    text = (
        f"time budget {plan.budget_s:g} s: {plan.steps} steps = {plan.epochs:.2f} epochs "
        f"at {plan.step_s * 1e3:.1f} ms a step (measured), start-up {plan.startup_s:.1f} s, "
        f"evaluation {plan.eval_s:.1f} s"
    )
    if plan.warmup_epochs:
        text += f", warm-up {plan.warmup_epochs:.2f} epochs"
    return text


class Clock:
    """A run's seconds, kept in one place: what its budget has spent (the processes before this one
    included), and each metrics row's training and wall seconds. A row counts the start-up it paid
    for (a network chosen, a stem computed, a budget measured) as training, and a resumed epoch its
    training before the interruption, so that its images/s and wall time cover the whole epoch.
    ``now`` is injectable for tests."""

    def __init__(self, spent_before: float = 0.0, now=time.perf_counter):
        self.now = now
        self.started = now() - spent_before  # the budget's zero
        self.epoch_s = 0.0  # the epoch in progress's training seconds, those before a resume included
        self._start_up: float | None = None  # when this process began its start-up
        self._since = self._trained = self._earlier = 0.0  # the row in progress: its start, training, before
        self._epoch_t0 = self._before = 0.0  # the epoch in progress: this process's start, seconds before it

    def spent(self) -> float:
        return self.now() - self.started

    def start_up(self) -> None:
        """Start-up work begins (the first call counts): the first row counts it as training."""
        if self._start_up is None:
            self._start_up = self.now()

    def start_rows(self) -> None:
        now = self.now()
        self._since = now if self._start_up is None else self._start_up
        self._trained, self._earlier = now - self._since, 0.0

    def start_epoch(self, before: float) -> None:
        """An epoch's training begins here, ``before`` seconds of it trained by earlier processes."""
        self._epoch_t0, self._before, self.epoch_s = self.now(), before, before

    def stop_epoch(self) -> None:
        self.epoch_s = self._before + self.now() - self._epoch_t0

    def add_epoch(self) -> None:
        """The epoch's training joins the row (and its earlier processes' part, the row's wall time)."""
        self._trained, self._earlier = self._trained + self.epoch_s, self._earlier + self._before

    def row(self) -> tuple[float, float]:
        """The row's (training seconds, wall seconds), its evaluation included."""
        return self._trained, self.now() - self._since + self._earlier

    def next_row(self) -> None:
        self._since, self._trained, self._earlier = self.now(), 0.0, 0.0


class Pacer:
    """Holds a budgeted run to its budget. Every ``every`` steps it reads the time, takes the step
    time over the steps since the last look (the latest load, not the start's), and re-plans the
    remaining steps (``Plan.replan``) when they no longer end within the budget or when more fit.
    Time outside the steps (evaluations, checkpoints between epochs) is measured apart, so an
    evaluation never reads as a slow step. With ``replan`` off (a resumed run keeping its recorded
    plan) it only ends the run where the plan ends. ``now`` and ``sync`` are injectable for tests."""

    def __init__(
        self,
        plan: Plan,
        started: float,
        evaluate_each_epoch: bool,
        *,
        replan: bool = True,
        now=time.perf_counter,
        sync=lambda: None,
        every: int | None = None,
    ):
        self.plan, self.started, self.each_epoch, self.now, self.sync = plan, started, evaluate_each_epoch, now, sync
        self.replan = replan
        # About 40 looks per run: often enough to follow the load, rare enough that one look's window
        # (at least 10 steps) averages out the scheduler's jitter.
        self.every = every or max(10, plan.steps // 40)
        self.boundary_s: float | None = None  # the time between two epochs' steps, once seen
        self._end: float | None = None  # when the last epoch's steps ended
        self.history: list[float] = []  # the step time at each look
        self._window: tuple[int, float, float] | None = None  # (step, time) of the last look, time between epochs since

    def elapsed(self) -> float:
        return self.now() - self.started

    def steps(self, batches, step0: int):
        """An epoch's batches, ending where the plan ends; the plan is read before every step."""
        start = self.now()
        if self._window is None:
            self._window = (step0, start, 0.0)
        elif self._end is not None:  # between two epochs: not step time (an evaluation, a checkpoint)
            s, t, between = self._window
            self._window = (s, t, between + start - self._end)
            if self.each_epoch:
                self.boundary_s = start - self._end
        for i, batch in enumerate(batches):
            step = step0 + i
            if self.replan and step - self._window[0] >= self.every:
                self.look(step)
            if step >= self.plan.steps:
                break
            yield batch
        self._end = self.now()

    def look(self, step: int) -> None:
        """Re-plan from ``step`` with the step time since the last look (time between epochs left out)."""
        self.sync()
        now = self.now()
        s0, t0, between = self._window
        step_s = (now - t0 - between) / (step - s0)
        self._window = (step, now, 0.0)
        # The evaluation, measured at the start, is scaled by how much slower the latest steps are than
        # the recent typical ones (the median of the last 10 looks, a quarter of the run): a load that
        # arrives near the end slows the evaluation too, while the start's own measurement can sit off
        # the run's steps for good.
        self.history.append(step_s)
        end_s = self.plan.eval_s * step_s / statistics.median(self.history[-10:])
        boundary = (self.boundary_s if self.boundary_s is not None else end_s) if self.each_epoch else 0.0
        left = self.plan.budget_s - (now - self.started)
        fit = steps_that_fit(left, step_s, step, self.plan.steps_per_epoch, end_s, boundary)
        # Re-plan for a change of more than one step: the window's own noise is not worth an anchor.
        if abs(fit - self.plan.steps) > 1:
            self.plan.replan(step, fit, now - self.started, step_s)
