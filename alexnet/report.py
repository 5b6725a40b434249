"""Side-by-side comparison of finished runs: the table and the overlaid curves an exercise asks for
(AlexNet vs LeNet, simplified vs full, ReLU + dropout vs sigmoid, one recipe vs another)."""

from __future__ import annotations

import json
from pathlib import Path

from .analysis import trace
from .models import build_model, get_spec


class ReportError(ValueError):
    pass


def read_run(run_dir: str | Path) -> dict:
    run = Path(run_dir)
    try:
        config = json.loads((run / "config.json").read_text())
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    except FileNotFoundError as e:
        raise ReportError(f"{run}: not a run directory (missing {Path(e.filename).name})") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{run}: unreadable run files ({e})") from None
    if not metrics:
        raise ReportError(f"{run}: the run has no finished epoch")
    return {"dir": run, "config": config, "metrics": metrics}


def summarize(run: dict) -> dict:
    cfg, m = run["config"], run["metrics"]
    model = cfg["train"]["model"]
    channels = 3 if cfg["data"]["dataset"] == "cifar10" else 1
    res = cfg["data"]["resolution"] or get_spec(model).resolution
    rows = trace(build_model(model, channels), (1, channels, res, res))
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
