"""The run around the loop: ``fit`` and the ``Session`` that holds one process's part of a run (its
data, network, optimiser, position, clock and run directory), and what happens once before the
loop: the network a budget chooses, the frozen stem computed once per image, the measured step.

An epoch is ``train.train_one_epoch`` and an evaluation ``train.evaluate``, called through their
module so that what replaces them there (a test's recording step) is what runs.
"""

from __future__ import annotations

import copy
import functools
import importlib
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import budget as B
from . import data as D
from . import finetune
from . import imagenet as I
from . import position as P
from . import train as T
from .config import Config, ConfigError, parse_choices, parse_duration
from .costs import training_flops
from .device import (
    CompiledOrEager,
    autocast,
    bf16_autocast,
    channels_last_on,
    describe,
    init_distributed,
    keep_freed_memory,
    reduce_means,
    select_device,
    use_compile,
)
from .measure import time_turns
from .models import TwoTowers, WhiteningConv, build_model
from .position import TrainingError
from .runs import RunDir, RunError, load_weights, say, warn
from .seeds import Seeds
from .tracing import InputTooSmall, trace


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
    if not resume and P.elastic_restart(run_dir):  # the same command, restarted by torchrun: continue its run
        resume, overrides = True, {k: v for k, v in cfg.flat().items() if k not in ("amp", "compile", "malloc")}
    if resume:
        held, ckpt = P.read_to_resume(run_dir)
    try:
        if resume:
            cfg, changes = P.resume_config(ckpt, dict(overrides or {}))
        elif overrides:
            cfg = cfg.replace(**overrides)
        device, rank, world = init_distributed(cfg.system.device)
        if world > 1:
            ckpt = P.rank_zeros_checkpoint(ckpt, run_dir, rank, device)
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
        self.main, self.quiet, self.bars = rank == 0, quiet, T.Progress(progress)
        self.run_dir: RunDir | None = None
        self.board = None  # TensorBoard's event writer, with --tensorboard
        self.stop = T.StopFlag()
        self.tally: T.Tally | None = None  # the running totals of the epoch in progress; None between epochs
        self.clock: B.Clock | None = None  # the run's seconds: the budget's, and each metrics row's
        self.plan: B.Plan | None = None  # --time-budget (budget.py): the plan, and the pacer that holds it
        self.pacer: B.Pacer | None = None
        self.replan = replan
        # What prepare() builds (entered first, so that a prepare that fails still closes what it opened):
        self.data: D.Source | None = None
        self.model: nn.Module | None = None  # the bare network: what checkpoints hold
        self.net: nn.Module | None = None  # the network that evaluates: placed, data-parallel, compiled
        self.train_net: nn.Module | None = None  # the one that trains: net, or the layers after a stem computed once
        self.optimizer: torch.optim.Optimizer | None = None
        self.pos = P.Position()
        self.steps = 0  # training steps per epoch
        self.title = ""  # of the run's figures

    def __enter__(self):
        self.stop.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            if self.board is not None:
                self.board.close()
            if self.run_dir is not None:
                self.run_dir.release()
        finally:  # last: a second Ctrl-C while the event writer closes still ends the process at once
            self.stop.__exit__(*exc)

    def prepare(self, run_dir, ckpt: dict | None, changes: list[dict], held: RunDir | None = None) -> None:
        """Data, network and optimiser, checked before the run directory is touched: a mistake
        leaves no empty run behind."""
        cfg, device = self.cfg, self.device
        self.data = load_data(cfg, device, Path(run_dir) if ckpt else None, ckpt, self.rank, self.world)
        if cfg.train.time_budget and cfg.train.choose_from and ckpt is None:  # paid from the budget
            # Imports come before the clock, as for a run that names its network: torch's first
            # optimiser imports torch._dynamo (1.4 s on the 2-core EPYC), a quarter of the start-up.
            importlib.import_module("torch._dynamo")  # not `import torch._dynamo`: that binds a local `torch`
            self.clock = B.Clock()
            self.clock.start_up()
            cfg = self.cfg = choose_network(cfg, self.data, device, self.world, self.clock, self.quiet)
        self.model = build_model(cfg.train.model, self.data.channels, len(self.data.classes), seed=cfg.train.seed)
        _check_input_fits(self.model, self.data.channels, self.data.resolution)
        if any(isinstance(m, WhiteningConv) for m in self.model.modules()) and not self.data.resident:
            raise TrainingError(
                f"--model {cfg.train.model}: its whitening conv is fitted to an in-memory dataset "
                f"(fashion-mnist, mnist, cifar10), not to {cfg.data.dataset}"
            )
        self.pos = P.Position.of(ckpt) if ckpt else P.Position()
        self.pos.changes = changes
        if ckpt is not None:
            load_weights(self.model, ckpt)
        elif cfg.train.init_from:
            finetune.init_from(self.model, cfg.train.init_from, cfg.train.model, quiet=not self.main or self.quiet)
        finetune.freeze(self.model, cfg.train.freeze)
        self.model, self.net = place_model(self.model, cfg, device, self.world)
        self.optimizer = T.make_optimizer(self.model, cfg, device)
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.steps = D.steps_per_epoch(len(self.data), cfg.train.batch_size // self.world, self.world)
        if self.steps == 0:
            raise TrainingError(f"batch size {cfg.train.batch_size} exceeds the {len(self.data)} training images")
        self.title = f"{cfg.train.model} · {self.data.name} · preset {cfg.preset}"
        if cfg.train.time_budget:
            plan_budget(self, ckpt)  # the stem computed, and paid from the budget
        else:
            self.clock = B.Clock()
            self._before_first_step()
        if self.main:
            if cfg.system.tensorboard:  # the package is checked before the run directory is touched
                from .tensorboard import Board

                self.board = Board()
            plan = self.plan and self.plan.to_dict()
            self.run_dir = open_run_dir(run_dir, ckpt, held, cfg, self.title, self.pos.changes, plan, self.data)
            if self.board is not None:
                self.board.open(self.run_dir.path, self.pos.epoch * self.steps + self.pos.step)
        where = self.run_dir.path if self.run_dir else ""
        say(start_line(cfg, self.data, device, self.world, self.plan, self.steps), self.quiet)
        if ckpt is not None:
            say(resume_lines(cfg, self.pos, where), self.quiet)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        pos, cfg, clock = self.pos, self.cfg, self.clock
        if pos.epoch >= self.total_epochs:
            say(f"the run is complete ({pos.epoch} epochs); nothing to train", self.quiet)
        try:
            clock.start_rows()  # the start-up (a stem, a budget's measurement) counts as the first row's training
            images = 0  # trained since the last evaluation
            for epoch in self.epochs_left():
                tr = train_epoch(self, epoch)
                clock.add_epoch()
                images += tr["images"]
                if cfg.train.evaluate == "end" and epoch + 1 < self.total_epochs:
                    self.skip_evaluation(epoch)
                    continue
                t1 = time.perf_counter()
                ev = validate(self)
                ev["time_s"] = time.perf_counter() - t1
                self.end_epoch(epoch, {**tr, "images": images}, ev, *clock.row())
                clock.next_row()
                images = 0
        except KeyboardInterrupt:
            save_interrupted(self)
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
        estimate = "~" if self.pacer is not None and self.pacer.replan else ""
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
            return lambda s: T.lr_at(s, steps * cfg.train.epochs, steps, cfg, drops)
        shape = plan.shape(cfg)
        return lambda s: T.lr_at(plan.schedule_step(s), plan.schedule_steps, steps, shape, drops)

    def _before_first_step(self) -> None:
        """Compute any frozen stem, then keep the memory steps free (--malloc keep): from here on
        they allocate the same tensors over and over, while the one-off buffers before (decoding the
        data, fitting a whitening conv) have gone back to the OS."""
        self.clock.start_up()
        args = (self.data, self.cfg, self.device, self.world, self.main)  # a warning is not hushed by quiet
        self.train_net = T.prepare_frozen(self.model, self.net, *args)
        if self.device.type == "cpu" and self.cfg.system.malloc == "keep":
            keep_freed_memory()

    def skip_evaluation(self, epoch: int) -> None:
        """--evaluate end: an epoch done, with no evaluation, metrics row or checkpoint (an
        interruption still saves one); the next row's times cover this epoch too."""
        self.pos.epoch, self.pos.step, self.pos.tally, self.tally = epoch + 1, 0, None, None
        say(f"epoch {self.epoch_label(epoch, 3)}  trained (evaluation after the last epoch only)", self.quiet)

    def end_epoch(self, epoch: int, tr: dict, ev: dict, train_time: float, epoch_time: float) -> None:
        """One metrics row. Times and images/s cover the training since the previous row (one
        epoch, or all of them under --evaluate end); epoch_time_s adds the evaluation."""
        pos, row = self.pos, metrics_row(epoch, tr, ev, train_time, epoch_time, self.data)
        improved = row["val_acc"] > pos.best_acc
        pos.metrics.append(row)
        pos.epoch, pos.step, pos.tally, self.tally = epoch + 1, 0, None, None
        if self.run_dir is not None:
            self.run_dir.save(self.checkpoint(), best=improved)
            self.run_dir.write_metrics(pos.metrics, self.title)
        if self.board is not None:
            self.board.epoch(row, self.model)
        say(f"epoch {self.epoch_label(epoch, 3)}  {row_line(row)}", self.quiet)

    def checkpoint(self) -> dict:
        plan = self._spent_plan() if self.plan else None
        return P.contents(self.pos, self.model, self.optimizer, self.cfg, self.data, self.device, plan)

    def _spent_plan(self) -> dict:
        self.plan.spent_s = self.clock.spent()
        return self.plan.to_dict()

    def _path(self) -> Path:
        return self.run_dir.path if self.run_dir else Path(".")


# ---------------------------------------------------------------------------------------------
# The session's steps: planning a budget, one epoch, one evaluation, saving on an interrupt


def plan_budget(s: Session, ckpt: dict | None) -> None:
    """--time-budget: start the clock, compute the frozen stem (paid from the budget), time a
    training step and an evaluation here, and plan the steps (budget.py). A resumed run keeps
    its recorded plan unless asked to re-plan (--replan, or a new budget)."""
    cfg, saved, each = s.cfg, (ckpt or {}).get("plan"), s.cfg.train.evaluate == "epoch"
    budget = B.parse_duration(cfg.train.time_budget)
    if ckpt is not None and saved is None:
        raise ConfigError("--time-budget: this run was trained in epochs; resume it with --epochs")
    if saved is not None:
        s.plan = B.Plan.from_dict(saved)
        s.clock = B.Clock(spent_before=s.plan.spent_s)
        if not (s.replan or budget != saved["budget_s"]):
            s.pacer = B.Pacer(s.plan, s.clock.started, each, replan=False)
            s._before_first_step()
            return
    if s.world > 1:
        raise ConfigError("--time-budget plans one process's run; under torchrun give --epochs")
    s.clock = s.clock or B.Clock()  # a network chosen for the budget started it
    s._before_first_step()
    spent = s.clock.spent()
    if spent >= budget:  # no use measuring: nothing can fit any more
        raise ConfigError(
            f"--time-budget {cfg.train.time_budget} holds no training: the start-up (the frozen "
            f"stem, choosing the network) took {spent:.1f} s of it on this machine as loaded now"
        )
    step_s = measure_step(s.model, s.train_net, s.optimizer, s.data, cfg, s.device)
    eval_s = measure_evaluation(s.net, s.data, cfg, s.device)
    if s.plan is None:
        s.plan = B.first_plan(cfg, step_s, eval_s, s.clock.spent(), s.steps)
    else:  # re-plan what remains for this machine (and budget), from where the run stands
        plan, done = s.plan, s.pos.epoch * s.steps + s.pos.step
        plan.budget_s, plan.step_s, plan.eval_s = budget, step_s, eval_s
        elapsed = s.clock.spent()
        fit = B.steps_that_fit(plan.budget_s - elapsed, step_s, done, s.steps, eval_s, eval_s if each else 0.0)
        plan.replan(done, fit, elapsed, step_s)
    s.plan.shape(cfg)  # a plan longer than a run may hold is refused here, before the run directory is made
    sync = (lambda: torch.cuda.synchronize(s.device)) if s.device.type == "cuda" else (lambda: None)
    s.pacer = B.Pacer(s.plan, s.clock.started, each, sync=sync)


def train_epoch(s: Session, epoch: int) -> dict:
    cfg, pos, steps = s.cfg, s.pos, s.steps
    skip = pos.step if epoch == pos.epoch else 0
    # The epoch's training seconds, with those before an interruption: its images include theirs.
    s.clock.start_epoch(pos.train_s if skip else 0.0)
    drops = T.plateau_drops([1 - m["val_acc"] for m in pos.metrics], cfg.train.lr_patience)
    s.tally = T.Tally.start(s.device, pos.tally if skip and s.main else None)
    s.tally.steps = skip
    bar = s.bars.bar(steps, f"epoch {s.epoch_label(epoch)}", skip)
    # Dropout: a function of (seed, step), and of the rank, else every rank's i-th image would
    # get the same mask.
    seeds = Seeds(cfg.train.seed, cfg.train.seed_streams)
    lr_fn, batches = s.lr_fn(drops), s.data.train(epoch, skip)
    if s.pacer is not None:  # a budget: its plan may end this epoch early, or re-plan on the way
        batches = s.pacer.steps(batches, epoch * steps + skip)
    try:
        tr = T.train_one_epoch(
            s.train_net,
            s.optimizer,
            batches,
            device=s.device,
            amp=cfg.system.amp == "bf16",
            label_smoothing=cfg.train.label_smoothing,
            lr_fn=lr_fn,
            step0=epoch * steps + skip,
            log_every=cfg.system.log_every,
            bar=bar,
            tally=s.tally,
            dropout_seed=lambda step: seeds.dropout(epoch, step, s.rank),
            stop=s.stop,
            on_log=s.board.interval if s.board else None,
        )
    except T.NonFiniteLoss as e:
        good = s.run_dir.last if s.run_dir and s.run_dir.last.exists() else "none yet"
        raise TrainingError(f"epoch {epoch + 1}: {e}; stopping (lower --lr?). Last good checkpoint: {good}") from None
    finally:
        s.clock.stop_epoch()
        if bar is not None:
            bar.close()
    tr["lr"] = lr_fn(tr["steps"] - 1)  # of the epoch's last step
    return reduce_means(tr, ("loss", "acc"), s.device, s.world)


def validate(s: Session) -> dict:
    ev = T.evaluate(
        s.net,
        s.data.val(),
        device=s.device,
        amp=s.cfg.system.amp == "bf16",
        num_classes=len(s.data.classes),
        stop=s.stop,
        flip_tta=s.cfg.data.flip_tta,
    )
    ev = reduce_means({**ev, "skipped": s.data.skipped}, ("loss", "acc", "top5"), s.device, s.world, ("skipped",))
    if ev["images"] == 0:
        raise TrainingError(f"no readable validation image ({ev['skipped']} unreadable): nothing to evaluate")
    return ev


def save_interrupted(s: Session) -> None:
    pos, tally = s.pos, s.tally
    if tally is not None and tally.steps:
        # Mid-epoch. Under DDP the other ranks' totals are out of reach: the position is kept and
        # the resumed epoch's training loss covers only the steps after it.
        pos.step, pos.tally = tally.steps, tally.saved() if s.world == 1 else None
        pos.train_s = s.clock.epoch_s
    last = s.run_dir.last if s.run_dir else None
    if not s.main or last is None:
        return
    try:
        s.run_dir.save(s.checkpoint(), best=False)
    except RunError as e:
        warn(f"interrupted, and {e}; {last} is unchanged")
        return
    except KeyboardInterrupt:  # raised, not signalled (no StopFlag outside the main thread): the old file stays
        say(f"\nstopped while saving; {last} holds the last checkpoint", s.quiet)
        return
    say(
        f"\ninterrupted: saved {last} (epoch {pos.epoch + 1}, step {pos.step}); "
        f"continue with: alexnet train --resume {s.run_dir.path}",
        s.quiet,
    )


# ---------------------------------------------------------------------------------------------
# The session's parts: the network placed, the run directory opened, what the run says


def place_model(model: nn.Module, cfg: Config, device, world: int) -> tuple[nn.Module, nn.Module]:
    """(the bare network on its device: what checkpoints hold, the one that runs: data-parallel, compiled)."""
    if cfg.system.model_parallel:
        try:
            model = TwoTowers(model, cfg.system.model_parallel.split(","))
        except (ValueError, RuntimeError) as e:
            raise TrainingError(f"--model-parallel {cfg.system.model_parallel}: {e}") from None
    else:
        model = model.to(device)
    if channels_last_on(cfg.system.channels_last, device):
        model = model.to(memory_format=torch.channels_last)
    net = model
    # Gradients are averaged across ranks inside backward, bucket by bucket, overlapping the compute.
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return model, CompiledOrEager(net, cfg.system.compile == "on")


def open_run_dir(run_dir, ckpt, held: RunDir | None, cfg: Config, title, changes, plan, data: D.Source) -> RunDir:
    """A new run directory, or the resumed one (held: locked before its checkpoint was read), repaired."""
    if ckpt is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run = RunDir.new(run_dir, f"{cfg.preset}-{cfg.train.model}-{stamp}")
    else:
        run = held or RunDir.open(run_dir)
        for what in run.reconcile(ckpt, title):
            warn(f"{run.path}: repaired {what}")
    run.write_config(cfg, changes, plan)
    data.record(run.path)
    return run


def start_line(cfg: Config, data: D.Source, device, world: int, plan: B.Plan | None, steps: int) -> str:
    res = data.resolution
    return (
        f"preset {cfg.preset} · model {cfg.train.model} · {data.name} {res}x{res} · device {describe(device)} · "
        f"bf16 {cfg.system.amp == 'bf16' and 'on' or 'off'} · compile {cfg.system.compile} · channels_last "
        f"{'on' if channels_last_on(cfg.system.channels_last, device) else 'off'} · "
        + (B.describe(plan) if plan else f"{cfg.train.epochs} epochs x {steps} steps")
        + (f" · data-parallel over {world} ranks ({dist.get_backend()})" if world > 1 else "")
    )


def resume_lines(cfg: Config, pos: P.Position, where) -> str:
    lines = [f"resuming {where} at epoch {pos.epoch + 1}" + (f", step {pos.step}" if pos.step else "")]
    for c in pos.changes:
        if c["epoch"] == pos.epoch + 1:
            extra = (
                "; the learning-rate schedule is recomputed for the new length"
                if c["setting"] == "epochs" and (cfg.train.schedule != "constant" or cfg.train.warmup_epochs)
                else ""
            )
            lines.append(f"changed from epoch {c['epoch']}: {c['setting']} {c['from']} -> {c['to']}{extra}")
    return "\n".join(lines)


def metrics_row(epoch: int, tr: dict, ev: dict, train_time: float, epoch_time: float, data: D.Source) -> dict:
    """One metrics row. Times and images/s cover the training since the previous row (one epoch,
    or all of them under --evaluate end); epoch_time_s adds the evaluation."""
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
    row.update(data.epoch_metrics(ev))
    return row


def row_line(row: dict) -> str:
    return (
        f"train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  val acc {row['val_acc']:.4f}  "
        + (f"top-5 err {row['val_top5_err']:.4f}  " if "val_top5_err" in row else "")
        + f"{row['train_images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s"
    )


# ---------------------------------------------------------------------------------------------
# Before the loop: the network a budget chooses, the frozen stem, the measured step


def choose_network(cfg: Config, data: D.Source, device, world: int, clock: B.Clock, quiet: bool) -> Config:
    """--choose-from under a budget: time each network's training step on a batch of this run's
    data, in alternating turns (the trained part only where its stem runs once per image), and
    train the first whose planned epochs reach its need (budget.choose). Paid from the budget, so
    the last network, which trains if no other fits, is timed first: a network with at least its
    arithmetic a step cannot step faster, and where even at its step the epochs fall short of the
    need, that network is not built or timed at all (speedrun's 60 s on a 2-core CPU: 0.5 s)."""
    options = parse_choices(cfg.train.choose_from)
    x, y = next(iter(data.train(0)))
    per_epoch = D.steps_per_epoch(len(data), cfg.train.batch_size // world, world)
    budget = parse_duration(cfg.train.time_budget)

    @functools.cache  # the last network, timed alone and then beside the others, is built once
    def timer(name: str):
        model = build_model(name, data.channels, len(data.classes), seed=cfg.train.seed).to(device)
        if channels_last_on(cfg.system.channels_last, device):
            model = model.to(memory_format=torch.channels_last)
        inputs = x
        if T.stem_once(model, data, world):  # its values do not matter for the time: the filters stay unfitted
            with torch.no_grad(), autocast(device, cfg.system.amp == "bf16"):
                inputs = model[0](x)
            model = model[1:]
        optimizer = T.make_optimizer(model, cfg, device)
        return functools.partial(_steps, model, optimizer, inputs, y, cfg, device)

    # A few steps each: the choice turns on a factor of two or more, and the budget pays for them.
    def measure(names: list[str]) -> dict[str, float]:
        times = time_turns({n: timer(n) for n in names}, device, rounds=2, block=2, warmup=1)
        return {n: t.median for n, t in times.items()}

    last = options[-1][0]
    step_s = measure([last])
    arithmetic = {
        n: training_flops(build_model(n, data.channels, len(data.classes)).to("meta"), tuple(x.shape))
        for n, _ in options
    }
    out_of_reach = B.out_of_reach(options, step_s[last], arithmetic, budget - clock.spent(), per_epoch)
    rest = [n for n, _ in options[:-1] if n not in out_of_reach]
    if rest:
        step_s = measure([*rest, last])  # in turns again: the last one's step beside theirs
    chosen, how = B.choose(options, step_s, budget - clock.spent(), per_epoch)
    say(how, quiet)
    return cfg.replace(model=chosen, choose_from=cfg.train.choose_from)


def _steps(model, optimizer, x, y, cfg: Config, device, k: int) -> None:
    for _ in range(k):
        amp, smoothing = cfg.system.amp == "bf16", cfg.train.label_smoothing
        T.train_step(model, optimizer, x, y, device=device, amp=amp, label_smoothing=smoothing)


def measure_step(model, train_net, optimizer, data: D.Source, cfg: Config, device) -> float:
    """Seconds per training step of this run's own step, network and data, with the weights,
    optimiser and random state put back afterwards (the steps take lr 0 as well)."""
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), torch.get_rng_state())
    batches = itertools.chain.from_iterable(data.train(e) for e in itertools.count())

    def run(n: int) -> None:
        amp, smoothing = cfg.system.amp == "bf16", cfg.train.label_smoothing
        steps = itertools.islice(batches, n)
        T.train_one_epoch(
            train_net,
            optimizer,
            steps,
            device=device,
            amp=amp,
            label_smoothing=smoothing,
            lr_fn=lambda s: 0.0,
            log_every=n,
        )

    try:  # the median: one step that another job stalled does not stretch the plan (the pacer follows the load)
        return time_turns({"step": run}, device, rounds=B.TIMED_STEPS, warmup=B.WARMUP_STEPS)["step"].median
    finally:
        model.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
        torch.set_rng_state(saved[2])


def measure_evaluation(net, data: D.Source, cfg: Config, device) -> float:
    """Seconds of one evaluation: the median of a few batches after a warm-up one, times the
    batches, where batches cost the same (in-memory data), else one whole evaluation."""

    def run(k: int) -> None:  # the first k batches, or a whole evaluation
        amp, classes = cfg.system.amp == "bf16", len(data.classes)
        batches = data.val(k if data.uniform_batches else None)
        T.evaluate(net, batches, device=device, amp=amp, num_classes=classes, flip_tta=cfg.data.flip_tta)

    if not data.uniform_batches:
        return time_turns({"evaluation": run}, device, rounds=1, warmup=0)["evaluation"].median
    return time_turns({"evaluation": run}, device, rounds=2, warmup=1)["evaluation"].median * data.val_steps


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
