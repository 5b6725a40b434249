"""What a run is, read from outside it (serve, report, compare, a resume's checks): its files read
bounded and only when regular, its metrics rows, its status in one vocabulary, and the checkpoint
its network is shown from. Reads nothing it cannot bound; writes nothing (runs.py writes).
"""

from __future__ import annotations

import json
import math
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


# One reader of metrics.jsonl, one status vocabulary and one checkpoint rule, for every room that
# shows a run (serve, report): bounded, never opening what is not a regular file, and a last line
# still being written (a copy in progress, another program's) left out rather than called corrupt.
class RunError(RuntimeError):
    """A run directory or checkpoint that cannot be used; the message is one line naming it."""


def live_holder(path: str | os.PathLike) -> str | None:
    """Who holds a run's lock ("pid N on HOST, since ..."), or None when no live process does. Read,
    not probed with flock: taking the lock even for an instant could make a run starting at that
    moment fail with "in use". A killed holder leaves its line behind, so the pid is checked (on this
    host; a run on another host sharing the folder is taken at its word)."""
    try:  # bounded and regular only: a FIFO named .lock must not hang every listing of the folder
        who = read_bounded(Path(path) / ".lock", 4096)[0].decode(errors="replace").strip()
    except (OSError, RunError):
        return None
    parts = who.split()
    if len(parts) < 4 or parts[0] != "pid" or not parts[1].isdigit():
        return None
    if parts[3].rstrip(",") == socket.gethostname():
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
    return who


MAX_METRICS_BYTES = 4 * 2**20  # metrics.jsonl's last 4 MiB: ~20,000 epochs' rows


RUN_STATUSES = ("live", "finished", "diverged", "interrupted", "empty")


def read_bounded(path: str | os.PathLike, cap: int, tail: bool = False) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of the regular file ``path`` (with ``tail``, its last ``cap`` bytes;
    without, a larger file is a RunError) and whether bytes were left out. Opened without blocking
    and without following a last symlink (a FIFO put there in a race cannot hang the reader), then
    checked with fstat to be a regular file."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY)
    except OSError as e:
        raise RunError(f"{p.name} cannot be opened ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RunError(f"{p.name} is not a regular file; not read")
        cut = st.st_size > cap
        if cut and not tail:
            raise RunError(f"{p.name} is over {cap // 2**10} KiB ({st.st_size:,} bytes); not read")
        if cut:
            os.lseek(fd, st.st_size - cap, os.SEEK_SET)
        chunks, left = [], cap
        while left > 0 and (b := os.read(fd, min(left, 2**20))):
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks), cut
    except OSError as e:
        raise RunError(f"{p.name} cannot be read ({e.strerror})") from None
    finally:
        os.close(fd)


