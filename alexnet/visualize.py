"""What a trained network has learned, as pictures: the first layer's kernels (the chapter's
Figure 8.1.2) and the feature maps each convolutional stage makes of one image.

Both work for any registered network with a convolution: the first ``nn.Conv2d`` the forward pass
reaches is "the first layer", and a stage is a convolution with the element-wise layers (ReLU,
batch norm, ...) that follow it before the shape changes. The grid of kernels itself
(``first_conv``, ``contrast``, ``mosaic``, ``filter_cells``) is drawn in filters.py, below the training
rooms, so that ``--tensorboard`` draws it the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .filters import VisualizeError, contrast, filter_cells, first_conv, mosaic
from .plotting import pyplot
from .runs import atomic_write


def _show(ax, image: torch.Tensor, title: str) -> None:
    """An (H, W, C) image in [0, 1] on ``ax``, grey for one channel, pixels unsmoothed."""
    c = image.shape[-1]
    ax.imshow(
        image.squeeze(-1).numpy() if c == 1 else image.numpy(),
        cmap="gray" if c == 1 else None,
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)


def _imshow(image: torch.Tensor, path: Path, title: str, scale: float = 0.12) -> None:
    plt = pyplot()

    h, w, _ = image.shape
    fig, ax = plt.subplots(figsize=(max(3.0, min(8.0, w * scale)), max(2.5, min(8.0, h * scale)) + 0.4))
    _show(ax, image, title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)


def plot_filters(model: nn.Module, path: str | Path, title: str = "") -> dict:
    """Write the first convolution's kernels as a grid; returns {'path', 'kernels', 'rows', 'cols', 'shape'}."""
    conv = first_conv(model)
    w = conv.weight.detach().cpu().float()
    image, rows, cols = mosaic(filter_cells(w))
    colour = "RGB" if w.shape[1] == 3 else "grey" if w.shape[1] == 1 else f"mean of {w.shape[1]} channels"
    label = f"{title} · " if title else ""
    _imshow(
        image,
        Path(path),
        f"{label}first layer: {w.shape[0]} kernels {w.shape[2]}x{w.shape[3]}x{w.shape[1]} "
        f"({colour}, each scaled to its own range)",
        scale=0.25 if w.shape[-1] <= 5 else 0.07,
    )
    return {"path": Path(path), "kernels": w.shape[0], "rows": rows, "cols": cols, "shape": tuple(w.shape)}


# Element-wise layers that belong to the convolution before them: they keep its output's shape.
_ELEMENTWISE = (
    nn.ReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.BatchNorm2d,
    nn.LocalResponseNorm,
    nn.GroupNorm,
    nn.Identity,
)


