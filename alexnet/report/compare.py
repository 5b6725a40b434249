"""Side-by-side comparison of finished runs (`alexnet compare`, and the comparison a report of several
runs opens with): one row per configuration, the curves an exercise asks for (AlexNet vs LeNet,
simplified vs full, ReLU + dropout vs sigmoid, one recipe vs another).

Runs of one configuration that differ only in their seed are one row, mean ± std over the seeds
(the sample standard deviation, a ``Spread``), and one curve with a band of ± one std. ``cell`` is
the one way a table cell is written from a number, a Spread or nothing.
"""

from __future__ import annotations

import math

from ..models import build_model
from ..tables import Column, markdown
from ..tracing import trace


class ReportError(ValueError):
    pass


def summarize(run: dict) -> dict:
    """One row of the comparison table from ``runs.read_run``'s record: the model is built in the
    shape its checkpoint records (channels, classes, resolution), so a 1000-class run counts 1000."""
    cfg, m = run["config"], run["metrics"]
    model, channels, res = cfg["train"]["model"], run["in_channels"], run["resolution"]
    rows = trace(build_model(model, channels, run["num_classes"]), (1, channels, res, res))
    return {
        "run": run["dir"].name,
        "model": model,
        "preset": cfg.get("preset", ""),
        "input": f"{res}x{res}",
        "params_M": sum(r.params for r in rows) / 1e6,
        "GFLOPs": sum(r.flops for r in rows) / 1e9,
        "epochs": len(m),
        "train_loss": m[-1]["train_loss"],
        "val_acc": m[-1]["val_acc"],
        "best_val_acc": max(r["val_acc"] for r in m),
        "gap": m[-1]["train_acc"] - m[-1]["val_acc"],
        "img_per_s": sum(r["train_images_per_s"] for r in m) / len(m),
        "time_s": sum(r["epoch_time_s"] for r in m),
    }


# Settings that change where or how fast a run goes, not what it computes; with the seed, the runs
# that differ only in these are repeats of one configuration.
NOT_RECIPE = frozenset(
    {
        "seed",
        "seed_streams",
        "device",
        "log_every",
        "workers",
        "data_dir",
        "compile",
        "eval_batch_size",
        "model_parallel",
        "tensorboard",
    }
)


def recipe_key(cfg) -> tuple:
    """What makes two runs the same configuration: every setting but the seed and the machine's."""
    return tuple(sorted((k, v) for k, v in cfg.flat().items() if k not in NOT_RECIPE))


def group_runs(runs: list[dict]) -> list[list[dict]]:
    """``read_run`` records grouped by configuration, in the order each configuration first appears."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(recipe_key(run["cfg"]), []).append(run)
    return list(groups.values())


class Spread(tuple):
    """(mean, std, n) over seeds; formats as 'mean ± std'."""

    def __new__(cls, values):
        vals = [float(v) for v in values]
        n = len(vals)
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
        return super().__new__(cls, (mean, std, n))

    mean = property(lambda self: self[0])
    std = property(lambda self: self[1])
    n = property(lambda self: self[2])

    def format(self, spec: str = "{:.4f}") -> str:
        return (
            f"{spec.format(self.mean)} ± {spec.format(self.std).lstrip('+')}" if self.n > 1 else spec.format(self.mean)
        )

    def exceeds(self, other: Spread) -> bool:
        """Whether the difference of the means is larger than the two spreads together (std + std):
        a difference inside that could be the seed's doing."""
        return abs(self.mean - other.mean) > self.std + other.std


def aggregate(rows: list[dict]) -> dict:
    """One row for several seeds of one configuration: numbers become Spreads, the run names one label."""
    if len(rows) == 1:
        return rows[0]
    out = {}
    for k, v in rows[0].items():
        if k == "run":
            out[k] = f"{v} (+{len(rows) - 1} seeds)"
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("params_M", "GFLOPs"):
            out[k] = Spread(r[k] for r in rows)
        else:
            out[k] = v
    return out


FORMATS = {
    "params_M": "{:.2f}",
    "GFLOPs": "{:.4f}",
    "train_loss": "{:.4f}",
    "val_acc": "{:.4f}",
    "best_val_acc": "{:.4f}",
    "gap": "{:+.4f}",
    "img_per_s": "{:.0f}",
    "time_s": "{:.0f}",
    "epochs": "{:.0f}",
}


def cell(k: str, v, formats: dict | None = None) -> str:
    """A table cell: ``v`` in the format FORMATS (or ``formats``) gives column ``k``; a Spread as
    'mean ± std', nothing as '—', a float without a format in 4 significant digits."""
    f = {**FORMATS, **(formats or {})}.get(k, "{}")
    if v is None:
        return "—"
    if isinstance(v, Spread):
        return v.format(f)
    if isinstance(v, float) and f == "{}":
        return f"{v:.4g}"
    return f.format(v)


def markdown_table(rows: list[dict], formats: dict | None = None) -> str:
    fmt = {**FORMATS, **(formats or {})}
    return markdown(rows, [Column(k, fmt=lambda v, k=k: cell(k, v, fmt), left=k not in fmt) for k in rows[0]])


def compare_table(runs: list[dict]) -> str:
    """`alexnet compare`'s table: one row per configuration, mean ± std where it has several seeds."""
    return markdown_table([aggregate([summarize(r) for r in g]) for g in group_runs(runs)])


def mean_curve(runs: list[dict], key: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and std over the runs of one metric, up to the shortest run's length."""
    n = min(len(r["metrics"]) for r in runs)
    spreads = [Spread(r["metrics"][i][key] for r in runs) for i in range(n)]
    return list(range(1, n + 1)), [s.mean for s in spreads], [s.std for s in spreads]


def labelled_groups(runs: list[dict]) -> list[tuple[str, list[dict]]]:
    """The runs grouped by configuration, each group named by its first run and model."""
    groups = []
    for g in group_runs(runs):
        label = f"{g[0]['dir'].name} ({g[0]['config']['train']['model']})"
        groups.append((label + (f" +{len(g) - 1} seeds" if len(g) > 1 else ""), g))
    return groups


def budget_series(groups: list[tuple[str, list[dict]]]) -> dict[str, list[tuple[float, Spread, str]]]:
    """Test accuracy against the --time-budget, per preset: (budget seconds, the final accuracy over
    the seeds, the network trained), from the groups of runs that were trained to a clock."""
    from ..config import parse_duration

    series: dict[str, list[tuple[float, Spread, str]]] = {}
    for _, runs in groups:
        cfg = runs[0]["cfg"]
        if cfg.train.time_budget:
            accs = Spread(r["metrics"][-1]["val_acc"] for r in runs)
            series.setdefault(f"--preset {cfg.preset}", []).append(
                (parse_duration(cfg.train.time_budget), accs, cfg.train.model)
            )
    return {label: sorted(points) for label, points in series.items()}
