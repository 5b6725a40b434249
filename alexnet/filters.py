"""The first layer's kernels as one picture (the chapter's Figure 8.1.2): the first convolution a
network's forward pass reaches, each kernel scaled to its own range, the kernels tiled in a grid.

    image, rows, cols = mosaic(filter_cells(first_conv(model).weight.detach().float()))   # (H, W, C) in [0, 1]

Tensors in, a tensor out: no plotting library and nothing of the package, so every room that shows
filters (visualize's figures, serve's page, tensorboard's image each epoch) draws them the same way
from below.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class VisualizeError(ValueError):
    """A network or input the pictures cannot be made of; the message is one line."""


def first_conv(model: nn.Module) -> nn.Conv2d:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise VisualizeError(f"{type(model).__name__} has no convolution to show")
    return conv


def contrast(x: torch.Tensor) -> torch.Tensor:
    """Scale each item of a (N, ...) tensor to [0, 1] on its own; a constant item becomes 0.5
    (a flat grey cell) rather than a division by zero."""
    flat = x.detach().float().flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).view(-1, *[1] * (x.ndim - 1))
    out = (x.float() - lo.view_as(span)) / span.clamp_min(1e-12)
    return torch.where(span > 0, out, torch.full_like(out, 0.5))


def mosaic(cells: torch.Tensor, cols: int | None = None, gap: int = 1) -> tuple[torch.Tensor, int, int]:
    """Tile (N, C, h, w) cells with values in [0, 1] into one (H, W, C) image with ``gap``-pixel white
    lines between them; returns (image, rows, cols). The grid is as square as N allows."""
    n, c, h, w = cells.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = torch.ones(rows * (h + gap) - gap, cols * (w + gap) - gap, c)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, k * (w + gap) : k * (w + gap) + w] = cells[i].permute(1, 2, 0)
    return out, rows, cols


def filter_cells(weight: torch.Tensor) -> torch.Tensor:
    """The first layer's kernels (out, in, kh, kw) as displayable cells: 3 input channels are shown
    as colour (RGB), 1 as grey, any other number as the mean over the channels (in grey)."""
    if weight.shape[1] not in (1, 3):
        weight = weight.mean(1, keepdim=True)
    return contrast(weight)
