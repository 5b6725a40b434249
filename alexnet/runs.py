"""The run directory as one unit: created under a unique name and owned by one live run (a lock),
every file written atomically, the checkpoint the single source of truth from which the rest
(metrics.jsonl/.csv, curves.png, best.pt, config.json) is derived and, after a crash, repaired.

    RUN/config.json     the settings, with any change a resume made and the epoch it took effect
    RUN/last.pt         the newest checkpoint: weights, optimizer, position, metrics (the truth)
    RUN/best.pt         the checkpoint of the epoch with the best validation accuracy
    RUN/metrics.jsonl   one row per finished epoch (also metrics.csv), derived from last.pt
    RUN/curves.png      the chapter's figure: train loss, val loss, val accuracy per epoch
    RUN/.lock           held (flock) by the process writing the run; names it
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import socket
import stat
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .config import MAX_CLASSES, Config, ConfigError, DataConfig, TrainConfig
from .models import build_model
from .plotting import pyplot
from .status import (  # re-exported: the rooms above read a run through runs as before
    MAX_METRICS_BYTES as MAX_METRICS_BYTES,
)
from .status import (
    RUN_STATUSES as RUN_STATUSES,
)
from .status import (
    RunError as RunError,
)
from .status import (
    RunStatus as RunStatus,
)
from .status import (
    epochs_planned as epochs_planned,
)
from .status import (
    live_holder as live_holder,
)
from .status import (
    network_checkpoint as network_checkpoint,
)
from .status import open_regular
from .status import (
    read_bounded as read_bounded,
)
from .status import (
    read_metrics_rows as read_metrics_rows,
)
from .status import (
    run_status as run_status,
)

# Bounds on the counts a checkpoint declares, as the configuration bounds its flags: a crafted
# resolution of 12000 made predict allocate 9.8 GB.
CHECKPOINT_BOUNDS = {
    "in_channels": (1, 3),
    "num_classes": (1, MAX_CLASSES),
    "resolution": (1, DataConfig._AT_MOST["resolution"]),
    "epoch": (0, TrainConfig._AT_MOST["epochs"]),
    "step": (0, 1 << 40),
}
CHECKPOINT_KEYS = (
    "model",
    "optimizer",
    "config",
    "epoch",
    "step",
    "metrics",
    "in_channels",
    "num_classes",
    "classes",
    "resolution",
)


# Every file a run writes (atomic_write's temporaries are .NAME.*.tmp beside them).
RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "curves.png", "lighting.json")


# ---------------------------------------------------------------------------------------------
# One atomic writer for every file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable) -> None:
    """Write ``content`` (bytes, text, or a function given the open binary file) to a temporary
    file beside ``path``, fsync, then rename over it: a crash or Ctrl-C at any moment leaves the
    old file or the new one, never half of one, and a full disk keeps the old one."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise RunError(f"cannot write in {path.parent}: {e.strerror}") from None
    writes = None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                writes = _Recording(f)
                content(writes)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; a shared runs folder needs what the umask allows.
        os.chmod(tmp, 0o666 & ~_umask())
        _fault_point(path.name)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if writes is not None and writes.error is not None and not isinstance(e, KeyboardInterrupt):
            e = writes.error  # the cause under a writer's own error (torch: "unexpected pos 704 vs 598")
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunError(
                f"no space left on the device holding {path.parent} while writing {path.name}; "
                f"the previous {path.name} is kept"
            ) from None
        if isinstance(e, OSError):
            raise RunError(f"cannot write {path}: {e.strerror or e}") from None
        raise


