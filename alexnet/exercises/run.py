"""Running the exercises' plan: every configuration once per seed into ``ROOT/NAME-sSEED``, a finished
run reused (so an interrupted sweep continues where it stopped), each run's outcome and wall time in
the ledger, and the page written from whatever has finished.

With ``ALEXNET_CPU_LOCK`` set (a path, or 1 for /tmp/alexnet-cpu.lock) training holds an exclusive
``flock`` on that file in turns of a few minutes, so a long sweep shares a machine with other jobs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

from ..runs import read_metrics
from .page import check_page, render
from .plan import BUDGETS, EXERCISE_OF, Spec, default_page, plan
from .results import Ledger


class CpuLock:
    """The team's CPU lock (``ALEXNET_CPU_LOCK``: a path, or 1 for /tmp/alexnet-cpu.lock), taken before
    a run and kept across the next runs until ``hold_s`` have passed, then handed on: one turn of a
    few minutes rather than a queue position lost after every 20-second run. Nothing when unset."""

    def __init__(self, hold_s: float = 420.0):
        where = os.environ.get("ALEXNET_CPU_LOCK")
        self.path = None if not where else "/tmp/alexnet-cpu.lock" if where == "1" else where
        self.hold_s, self._file, self._since = hold_s, None, 0.0

    def acquire(self) -> None:
        if self.path and self._file is None:
            self._file = open(self.path, "a")
            fcntl.flock(self._file, fcntl.LOCK_EX)
            self._since = time.perf_counter()

    def turn_over(self) -> None:
        """Release the lock if this turn has lasted ``hold_s``."""
        if self._file is not None and time.perf_counter() - self._since >= self.hold_s:
            self.release()
            time.sleep(0.5)  # flock is not a queue: without a pause the next run takes the lock straight back

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _complete(run_dir: Path, epochs: int) -> bool:
    m = read_metrics(run_dir)
    return bool(m) and len(m) >= epochs and (run_dir / "last.pt").exists()


def train_one(spec: Spec, seed: int, root: Path, data: dict, ledger: Ledger, lock: CpuLock) -> None:
    from ..train import TrainingError, fit

    name = f"{spec.name}-s{seed}"
    run_dir, cfg = root / name, spec.config(seed, data)
    entry = ledger.entries.get(name, {})
    if entry.get("status") == "failed" or (entry.get("status") == "done" and _complete(run_dir, cfg.train.epochs)):
        return
    lock.acquire()
    t0 = time.perf_counter()
    resume = (run_dir / "last.pt").exists()
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # a run killed before its first epoch: start it again
    try:
        r = fit(cfg, run_dir, resume=resume, progress=False, quiet=True)
        status, error = ("interrupted", "") if r.interrupted else ("done", "")
    except TrainingError as e:
        status, error = "failed", str(e)
    wall = time.perf_counter() - t0 + (entry.get("wall_s", 0.0) if resume else 0.0)
    lock.turn_over()
    ledger.record(name, status=status, error=error, wall_s=round(wall, 2), finished=time.strftime("%H:%M:%S"))
    m = read_metrics(run_dir) or []
    acc = f"val acc {m[-1]['val_acc']:.4f}" if m else "no epoch finished"
    print(f"  {name:<28} {status:<8} {acc}  {wall:6.1f} s" + (f"  ({error})" if error else ""), flush=True)
    if status == "interrupted":
        raise KeyboardInterrupt


def run_exercises(
    budget: str,
    out: Path | None = None,
    runs: Path | None = None,
    only: set[str] | None = None,
    data_dir: str | None = None,
    dataset: str | None = None,
    render_only: bool = False,
    overwrite: bool = False,
) -> dict:
    """Train what the budget's plan lacks, then write the report ``out`` (None: plan.default_page)
    and its figures. A page that this budget may not replace is refused before anything is trained."""
    b = BUDGETS[budget]
    root = Path(runs) if runs else Path("runs") / f"exercises-{budget}"
    out = Path(out) if out else default_page(budget, root)
    check_page(out, b, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in (("data_dir", data_dir), ("dataset", dataset)) if v}
    ledger = Ledger(root)
    p = plan(b)
    t0 = time.perf_counter()
    if not render_only:
        todo, seen = [], set()
        # The cheap exercises first, then the 224x224 ones, then exercise 8, then the whole training set.
        for key in sorted(p, key=lambda k: ("4-28", "7", "4-224", "5", "8-overfit", "8-break", "4-whole").index(k)):
            specs = p[key]
            if only and EXERCISE_OF[key] not in only:
                continue
            for spec in specs:
                for seed in b.seeds:
                    if (spec.name, seed) not in seen:
                        seen.add((spec.name, seed))
                        todo.append((spec, seed))
        print(f"exercises, budget {budget}: {len(todo)} runs ({len(b.seeds)} seeds) into {root}", flush=True)
        lock = CpuLock()
        try:
            for spec, seed in todo:
                train_one(spec, seed, root, data, ledger, lock)
        finally:
            lock.release()
    sweep_s = time.perf_counter() - t0
    result = render(b, p, root, ledger, out, data, sweep_s, overwrite)
    print(f"report: {out}   figures: {result['figures']}")
    return result