@torch.inference_mode()
def stage_maps(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Run one image (1, C, H, W) through the network and return, per convolutional stage, its name
    and feature maps (channels, h, w): a convolution's output after the element-wise layers that
    follow it (its ReLU, say), taken in the order the forward pass runs them."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, o))) for m in leaves]
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    stages, k = [], 0
    for i, (m, out) in enumerate(seen):
        if not isinstance(m, nn.Conv2d):
            continue
        k += 1
        name, maps = f"conv{k} ({names.get(m, '?')})", out
        for m2, out2 in seen[i + 1 :]:
            if not isinstance(m2, _ELEMENTWISE) or not torch.is_tensor(out2) or out2.shape != out.shape:
                break
            name, maps = f"{name}+{type(m2).__name__.lower()}", out2
        stages.append((name, maps[0].detach().float().cpu()))
    if not stages:
        raise VisualizeError(f"{type(model).__name__} has no convolution to show")
    return stages


def strongest(maps: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` channels with the largest mean activation, strongest first."""
    order = maps.flatten(1).mean(1).argsort(descending=True)
    return maps[order[:n]]


def plot_activations(
    model: nn.Module, x: torch.Tensor, out_dir: str | Path, stem: str = "image", max_channels: int = 32, title: str = ""
) -> list[dict]:
    """One PNG per convolutional stage, its ``max_channels`` strongest maps in a grid (each map scaled
    to its own range), and the input as the network saw it; returns one record per file written."""
    out_dir = Path(out_dir)
    written = []
    shown = contrast(x[:1].detach().float().cpu())[0]
    path = out_dir / f"{stem}-input.png"
    _imshow(
        shown.permute(1, 2, 0) if shown.shape[0] in (1, 3) else shown[:1].permute(1, 2, 0),
        path,
        f"{title} input {tuple(x.shape[1:])}",
        scale=0.05,
    )
    written.append({"path": path, "stage": "input", "channels": x.shape[1], "shown": 1})
    for k, (name, maps) in enumerate(stage_maps(model, x), 1):
        top = strongest(maps, max_channels)
        image, rows, cols = mosaic(contrast(top[:, None]), gap=max(1, maps.shape[-1] // 14))
        path = out_dir / f"{stem}-stage{k}.png"
        label = f"{title} · " if title else ""
        _imshow(
            image,
            path,
            f"{label}stage {k}: {name}, {maps.shape[0]} maps {maps.shape[1]}x{maps.shape[2]}; "
            f"the {len(top)} strongest (mean activation), strongest first",
            scale=0.06,
        )
        written.append(
            {"path": path, "stage": name, "channels": maps.shape[0], "shown": len(top), "rows": rows, "cols": cols}
        )
    return written


# ---------------------------------------------------------------------------------------------
# How smooth the kernels are, as a number (the chapter's Figure 8.1.2 left to speak for itself is
# a Rorschach test: noise with faint structure and smooth blobs can look alike at 11x11 pixels).

LOW_FREQUENCY = 0.25  # cycles per pixel: half the Nyquist frequency, i.e. periods of 4 pixels or longer


def _low_mask(kh: int, kw: int, cutoff: float) -> torch.Tensor:
    """The DFT bins of a kh x kw kernel whose radial frequency is at most ``cutoff`` cycles/pixel."""
    fy, fx = torch.fft.fftfreq(kh, dtype=torch.float64), torch.fft.fftfreq(kw, dtype=torch.float64)
    return (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() <= cutoff + 1e-12


def low_frequency_share(weight: torch.Tensor, cutoff: float = LOW_FREQUENCY) -> torch.Tensor:
    """Per kernel of a conv weight (out, in, kh, kw): the share of its energy (the sum of squared
    DFT magnitudes over its input channels, which by Parseval is its squared norm) at spatial
    frequencies of at most ``cutoff`` cycles per pixel. A constant kernel has all of its energy at
    frequency 0 (share 1); a checkerboard has it at the Nyquist frequency, 1/2 (share 0 on an even
    side; an odd side leaks a little, under 1 %). White noise, such as a Xavier initialisation,
    spreads its energy evenly over the bins: its expected share is ``chance_share``. A kernel of
    zeros has no energy: share 0."""
    w = weight.detach().double().cpu()
    power = torch.fft.fft2(w).abs().pow(2).sum(1)  # (out, kh, kw)
    total = power.flatten(1).sum(1)
    low = (power * _low_mask(w.shape[-2], w.shape[-1], cutoff)).flatten(1).sum(1)
    return torch.where(total > 0, low / total.clamp_min(1e-300), torch.zeros_like(total))


def chance_share(kh: int, kw: int, cutoff: float = LOW_FREQUENCY) -> float:
    """The share of white noise (every bin the same expected energy): the fraction of bins that are low."""
    return float(_low_mask(kh, kw, cutoff).double().mean())


def orientation_strength(weight: torch.Tensor) -> torch.Tensor:
    """Per kernel of a conv weight (out, in, kh, kw): how much of its non-constant energy lies along
    one orientation, in [0, 1]. From the energy-weighted second moments of the frequency vector,
    J = sum P(f) f f^T / sum P(f) over the non-zero frequencies: (l1 - l2) / (l1 + l2) of J's two
    eigenvalues. A grating (stripes) gives 1; a round blob, a checkerboard's two diagonals or white
    noise give about 0, as does a constant kernel (no energy away from frequency 0)."""
    w = weight.detach().double().cpu()
    power = torch.fft.fft2(w).abs().pow(2).sum(1)  # (out, kh, kw)
    fy = torch.fft.fftfreq(w.shape[-2], dtype=torch.float64)[:, None].expand(w.shape[-2], w.shape[-1])
    fx = torch.fft.fftfreq(w.shape[-1], dtype=torch.float64)[None, :].expand(w.shape[-2], w.shape[-1])
    full = power.flatten(1).sum(1)
    power = power.clone()
    power[:, 0, 0] = 0  # the mean says nothing about orientation
    total = power.flatten(1).sum(1)
    jxx, jyy, jxy = ((power * a).flatten(1).sum(1) for a in (fx * fx, fy * fy, fx * fy))
    # Eigenvalues of [[jxx, jxy], [jxy, jyy]]: their difference over their sum.
    spread = ((jxx - jyy) ** 2 + 4 * jxy**2).sqrt()
    # Rounding leaves ~1e-32 of a constant kernel's energy off frequency 0: that is no orientation.
    return torch.where(total > 1e-12 * full, spread / (jxx + jyy).clamp_min(1e-300), torch.zeros_like(total))


def _panel(ax, weight: torch.Tensor, title: str) -> None:
    image, _, _ = mosaic(filter_cells(weight.detach().cpu().float()))
    _show(ax, image, title)


def filter_panels_figure(panels: list, cols: int | None = None, cutoff: float = LOW_FREQUENCY):
    """First-layer kernels side by side (say, at initialisation, trained, and the change W - W0),
    one grid per (title, weight), ``cols`` grids to a row, None leaving a place empty; each title
    gets the kernels' median low-frequency share and orientation strength. Returns the figure."""
    plt = pyplot()

    cols = cols or len(panels)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 5.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, panel in zip(axes.flat, panels):
        if panel is None:
            continue
        title, w = panel
        share = low_frequency_share(w, cutoff)
        _panel(
            ax,
            w,
            f"{title}\nlow-frequency share: median {share.median():.2f} "
            f"(IQR {share.quantile(0.25):.2f}-{share.quantile(0.75):.2f})\n"
            f"orientation: median {orientation_strength(w).median():.2f}",
        )
    o, c, kh, kw = next(p for p in panels if p is not None)[1].shape
    fig.suptitle(
        f"first layer: {o} kernels {kh}x{kw}x{c}, each scaled to its own range; low-frequency share = "
        f"energy at <= {cutoff:g} cycles/pixel (white noise: {chance_share(kh, kw, cutoff):.2f})",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    if rows > 1:  # tight_layout leaves a lower row's three-line title over the grid above it
        fig.subplots_adjust(hspace=0.32)
    return fig


def class_activations_figure(
    model: nn.Module, images: torch.Tensor, labels: list[str], maps: int = 16, cell: int = 128
):
    """One row per image (say, one test image per class): the input as the network saw it, then
    each convolutional stage's ``maps`` strongest feature maps (by mean activation) as a mosaic,
    each map scaled to its own range. Returns the figure.

    The rows are tiled into one picture (each panel resized to ``cell`` pixels) and drawn on one
    axes: sixty matplotlib axes take seconds to lay out."""
    plt = pyplot()
    import torch.nn.functional as F

    rows = [stage_maps(model, images[i : i + 1]) for i in range(len(images))]
    gap = max(2, cell // 16)

    def fit(img: torch.Tensor) -> torch.Tensor:  # (h, w, c) in [0, 1] -> (cell, cell, 3), grey made RGB
        x = img.permute(2, 0, 1)[None]
        # Enlarge with nearest (pixels stay visible), shrink by averaging (a 224-pixel map keeps its shapes).
        x = F.interpolate(x, size=(cell, cell), mode="nearest" if x.shape[-1] <= cell else "area")
        img = x[0].permute(1, 2, 0)
        return img.expand(-1, -1, 3) if img.shape[-1] == 1 else img

    panels = []
    for r, stages in enumerate(rows):
        shown = contrast(images[r : r + 1].detach().float().cpu())[0]
        row = [fit(shown.permute(1, 2, 0) if shown.shape[0] == 3 else shown[:1].permute(1, 2, 0))]
        for _, m in stages:
            row.append(fit(mosaic(contrast(strongest(m, maps)[:, None]), gap=max(1, m.shape[-1] // 14))[0]))
        panels.append(row)
    canvas, _, cols = mosaic(
        torch.stack([p.permute(2, 0, 1) for row in panels for p in row]), cols=len(panels[0]), gap=gap
    )
    fig, ax = plt.subplots(figsize=(1.25 * cols + 1.2, 1.25 * len(rows) + 0.7))
    ax.imshow(canvas.numpy(), interpolation="nearest")
    ax.set_xticks(
        [(cell + gap) * k + cell / 2 for k in range(cols)],
        [f"input {images.shape[-2]}x{images.shape[-1]}"]
        + [f"{name.split(' ')[0]}\n{m.shape[0]}x{m.shape[1]}x{m.shape[2]}" for name, m in rows[0]],
        fontsize=7,
    )
    ax.xaxis.tick_top()
    ax.set_yticks([(cell + gap) * k + cell / 2 for k in range(len(rows))], labels, fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xlabel(
        f"each stage's {maps} strongest maps (mean activation), strongest first; each map scaled to its own range",
        fontsize=7,
    )
    fig.tight_layout()
    return fig
