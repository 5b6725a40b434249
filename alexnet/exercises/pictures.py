"""The page's last section: the chapter's Figure 8.1.2 (the first layer's kernels) from this sweep's own
runs, how far training moved them, and one test image's feature maps."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .. import data as D
from .common import TRAIN_IMAGES, _layers
from .results import named

MAPS = 16  # the strongest feature maps shown per stage


def _share(x: float) -> str:
    """seeds.moved as a share of the initial norm; infinite when the kernels started at zero."""
    return f"{x:.0%}" if math.isfinite(x) else "all (they started at zero)"


def _pictures(b, g, figs, rel, cmd, root):
    """The chapter's Figure 8.1.2 from this sweep's own runs, and one image's feature maps."""
    lines = ["## What the networks learned: first-layer filters (the chapter's Figure 8.1.2) and feature maps", ""]
    chapter, shown = _chapter_filters(figs, rel)
    filters, ours, moved_by, moved_kh = _sweep_filters(g, figs, rel)
    lines += chapter + filters
    shown = shown or ours
    lines += [_what_moved(moved_by, moved_kh), ""]
    lines += _feature_maps(g, figs, rel)
    return "\n".join(lines), (
        [
            (
                "Fig. 8.1.2",
                "alexnet filters RUN; alexnet activations RUN test:0",
                "first-layer kernels as an image grid; each stage's strongest feature maps",
                f"[{Path(shown).name}]({shown})",
            )
        ]
        if shown
        else []
    )


def _chapter_filters(figs, rel) -> tuple[list[str], str | None]:
    """AlexNet at 224x224 is shown after the chapter's own 10-epoch runs (benchmarks/chapter_224.py draws
    them for docs/report.md), not after this sweep's 1,000 images, whose kernels are still noise."""
    lines, shown = [], None
    chapter = figs.parent / "report" / "filters-224.png"
    if chapter.exists():
        lines += [
            "`alexnet` at 224×224 after the chapter's own runs (`d2l` and `fast`, all "
            f"{TRAIN_IMAGES:,} training images, seed 0), next to the kernels both started from; "
            "[report.md](report.md#figure-812-the-first-layer-"
            "trained-and-at-initialisation) says with a number how smooth they became:",
            "",
            f"![filters]({Path(rel).parent.as_posix()}/report/{chapter.name})",
            "",
        ]
        shown = f"{Path(rel).parent.as_posix()}/report/{chapter.name}"
    return lines, shown


def _sweep_filters(g, figs, rel) -> tuple[list[str], str | None, dict, dict]:
    """The 28x28 AlexNet's first-layer kernels from this sweep, and how far training moved them from
    the initial weights its seed gives (by network: the share, and the kernel's side)."""
    from ..runs import load_checkpoint, model_from_checkpoint
    from ..seeds import initial_first_conv, moved
    from ..visualize import first_conv, plot_filters

    lines, shown, moved_by, moved_kh = [], None, {}, {}
    for grp, name in ((named(g["4-28"], "ex4-alexnet28"), "filters-alexnet28.png"),):
        if not grp.finished:
            continue
        run = grp.finished[0]["dir"]
        ckpt = load_checkpoint(run / "last.pt")  # the end of the run, as the text says
        model, cfg = model_from_checkpoint(ckpt)
        info = plot_filters(model, figs / name, f"{cfg.train.model} · {run.name}")
        o, c, kh, kw = info["shape"]
        # How far training moved the kernels: the run's initial weights are a function of its seed.
        w0 = initial_first_conv(cfg, c, int(ckpt["num_classes"]))  # None: fitted to the data, not drawn
        if w0 is not None:
            moved_by[cfg.train.model], moved_kh[cfg.train.model] = moved(first_conv(model).weight, w0), kh
        lines += [
            f"`alexnet filters {run}` — {o} kernels {kh}×{kw} on {c} channel(s), after "
            f"{len(grp.finished[0]['metrics'])} epochs on {cfg.data.limit_train or 'all'} images"
            + (
                f"; training moved them by {_share(moved_by[cfg.train.model])} of their initial norm (‖W − W₀‖ / ‖W₀‖):"
                if w0 is not None
                else ":"
            ),
            "",
            f"![filters]({rel}/{name})",
            "",
        ]
        shown = shown or f"{rel}/{name}"
    return lines, shown, moved_by, moved_kh


def _what_moved(moved_by: dict, moved_kh: dict) -> str:
    """The chapter's figure against ours: what the moved shares say about the kernels."""
    from ..models import MODELS

    big = MODELS["alexnet"].resolution
    (k224, _) = _layers("alexnet", nn.Conv2d)[0].kernel_size  # conv1's
    return (
        "The chapter's figure shows AlexNet's ImageNet filters: oriented edges, gratings and colour blobs "
        "learned from 1.2 M photographs over 90 epochs. Here the networks trained for minutes on a few "
        "hundred or thousand grey 28×28 clothes. "
        + " ".join(
            f"`{m}`'s kernels "
            + (
                f"moved {_share(x)} of their initial norm: they keep most of their random "
                "initialisation and look like noise with faint structure."
                if x < 0.5
                else f"moved {_share(x)} of their initial norm: training has "
                f"rewritten them, though {moved_kh[m]}×{moved_kh[m]} leaves room "
                "for little more than local contrast."
                if moved_kh[m] <= 5
                else f"moved {_share(x)}: training has rewritten them."
            )
            for m, x in moved_by.items()
        )
        + f" At {big}×{big} the upsampled images hold no detail finer than {big // D.IDX_SIDE} pixels for "
        f"{k224}×{k224} kernels to tune to; filters like the chapter's need the chapter's data and epochs."
    )


def _feature_maps(g, figs, rel) -> list[str]:
    """The feature maps of each stage of the 28x28 AlexNet for the first test image."""
    from ..runs import load_checkpoint, model_from_checkpoint
    from ..visualize import plot_activations, stage_maps

    lines = []
    grp = named(g["4-28"], "ex4-alexnet28")
    if grp.finished:
        run = grp.finished[0]["dir"]
        ckpt = load_checkpoint(run / "last.pt")  # the end of the run, as the text says
        model, cfg = model_from_checkpoint(ckpt)
        ds = D.load_dataset(cfg.data.dataset, cfg.data.data_dir)
        x = D.make_transform(cfg, ds.name, torch.device("cpu"))(ds.test.images[:1], train=False)
        label = ds.classes[int(ds.test.labels[0])]
        written = plot_activations(model, x, figs, "activations-alexnet28", MAPS, f"alexnet28 · test image 0 ({label})")
        last_h, last_w = stage_maps(model, x)[-1][1].shape[-2:]
        lines += [
            f"`alexnet activations {run} test:0` — the feature maps of each stage for the first test "
            f"image ({label}), the {MAPS} strongest channels per stage:",
            "",
        ]
        lines += [f"![{w['stage']}]({rel}/{w['path'].name})" for w in written]
        lines += [
            "",
            "The first stages respond to the garment's edges and its bright and dark regions at full "
            "resolution; after each pooling the maps get coarser and more selective, and in the last "
            f"stage ({last_h}×{last_w}) a few channels carry most of the activation.",
            "",
        ]
    return lines
