"""The report's and compare's matplotlib figures: curves (one colour per configuration, its seeds as a
band, the book's points), the confusion matrix, misclassified test images, accuracy against a time
budget. Each ``*_figure`` returns the figure; ``figure_png`` turns it into PNG bytes, and the
``plot_*`` functions write one to a file atomically.
"""

from __future__ import annotations

from pathlib import Path

from ..plotting import pyplot
from ..runs import atomic_write
from .compare import Spread, labelled_groups, mean_curve
from .facts import BOOK, Evaluation, is_d2l_recipe


def figure_png(fig, dpi: int = 100, description: str | None = None) -> bytes:
    """A matplotlib figure as PNG bytes (then closed); ``description`` goes into the PNG's
    Description text chunk, ahead of the image data."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png", metadata={"Description": description} if description else None)
    plt.close(fig)
    return buf.getvalue()


def plot_groups(
    groups: list[tuple[str, list[dict]]],
    path: Path,
    keys=("train_loss", "val_loss", "val_acc"),
    title: str = "",
    dpi: int = 100,
) -> None:
    """One panel per metric, one curve per labelled group of runs: the mean over its seeds, with a
    band of ± one std where there are several."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for j, (label, runs) in enumerate(groups):
        colour = f"C{j % 10}"
        for ax, key in zip(axes[0], keys):
            ep, mean, std = mean_curve(runs, key)
            ax.plot(
                ep, mean, "-o", ms=2.5, color=colour, label=f"{label}" + (f" (n={len(runs)})" if len(runs) > 1 else "")
            )
            if len(runs) > 1:
                ax.fill_between(
                    ep,
                    [m - s for m, s in zip(mean, std)],
                    [m + s for m, s in zip(mean, std)],
                    color=colour,
                    alpha=0.2,
                    lw=0,
                )
            ax.set_title(key.replace("_", " "), fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
    plt.close(fig)


# In the Description chunk of the PNG `alexnet compare` writes: by it, compare knows the file as its own.
COMPARE_PNG_MARK = "written by alexnet compare"


def plot_runs(runs: list[dict], path: Path) -> None:
    """`alexnet compare`'s curves: a curve per configuration, with its seeds' spread as a band, and
    the book's points when one of them is the chapter's recipe."""
    groups = labelled_groups(runs)
    fig = curves_figure(groups, book=any(is_d2l_recipe(g[0]["cfg"]) for _, g in groups))
    atomic_write(path, figure_png(fig, 120, COMPARE_PNG_MARK))


def plot_confusion(matrix, classes: list[str], path: Path, title: str) -> None:
    """The evaluate command's figure: row-normalised confusion matrix with counts."""
    atomic_write(path, figure_png(confusion_figure(matrix, classes, title), 120))


def curves_figure(facts_or_groups, book: bool = False, title: str = ""):
    """Loss and accuracy per epoch, train and test; one colour per labelled group of runs (the mean
    over its seeds, a band of ± one std), and the book's points when ``book``."""
    plt = pyplot()

    fig, (al, aa) = plt.subplots(1, 2, figsize=(10, 3.8))
    for j, (label, runs) in enumerate(facts_or_groups):
        colour = f"C{j % 10}"
        for ax, key, style, name in (
            (al, "train_loss", "-o", "train"),
            (al, "val_loss", "--s", "test"),
            (aa, "train_acc", "-o", "train"),
            (aa, "val_acc", "--s", "test"),
        ):
            ep, mean, std = mean_curve(runs, key)
            ax.plot(
                ep,
                mean,
                style,
                ms=3,
                color=colour,
                label=f"{label}: {name}" + (f" (n={len(runs)})" if len(runs) > 1 else ""),
            )
            if len(runs) > 1:
                ax.fill_between(
                    ep,
                    [a - s for a, s in zip(mean, std)],
                    [a + s for a, s in zip(mean, std)],
                    color=colour,
                    alpha=0.2,
                    lw=0,
                )
    if book:
        for src, marker, colour in (("d2l 0.17, V100", "*", "k"), ("d2l 1.0 notebooks", "x", "0.45")):
            for ax, keys in ((al, ("train_loss",)), (aa, ("train_acc", "val_acc"))):
                pts = [p for p in BOOK if p.source == src and p.key in keys]
                if pts:
                    ax.plot(
                        [p.epoch for p in pts],
                        [p.value for p in pts],
                        marker,
                        ms=10,
                        color=colour,
                        ls="none",
                        label=f"book: {src}" + (" (approx.)" if pts[0].approximate else ""),
                    )
    al.set_ylabel("cross-entropy loss (nats per image)")
    aa.set_ylabel("accuracy (fraction correct)")
    from matplotlib.ticker import MaxNLocator

    last = max(len(runs[0]["metrics"]) for _, runs in facts_or_groups)
    for ax in (al, aa):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, max(last, 10 if book else 1) + 0.5)  # the book's points are at epoch 10
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_budget_curve(ax, series: dict[str, list[tuple[float, Spread, str]]]) -> None:
    """The curve a reader chooses a budget from: accuracy (mean ± std over seeds) against minutes."""
    for label, points in series.items():
        networks = ", ".join(dict.fromkeys(model for *_, model in points))
        ax.errorbar(
            [b / 60 for b, *_ in points],
            [a.mean for _, a, _ in points],
            [a.std for _, a, _ in points],
            marker="o",
            capsize=3,
            label=f"{label} ({networks})",
        )
    ticks = sorted({b / 60 for points in series.values() for b, *_ in points})
    ax.set(xscale="log", xlabel="time budget (minutes)", ylabel="test accuracy (mean ± std over seeds)")
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def misclassified_figure(ev: Evaluation, pairs, per_pair: int = 6):
    plt = pyplot()

    fig, axes = plt.subplots(len(pairs), per_pair, figsize=(1.5 * per_pair, 1.75 * len(pairs)), squeeze=False)
    for r, (a, b, _) in enumerate(pairs):
        idx = ((ev.labels == a) & (ev.preds == b)).nonzero().flatten()
        idx = idx[ev.prob[idx].argsort(descending=True)][:per_pair]  # the most confident mistakes first
        for c in range(per_pair):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(idx):
                img = ev.images[int(idx[c])]
                ax.imshow(
                    img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy(),
                    cmap="gray",
                    vmin=0,
                    vmax=255,
                    interpolation="nearest",
                )
                ax.set_title(f"#{int(idx[c])} p={float(ev.prob[idx[c]]):.2f}", fontsize=7)
            else:
                ax.set_axis_off()
        axes[r][0].set_ylabel(f"{ev.classes[a]}\n-> {ev.classes[b]}", fontsize=7)
    fig.tight_layout()
    return fig


def confusion_figure(matrix, classes: list[str], title: str):
    """Row-normalised confusion matrix with counts (the figure of `alexnet evaluate` too)."""
    plt = pyplot()

    m = matrix.double()
    norm = m / m.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    int(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return fig