def open_regular(
    path: str | os.PathLike, limit: int, error: type[RunError] = RunError, what: str = "such a file"
) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file of at most ``limit`` bytes; else one line
    (``error``). A FIFO would block open() (and a signal with it) and /dev/zero never ends, so the file
    is opened without blocking and checked with fstat: what was checked is what is read, even if the
    name is swapped in between. A symlink is followed: a model file linked from elsewhere is common."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{path}: a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
            raise error(f"{path}: not a regular file ({kind})")
        if st.st_size > limit:
            raise error(
                f"{path}: {st.st_size / 1e9:.2f} GB, more than the {limit / 1e9:.2f} GB {what} may hold "
                "here (the largest registered network at the most classes a run may have)"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_metrics_rows(path: str | os.PathLike, cap: int = MAX_METRICS_BYTES) -> tuple[list[dict], str | None]:
    """The rows of a metrics.jsonl file (of its last ``cap`` bytes when larger, the cut first line
    left out) and a one-line note when some could not be read, or None. A last line without its
    newline is being written: left out, and said so. A bad line elsewhere is corruption: the rows
    before it are returned. RunError when the file cannot be read at all (missing, not a regular
    file); values are as written (NaN included: a diverged run's row holds one)."""
    data, cut = read_bounded(path, cap, tail=True)
    lines = data.decode(errors="replace").split("\n")
    if cut:
        lines = lines[1:]  # the first line starts mid-row
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError
            rows.append(row)
        except ValueError:
            if i == len(lines) - 1:  # no newline yet: mid-write
                return rows, "metrics.jsonl ends in a line being written; it is left out until complete"
            where = f"a line {len(lines) - i} from the end" if cut else f"line {i + 1}"
            return rows, f"metrics.jsonl {where} is not a metrics row (corrupt?); showing the rows before it"
    if cut:
        return rows, f"metrics.jsonl is over {cap // 2**20} MiB; showing its last {len(rows)} rows"
    return rows, None


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands, in one vocabulary (RUN_STATUSES)."""

    state: str  # live: a process holds its lock; finished: all its epochs; diverged: its last row holds
    # a non-finite number; interrupted: stopped before the end (resume it); empty: nothing written yet
    done: int  # epochs finished
    planned: int | None  # epochs it trains (a --time-budget run's plan), None when unknown
    step: int = 0  # steps into epoch done + 1 (a checkpoint taken mid-epoch), else 0
    live: str | None = None  # the lock's holder while live

    def sentence(self) -> str:
        """The status as one sentence, for a report."""
        total = "?" if self.planned is None else self.planned
        where = f"epoch {self.done} of {total} done" + (
            f", {self.step} step{'' if self.step == 1 else 's'} into epoch {self.done + 1}" if self.step else ""
        )
        return {
            "live": f"live: {where}; the run continues (its lock is held by {self.live})",
            "finished": f"finished: {self.done} of {total} epochs",
            "diverged": f"diverged: {where}; its last epoch holds a non-finite number",
            "interrupted": f"interrupted: {where}; continue it with alexnet train --resume",
            "empty": "empty: no epoch written yet",
        }[self.state]


def run_status(
    metrics: list[dict],
    planned: int | None,
    live: str | None = None,
    checkpoint: bool = False,
    epoch: int | None = None,
    step: int = 0,
) -> RunStatus:
    """A run's status from its metrics rows, the epochs it plans (``epochs_planned``), its lock's
    live holder (``live_holder``), whether it has a checkpoint, and, when a checkpoint was read, its
    ``epoch`` and ``step``. Epochs done are the checkpoint's epoch, else the last row's epoch, else
    the number of rows (a run that evaluates only at the end writes one row for all its epochs)."""
    last = metrics[-1] if metrics else {}
    last_epoch = last.get("epoch")
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        done = epoch
    elif isinstance(last_epoch, int) and not isinstance(last_epoch, bool):
        done = last_epoch
    else:
        done = len(metrics)
    planned = planned if isinstance(planned, int) and not isinstance(planned, bool) else None
    if any(isinstance(v, float) and not math.isfinite(v) for v in last.values()):
        state = "diverged"
    elif live:
        state = "live"
    elif planned is not None and done >= planned and not step:
        state = "finished"
    elif not checkpoint and not metrics:
        state = "empty"
    else:
        state = "interrupted"
    return RunStatus(state, done, planned, step, live)


def network_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint a run's network is taken from for predictions, evaluations and figures:
    best.pt (the epoch with the best validation accuracy), else last.pt; None when it has neither.
    The same rule as ``load_checkpoint(RUN)`` and `alexnet predict RUN`. A run's history and
    position (its metrics, the epoch it is at) are last.pt's, which is the truth of where it is."""
    run = Path(run_dir)
    return next((run / n for n in ("best.pt", "last.pt") if os.path.lexists(run / n)), None)


def epochs_planned(epochs: int, plan: dict | None) -> int:
    """The epochs a run trains: its --epochs, or a --time-budget run's plan (its last epoch may be
    partial), which on a slow machine is fewer than the preset's epochs and on a fast one more."""
    if isinstance(plan, dict) and isinstance(plan.get("steps"), int) and plan.get("steps_per_epoch"):
        return -(-plan["steps"] // plan["steps_per_epoch"])
    return epochs
