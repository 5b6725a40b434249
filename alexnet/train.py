"""Training and evaluation: one epoch, one evaluation pass, and the run around them.

Data flows one way: uint8 split on the device -> batch of indices -> device-side augment/resize
-> model -> loss -> SGD -> metrics summed on the device -> host once per log interval -> run dir.
Image folders (imagenet.py) differ only in the first step: workers decode uint8 crops.

Under ``torchrun`` the same loop is data-parallel (DistributedDataParallel): each rank reads its
shard of every epoch's permutation, gradients are averaged in backward, metrics are reduced across
ranks, and rank 0 alone writes the run directory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import data as D
from . import imagenet as I
from .analysis import InputTooSmall, trace
from .config import Config
from .models import TwoTowers, build_model, get_spec


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, bad resume); the message is one line."""


# ---------------------------------------------------------------------------------------------
# Device, precision, compilation


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainingError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainingError(f"--device {name}: MPS is not available on this machine")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86: AVX512-BF16 or AMX; Arm: BF16). Only
    then does bf16 autocast pay on a CPU: on the 2-core AVX512-BF16 machine this project is
    developed on, an `alexnet` training step runs 1.8x faster in bf16 than in fp32; without the
    instructions, bf16 is emulated and slower than fp32."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith(("flags", "Features"))), [])  # fmt: skip
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(flags))


def bf16_autocast(setting: str, device: torch.device) -> bool:
    """Whether ``--amp SETTING`` means bf16 autocast on ``device``. auto: where it pays, on CUDA
    GPUs with bf16 units (Ampere and later) and CPUs with bf16 instructions. Weights, gradients
    and optimizer state stay fp32 either way."""
    if setting != "auto":
        return setting == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def use_amp(cfg: Config, device: torch.device) -> bool:
    return bf16_autocast(cfg.system.amp, device)


def use_compile(cfg: Config, device: torch.device) -> bool:
    return cfg.system.compile == "on" or (cfg.system.compile == "auto" and device.type == "cuda")


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def init_distributed(cfg: Config) -> tuple[torch.device, int, int]:
    """(device, rank, world size). Under torchrun (WORLD_SIZE > 1) this joins the process group:
    NCCL between GPUs, one GPU per process (LOCAL_RANK), and Gloo between CPU processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(cfg.system.device)
    if world == 1:
        return device, 0, 1
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise TrainingError(f"data-parallel training runs on CUDA (NCCL) or the CPU (Gloo), not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def reduce_means(m: dict, keys: tuple[str, ...], device, world: int, sums: tuple[str, ...] = ()) -> dict:
    """Rank-local means (over m['images']) -> means over all ranks' images; ``sums`` are added up."""
    if world == 1:
        return m
    t = torch.tensor([m["images"], *(m[k] * m["images"] for k in keys), *(m[k] for k in sums)],
                     dtype=torch.float64, device=device)  # fmt: skip
    dist.all_reduce(t)
    n = max(t[0].item(), 1)
    out = {**m, "images": int(t[0].item())}
    out.update({k: t[1 + i].item() / n for i, k in enumerate(keys)})
    out.update({k: int(t[1 + len(keys) + i].item()) for i, k in enumerate(sums)})
    return out


class CompiledOrEager(nn.Module):
    """``torch.compile`` the model, and fall back to eager if compilation fails on first use."""

    def __init__(self, model: nn.Module, enabled: bool):
        super().__init__()
        self.model = model
        self.compiled = torch.compile(model) if enabled else None

    def forward(self, x):
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as e:  # a backend missing (no C compiler, old GPU) is not fatal
                warnings.warn(f"torch.compile failed ({e.__class__.__name__}); running eager", stacklevel=2)
                self.compiled = None
        return self.model(x)


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule


def make_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    t = cfg.train
    # Weight decay on weights only: decaying biases only slows learning.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0, **fused)


SCHEDULES = ("constant", "cosine", "step", "plateau")


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


def make_transform(cfg: Config, ds: D.Dataset, device: torch.device) -> D.Transform:
    res = cfg.data.resolution or get_spec(cfg.train.model).resolution
    mean, std = D.STATS[ds.name] if cfg.data.normalize else (None, None)
    return D.Transform(res, mean, std, cfg.data.crop_padding, cfg.data.flip,
                       channels_last=cfg.system.channels_last and device.type != "mps")  # fmt: skip


