"""Side-by-side comparison of finished runs: the table and the overlaid curves an exercise asks for
(AlexNet vs LeNet, simplified vs full, ReLU + dropout vs sigmoid, one recipe vs another)."""

from __future__ import annotations

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


def markdown_table(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = {"params_M": "{:.2f}", "GFLOPs": "{:.4f}", "train_loss": "{:.4f}", "val_acc": "{:.4f}",
           "best_val_acc": "{:.4f}", "gap": "{:+.4f}", "img_per_s": "{:.0f}", "time_s": "{:.0f}"}  # fmt: skip
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.get(k, "{}").format(r[k]) for k in keys) + " |")
    return "\n".join(lines)


def plot_runs(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for run in runs:
        label = f"{run['dir'].name} ({run['config']['train']['model']})"
        ep = [m["epoch"] for m in run["metrics"]]
        for ax, key in zip(axes, ("train_loss", "val_loss", "val_acc")):
            ax.plot(ep, [m[key] for m in run["metrics"]], "-o", ms=3, label=label)
            ax.set_title(key.replace("_", " "))
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    from .runs import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


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
