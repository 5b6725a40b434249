"""Side-by-side comparison of finished runs: the table and the overlaid curves an exercise asks for
(AlexNet vs LeNet, simplified vs full, ReLU + dropout vs sigmoid, one recipe vs another).

Runs of one configuration that differ only in their seed are one row, mean ± std over the seeds
(the sample standard deviation), and one curve with a band of ± one std.
"""

from __future__ import annotations

import math
from pathlib import Path

from .analysis import trace
from .models import build_model


class ReportError(ValueError):
    pass


def summarize(run: dict) -> dict:
    """One row of the comparison table from ``runs.read_run``'s record: the model is built in the
    shape its checkpoint records (channels, classes, resolution), so a 1000-class run counts 1000."""
    cfg, m = run["config"], run["metrics"]
    model, channels, res = cfg["train"]["model"], run["in_channels"], run["resolution"]
    rows = trace(build_model(model, channels, run["num_classes"]), (1, channels, res, res))
    return {
        "run": run["dir"].name, "model": model, "preset": cfg.get("preset", ""), "input": f"{res}x{res}",
        "params_M": sum(r.params for r in rows) / 1e6, "GFLOPs": sum(r.flops for r in rows) / 1e9,
        "epochs": len(m), "train_loss": m[-1]["train_loss"], "val_acc": m[-1]["val_acc"],
        "best_val_acc": max(r["val_acc"] for r in m), "gap": m[-1]["train_acc"] - m[-1]["val_acc"],
        "img_per_s": sum(r["train_images_per_s"] for r in m) / len(m), "time_s": sum(r["epoch_time_s"] for r in m),
    }  # fmt: skip


# Settings that change where or how fast a run goes, not what it computes; with the seed, the runs
# that differ only in these are repeats of one configuration.
NOT_RECIPE = frozenset({"seed", "device", "log_every", "workers", "data_dir", "compile", "eval_batch_size",
                        "model_parallel"})  # fmt: skip


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
        return f"{spec.format(self.mean)} ± {spec.format(self.std).lstrip('+')}" if self.n > 1 else spec.format(self.mean)

    def exceeds(self, other: "Spread") -> bool:
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


FORMATS = {"params_M": "{:.2f}", "GFLOPs": "{:.4f}", "train_loss": "{:.4f}", "val_acc": "{:.4f}",
           "best_val_acc": "{:.4f}", "gap": "{:+.4f}", "img_per_s": "{:.0f}", "time_s": "{:.0f}",
           "epochs": "{:.0f}"}  # fmt: skip


def markdown_table(rows: list[dict], formats: dict | None = None) -> str:
    keys = list(rows[0])
    fmt = {**FORMATS, **(formats or {})}

    def cell(k, v):
        f = fmt.get(k, "{}")
        return v.format(f) if isinstance(v, Spread) else f.format(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(cell(k, r[k]) for k in keys) + " |")
    return "\n".join(lines)


def compare_table(runs: list[dict]) -> str:
    """`alexnet compare`'s table: one row per configuration, mean ± std where it has several seeds."""
    return markdown_table([aggregate([summarize(r) for r in g]) for g in group_runs(runs)])


def mean_curve(runs: list[dict], key: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and std over the runs of one metric, up to the shortest run's length."""
    n = min(len(r["metrics"]) for r in runs)
    spreads = [Spread(r["metrics"][i][key] for r in runs) for i in range(n)]
    return list(range(1, n + 1)), [s.mean for s in spreads], [s.std for s in spreads]


def plot_groups(groups: list[tuple[str, list[dict]]], path: Path, keys=("train_loss", "val_loss", "val_acc"),
                title: str = "", dpi: int = 100) -> None:  # fmt: skip
    """One panel per metric, one curve per labelled group of runs: the mean over its seeds, with a
    band of ± one std where there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runs import atomic_write

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for j, (label, runs) in enumerate(groups):
        colour = f"C{j % 10}"
        for ax, key in zip(axes[0], keys):
            ep, mean, std = mean_curve(runs, key)
            ax.plot(ep, mean, "-o", ms=2.5, color=colour, label=f"{label}" + (f" (n={len(runs)})" if len(runs) > 1 else ""))
            if len(runs) > 1:
                ax.fill_between(ep, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=colour, alpha=0.2, lw=0)  # fmt: skip
            ax.set_title(key.replace("_", " "), fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
    plt.close(fig)


def plot_runs(runs: list[dict], path: Path) -> None:
    """`alexnet compare`'s curves: a curve per configuration, with its seeds' spread as a band."""
    groups = []
    for g in group_runs(runs):
        label = f"{g[0]['dir'].name} ({g[0]['config']['train']['model']})"
        groups.append((label + (f" +{len(g) - 1} seeds" if len(g) > 1 else ""), g))
    plot_groups(groups, path, dpi=120)


def plot_confusion(matrix, classes: list[str], path: Path, title: str) -> None:
    """The evaluate command's figure: row-normalised confusion matrix with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runs import atomic_write

    m = matrix.double()
    norm = m / m.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, fraction=0.046)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
