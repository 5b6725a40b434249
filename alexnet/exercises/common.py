"""What every section's writer uses: the networks counted (parameters and layers, on the meta
device), and a set of Groups as a table (the columns by name) and as a figure."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .. import data as D
from ..report import plot_groups
from ..tables import grid
from .results import Group, fmt

CLASSES = len(D.FASHION_CLASSES)  # chance accuracy is 1/CLASSES; the loss at chance, log CLASSES
TRAIN_IMAGES = D.IDX_IMAGES["train"]  # Fashion-MNIST's whole training set


def _network(name: str, in_channels: int = 1) -> nn.Module:
    """A registered network with shapes but no storage, for counting."""
    from ..tracing import meta_model

    return meta_model(name, in_channels, CLASSES)


def _params(name: str) -> int:
    return sum(p.numel() for p in _network(name).parameters())


def _layers(name: str, kind: type) -> list[nn.Module]:
    return [m for m in _network(name).modules() if isinstance(m, kind)]


def _fig(groups: list[Group], path: Path, title: str, keys=("train_loss", "val_loss", "val_acc")) -> str:
    drawable = [(g.label, g.finished or g.runs) for g in groups if (g.finished or g.runs)]
    if drawable:
        plot_groups(drawable, path, keys=keys, title=title)
    return path.name


def _table(groups: list[Group], cols: list[tuple[str, callable]]) -> str:
    cells = [[g.label, *(f(g) for _, f in cols), g.seeds_text()] for g in groups]
    return grid(["configuration", *(c for c, _ in cols), "seeds"], cells, left=(0, len(cols) + 1))


COLS = {
    "test acc (last)": lambda g: fmt(g.last("val_acc")),
    "best test acc": lambda g: fmt(g.best_acc()),
    "epoch of best": lambda g: fmt(g.best_epoch(), "{:.1f}"),
    "train acc (last)": lambda g: fmt(g.last("train_acc")),
    "gap (train − test)": lambda g: fmt(g.gap(), "{:+.4f}"),
    "train loss (last)": lambda g: fmt(g.last("train_loss")),
    "test loss (last)": lambda g: fmt(g.last("val_loss")),
    "epoch of min test loss": lambda g: fmt(g.min_loss_epoch(), "{:.1f}"),
    "s per run": lambda g: fmt(g.time(), "{:.0f}"),
    "train img/s": lambda g: fmt(g.rate(), "{:.0f}"),
}


def cols(*names) -> list:
    return [(n, COLS[n]) for n in names]
