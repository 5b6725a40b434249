"""What the exercises' runs measured: the ledger of runs, each configuration's seeds as a `Group`,
found by the plan entry's name, and the words for a difference (within the seeds' spread or not)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..config import PRESETS
from ..report import Spread
from ..runs import RunError, atomic_write, read_run
from .plan import Budget, Spec


class Ledger:
    """``ledger.json`` in the runs folder: per run, done or failed (and why), and its wall time."""

    def __init__(self, root: Path):
        self.path = root / "ledger.json"
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def record(self, name: str, **entry) -> None:
        self.entries[name] = entry
        atomic_write(self.path, json.dumps(self.entries, indent=1, sort_keys=True) + "\n")


@dataclass
class Group:
    """The seeds of one configuration: finished runs, and those that failed (diverged)."""

    spec: Spec
    runs: list[dict]
    failed: list[str]
    wall_s: float

    @property
    def label(self) -> str:
        return self.spec.label

    def last(self, key: str) -> Spread | None:
        vals = [r["metrics"][-1][key] for r in self.runs if len(r["metrics"]) == self.epochs]
        return Spread(vals) if vals else None

    @property
    def epochs(self) -> int:
        return PRESETS[self.spec.preset].replace(**self.spec.changes).train.epochs

    @property
    def finished(self) -> list[dict]:
        return [r for r in self.runs if len(r["metrics"]) == self.epochs]

    def per_run(self, fn) -> Spread | None:
        vals = [fn(r["metrics"]) for r in self.finished]
        return Spread(vals) if vals else None

    def best_acc(self):
        return self.per_run(lambda m: max(x["val_acc"] for x in m))

    def best_epoch(self):
        return self.per_run(lambda m: max(m, key=lambda x: (x["val_acc"], -x["epoch"]))["epoch"])

    def min_loss_epoch(self):
        return self.per_run(lambda m: min(m, key=lambda x: x["val_loss"])["epoch"])

    def gap(self):
        return self.per_run(lambda m: m[-1]["train_acc"] - m[-1]["val_acc"])

    def time(self):
        return self.per_run(lambda m: sum(x["epoch_time_s"] for x in m))

    def rate(self):
        return self.per_run(lambda m: sum(x["train_images_per_s"] for x in m) / len(m))

    def seeds_text(self) -> str:
        n = len(self.finished)
        out = f"{n} seed{'s' if n != 1 else ''}"
        return out + (f", {len(self.failed)} diverged" if self.failed else "")


def named(groups: list[Group], *names: str) -> Group | list[Group]:
    """The groups of these plan entries, by their names (not by position: reordering the plan
    must not silently change which runs a sentence is about)."""
    by = {grp.spec.name: grp for grp in groups}
    missing = [n for n in names if n not in by]
    if missing:
        raise KeyError(f"no plan entry {', '.join(missing)}; the plan has {', '.join(by)}")
    return by[names[0]] if len(names) == 1 else [by[n] for n in names]


def collect(specs: list[Spec], b: Budget, root: Path, ledger: Ledger) -> list[Group]:
    groups = []
    for spec in specs:
        runs, failed, wall = [], [], 0.0
        for seed in b.seeds:
            name = f"{spec.name}-s{seed}"
            e = ledger.entries.get(name, {})
            wall += e.get("wall_s", 0.0)
            if e.get("status") == "failed":
                failed.append(e.get("error", "failed"))
                with contextlib.suppress(RunError):
                    runs.append(read_run(root / name))  # the epochs before it diverged
                continue
            with contextlib.suppress(RunError):
                runs.append(read_run(root / name))
        groups.append(Group(spec, runs, failed, wall))
    return groups


def fmt(s: Spread | None, spec: str = "{:.4f}") -> str:
    return "—" if s is None else s.format(spec)


def versus(a: Group, b: Group, key: str = "val_acc", what: str = "test accuracy") -> str:
    """'B − A = +0.0123 (spread ±0.0040/±0.0031): larger than the seeds' spread' and the like."""
    sa, sb = a.last(key), b.last(key)
    if sa is None or sb is None:
        return f"{b.label} vs {a.label}: not measured (a configuration has no finished run)"
    d = sb.mean - sa.mean
    verdict = (
        "larger than the seeds' spread"
        if sb.exceeds(sa)
        else "within the seeds' spread: not a difference these seeds can resolve"
    )
    return f"{what} {d:+.4f} ({b.label} vs {a.label}; std {sa.std:.4f} and {sb.std:.4f}): {verdict}"


def trend(g: Group) -> str:
    """How the mean validation curve ends: still rising, flat, or with its loss turned up."""
    runs = g.finished
    if not runs:
        return "not measured"
    n = len(runs[0]["metrics"])

    def mean(k, i):
        return sum(r["metrics"][i][k] for r in runs) / len(runs)

    losses = [mean("val_loss", i) for i in range(n)]
    k = min(range(n), key=losses.__getitem__)
    span = 3  # epochs over which the accuracy is called flat or still moving
    last = mean("val_acc", n - 1) - mean("val_acc", max(0, n - 1 - span))
    parts = []
    if k < n - 1 and losses[-1] > losses[k] + 0.01:
        parts.append(f"test loss bottoms out at epoch {k + 1} ({losses[k]:.3f}) and turns up to {losses[-1]:.3f}")
    else:
        parts.append(f"test loss lowest at epoch {k + 1} ({losses[k]:.3f})")
    parts.append(
        f"accuracy flat over the last {span} epochs"
        if abs(last) < 0.005
        else f"accuracy still moving over the last {span} epochs ({last:+.4f})"
    )
    return "; ".join(parts)