class _Recording:
    """The open file, remembering the OSError of a failed write: torch's zip writer swallows it and
    raises a RuntimeError of its own, which would otherwise hide a full disk."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, b):
        try:
            return self._f.write(b)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


_writes: dict[str, int] = {}


def _fault_point(name: str) -> None:
    """The fault suite's kill switch: ALEXNET_KILL_BEFORE_RENAME=NAME:N kills this process (SIGKILL,
    as a power cut would) when the N-th write of file NAME is complete but not yet renamed."""
    spec = os.environ.get("ALEXNET_KILL_BEFORE_RENAME")
    if not spec:
        return
    target, _, n = spec.rpartition(":")
    _writes[name] = _writes.get(name, 0) + 1
    if name == target and _writes[name] == int(n):
        os.kill(os.getpid(), 9)


def _pause_point(name: str) -> None:
    """The race suite's pause: ALEXNET_PAUSE_AT=NAME stops this process (SIGSTOP) at NAME, so that a
    test can run another process in that window and then continue this one (SIGCONT)."""
    if os.environ.get("ALEXNET_PAUSE_AT") == name:
        os.kill(os.getpid(), signal.SIGSTOP)


def not_regular(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a file, or None: a FIFO (or a device) blocks forever in open(),
    so anything but a regular file is refused before it is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return e.strerror or str(e)
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory, not a file"
    return f"not a regular file ({'a FIFO' if stat.S_ISFIFO(mode) else 'a device or socket'})"


def save_checkpoint(state: dict, path: Path) -> None:
    """Write a checkpoint, refusing non-finite weights: a diverged model never replaces a good file."""
    bad = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RunError(f"not writing {path}: weights {bad[0]} are not finite")
    atomic_write(path, lambda f: torch.save(state, f))


# ---------------------------------------------------------------------------------------------
# Reading checkpoints


def first_line(e: BaseException) -> str:
    """An exception as the few words a one-line error can hold: its first non-blank line, at most 200
    characters, or its class's name when it says nothing."""
    text = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (text[0][:200] if text else "") or e.__class__.__name__


def _why_unreadable(e: BaseException) -> str:
    """What is wrong with a file torch.load refused, in a few words. torch's own message for a
    pickle that holds code advises loading it again unsafely: that advice is never passed on."""
    text = str(e)
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            return f"it holds Python code or objects ({found.group(1)}), not only tensors; refused without running it"
        found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = found.group(1).strip() if found else "unexpected content"
        return f"its content is not a checkpoint's ({detail[:120]})"
    first = first_line(e)
    if "zip archive" in first:
        return f"not a checkpoint file, or a damaged one ({first.split('. ')[0]})"
    return f"{e.__class__.__name__}: {first}"


# A checkpoint holds the largest registered network at the most classes a run may have (1.78 GB of
# fp32 weights; weights.MAX_MODEL_BYTES is 2 GiB) and the optimizer's state, up to two tensors per
# weight (Adam): three times that.
MAX_CHECKPOINT_BYTES = 6 * 2**30