@dataclass
class Progress:
    """What is shown while an epoch runs: a tqdm bar, or nothing."""

    enabled: bool = True

    def bar(self, total: int, desc: str):
        if not self.enabled:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)


def train_one_epoch(model, optimizer, batches, *, device, amp, label_smoothing=0.0, lr_fn=None,
                    step0=0, log_every=25, bar=None, sums=None, on_step=None):
    """Train over ``batches``; returns {'loss', 'acc', 'images', 'steps'} summed on the device.

    ``sums`` carries the running totals of an interrupted epoch. Losses stay on the device and
    reach the host only every ``log_every`` steps, where they are checked for non-finite values.
    """
    model.train()
    loss_sum, correct, seen = sums or (torch.zeros((), device=device), torch.zeros((), device=device), 0)
    step = step0
    t0, n0 = time.perf_counter(), seen
    for x, y in batches:
        if lr_fn is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_fn(step)
        with autocast(device, amp):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        step += 1
        if on_step is not None:
            on_step(step, (loss_sum, correct, seen))
        if step % log_every == 0:
            mean = (loss_sum / seen).item()  # the one host-device sync per interval
            if not math.isfinite(mean):
                raise NonFiniteLoss(step, mean)
            if bar is not None:
                rate = (seen - n0) / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{mean:.3f}", img_s=f"{rate:.0f}", refresh=False)
        if bar is not None:
            bar.update(1)
    mean = (loss_sum / max(seen, 1)).item()
    if not math.isfinite(mean):
        raise NonFiniteLoss(step, mean)
    return {"loss": mean, "acc": (correct / max(seen, 1)).item(), "images": seen, "steps": step}


class NonFiniteLoss(TrainingError):
    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} by step {step}")
        self.step, self.value = step, value


