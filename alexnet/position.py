"""Where a run stands, and what its checkpoint holds: the position (finished epochs, steps into the
next one, their totals, the metrics), the checkpoint's contents, the settings a resume may change,
and, under torchrun, one position for every rank (rank 0's, read under the run's lock) and the
elastic restart that continues the run it was started for."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from .config import RESUMABLE, Config, ConfigError
from .measure import machine
from .models import TwoTowers
from .runs import RunDir, RunError, best_epoch_of, load_checkpoint, not_regular


class TrainingError(RunError):
    """A run that cannot go on (non-finite loss, bad resume); the message is one line."""


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


def contents(pos: Position, model, optimizer, cfg: Config, data, device, plan: dict | None) -> dict:
    """A checkpoint: the weights and optimiser, the position, and what the other commands read."""
    weights = model.grouped_state_dict() if isinstance(model, TwoTowers) else model.state_dict()
    return {
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "config": cfg.to_dict(),
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
        "machine": machine(device).asdict(),
        # torchrun's job: a worker it restarts continues this run (elastic_restart)
        **({"elastic_job": os.environ["TORCHELASTIC_RUN_ID"]} if "TORCHELASTIC_RUN_ID" in os.environ else {}),
        **({"plan": plan} if plan else {}),
    }


def read_to_resume(run_dir) -> tuple[RunDir | None, dict]:
    """The run's lock (rank 0, the writer) and its last checkpoint, read under the lock; the other
    ranks read it for its settings, and take rank 0's position (``rank_zeros_checkpoint``)."""
    if run_dir is None or not (Path(run_dir) / "last.pt").exists():
        raise TrainingError(f"--resume {run_dir}: no last.pt to resume from")
    if os.environ.get("RANK", "0") == "0":
        return RunDir.resume(run_dir)
    return None, load_checkpoint(Path(run_dir) / "last.pt")


def elastic_restart(run_dir) -> bool:
    """Whether this process is a worker that torchrun (``--max-restarts``) started again after a
    failure: it runs the command that created the run, whose checkpoint names this elastic job."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if not job or os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") == "0" or run_dir is None:
        return False
    last = Path(run_dir) / "last.pt"
    if not_regular(last):
        return False
    try:  # mmap: the job's name is read without loading the weights
        return torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("elastic_job") == job
    except Exception:
        return False  # not a checkpoint of ours: the run directory's own checks say so


def rank_zeros_checkpoint(ckpt: dict | None, run_dir, rank: int, device) -> dict | None:
    """Every rank resumes from the checkpoint rank 0 read under the run's lock. The others read
    last.pt without it, possibly before a run that held the lock wrote its last checkpoint; rank 0's
    position (broadcast) tells them, and by then last.pt is the file rank 0 read."""
    mine = [-1, -1] if ckpt is None else [int(ckpt["epoch"]), int(ckpt["step"])]
    theirs = torch.tensor(mine, dtype=torch.long, device=device)
    dist.broadcast(theirs, src=0)
    theirs = theirs.tolist()
    if rank == 0 or theirs == mine:
        return ckpt
    if ckpt is None or theirs[0] < 0:
        raise TrainingError(f"{run_dir}: rank 0 and rank {rank} disagree on whether the run is resumed")
    ckpt = load_checkpoint(Path(run_dir) / "last.pt")
    if [ckpt["epoch"], ckpt["step"]] != theirs:
        raise TrainingError(
            f"{run_dir}/last.pt: rank {rank} reads epoch {ckpt['epoch']} step {ckpt['step']}, "
            f"rank 0 epoch {theirs[0]} step {theirs[1]}"
        )
    return ckpt
