"""Training: the optimiser and schedule, one step, one epoch, one evaluation. The run around them
(``fit``, its ``Session``) is in session.py; where a run stands, and its checkpoint, in position.py.

Data flows one way: uint8 split on the device -> batch of indices -> device-side augment/resize
-> model -> loss -> SGD -> metrics summed on the device -> host once per log interval -> run dir.
Image folders (imagenet.py) differ only in the first step: workers decode uint8 crops.

Under ``torchrun`` the same loop is data-parallel (DistributedDataParallel): each rank reads its
shard of every epoch's permutation, gradients are averaged in backward, metrics are reduced across
ranks, and rank 0 alone writes the run directory.

Resume is exact at any step: the data order, each batch's augmentation and each step's dropout
masks are functions of (seed, epoch, step), a Ctrl-C or SIGTERM takes effect between two steps,
and the checkpoint holds the epoch's running totals.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import data as D
from . import imagenet as I
from .config import Config, Schedule
from .device import CompiledOrEager, autocast, bf16_autocast, free_memory
from .models import Frozen, WhiteningConv
from .optim import Muon, add_lookahead, muon_groups
from .position import Position, TrainingError, resume_config  # noqa: F401  (their public home was here)
from .runs import warn


class NonFiniteLoss(TrainingError):
    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} by step {step}")
        self.step, self.value = step, value


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule


def make_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    t = cfg.train
    # Weight decay on weights only: decaying biases only slows learning.
    trained = [p for p in model.parameters() if p.requires_grad]  # not a frozen whitening conv
    decay = [p for p in trained if p.ndim > 1]
    no_decay = [p for p in trained if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if t.init_from:  # fine-tuning: the pretrained layers step at lr x --pretrained-lr-scale, the new head at lr
        from .finetune import is_pretrained

        old = is_pretrained(model)
        groups = [
            {
                **g,
                "params": [p for p in g["params"] if old[id(p)] == pre],
                "lr_scale": t.pretrained_lr_scale if pre else 1.0,
            }
            for g in groups
            for pre in (True, False)
        ]
        groups = [g for g in groups if g["params"]]
    # One fused kernel per step on CUDA and on the CPU rather than kernels per parameter tensor: the
    # optimiser's step is a visible part of a small network's training step.
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    if t.optimizer == "muon":  # orthogonalised updates for the convolutions (optim.py), SGD for the rest
        opt = Muon(muon_groups(groups, t.lr, t.muon_lr), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)
    else:
        opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0, **fused)
    return add_lookahead(opt, t.lookahead_k, t.lookahead_alpha) if t.lookahead_k else opt


SCHEDULES = typing.get_args(Schedule)


def lr_at(step: int, total_steps: int, steps_per_epoch: int, cfg: Config, drops: int = 0) -> float:
    """The learning rate at a global step: a pure function, so resuming needs no scheduler state
    (``drops``, the plateau schedule's divisions so far, is replayed from the saved metrics)."""
    t = cfg.train
    warm = int(t.warmup_epochs * steps_per_epoch)
    if step < warm:
        return t.lr * (step + 1) / warm
    if t.schedule == "cosine":
        progress = (step - warm) / max(1, total_steps - warm)
        return t.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if t.schedule == "step":
        return t.lr * 0.1 ** (step // max(1, t.lr_step_epochs * steps_per_epoch))
    if t.schedule == "plateau":
        return t.lr * 0.1**drops
    if t.schedule == "linear":  # with the warm-up, a one-cycle: up for warmup_epochs, then down to zero
        return t.lr * max(0.0, 1 - (step - warm) / max(1, total_steps - warm))
    return t.lr


def plateau_drops(val_errors: list[float], patience: int) -> int:
    """How often the paper's rule ("divide by 10 when the validation error stopped improving") has
    fired after these epochs: after ``patience`` epochs without a new best, and again after as many more."""
    drops, best, since = 0, math.inf, 0
    for err in val_errors:
        if err < best:
            best, since = err, 0
        else:
            since += 1
            if since >= patience:
                drops, since = drops + 1, 0
    return drops


# ---------------------------------------------------------------------------------------------
# One epoch, one evaluation


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, taken between two steps: weights, optimizer and totals agree."""


class StopFlag:
    """SIGINT/SIGTERM set a flag the loop reads between steps, so an interruption never lands
    between ``optimizer.step()`` and the totals that a mid-epoch checkpoint saves.

    A second signal ends the process at once (``os._exit``) rather than raising: an exception
    raised from a handler lands in whatever runs then, a C extension's first import included,
    where it aborts the interpreter. Exiting is safe because every file is written atomically:
    a write cut short leaves the previous file and a temporary that the resume removes."""

    def __init__(self, exit=os._exit):
        self.requested, self._previous, self._exit = False, {}, exit

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not in the main thread: leave the signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.requested:
            # os.write, not print: the handler may have interrupted a print to the same stream.
            with contextlib.suppress(OSError):
                os.write(2, b"alexnet: interrupted again: stopped at once; the last checkpoint is whole\n")
            self._exit(128 + signum)
            return
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise Interrupted


@dataclass
class Tally:
    """Running totals of the epoch in progress, on the device; a mid-epoch checkpoint saves them."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    steps: int = 0  # steps taken in this epoch

    @classmethod
    def start(cls, device, saved: tuple | None = None) -> Tally:
        ls, c, n, s = saved or (0.0, 0, 0, 0)
        f32 = torch.float32
        return cls(torch.tensor(ls, device=device, dtype=f32), torch.tensor(c, device=device), int(n), int(s))

    def saved(self) -> tuple:
        return (self.loss_sum.item(), int(self.correct.item()), self.seen, self.steps)

    def mean_loss(self) -> float:
        return (self.loss_sum / max(self.seen, 1)).item()  # the one host-device sync per interval


@dataclass
class Progress:
    """What is shown while an epoch runs: a tqdm bar, or nothing."""

    enabled: bool = True

    def bar(self, total: int, desc: str, done: int = 0):
        if not self.enabled:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=done, desc=desc, unit="step", leave=False, dynamic_ncols=True)


def train_step(model, optimizer, x, y, *, device, amp: bool, label_smoothing: float = 0.0):
    """One optimisation step: what `alexnet train` runs per batch and `alexnet bench` times.
    Returns the loss and the logits, still on the device (reading them would synchronise)."""
    with autocast(device, amp):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def train_one_epoch(
    model,
    optimizer,
    batches,
    *,
    device,
    amp,
    label_smoothing=0.0,
    lr_fn=None,
    step0=0,
    log_every=25,
    bar=None,
    tally=None,
    dropout_seed=None,
    stop=None,
    on_log=None,
) -> dict:
    """Train over ``batches``; returns {'loss', 'acc', 'images', 'steps'} of the epoch.

    ``tally`` holds the epoch's running totals (resumed ones included) and is updated in place.
    Losses stay on the device and reach the host only every ``log_every`` steps, where they are
    checked for non-finite values. ``dropout_seed(step)`` seeds each step's dropout masks.
    ``on_log(step, loss, acc, lr, images_per_s)`` is told the running means there (TensorBoard).
    """
    model.train()
    tally = tally or Tally.start(device)
    step, t0, n0 = step0, time.perf_counter(), tally.seen
    for x, y in batches:
        if stop is not None:
            stop.check()
        if lr_fn is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_fn(step) * group.get("lr_scale", 1.0)
        if dropout_seed is not None:
            torch.manual_seed(dropout_seed(step))
        loss, logits = train_step(model, optimizer, x, y, device=device, amp=amp, label_smoothing=label_smoothing)
        tally.loss_sum += loss.detach() * len(y)
        tally.correct += (logits.argmax(1) == y).sum()
        tally.seen, tally.steps, step = tally.seen + len(y), tally.steps + 1, step + 1
        if step % log_every == 0:
            mean = tally.mean_loss()
            if not math.isfinite(mean):
                raise NonFiniteLoss(step, mean)
            rate = (tally.seen - n0) / (time.perf_counter() - t0)
            if bar is not None:
                bar.set_postfix(loss=f"{mean:.3f}", img_s=f"{rate:.0f}", refresh=False)
            if on_log is not None:
                on_log(step, mean, tally.correct.item() / max(tally.seen, 1), optimizer.param_groups[0]["lr"], rate)
        if bar is not None:
            bar.update(1)
    mean = tally.mean_loss()
    if not math.isfinite(mean):
        raise NonFiniteLoss(step, mean)
    return {"loss": mean, "acc": (tally.correct / max(tally.seen, 1)).item(), "images": tally.seen, "steps": step}


# The largest confusion matrix drawn: 1000 classes (ImageNet-1k) is 8 MB of counts; above it the
# per-class counts (linear in the classes) are all that is kept.
MAX_CONFUSION = 1000


@torch.inference_mode()
def evaluate(
    model, batches, *, device, amp, num_classes: int, confusion: bool = False, stop=None, flip_tta: bool = False
) -> dict:
    """Mean loss, accuracy and top-5 accuracy, and each class's images and correct predictions
    (with ``confusion``, the confusion matrix too, rows = true class, up to MAX_CONFUSION classes).

    A batch of shape (B, n, C, H, W) holds n crops per image whose softmaxes are averaged (§4.1).
    ``flip_tta``: each image's logits are averaged with its mirror image's.
    """
    model.eval()
    loss_sum, top5 = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    # Memory linear in the classes: a classes² matrix is 3.8 GB at ImageNet-21k's 21841.
    per_class = torch.zeros(2, num_classes, device=device, dtype=torch.long)  # images, correct
    dense = confusion and num_classes <= MAX_CONFUSION
    matrix = torch.zeros(num_classes * num_classes if dense else 0, device=device, dtype=torch.long)
    seen = 0
    for x, y in batches:
        if stop is not None:
            stop.check()
        crops = x.shape[1] if x.ndim == 5 else 1
        with autocast(device, amp):
            logits = model(x.flatten(0, 1) if crops > 1 else x).float()
            if flip_tta:
                logits = (logits + model(x.flip(-1).flatten(0, 1) if crops > 1 else x.flip(-1)).float()) / 2
        if crops > 1:
            scores = logits.softmax(1).view(len(y), crops, -1).mean(1).log()  # (B*n, K) -> (B, K)
            loss_sum += F.nll_loss(scores, y, reduction="sum")
        else:
            scores = logits
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
        pred = scores.argmax(1)
        per_class[0] += torch.bincount(y, minlength=num_classes)
        per_class[1] += torch.bincount(y[pred == y], minlength=num_classes)
        if dense:
            matrix += torch.bincount(y * num_classes + pred, minlength=num_classes**2)
        top5 += (scores.topk(min(5, num_classes), 1).indices == y[:, None]).any(1).sum()
        seen += len(y)
    per_class = per_class.cpu()
    out = {
        "loss": (loss_sum / max(seen, 1)).item(),
        "acc": (per_class[1].sum() / max(seen, 1)).item(),
        "top5": (top5 / max(seen, 1)).item(),
        "images": seen,
        "class_images": per_class[0],
        "class_correct": per_class[1],
    }
    if confusion:
        out["confusion"] = matrix.view(num_classes, num_classes).cpu() if dense else None
    return out


def evaluate_run(
    model,
    ckpt: dict,
    device: torch.device,
    data_dir: str | None = None,
    batch_size: int = 256,
    ten_crop: bool | None = None,
) -> dict:
    """An image-folder checkpoint's top-1 / top-5 on its validation split, with the run's own colour
    statistics and precision."""
    cfg = ckpt["cfg"]
    changes = {"data_dir": data_dir or cfg.data.data_dir}
    if ten_crop is not None:
        changes["ten_crop"] = ten_crop
    pipe = I.ImagePipeline(
        cfg.replace(**changes), device, ckpt["resolution"], 1, batch_size, stats=ckpt.get("stats"), channels_last=False
    )
    ev = evaluate(
        model.to(device),
        pipe.val(),
        device=device,
        amp=bf16_autocast(cfg.system.amp, device),
        num_classes=len(pipe.classes),
    )
    if ev["images"] == 0:
        raise TrainingError(f"{cfg.data.data_dir}: no readable validation image ({pipe.skipped} unreadable)")
    return {**ev, "skipped": pipe.skipped, "ten_crop": changes.get("ten_crop", cfg.data.ten_crop)}


# ---------------------------------------------------------------------------------------------
# Once before the first step: a frozen stem computed once per image


def stem_once(model: nn.Module, data: D.Source, world: int) -> bool:
    """Whether the network's frozen leading layers can run once per image rather than every step."""
    # One process: the layers after the stem train outside DistributedDataParallel.
    return isinstance(model, nn.Sequential) and isinstance(model[0], Frozen) and data.precomputable and world == 1


def prepare_frozen(model, net, data: D.Source, cfg: Config, device, world: int, warn_here: bool) -> nn.Module:
    """Before the first step (its time counted as training): fit any whitening conv to the training
    images and, where nothing in the step could change their output, compute the network's frozen
    leading layers once per image. Returns the network that trains: ``net``, or the layers after the stem."""
    for m in model.modules():
        if isinstance(m, WhiteningConv) and not m.fitted:  # a resumed run's checkpoint holds its filters
            m.fit(data.sample(5000))
    if not stem_once(model, data, world):
        return net
    try:
        data.precompute(model[0], amp=cfg.system.amp == "bf16", free=free_memory(device))
    except D.CacheTooLarge as e:
        if warn_here:
            warn(f"{e}: computing them in every step instead (slower, the same result)")
        return net
    return CompiledOrEager(model[1:], cfg.system.compile == "on")


# The run around the loop (fit, Session) lives in session.py, which calls this module's functions;
# its names are still read from here, where callers have always found them.
_IN_SESSION = ("fit", "Session", "RunResult", "load_data")


def __getattr__(name: str):
    if name in _IN_SESSION:
        from . import session

        return getattr(session, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