@torch.inference_mode()
def evaluate(model, batches, *, device, amp, num_classes: int, confusion: bool = False):
    """Mean loss, accuracy and top-5 accuracy (and the confusion matrix, rows = true class).

    A batch of shape (B, n, C, H, W) holds n crops per image whose softmaxes are averaged (§4.1).
    """
    model.eval()
    loss_sum, top5 = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    matrix = torch.zeros(num_classes * num_classes, device=device, dtype=torch.long)
    seen = 0
    for x, y in batches:
        crops = x.shape[1] if x.ndim == 5 else 1
        with autocast(device, amp):
            logits = model(x.flatten(0, 1) if crops > 1 else x).float()
        if crops > 1:
            scores = logits.softmax(1).view(len(y), crops, -1).mean(1).log()  # (B*n, K) -> (B, K)
            loss_sum += F.nll_loss(scores, y, reduction="sum")
        else:
            scores = logits
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
        matrix += torch.bincount(y * num_classes + scores.argmax(1), minlength=num_classes**2)
        top5 += (scores.topk(min(5, num_classes), 1).indices == y[:, None]).any(1).sum()
        seen += len(y)
    matrix = matrix.view(num_classes, num_classes).cpu()
    out = {"loss": (loss_sum / max(seen, 1)).item(), "acc": (matrix.diag().sum() / max(seen, 1)).item(),
           "top5": (top5 / max(seen, 1)).item(), "images": seen}  # fmt: skip
    if confusion:
        out["confusion"] = matrix
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoints and the run directory


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over ``path``:
    a crash or Ctrl-C at any moment leaves either the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint file, or the best (else last) one of a run directory."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).exists():
                p = p / name
                break
        else:
            raise TrainingError(f"{path}: run directory holds no checkpoint (best.pt or last.pt)")
    if not p.exists():
        raise TrainingError(f"{path}: no such checkpoint or run directory")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(f"{p}: not a readable checkpoint ({e.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise TrainingError(f"{p}: not an alexnet checkpoint")
    ckpt["path"] = str(p)
    return ckpt


def model_from_checkpoint(ckpt: dict) -> tuple[nn.Module, Config]:
    cfg = Config.from_dict(ckpt["config"])
    model = build_model(cfg.train.model, ckpt["in_channels"], ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    return model, cfg


def plot_curves(metrics: list[dict], path: Path, title: str) -> None:
    """The chapter's figure: train loss, validation loss and validation accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [m["epoch"] for m in metrics]
    ax.plot(epochs, [m["train_loss"] for m in metrics], "-o", label="train loss")
    ax.plot(epochs, [m["val_loss"] for m in metrics], "--s", label="val loss")
    ax.plot(epochs, [m["val_acc"] for m in metrics], "-.^", label="val acc")
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def plot_confusion(matrix: torch.Tensor, classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = matrix.double()
    norm = m / m.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


class InMemory:
    """The chapter's datasets (data.py): uint8 on the device, a batch is a gather by indices.

    Each rank trains on its shard of the permutation and evaluates every world_size-th test image.
    """

    skipped = 0  # nothing here can fail to decode

    def __init__(self, cfg: Config, device, batch: int, eval_batch: int, rank: int, world: int):
        ds = D.load_dataset(cfg.data.dataset, cfg.data.data_dir, device=device)
        if cfg.data.limit_train:
            ds.train = ds.train.subset(cfg.data.limit_train)
        if cfg.data.limit_test:
            ds.test = ds.test.subset(cfg.data.limit_test)
        self.ds, self.name, self.classes, self.channels = ds, ds.name, ds.classes, ds.channels
        self.transform = make_transform(cfg, ds, device)
        self.resolution = self.transform.resolution
        self.test = D.Split(ds.test.images[rank::world], ds.test.labels[rank::world])
        self.batch, self.eval_batch, self.seed, self.rank, self.world = batch, eval_batch, cfg.train.seed, rank, world

    def __len__(self) -> int:
        return len(self.ds.train)

    def train(self, epoch: int, skip: int = 0):
        return D.loader(self.ds.train, self.transform, self.batch, True, epoch, self.seed, self.rank, self.world,
                        skip=skip)  # fmt: skip

    def val(self):
        return D.loader(self.test, self.transform, self.eval_batch, False)


def load_data(cfg: Config, device, run_dir: Path, resume: bool, rank: int, world: int):
    """The run's data source: ``train(epoch, skip)`` and ``val()`` yield device batches."""
    if cfg.train.batch_size % world:
        raise TrainingError(f"--batch-size {cfg.train.batch_size} (global) does not split evenly over {world} ranks")
    batch, eval_batch = cfg.train.batch_size // world, max(1, cfg.train.eval_batch_size // world)
    if cfg.data.dataset not in I.IMAGE_DATASETS:
        return InMemory(cfg, device, batch, eval_batch, rank, world)
    # The colour statistics are part of the run: a resumed run reuses them rather than resampling.
    stats = I.load_stats(run_dir / "lighting.json") if resume else None
    resolution = cfg.data.resolution or get_spec(cfg.train.model).resolution
    return I.ImagePipeline(cfg, device, resolution, batch, eval_batch, rank, world, stats,
                           channels_last=cfg.system.channels_last and device.type != "mps")  # fmt: skip


def fit(cfg: Config, run_dir: str | os.PathLike, *, resume: bool = False, progress: bool = True,
        quiet: bool = False) -> RunResult:  # fmt: skip
    """Train ``cfg`` into ``run_dir`` (config.json, metrics.jsonl, curves.png, last.pt, best.pt;
    image folders add lighting.json). Under torchrun, data-parallel over the ranks."""
    run_dir = Path(run_dir)
    state = None
    if resume:
        last = run_dir / "last.pt"
        if not last.exists():
            raise TrainingError(f"--resume {run_dir}: no last.pt to resume from")
        state = load_checkpoint(last)
        saved = Config.from_dict(state["config"])
        # The run's own recipe wins; only the length and where it runs may change on resume.
        cfg = Config.from_dict({**saved.to_dict(), "system": cfg.system.__dict__}).replace(epochs=cfg.train.epochs)
    try:
        cfg.check()
    except ValueError as e:
        raise TrainingError(str(e)) from None
    if cfg.train.schedule not in SCHEDULES:
        raise TrainingError(f"unknown --schedule {cfg.train.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    device, rank, world = init_distributed(cfg)
    if cfg.system.model_parallel:  # batches and logits live on the first of the two devices
        names = cfg.system.model_parallel.split(",")
        if len(names) != 2:
            raise TrainingError(f"--model-parallel {cfg.system.model_parallel}: give two devices, like cuda:0,cuda:1")
        device = select_device(names[0])
        select_device(names[1])
    main = rank == 0  # only rank 0 writes the run directory, prints and draws progress bars
    quiet, progress = quiet or not main, progress and main
    try:
        result = _fit(cfg, run_dir, state, device, rank, world, main, progress, quiet)
        if world > 1:  # leave the group together: a rank exiting while rank 0 still writes can abort Gloo
            dist.barrier()
        return result
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _fit(cfg, run_dir, state, device, rank, world, main, progress, quiet) -> RunResult:
    amp, compiled = use_amp(cfg, device), use_compile(cfg, device)
    data = load_data(cfg, device, run_dir, state is not None, rank, world)
    resolution = data.resolution
    channels_last = cfg.system.channels_last and device.type != "mps"
    num_classes = len(data.classes)

    model = build_model(cfg.train.model, data.channels, num_classes, seed=cfg.train.seed)
    _check_input_fits(model, data.channels, resolution, "cpu")
    # Only now that the data and the model are known good: a mistake leaves no empty run behind.
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(data, I.ImagePipeline):
            I.save_stats(data.stats, run_dir / "lighting.json")
    if state is not None:
        model.load_state_dict(state["model"])
    if cfg.system.model_parallel:
        try:
            model = TwoTowers(model, cfg.system.model_parallel.split(","))
        except (ValueError, RuntimeError) as e:
            raise TrainingError(f"--model-parallel {cfg.system.model_parallel}: {e}") from None
    else:
        model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, device)
    # Gradients are averaged across ranks inside backward, bucket by bucket, overlapping the compute.
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if world > 1 else model
    net = CompiledOrEager(ddp, compiled)

    metrics: list[dict] = []
    start_epoch, start_step, sums, best = 0, 0, None, -1.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        metrics, start_epoch, best = state["metrics"], state["epoch"], state.get("best_acc", -1.0)
        start_step = state.get("step", 0)
        if state.get("partial") and main:  # the interrupted epoch's totals so far count once, on rank 0
            p = state["partial"]
            sums = (torch.tensor(p[0], device=device), torch.tensor(p[1], device=device), p[2])
        _say(f"resuming {run_dir} at epoch {start_epoch + 1}" + (f", step {start_step}" if start_step else ""), quiet)
    if main:
        atomic_write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", run_dir / "config.json")

    steps = D.steps_per_epoch(len(data), cfg.train.batch_size // world, world)
    if steps == 0:
        raise TrainingError(f"batch size {cfg.train.batch_size} exceeds the {len(data)} training images")
    total = steps * cfg.train.epochs
    images = isinstance(data, I.ImagePipeline)
    drops = 0  # the plateau schedule's divisions of the rate so far, replayed each epoch from the metrics

    def lr_fn(s):
        return lr_at(s, total, steps, cfg, drops)

    _say(
        f"preset {cfg.preset} · model {cfg.train.model} · {data.name} {resolution}x{resolution} · "
        f"device {describe(device)} · bf16 {'on' if amp else 'off'} · compile {'on' if compiled else 'off'} · "
        f"channels_last {'on' if channels_last else 'off'} · {cfg.train.epochs} epochs x {steps} steps"
        + (f" · data-parallel over {world} ranks ({dist.get_backend()})" if world > 1 else ""),
        quiet,
    )

    def checkpoint(epoch_done: int, step_in_epoch: int = 0, partial=None) -> dict:
        weights = model.grouped_state_dict() if isinstance(model, TwoTowers) else model.state_dict()
        return {
            "model": weights, "optimizer": optimizer.state_dict(), "config": cfg.to_dict(),
            "epoch": epoch_done, "step": step_in_epoch, "metrics": metrics, "best_acc": best,
            "partial": partial, "classes": data.classes, "dataset": data.name, "in_channels": data.channels,
            "num_classes": num_classes, "resolution": resolution, "torch": str(torch.__version__),
            "stats": getattr(data, "stats", None),
        }  # fmt: skip

    bars = Progress(progress)
    live = {"step": start_step, "sums": sums}
    interrupted = False
    previous = signal.getsignal(signal.SIGTERM)
    with contextlib.suppress(ValueError):  # not in the main thread: leave SIGTERM alone
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            # Dropout: a function of (seed, epoch), and of the rank, else every rank's i-th image would
            # get the same mask.
            torch.manual_seed(cfg.train.seed * 1_000_003 + epoch + 1_000_033 * rank)
            drops = plateau_drops([1 - m["val_acc"] for m in metrics], cfg.train.lr_patience)
            skip = start_step if epoch == start_epoch else 0
            t0 = time.perf_counter()
            bar = bars.bar(steps, f"epoch {epoch + 1}/{cfg.train.epochs}")
            if bar is not None and skip:
                bar.update(skip)

            def on_step(s, current, _epoch=epoch):
                live["step"], live["sums"] = s - _epoch * steps, current

            try:
                tr = train_one_epoch(
                    net, optimizer, data.train(epoch, skip),
                    device=device, amp=amp, label_smoothing=cfg.train.label_smoothing, lr_fn=lr_fn,
                    step0=epoch * steps + skip, log_every=cfg.system.log_every, bar=bar,
                    sums=sums if epoch == start_epoch else None, on_step=on_step,
                )  # fmt: skip
            except NonFiniteLoss as e:
                good = "last.pt" if (run_dir / "last.pt").exists() else "none yet"
                raise TrainingError(
                    f"epoch {epoch + 1}: {e}; stopping (lower --lr?). Last good checkpoint: {run_dir / good if good != 'none yet' else good}"
                ) from None
            finally:
                if bar is not None:
                    bar.close()
            train_time = time.perf_counter() - t0
            tr = reduce_means(tr, ("loss", "acc"), device, world)
            ev = evaluate(net, data.val(), device=device, amp=amp, num_classes=num_classes)
            ev = reduce_means({**ev, "skipped": data.skipped}, ("loss", "acc", "top5"), device, world, ("skipped",))
            row = {
                "epoch": epoch + 1, "train_loss": tr["loss"], "train_acc": tr["acc"],
                "val_loss": ev["loss"], "val_acc": ev["acc"], "lr": lr_fn(tr["steps"] - 1),
                "train_images_per_s": tr["images"] / train_time, "train_time_s": train_time,
                "epoch_time_s": time.perf_counter() - t0,
            }  # fmt: skip
            if images:  # the paper's figures: top-1 and top-5 error; and the files that could not be read
                row.update(val_top1_err=1 - ev["acc"], val_top5_err=1 - ev["top5"], skipped_images=ev["skipped"])
            metrics.append(row)
            sums, live["step"], live["sums"] = None, 0, None
            improved = row["val_acc"] > best
            best = max(best, row["val_acc"])
            if main:
                atomic_save(checkpoint(epoch + 1), run_dir / "last.pt")
                if improved:
                    atomic_save(checkpoint(epoch + 1), run_dir / "best.pt")
                _write_metrics(metrics, run_dir)
                plot_curves(metrics, run_dir / "curves.png", f"{cfg.train.model} · {data.name} · preset {cfg.preset}")
            _say(
                f"epoch {epoch + 1:>3}/{cfg.train.epochs}  train loss {row['train_loss']:.4f}  "
                f"val loss {row['val_loss']:.4f}  val acc {row['val_acc']:.4f}  "
                + (f"top-5 err {row['val_top5_err']:.4f}  " if images else "")
                + f"{row['train_images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s",
                quiet,
            )
    except KeyboardInterrupt:
        interrupted = True
        epoch_done = len(metrics)
        partial = None
        if live["sums"] is not None and world == 1:  # other ranks' totals are out of reach mid-epoch
            ls, c, n = live["sums"]
            partial = (float(ls), float(c), int(n))
        if main:
            atomic_save(checkpoint(epoch_done, live["step"], partial), run_dir / "last.pt")
        _say(f"\ninterrupted: saved {run_dir / 'last.pt'} (epoch {epoch_done + 1}, step {live['step']}); "
             f"continue with: alexnet train --resume {run_dir}", quiet)  # fmt: skip
    finally:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)
    return RunResult(run_dir, metrics, interrupted)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _write_metrics(metrics: list[dict], run_dir: Path) -> None:
    atomic_write_text("".join(json.dumps(m) + "\n" for m in metrics), run_dir / "metrics.jsonl")
    keys = list(metrics[0])
    rows = [",".join(keys)] + [",".join(f"{m[k]:.6g}" if isinstance(m[k], float) else str(m[k]) for k in keys)
                               for m in metrics]  # fmt: skip
    atomic_write_text("\n".join(rows) + "\n", run_dir / "metrics.csv")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads{', no GPU found' if not torch.cuda.is_available() else ''})"
    return str(device)


def _check_input_fits(model: nn.Module, channels: int, resolution: int, device) -> None:
    """Fail before training, naming the layer, when the input is too small for the network."""
    try:
        trace(model, (1, channels, resolution, resolution), device=device)
    except InputTooSmall as e:
        raise TrainingError(str(e)) from None
