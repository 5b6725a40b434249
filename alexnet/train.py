"""Training: the optimiser and schedule, one epoch, one evaluation, and the run around them.

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
import copy
import functools
import itertools
import math
import os
import signal
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import budget as B
from . import data as D
from . import finetune
from . import imagenet as I
from .config import RESUMABLE, Config, ConfigError, Schedule, parse_choices, parse_duration
from .device import (
    CompiledOrEager,
    autocast,
    bf16_autocast,
    channels_last_on,
    describe,
    free_memory,
    init_distributed,
    reduce_means,
    select_device,
    use_compile,
)
from .measure import machine, time_turns
from .models import Frozen, TwoTowers, WhiteningConv, build_model
from .optim import Muon, muon_groups
from .runs import RunDir, RunError, best_epoch_of, load_checkpoint, load_weights, say, warn
from .seeds import Seeds
from .tracing import InputTooSmall, trace


class TrainingError(RunError):
    """A run that cannot go on (non-finite loss, bad resume); the message is one line."""


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
    # One fused kernel per step on CUDA and on the CPU: on the 2-core CPU alexnet28's 1 M parameters
    # step in 0.19 ms fused against 0.62 ms foreach (alone; inside a profiled training step the
    # foreach step took 4.2 ms of 56, with the gradients no longer in cache).
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    if t.optimizer == "muon":  # orthogonalised updates for the convolutions (optim.py), SGD for the rest
        return Muon(muon_groups(groups, t.lr, t.muon_lr), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0, **fused)


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


class Abort(KeyboardInterrupt):
    """A second Ctrl-C: stop now, mid-step, without writing anything."""


class StopFlag:
    """SIGINT/SIGTERM set a flag the loop reads between steps, so an interruption never lands
    between ``optimizer.step()`` and the totals that a mid-epoch checkpoint saves."""

    def __init__(self):
        self.requested, self._previous = False, {}

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
            raise Abort
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
# Resuming: the run's own plan, and the few settings that may change


@dataclass
class Position:
    """Where a run stands: finished epochs, steps into the next one and their totals, the metrics."""

    epoch: int = 0
    step: int = 0
    tally: tuple | None = None  # (loss_sum, correct, seen, steps) of those steps
    metrics: list[dict] = field(default_factory=list)
    changes: list[dict] = field(default_factory=list)  # settings a resume changed, and from which epoch
    train_s: float = 0.0  # seconds those steps trained: a resumed epoch's images/s covers them too

    @property
    def best_acc(self) -> float:
        return max((m["val_acc"] for m in self.metrics), default=-1.0)

    @classmethod
    def of(cls, ckpt: dict) -> Position:
        tally = ckpt.get("tally")
        train_s = ckpt.get("epoch_train_s")
        train_s = float(train_s) if isinstance(train_s, (int, float)) and 0 <= train_s < 1e9 else 0.0
        return cls(
            int(ckpt["epoch"]),
            int(ckpt["step"]),
            tuple(tally) if tally else None,
            list(ckpt["metrics"]),
            list(ckpt.get("changes", [])),
            train_s,
        )


def resume_config(ckpt: dict, overrides: dict) -> tuple[Config, list[dict]]:
    """The run's recorded settings with the user's explicit changes, of which only RESUMABLE ones
    are allowed; each change is returned as a record with the epoch it takes effect."""
    saved = ckpt["cfg"]
    current = {**saved.flat(), "preset": saved.preset}
    refused = sorted(k for k, v in overrides.items() if k not in RESUMABLE and current.get(k) != v)
    if refused:
        k = refused[0]
        raise TrainingError(
            f"--resume keeps the run's recorded settings: --{k.replace('_', '-')} cannot change "
            f"({current.get(k)!r} -> {overrides[k]!r}); start a new run for that"
        )
    done = int(ckpt["epoch"])
    if "epochs" in overrides and overrides["epochs"] < done + (1 if ckpt["step"] else 0):
        raise TrainingError(f"--epochs {overrides['epochs']}: the run has already trained {done} epochs")
    changed = {k: v for k, v in overrides.items() if current.get(k) != v and k != "preset"}
    at = done + 1
    records = [{"epoch": at, "setting": k, "from": current.get(k), "to": v} for k, v in changed.items()]
    try:
        cfg = saved.replace(**changed)
    except ConfigError as e:
        raise TrainingError(str(e)) from None
    return cfg, list(ckpt.get("changes", [])) + records


def _resolved(cfg: Config, device: torch.device) -> Config:
    """Record what 'auto' meant on this machine, so the run says how it was trained and a resume
    keeps that precision (and compilation) rather than re-deciding."""
    return cfg.replace(
        amp="bf16" if bf16_autocast(cfg.system.amp, device) else "off",
        compile="on" if use_compile(cfg.system.compile, device) else "off",
    )


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class RunResult:
    run_dir: Path
    metrics: list[dict]
    interrupted: bool = False

    @property
    def final(self) -> dict:
        return self.metrics[-1] if self.metrics else {}


def fit(
    cfg: Config,
    run_dir=None,
    *,
    resume: bool = False,
    overrides: dict | None = None,
    progress: bool = True,
    quiet: bool = False,
    replan: bool = False,
) -> RunResult:
    """Train ``cfg`` into ``run_dir`` (a fresh, uniquely named one under runs/ when None), or, with
    ``resume``, continue the run there with its own settings changed only by ``overrides`` (and a
    budgeted run's steps re-planned on this machine with ``replan``).
    Under torchrun, data-parallel over the ranks; rank 0 writes the run directory."""
    ckpt, held = None, None
    if resume:
        if run_dir is None or not (Path(run_dir) / "last.pt").exists():
            raise TrainingError(f"--resume {run_dir}: no last.pt to resume from")
        if os.environ.get("RANK", "0") == "0":  # the writer: the lock first, then the checkpoint under it
            held, ckpt = RunDir.resume(run_dir)
        else:
            ckpt = load_checkpoint(Path(run_dir) / "last.pt")
    try:
        if resume:
            cfg, changes = resume_config(ckpt, dict(overrides or {}))
        elif overrides:
            cfg = cfg.replace(**overrides)
        device, rank, world = init_distributed(cfg.system.device)
        main = rank == 0
        try:
            with Session(
                cfg, device, rank, world, quiet=quiet or not main, progress=progress and main, replan=replan
            ) as s:
                s.prepare(run_dir, ckpt, changes if resume else [], held)
                result = s.run()
            if world > 1:  # leave the group together: a rank exiting while rank 0 still writes can abort Gloo
                dist.barrier()
            return result
        finally:
            if world > 1 and dist.is_initialized():
                dist.destroy_process_group()
    finally:
        if held is not None:
            held.release()


class Session:
    """One process's part of a run: its data, network, optimiser, position and run directory."""

    def __init__(self, cfg: Config, device, rank: int, world: int, quiet: bool, progress: bool, replan: bool = False):
        if cfg.system.model_parallel:  # batches and logits live on the first of the two devices
            names = cfg.system.model_parallel.split(",")
            device = select_device(names[0])
            select_device(names[1])
        self.cfg, self.device, self.rank, self.world = _resolved(cfg, device), device, rank, world
        self.main, self.quiet, self.bars = rank == 0, quiet, Progress(progress)
        self.run_dir: RunDir | None = None
        self.board = None  # TensorBoard's event writer, with --tensorboard
        self.stop = StopFlag()
        self.tally: Tally | None = None  # the running totals of the epoch in progress; None between epochs
        # --time-budget (budget.py): the plan, the clock that holds it, and when the clock started
        self.plan: B.Plan | None = None
        self.clock: B.Clock | None = None
        self.started: float | None = None  # the budget's clock: spent_s before this process included
        self.began: float | None = None  # when this process began paying for the budget (stem, measurement)
        self.replan = replan
        # What prepare() builds (entered first, so that a prepare that fails still closes what it opened):
        self.data: D.Source | None = None
        self.model: nn.Module | None = None  # the bare network: what checkpoints hold
        self.net: nn.Module | None = None  # the network that evaluates: placed, data-parallel, compiled
        self.train_net: nn.Module | None = None  # the one that trains: net, or the layers after a stem computed once
        self.frozen_ready = False  # whitening fitted and the stem computed, where the network has them
        self.optimizer: torch.optim.Optimizer | None = None
        self.pos = Position()
        self.steps = 0  # training steps per epoch
        self.title = ""  # of the run's figures
        self.epoch_train_s = 0.0  # the epoch in progress's training seconds, those before a resume included
        self.resumed_train_s = 0.0  # of which spent by the processes before this one (the epoch's wall time adds them)

    def __enter__(self):
        self.stop.__enter__()
        return self

    def __exit__(self, *exc):
        self.stop.__exit__(*exc)
        if self.board is not None:
            self.board.close()
        if self.run_dir is not None:
            self.run_dir.release()

    def prepare(self, run_dir, ckpt: dict | None, changes: list[dict], held: RunDir | None = None) -> None:
        """Data, network and optimiser, checked before the run directory is touched: a mistake
        leaves no empty run behind."""
        cfg, device = self.cfg, self.device
        self.data = load_data(cfg, device, Path(run_dir) if ckpt else None, ckpt, self.rank, self.world)
        if cfg.train.time_budget and cfg.train.choose_from and ckpt is None:
            cfg = self.choose_network()
        self.model = build_model(cfg.train.model, self.data.channels, len(self.data.classes), seed=cfg.train.seed)
        _check_input_fits(self.model, self.data.channels, self.data.resolution)
        if any(isinstance(m, WhiteningConv) for m in self.model.modules()) and not self.data.resident:
            raise TrainingError(
                f"--model {cfg.train.model}: its whitening conv is fitted to an in-memory dataset "
                f"(fashion-mnist, mnist, cifar10), not to {cfg.data.dataset}"
            )
        self.pos = Position.of(ckpt) if ckpt else Position()
        self.pos.changes = changes
        if ckpt is not None:
            load_weights(self.model, ckpt)
        elif cfg.train.init_from:
            finetune.init_from(self.model, cfg.train.init_from, cfg.train.model, quiet=not self.main or self.quiet)
        finetune.freeze(self.model, cfg.train.freeze)
        self.net = self._place_model()
        self.train_net, self.frozen_ready = self.net, False
        self.optimizer = make_optimizer(self.model, cfg, device)
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.steps = D.steps_per_epoch(len(self.data), cfg.train.batch_size // self.world, self.world)
        if self.steps == 0:
            raise TrainingError(f"batch size {cfg.train.batch_size} exceeds the {len(self.data)} training images")
        self.title = f"{cfg.train.model} · {self.data.name} · preset {cfg.preset}"
        if cfg.train.time_budget:
            self.plan_budget(ckpt)
        if self.main:
            if cfg.system.tensorboard:  # the package is checked before the run directory is touched
                from .tensorboard import Board

                self.board = Board()
            self.run_dir = self._open_run_dir(run_dir, ckpt, held)
            if self.board is not None:
                self.board.open(self.run_dir.path)
        self._announce(ckpt)

    def _place_model(self) -> nn.Module:
        cfg, device, model = self.cfg, self.device, self.model
        if cfg.system.model_parallel:
            try:
                model = self.model = TwoTowers(model, cfg.system.model_parallel.split(","))
            except (ValueError, RuntimeError) as e:
                raise TrainingError(f"--model-parallel {cfg.system.model_parallel}: {e}") from None
        else:
            model = self.model = model.to(device)
        if channels_last_on(cfg.system.channels_last, device):
            model = self.model = model.to(memory_format=torch.channels_last)
        # Gradients are averaged across ranks inside backward, bucket by bucket, overlapping the compute.
        if self.world > 1:
            model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        return CompiledOrEager(model, cfg.system.compile == "on")

    def _open_run_dir(self, run_dir, ckpt, held: RunDir | None) -> RunDir:
        cfg = self.cfg
        if ckpt is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run = RunDir.new(run_dir, f"{cfg.preset}-{cfg.train.model}-{stamp}")
        else:
            run = held or RunDir.open(run_dir)  # held: locked before its checkpoint was read
            for what in run.reconcile(ckpt, self.title):
                warn(f"{run.path}: repaired {what}")
        run.write_config(cfg, self.pos.changes, self.plan and self.plan.to_dict())
        self.data.record(run.path)
        return run

    def _announce(self, ckpt) -> None:
        cfg, pos, d = self.cfg, self.pos, self.device
        res = self.data.resolution
        say(
            f"preset {cfg.preset} · model {cfg.train.model} · {self.data.name} {res}x{res} · device {describe(d)} · "
            f"bf16 {cfg.system.amp == 'bf16' and 'on' or 'off'} · compile {cfg.system.compile} · channels_last "
            f"{'on' if channels_last_on(cfg.system.channels_last, d) else 'off'} · "
            + (B.describe(self.plan) if self.plan else f"{cfg.train.epochs} epochs x {self.steps} steps")
            + (f" · data-parallel over {self.world} ranks ({dist.get_backend()})" if self.world > 1 else ""),
            self.quiet,
        )
        if ckpt is not None:
            where = self.run_dir.path if self.run_dir else ""
            say(f"resuming {where} at epoch {pos.epoch + 1}" + (f", step {pos.step}" if pos.step else ""), self.quiet)
            for c in pos.changes:
                if c["epoch"] == pos.epoch + 1:
                    extra = (
                        "; the learning-rate schedule is recomputed for the new length"
                        if c["setting"] == "epochs" and (cfg.train.schedule != "constant" or cfg.train.warmup_epochs)
                        else ""
                    )
                    say(f"changed from epoch {c['epoch']}: {c['setting']} {c['from']} -> {c['to']}{extra}", self.quiet)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        pos, cfg = self.pos, self.cfg
        if pos.epoch >= self.total_epochs:
            say(f"the run is complete ({pos.epoch} epochs); nothing to train", self.quiet)
        try:
            now = time.perf_counter()  # a budget's stem and measurement ran in prepare: counted as training
            since, trained, images = self.began or now, now - (self.began or now), 0  # since the last evaluation
            earlier = 0.0  # a resumed epoch's training before this process: its wall time too
            for epoch in self.epochs_left():
                tr = self.train_epoch(epoch)
                trained, images = trained + self.epoch_train_s, images + tr["images"]
                earlier += self.resumed_train_s
                if cfg.train.evaluate == "end" and epoch + 1 < self.total_epochs:
                    self.skip_evaluation(epoch)
                    continue
                t1 = time.perf_counter()
                ev = self.evaluate()
                ev["time_s"] = time.perf_counter() - t1
                self.end_epoch(epoch, {**tr, "images": images}, ev, trained, time.perf_counter() - since + earlier)
                since, trained, images, earlier = time.perf_counter(), 0.0, 0, 0.0
        except KeyboardInterrupt as e:
            self.save_interrupted(abort=isinstance(e, Abort))
            return RunResult(self._path(), pos.metrics, interrupted=True)
        if self.plan is not None and self.run_dir is not None:  # the plan as it ended: re-plans, budget spent
            self.run_dir.write_config(cfg, pos.changes, self.plan.to_dict())
        return RunResult(self._path(), pos.metrics)

    @property
    def total_epochs(self) -> int:
        """Epochs the run trains: --epochs, or as many as a budget's planned steps reach (the last partial)."""
        return self.plan.whole_epochs if self.plan else self.cfg.train.epochs

    def epoch_label(self, epoch: int, width: int = 0) -> str:
        """``3/10``; ``3/~10`` while a budget's clock may still re-plan the count (it moves as the load does)."""
        estimate = "~" if self.clock is not None and self.clock.replan else ""
        return f"{epoch + 1:>{width}}/{estimate}{self.total_epochs}"

    def epochs_left(self):
        """The epochs from the position on; a budgeted run's clock may change their number meanwhile."""
        epoch = self.pos.epoch
        while epoch < self.total_epochs:
            yield epoch
            epoch += 1

    def lr_fn(self, drops: int):
        """The learning rate at a global step: the schedule over --epochs, or over a budget's planned
        steps, re-plans followed (budget.Plan.schedule_step)."""
        cfg, steps, plan = self.cfg, self.steps, self.plan
        if plan is None:
            return lambda s: lr_at(s, steps * cfg.train.epochs, steps, cfg, drops)
        shape = plan.shape(cfg)
        return lambda s: lr_at(plan.schedule_step(s), plan.schedule_steps, steps, shape, drops)

    def plan_budget(self, ckpt: dict | None) -> None:
        """--time-budget: start the clock, compute the frozen stem (paid from the budget), time a
        training step and an evaluation here, and plan the steps (budget.py). A resumed run keeps
        its recorded plan unless asked to re-plan (--replan, or a new budget)."""
        cfg, saved = self.cfg, (ckpt or {}).get("plan")
        new_budget = saved is not None and B.parse_duration(cfg.train.time_budget) != saved["budget_s"]
        if ckpt is not None and saved is None:
            raise ConfigError("--time-budget: this run was trained in epochs; resume it with --epochs")
        self.began = self.began or time.perf_counter()  # a network chosen for the budget began it
        if saved is not None:
            self.plan = B.Plan.from_dict(saved)
            self.started = self.began - self.plan.spent_s
            if not (self.replan or new_budget):
                self.began = None
                self.clock = B.Clock(self.plan, self.started, cfg.train.evaluate == "epoch", replan=False)
                return
        if self.world > 1:
            raise ConfigError("--time-budget plans one process's run; under torchrun give --epochs")
        self.started = self.started or self.began
        self.prepare_frozen()
        spent = time.perf_counter() - self.started
        if spent >= B.parse_duration(cfg.train.time_budget):  # no use measuring: nothing can fit any more
            raise ConfigError(
                f"--time-budget {cfg.train.time_budget} holds no training: the start-up (the frozen "
                f"stem, choosing the network) took {spent:.1f} s of it on this machine as loaded now"
            )
        step_s, eval_s = self._time_step(), self._time_evaluation()
        each = cfg.train.evaluate == "epoch"
        if self.plan is None:
            self.plan = B.first_plan(cfg, step_s, eval_s, time.perf_counter() - self.started, self.steps)
        else:  # re-plan what remains for this machine (and budget), from where the run stands
            plan, done = self.plan, self.pos.epoch * self.steps + self.pos.step
            plan.budget_s, plan.step_s, plan.eval_s = B.parse_duration(cfg.train.time_budget), step_s, eval_s
            elapsed = time.perf_counter() - self.started
            fit = B.steps_that_fit(plan.budget_s - elapsed, step_s, done, self.steps, eval_s, eval_s if each else 0.0)
            plan.replan(done, fit, elapsed, step_s)
        sync = (lambda: torch.cuda.synchronize(self.device)) if self.device.type == "cuda" else (lambda: None)
        self.clock = B.Clock(self.plan, self.started, each, sync=sync)

    def choose_network(self) -> Config:
        """--choose-from under a budget: time each network's training step on a batch of this run's
        data, in alternating turns (the trained part only where its stem runs once per image), and
        train the first whose planned epochs reach its need (budget.choose). Paid from the budget."""
        cfg = self.cfg
        self.began = self.began or time.perf_counter()
        options = parse_choices(cfg.train.choose_from)
        x, y = next(iter(self.data.train(0)))
        runs = {}
        for name, _ in options:
            model = build_model(name, self.data.channels, len(self.data.classes), seed=cfg.train.seed).to(self.device)
            if channels_last_on(cfg.system.channels_last, self.device):
                model = model.to(memory_format=torch.channels_last)
            inputs = x
            if self._stem_once(model):  # its values do not matter for the time: the filters stay unfitted
                with torch.no_grad(), autocast(self.device, cfg.system.amp == "bf16"):
                    inputs = model[0](x)
                model = model[1:]
            optimizer = make_optimizer(model, cfg, self.device)
            runs[name] = functools.partial(self._steps, model, optimizer, inputs, y)
        # A few steps each: the choice turns on a factor of two or more, and the budget pays for them.
        times = time_turns(runs, self.device, rounds=2, block=2, warmup=1)
        left = parse_duration(cfg.train.time_budget) - (time.perf_counter() - self.began)
        per_epoch = D.steps_per_epoch(len(self.data), cfg.train.batch_size // self.world, self.world)
        chosen, how = B.choose(options, {n: t.median for n, t in times.items()}, left, per_epoch)
        say(how, self.quiet)
        self.cfg = cfg.replace(model=chosen, choose_from=cfg.train.choose_from)
        return self.cfg

    def _steps(self, model, optimizer, x, y, k: int) -> None:
        for _ in range(k):
            train_step(
                model,
                optimizer,
                x,
                y,
                device=self.device,
                amp=self.cfg.system.amp == "bf16",
                label_smoothing=self.cfg.train.label_smoothing,
            )

    def _time_step(self) -> float:
        """Seconds per training step of this run's own step, network and data, with the weights,
        optimiser and random state put back afterwards (the steps take lr 0 as well)."""
        saved = (
            copy.deepcopy(self.model.state_dict()),
            copy.deepcopy(self.optimizer.state_dict()),
            torch.get_rng_state(),
        )
        batches = itertools.chain.from_iterable(self.data.train(e) for e in itertools.count())
        cfg = self.cfg

        def run(n: int) -> None:
            train_one_epoch(
                self.train_net,
                self.optimizer,
                itertools.islice(batches, n),
                device=self.device,
                amp=cfg.system.amp == "bf16",
                label_smoothing=cfg.train.label_smoothing,
                lr_fn=lambda s: 0.0,
                log_every=n,
            )

        try:  # the median: one step that another job stalled does not stretch the plan (the clock follows the load)
            return time_turns({"step": run}, self.device, rounds=B.TIMED_STEPS, warmup=B.WARMUP_STEPS)["step"].median
        finally:
            self.model.load_state_dict(saved[0])
            self.optimizer.load_state_dict(saved[1])
            torch.set_rng_state(saved[2])

    def _time_evaluation(self) -> float:
        """Seconds of one evaluation: the median of a few batches after a warm-up one, times the
        batches, where batches cost the same (in-memory data), else one whole evaluation."""
        data = self.data

        def run(k: int) -> None:  # the first k batches, or a whole evaluation
            evaluate(
                self.net,
                data.val(k if data.uniform_batches else None),
                device=self.device,
                amp=self.cfg.system.amp == "bf16",
                num_classes=len(data.classes),
                flip_tta=self.cfg.data.flip_tta,
            )

        if not data.uniform_batches:
            return time_turns({"evaluation": run}, self.device, rounds=1, warmup=0)["evaluation"].median
        return time_turns({"evaluation": run}, self.device, rounds=2, warmup=1)["evaluation"].median * data.val_steps

    def prepare_frozen(self) -> None:
        """Before the first step (its time counted as training): fit any whitening conv to the
        training images and, where nothing in the step could change their output, compute the
        network's frozen leading layers once per image, so each step trains only the rest."""
        for m in self.model.modules():
            if isinstance(m, WhiteningConv) and not m.fitted:  # a resumed run's checkpoint holds its filters
                m.fit(self.data.sample(5000))
        self.frozen_ready = True
        model = self.model
        if self._stem_once(model):
            try:
                self.data.precompute(model[0], amp=self.cfg.system.amp == "bf16", free=free_memory(self.device))
            except D.CacheTooLarge as e:
                if self.main:
                    warn(f"{e}: computing them in every step instead (slower, the same result)")
                return
            self.train_net = CompiledOrEager(model[1:], self.cfg.system.compile == "on")

    def _stem_once(self, model: nn.Module) -> bool:
        """Whether the network's frozen leading layers can run once per image rather than every step."""
        # One process: the layers after the stem train outside DistributedDataParallel.
        return (
            isinstance(model, nn.Sequential)
            and isinstance(model[0], Frozen)
            and self.data.precomputable
            and self.world == 1
        )

    def train_epoch(self, epoch: int) -> dict:
        t0 = time.perf_counter()
        cfg, pos, steps = self.cfg, self.pos, self.steps
        skip = pos.step if epoch == pos.epoch else 0
        # The epoch's training seconds, with those before an interruption: its images include theirs.
        self.epoch_train_s = self.resumed_train_s = before = pos.train_s if skip else 0.0
        if not self.frozen_ready:
            self.prepare_frozen()
        drops = plateau_drops([1 - m["val_acc"] for m in pos.metrics], cfg.train.lr_patience)
        self.tally = Tally.start(self.device, pos.tally if skip and self.main else None)
        self.tally.steps = skip
        bar = self.bars.bar(steps, f"epoch {self.epoch_label(epoch)}", skip)
        # Dropout: a function of (seed, step), and of the rank, else every rank's i-th image would
        # get the same mask.
        seeds = Seeds(cfg.train.seed, cfg.train.seed_streams)
        lr_fn, batches = self.lr_fn(drops), self.data.train(epoch, skip)
        if self.clock is not None:  # a budget: its plan may end this epoch early, or re-plan on the way
            batches = self.clock.steps(batches, epoch * steps + skip)
        try:
            tr = train_one_epoch(
                self.train_net,
                self.optimizer,
                batches,
                device=self.device,
                amp=cfg.system.amp == "bf16",
                label_smoothing=cfg.train.label_smoothing,
                lr_fn=lr_fn,
                step0=epoch * steps + skip,
                log_every=cfg.system.log_every,
                bar=bar,
                tally=self.tally,
                dropout_seed=lambda s: seeds.dropout(epoch, s, self.rank),
                stop=self.stop,
                on_log=self.board.interval if self.board else None,
            )
        except NonFiniteLoss as e:
            good = self.run_dir.last if self.run_dir and self.run_dir.last.exists() else "none yet"
            raise TrainingError(
                f"epoch {epoch + 1}: {e}; stopping (lower --lr?). Last good checkpoint: {good}"
            ) from None
        finally:
            self.epoch_train_s = before + time.perf_counter() - t0
            if bar is not None:
                bar.close()
        tr["lr"] = lr_fn(tr["steps"] - 1)  # of the epoch's last step
        return reduce_means(tr, ("loss", "acc"), self.device, self.world)

    def evaluate(self) -> dict:
        ev = evaluate(
            self.net,
            self.data.val(),
            device=self.device,
            amp=self.cfg.system.amp == "bf16",
            num_classes=len(self.data.classes),
            stop=self.stop,
            flip_tta=self.cfg.data.flip_tta,
        )
        ev = reduce_means(
            {**ev, "skipped": self.data.skipped}, ("loss", "acc", "top5"), self.device, self.world, ("skipped",)
        )
        if ev["images"] == 0:
            raise TrainingError(f"no readable validation image ({ev['skipped']} unreadable): nothing to evaluate")
        return ev

    def skip_evaluation(self, epoch: int) -> None:
        """--evaluate end: an epoch done, with no evaluation, metrics row or checkpoint (an
        interruption still saves one); the next row's times cover this epoch too."""
        self.pos.epoch, self.pos.step, self.pos.tally, self.tally = epoch + 1, 0, None, None
        say(f"epoch {self.epoch_label(epoch, 3)}  trained (evaluation after the last epoch only)", self.quiet)

    def end_epoch(self, epoch: int, tr: dict, ev: dict, train_time: float, epoch_time: float) -> None:
        """One metrics row. Times and images/s cover the training since the previous row (one
        epoch, or all of them under --evaluate end); epoch_time_s adds the evaluation."""
        pos = self.pos
        row = {
            "epoch": epoch + 1,
            "train_loss": tr["loss"],
            "train_acc": tr["acc"],
            "val_loss": ev["loss"],
            "val_acc": ev["acc"],
            "lr": tr["lr"],
            "train_images_per_s": tr["images"] / train_time,
            "train_time_s": train_time,
            "eval_time_s": ev.get("time_s", 0.0),
            "epoch_time_s": epoch_time,
        }
        row.update(self.data.epoch_metrics(ev))
        improved = row["val_acc"] > pos.best_acc
        pos.metrics.append(row)
        pos.epoch, pos.step, pos.tally, self.tally = epoch + 1, 0, None, None
        if self.run_dir is not None:
            self.run_dir.save(self.checkpoint(), best=improved)
            self.run_dir.write_metrics(pos.metrics, self.title)
        if self.board is not None:
            self.board.epoch(row, self.model)
        say(
            f"epoch {self.epoch_label(epoch, 3)}  train loss {row['train_loss']:.4f}  "
            f"val loss {row['val_loss']:.4f}  val acc {row['val_acc']:.4f}  "
            + (f"top-5 err {row['val_top5_err']:.4f}  " if "val_top5_err" in row else "")
            + f"{row['train_images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s",
            self.quiet,
        )

    def save_interrupted(self, abort: bool) -> None:
        pos, tally = self.pos, self.tally
        if tally is not None and tally.steps:
            # Mid-epoch. Under DDP the other ranks' totals are out of reach: the position is kept and
            # the resumed epoch's training loss covers only the steps after it.
            pos.step, pos.tally = tally.steps, tally.saved() if self.world == 1 else None
            pos.train_s = self.epoch_train_s
        last = self.run_dir.last if self.run_dir else None
        if not self.main or last is None:
            return
        if abort:
            say(f"\nstopped without saving; {last} holds the last checkpoint", self.quiet)
            return
        try:
            self.run_dir.save(self.checkpoint(), best=False)
        except RunError as e:
            warn(f"interrupted, and {e}; {last} is unchanged")
            return
        except KeyboardInterrupt:  # a second Ctrl-C during the save: atomic_write kept the old file
            say(f"\nstopped while saving; {last} holds the last checkpoint", self.quiet)
            return
        say(
            f"\ninterrupted: saved {last} (epoch {pos.epoch + 1}, step {pos.step}); "
            f"continue with: alexnet train --resume {self.run_dir.path}",
            self.quiet,
        )

    def checkpoint(self) -> dict:
        pos, data, model = self.pos, self.data, self.model
        weights = model.grouped_state_dict() if isinstance(model, TwoTowers) else model.state_dict()
        return {
            "model": weights,
            "optimizer": self.optimizer.state_dict(),
            "config": self.cfg.to_dict(),
            "epoch": pos.epoch,
            "step": pos.step,
            "tally": pos.tally,
            "metrics": pos.metrics,
            "epoch_train_s": pos.train_s if pos.step else 0.0,
            "best_epoch": best_epoch_of(pos.metrics),
            "changes": pos.changes,
            "classes": data.classes,
            "dataset": data.name,
            "in_channels": data.channels,
            "num_classes": len(data.classes),
            "resolution": data.resolution,
            "normalization": data.normalization,
            "stats": data.stats,
            "torch": str(torch.__version__),
            "machine": machine(self.device).asdict(),
            **({"plan": self._spent(self.plan).to_dict()} if self.plan else {}),
        }

    def _spent(self, plan: B.Plan) -> B.Plan:
        plan.spent_s = time.perf_counter() - self.started
        return plan

    def _path(self) -> Path:
        return self.run_dir.path if self.run_dir else Path(".")


def load_data(cfg: Config, device, run_dir: Path | None, ckpt: dict | None, rank: int, world: int) -> D.Source:
    """The run's data source, the one place that chooses it: the chapter's datasets in memory, or image folders."""
    if cfg.train.batch_size % world:
        raise TrainingError(f"--batch-size {cfg.train.batch_size} (global) does not split evenly over {world} ranks")
    batch, eval_batch = cfg.train.batch_size // world, max(1, cfg.train.eval_batch_size // world)
    if cfg.data.dataset not in I.IMAGE_DATASETS:
        return D.InMemory(cfg, device, batch, eval_batch, rank, world)
    # The colour statistics are part of the run: a resumed run reuses them rather than resampling.
    stats = (ckpt or {}).get("stats") or (I.load_stats(run_dir / I.STATS_FILE) if run_dir else None)
    return I.ImagePipeline(
        cfg,
        device,
        cfg.resolution(),
        batch,
        eval_batch,
        rank,
        world,
        stats,
        channels_last=channels_last_on(cfg.system.channels_last, device),
    )


def _check_input_fits(model: nn.Module, channels: int, resolution: int) -> None:
    """Fail before training, naming the layer, when the input is too small for the network."""
    try:
        trace(model, (1, channels, resolution, resolution), device="cpu")
    except InputTooSmall as e:
        raise TrainingError(str(e)) from None
