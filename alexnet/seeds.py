"""Every random stream of a run, derived from one seed by key: (seed, purpose, epoch, step, rank).

How to use it: build ``Seeds(cfg.train.seed, cfg.train.seed_streams)`` once and ask it for the
stream you need; never add an offset to a seed by hand.

    seeds = Seeds(7)
    torch.Generator().manual_seed(seeds.order(epoch))          # the epoch's data order
    seeds.generator("augment", epoch, batch_index)              # one batch's crops and flips (CPU)
    torch.manual_seed(seeds.dropout(epoch, step, rank))         # one step's dropout masks
    np.random.default_rng(seeds.image(epoch, index))            # one decoded image's augmentation

A new purpose is one more name in PURPOSES; ``derive`` hashes the whole key, so two streams are
equal only if their keys are (tests/test_seeds.py checks every purpose against every other).
Model initialisation is the one stream that is not keyed: ``build_model(name, seed=seed)`` seeds
torch with the run's seed itself, so any run's initial weights can be rebuilt from config.json
(``initial_first_conv``), and ``moved`` says how far training took the weights from them.

Why keyed, not offsets: the earlier derivations (``seed * 1_000_003 + epoch`` for the order,
``... + index + 7_777`` for augmentation, ``seed * 1_000_003 + 7 * step`` for dropout) collided:
step 0's dropout seed was epoch 0's order seed, and step 1's was epoch 7's. Those formulas stay
here as ``style="offsets"`` so that a run started before keyed streams (its config.json has no
``seed_streams``) resumes exactly; new runs record ``seed_streams: keyed``.
"""

from __future__ import annotations

import hashlib
import math
import typing

import torch

PURPOSES = ("order", "augment", "dropout", "image", "stats")
Style = typing.Literal["keyed", "offsets"]
STYLES: tuple[str, ...] = typing.get_args(Style)


def derive(seed: int, purpose: str, epoch: int = 0, step: int = 0, rank: int = 0) -> int:
    """A 63-bit seed for one stream: a hash of the whole key, so distinct keys give independent
    streams (no offset arithmetic that two keys can share)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random stream {purpose!r}; known: {', '.join(PURPOSES)}")
    key = f"alexnet/{int(seed)}/{purpose}/{int(epoch)}/{int(step)}/{int(rank)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class Seeds:
    """The seeds of one run's random streams. ``style`` 'offsets' reproduces the derivation of runs
    started before keyed streams existed, so they resume bit-exactly."""

    def __init__(self, seed: int = 0, style: Style = "keyed"):
        if style not in STYLES:
            raise ValueError(f"unknown seed style {style!r}; choose one of: {', '.join(STYLES)}")
        self.seed, self.style = int(seed), style

    def __repr__(self) -> str:
        return f"Seeds({self.seed}, {self.style!r})"

    def order(self, epoch: int) -> int:
        """The permutation of the training set in ``epoch`` (the same on every rank)."""
        if self.style == "offsets":
            return self.seed * 1_000_003 + epoch
        return derive(self.seed, "order", epoch)

    def augment(self, epoch: int, index: int) -> int:
        """The crops and flips of the ``index``-th batch of ``epoch`` (over all ranks: i * world + rank)."""
        if self.style == "offsets":
            return (self.seed * 1_000_003 + epoch) * 1_000_033 + index + 7_777
        return derive(self.seed, "augment", epoch, index)

    def dropout(self, epoch: int, step: int, rank: int = 0) -> int:
        """The dropout masks of global ``step`` on ``rank`` (else every rank's i-th image shares a mask)."""
        if self.style == "offsets":
            return self.seed * 1_000_003 + 1_000_033 * rank + 7 * step
        return derive(self.seed, "dropout", epoch, step, rank)

    def image(self, epoch: int, index: int) -> int | list[int]:
        """One decoded image's crop, flip and lighting (numpy's default_rng takes either form)."""
        if self.style == "offsets":
            return [self.seed, epoch, index]
        return derive(self.seed, "image", epoch, index)

    def stats(self) -> int:
        """Which training images the colour statistics sample."""
        return self.seed if self.style == "offsets" else derive(self.seed, "stats")

    def generator(self, purpose: str, epoch: int = 0, index: int = 0) -> torch.Generator:
        """A CPU generator for ``order`` or ``augment``: drawn on the CPU whatever the device, so a
        run resumed on another device draws exactly what the uninterrupted one did."""
        seed = {"order": lambda: self.order(epoch), "augment": lambda: self.augment(epoch, index)}[purpose]()
        return torch.Generator().manual_seed(seed)


def as_seeds(seed: int | Seeds) -> Seeds:
    """Functions that take a seed accept a plain int (keyed streams) or a run's ``Seeds``."""
    return seed if isinstance(seed, Seeds) else Seeds(seed)


def initial_first_conv(cfg, in_channels: int, num_classes: int) -> torch.Tensor | None:
    """A run's first-layer weights before its first step, rebuilt from its seed: ``train`` builds the
    network with ``build_model(..., seed=cfg.train.seed)`` before anything else draws from torch's
    stream, so the same call gives them exactly (tests/test_report.py checks this against a checkpoint
    taken at step 0). The caller's random stream is left as it was. None for a first layer that is
    fitted to the data rather than drawn (a whitening conv): it has no initial state to rebuild."""
    from .filters import first_conv
    from .models import WhiteningConv, build_model

    with torch.random.fork_rng(devices=[]):
        conv = first_conv(build_model(cfg.train.model, in_channels, num_classes, seed=cfg.train.seed))
    return None if isinstance(conv, WhiteningConv) else conv.weight.detach().clone()


def moved(w: torch.Tensor, w0: torch.Tensor) -> float:
    """How far training moved weights ``w`` from their initial ``w0``: ||W - W0|| / ||W0|| (Frobenius
    norms, in float64). Initial weights of norm zero give no scale, so the value is defined by the
    limit: 0.0 when training left them at zero, ``math.inf`` when it moved them at all (all of W is
    training's). Never NaN, and never 0.0 for weights that did move."""
    w, w0 = w.detach().double().cpu(), w0.detach().double().cpu()
    change, scale = float((w - w0).norm()), float(w0.norm())
    if scale == 0.0:
        return 0.0 if change == 0.0 else math.inf
    return change / scale