def load_checkpoint(path: str | os.PathLike, error: type[RunError] = RunError) -> dict:
    """A checkpoint file, or the best (else last) one of a run directory, checked for what the
    commands read from it. Read from one open file, a regular one of at most MAX_CHECKPOINT_BYTES:
    the file checked is the file loaded. ``error``: the RunError kind a refusal raises."""
    p = Path(path)
    if p.is_dir():
        p = next((p / n for n in ("best.pt", "last.pt") if os.path.lexists(p / n)), None)
        if p is None:
            raise error(f"{path}: run directory holds no checkpoint (best.pt or last.pt)")
    if not os.path.lexists(p):
        raise error(f"{path}: no such checkpoint or run directory")
    with open_regular(p, MAX_CHECKPOINT_BYTES, error, what="a checkpoint") as f:
        try:
            with warnings.catch_warnings():  # torch warns about odd pickle protocols: a stray line beside ours
                warnings.simplefilter("ignore")
                ckpt = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and torch errors alike: the file is not a checkpoint
            raise error(f"{p}: not a readable checkpoint ({_why_unreadable(e)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise error(f"{p}: not an alexnet checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise error(f"{p}: checkpoint lacks {', '.join(repr(k) for k in missing)} (written by another program?)")
    ints = {k: ckpt[k] for k in CHECKPOINT_BOUNDS}
    bad = next((k for k, v in ints.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0), None)
    if bad is not None:
        raise error(f"{p}: checkpoint field {bad!r} is {ckpt[bad]!r}, not a count")
    bad = next((k for k, (lo, hi) in CHECKPOINT_BOUNDS.items() if not lo <= ckpt[k] <= hi), None)
    if bad is not None:
        lo, hi = CHECKPOINT_BOUNDS[bad]
        raise error(f"{p}: checkpoint field {bad!r} is {ckpt[bad]}, outside {lo}..{hi}")
    classes = ckpt["classes"]
    if (
        not isinstance(classes, list)
        or len(classes) != ckpt["num_classes"]
        or not all(isinstance(c, str) and len(c) <= 1000 for c in classes)
    ):
        raise error(f"{p}: checkpoint's class names do not match its {ckpt['num_classes']} classes")
    if (
        not isinstance(ckpt["metrics"], list)
        or not all(isinstance(m, dict) for m in ckpt["metrics"])
        or len(ckpt["metrics"]) > ckpt["epoch"]
    ):
        raise error(f"{p}: checkpoint's metrics are not a list of its {ckpt['epoch']} epochs")
    tally = ckpt.get("tally")
    if tally is not None and not (
        isinstance(tally, (list, tuple)) and len(tally) == 4 and all(isinstance(v, (int, float)) for v in tally)
    ):
        raise error(f"{p}: checkpoint's running totals are not four numbers")
    try:
        ckpt["cfg"] = Config.from_dict(ckpt["config"])
    except (ConfigError, TypeError) as e:
        raise error(f"{p}: the recorded configuration is invalid ({first_line(e)})") from None
    ckpt["path"] = str(p)
    return ckpt


def load_weights(model: nn.Module, ckpt: dict) -> None:
    """Load a checkpoint's weights, or say in one line which tensor does not fit and why."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        details = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [first_line(e)]
        raise RunError(
            f"{ckpt['path']}: the weights do not fit {ckpt['cfg'].train.model} "
            f"(in_channels {ckpt['in_channels']}, {ckpt['num_classes']} classes): {details[0][:200]}"
        ) from None


def model_from_checkpoint(ckpt: dict) -> tuple[nn.Module, Config]:
    """The network of a checkpoint, shaped as recorded (channels, classes), with its weights."""
    cfg = ckpt["cfg"]
    model = build_model(cfg.train.model, int(ckpt["in_channels"]), int(ckpt["num_classes"]))
    load_weights(model, ckpt)
    return model, cfg


# ---------------------------------------------------------------------------------------------
# The run directory


def _is_run(path: Path) -> bool:
    """A directory this program wrote, known by what only it writes: a checkpoint of ours, a
    config.json of ours, or, for a run killed before its first file, a .lock naming its holder as
    ``open`` writes it. A file name alone (a user's own .lock or config.json) is not enough."""
    if not_regular(path / ".lock") is None:
        with contextlib.suppress(OSError):
            if _HOLDER.fullmatch((path / ".lock").read_text(errors="replace")[:500]):
                return True
    if not_regular(path / "last.pt") is None:
        try:  # mmap: the keys are read without loading the weights
            ckpt = torch.load(path / "last.pt", map_location="cpu", weights_only=True, mmap=True)
            if isinstance(ckpt, dict) and all(k in ckpt for k in CHECKPOINT_KEYS):
                return True
        except Exception:
            pass
    if not_regular(path / "config.json") is not None:
        return False
    try:
        record = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"data", "train", "system"} <= set(record)


_HOLDER = re.compile(r"pid \d+ on \S+, since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


class RunDir:
    """A run directory held by this process: its lock, its files, its repair."""

    def __init__(self, path: Path, lock_fd: int):
        self.path, self._lock_fd = path, lock_fd

    # -- creation and ownership ------------------------------------------------------------

    @classmethod
    def new(cls, path: str | os.PathLike | None, default_name: str, parent: str | os.PathLike = "runs") -> RunDir:
        """A fresh run: ``path``, or ``parent/default_name`` made unique (-2, -3, ...: two runs started in
        the same second get two directories). Refuses a live run, a finished run and a non-empty
        directory that is not a run."""
        if path is None:
            base = Path(parent) / default_name
            for i in range(1, 10_000):
                candidate = base if i == 1 else base.with_name(f"{base.name}-{i}")
                try:
                    _mkdir(candidate, exist_ok=False)
                except FileExistsError:
                    continue
                return cls.open(candidate)
            raise RunError(f"{base}: no free run directory name")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunError(f"--run-dir {path}: is a file, not a directory")
        if path.is_dir() and any(path.iterdir()) and not _is_run(path):
            raise RunError(
                f"--run-dir {path}: the directory is not empty and holds no run; choose an empty or new directory"
            )
        _mkdir(path, exist_ok=True)
        run = cls.open(path)
        if (path / "last.pt").exists():
            run.release()
            raise RunError(f"{path} already holds a run; continue it with --resume {path}, or choose another --run-dir")
        run.remove_temporaries()  # a run killed before its first checkpoint: start it again
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        """Take the lock of an existing run directory (the kernel drops it when its holder dies, so a
        killed run never blocks its own resume)."""
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path}: no such run directory")
        try:  # not through a symlink, and never blocking on a FIFO put there
            fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666 & ~_umask())
        except OSError as e:
            raise RunError(f"{path}: cannot write there ({e.strerror})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunError(f"{path / '.lock'}: not a regular file; this is not a run directory")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(
                f"{path} is in use by a live run ({holder}); wait for it or choose another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        who = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.pwrite(fd, who.encode(), 0)
        return cls(path, fd)

    @classmethod
    def resume(cls, path: str | os.PathLike) -> tuple[RunDir, dict]:
        """Take the lock, then read last.pt. In the other order, the run holding the lock could finish
        between the two, and every file derived from the stale copy would roll the run back."""
        path = Path(path)
        if why := not_regular(path / "last.pt"):
            raise RunError(f"--resume {path}: no last.pt to resume from ({path / 'last.pt'}: {why})")
        run = cls.open(path)
        try:
            _pause_point("resume")
            return run, load_checkpoint(run.last)
        except BaseException:
            run.release()
            raise

    def release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    # -- files -----------------------------------------------------------------------------

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def write_config(self, cfg: Config, changes: list[dict], plan: dict | None = None) -> None:
        record = {**cfg.to_dict(), "changes": changes} if changes else cfg.to_dict()
        record["versions"] = {"alexnet": __version__, "torch": str(torch.__version__)}  # what wrote the run
        if plan:  # a --time-budget run's plan (budget.Plan)
            record["plan"] = plan
        atomic_write(self.path / "config.json", json.dumps(record, indent=2) + "\n")

    def write_metrics(self, metrics: list[dict], title: str) -> None:
        atomic_write(self.path / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
        atomic_write(self.path / "metrics.csv", metrics_csv(metrics))
        if metrics:
            plot_curves(metrics, self.path / "curves.png", title)

    def save(self, state: dict, best: bool) -> None:
        """The epoch's checkpoint, then best.pt; a crash between the two is repaired by ``reconcile``."""
        save_checkpoint(state, self.last)
        if best:
            save_checkpoint(state, self.best)

    def remove_temporaries(self) -> list[str]:
        """What killed writes left behind; safe only while holding the lock (no live writer)."""
        names = []
        for name in RUN_FILES:  # atomic_write's names: a user's own .notes.tmp is not ours to remove
            for tmp in self.path.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
                names.append(tmp.name)
        return names

    def reconcile(self, ckpt: dict, title: str) -> list[str]:
        """Make every derived file agree with ``ckpt`` (the newest checkpoint) after a crash; remove
        temporaries a killed write left. Returns what was repaired."""
        repaired = [f"removed {name}" for name in self.remove_temporaries()]
        metrics = ckpt["metrics"]
        on_disk = read_metrics(self.path)
        if (on_disk or []) != metrics:  # no metrics.jsonl before the first epoch ends: nothing to repair
            repaired.append(f"metrics ({len(on_disk or [])} rows on disk, {len(metrics)} in the checkpoint)")
        self.write_metrics(metrics, title)
        self.write_config(ckpt["cfg"], ckpt.get("changes", []), ckpt.get("plan"))
        best_epoch = best_epoch_of(metrics)
        have = _checkpoint_epoch(self.best)
        if best_epoch is not None and have != best_epoch:
            if best_epoch == ckpt["epoch"] and ckpt["step"] == 0:
                save_checkpoint({k: v for k, v in ckpt.items() if k not in ("path", "cfg")}, self.best)
                repaired.append(f"best.pt (now epoch {best_epoch}, was {have or 'missing'})")
            elif have is not None and have > ckpt["epoch"]:
                self.best.unlink()
                repaired.append(f"best.pt removed (epoch {have} is ahead of the checkpoint)")
            else:
                warn(
                    f"{self.best}: the best epoch ({best_epoch}) cannot be recreated from last.pt "
                    f"(epoch {ckpt['epoch']}); best.pt {'is missing' if have is None else f'holds epoch {have}'}"
                )
        return repaired


def _mkdir(path: Path, exist_ok: bool) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        if not exist_ok or not path.is_dir():
            raise
    except OSError as e:
        raise RunError(f"cannot create run directory {path}: {e.strerror}") from None


def _checkpoint_epoch(path: Path) -> int | None:
    if not path.exists():
        return None
    if not_regular(path):
        return -1  # not a file: not the best checkpoint, and never opened
    try:  # mmap: the epoch is read without loading 180 MB of weights
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:
        return -1  # unreadable: not the best checkpoint


def best_epoch_of(metrics: list[dict]) -> int | None:
    """The first epoch with the highest validation accuracy (a later tie is not an improvement)."""
    if not metrics:
        return None
    return max(metrics, key=lambda m: (m["val_acc"], -m["epoch"]))["epoch"]


# ---------------------------------------------------------------------------------------------
# Metrics and curves


def metrics_csv(metrics: list[dict]) -> str:
    if not metrics:
        return ""
    keys = list(metrics[0])
    rows = [",".join(keys)] + [
        ",".join(f"{m.get(k, ''):.6g}" if isinstance(m.get(k), float) else str(m.get(k, "")) for k in keys)
        for m in metrics
    ]
    return "\n".join(rows) + "\n"


def read_metrics(path: Path) -> list[dict] | None:
    """Every row of RUN/metrics.jsonl through the one reader (read_metrics_rows), or None when the
    file is missing, not a regular file, or not whole (a line being written, a corrupt one, over the
    cap): then the checkpoint's copy is the truth."""
    try:
        rows, note = read_metrics_rows(path / "metrics.jsonl")
    except RunError:
        return None
    return None if note else rows


def plot_curves(metrics: list[dict], path: Path, title: str) -> None:
    """The chapter's figure: train loss, validation loss and validation accuracy per epoch."""
    plt = pyplot()

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
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Finished runs, for compare and the exercises


def read_run(run_dir: str | os.PathLike) -> dict:
    """A run's settings, per-epoch metrics and model shape, from its newest checkpoint (the truth);
    a run whose checkpoint is gone falls back to config.json and metrics.jsonl."""
    run = Path(run_dir)
    for name in ("last.pt", "config.json"):
        if (run / name).exists() and (why := not_regular(run / name)):
            raise RunError(f"{run / name}: {why}")
    if (run / "last.pt").exists():
        try:
            ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True, mmap=True)
            cfg = Config.from_dict(ckpt["config"])
            shape = {k: int(ckpt[k]) for k in ("in_channels", "num_classes", "resolution")}
            metrics = list(ckpt["metrics"])
        except Exception as e:
            raise RunError(f"{run / 'last.pt'}: not a readable checkpoint ({first_line(e)})") from None
    else:
        try:
            record = json.loads((run / "config.json").read_text())
            cfg = Config.from_dict(record)
        except FileNotFoundError:
            raise RunError(f"{run}: not a run directory (no last.pt or config.json)") from None
        except (ValueError, ConfigError) as e:
            raise RunError(f"{run / 'config.json'}: unreadable ({first_line(e)})") from None
        metrics = read_metrics(run)
        if metrics is None:
            raise RunError(f"{run}: not a run directory (no readable metrics.jsonl)")
        shape = {
            "in_channels": 3 if cfg.data.dataset == "cifar10" else 1,
            "num_classes": 10,
            "resolution": cfg.resolution(),
        }
    if not metrics:
        raise RunError(f"{run}: the run has no finished epoch")
    return {"dir": run, "config": cfg.to_dict(), "cfg": cfg, "metrics": metrics, **shape}


def say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"alexnet: {msg}", file=sys.stderr, flush=True)
