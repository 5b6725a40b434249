"""The runs folder as serve sees it: run names resolved to directories inside it, each run's files
resolved, checked and read to a cap, and each run's record (what the Runs page shows), never
raising for what a run holds."""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
from pathlib import Path

from ..runs import (
    RUN_FILES,
    RunError,
    epochs_planned,
    live_holder,
    network_checkpoint,
    read_bounded,
    read_metrics_rows,
    run_status,
)

# Bounds on what is read from a run besides metrics.jsonl (runs.read_metrics_rows reads its last
# 4 MiB): config.json whole up to 1 MiB (ours are ~2 KB).
MAX_CONFIG = 2**20


class NotFound(Exception):
    pass


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Refused(Exception):
    """A file of a run that is not read: outside the runs folder, not a regular file, or too large.
    The message is one line naming the file and why."""


class TooLarge(Exception):
    """A request body past its cap, raised while it is received (app.BodyLimit answers 413)."""


class RunsFolder:
    """Run names (paths relative to the folder, one level of grouping allowed: runs/exercises-small/x)
    resolved to directories inside it, and their files resolved, checked and read with a cap."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def path(self, name: str) -> Path:
        """The run directory NAME names, or NotFound: no '..', no absolute path, no hidden part, and
        after resolving symlinks still inside the folder."""
        parts = name.split("/")
        if not name or len(parts) > 2 or any(p in ("", ".", "..") or p.startswith(".") for p in parts) or "\\" in name:
            raise NotFound(name)
        try:
            p = (self.root / name).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a NUL byte
            raise NotFound(name) from None
        if not p.is_relative_to(self.root) or p == self.root or not p.is_dir() or not _looks_like_run(p):
            raise NotFound(name)
        return p

    def file(self, run: Path, name: str) -> Path | None:
        """``run/name`` resolved, or None when there is none; Refused when it leads outside the runs
        folder or is not a regular file (a FIFO, a device, a directory)."""
        f = run / name
        if not os.path.lexists(f):
            return None
        try:
            r = f.resolve(strict=True)
        except FileNotFoundError:
            raise Refused(f"{name} is a dangling symlink; not read") from None
        except (OSError, RuntimeError) as e:
            raise Refused(f"{name} cannot be resolved ({getattr(e, 'strerror', None) or 'a symlink loop'})") from None
        if not r.is_relative_to(self.root):
            raise Refused(f"{name} leads outside the runs folder; not read")
        try:
            mode = r.stat().st_mode
        except OSError as e:
            raise Refused(f"{name} cannot be read ({e.strerror})") from None
        if not stat.S_ISREG(mode):
            raise Refused(f"{name} is not a regular file; not read")
        return r

    def read(self, run: Path, name: str, cap: int) -> bytes | None:
        """The bytes of ``run/name`` (see ``file``; at most ``cap``, else Refused), or None when there is none."""
        f = self.file(run, name)
        try:
            return None if f is None else read_bounded(f, cap)[0]
        except RunError as e:
            raise Refused(str(e).replace(f.name, name, 1)) from None

    def metrics(self, run: Path) -> tuple[list[dict], str | None]:
        """metrics.jsonl's rows (its last MAX_METRICS_BYTES) and a note on what was left out."""
        f = self.file(run, "metrics.jsonl")
        if f is None:
            return [], None
        try:
            return read_metrics_rows(f)
        except RunError as e:
            raise Refused(str(e).replace(f.name, "metrics.jsonl", 1)) from None

    def check(self, run: Path) -> None:
        """Refused unless every file a run holds is absent or a regular file inside the folder: for
        the readers that open a run's files themselves (report, compare)."""
        for name in (*RUN_FILES, ".lock"):
            self.file(run, name)

    def checkpoint(self, run: Path) -> Path:
        """The checkpoint a run's network comes from (runs.network_checkpoint: best.pt, else
        last.pt), resolved and checked."""
        chosen = network_checkpoint(run)
        if chosen is None:
            raise BadRequest("the run has no checkpoint yet (the first one is written after its first epoch)", 409)
        try:
            f = self.file(run, chosen.name)
        except Refused as e:
            raise BadRequest(f"checkpoint unreadable: {e}", 409) from None
        if f is None:
            raise BadRequest("the run's checkpoint went away while it was being read; ask again", 409)
        return f

    def names(self) -> list[str]:
        """Every run in the folder and one level below, newest first."""
        found = []
        if not self.root.is_dir():
            return []
        for d in self.root.iterdir():
            if d.name.startswith(".") or not d.is_dir():
                continue
            if _looks_like_run(d):
                found.append(d.name)
                continue
            with contextlib.suppress(OSError, NotFound):
                found += [
                    f"{d.name}/{e.name}"
                    for e in d.iterdir()
                    if not e.name.startswith(".") and e.is_dir() and _looks_like_run(e)
                ]
        named = []
        for n in found:
            with contextlib.suppress(OSError, NotFound):
                named.append((self.path(n), n))
        return [n for p, n in sorted(named, key=lambda pn: _mtime(pn[0]), reverse=True)]


def _looks_like_run(p: Path) -> bool:
    return any(os.path.lexists(p / f) for f in ("config.json", "last.pt", "metrics.jsonl", ".lock"))


def _mtime(p: Path) -> float:
    """The newest modification time among a run's files (their own, never a symlink's target)."""
    times = []
    for f in (p / "metrics.jsonl", p / "config.json", p / "last.pt", p):
        with contextlib.suppress(OSError):
            times.append(os.lstat(f).st_mtime)
    return max(times, default=0.0)


def _int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _num(v) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _str(v) -> str | None:
    return v[:200] if isinstance(v, str) else None


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _plan(v) -> dict | None:
    """A --time-budget run's plan, when its fields are the counts epochs_planned reads."""
    p = _dict(v)
    steps, per = _int(p.get("steps")), _int(p.get("steps_per_epoch"))
    return {"steps": steps, "steps_per_epoch": per} if steps is not None and per and per > 0 else None


def _holder(folder: RunsFolder, p: Path, problems: list[str]) -> str | None:
    """The live holder of the run's lock, read only when .lock is a regular file inside the folder."""
    try:
        if folder.file(p, ".lock") is None:
            return None
    except Refused as e:
        problems.append(str(e))
        return None
    return live_holder(p)


def run_record(folder: RunsFolder, name: str, full: bool = False) -> dict:
    """What the Runs page shows of one run (with ``full``, its settings and its metrics rows too).
    Never raises for a run's own content: what cannot be read is named in ``problems``, and a run
    none of whose record can be made is ``unreadable`` with the reason."""
    p = folder.path(name)
    try:
        return _record(folder, p, name, full)
    except Exception as e:  # a run's content is data: one odd run never breaks the listing
        return unreadable(name, f"cannot be read ({e.__class__.__name__}: {str(e)[:120]})", _mtime(p))


def unreadable(name: str, why: str, updated: float = 0.0) -> dict:
    keys = ("live", "preset", "model", "dataset", "epochs_planned", "best_val_acc", "last_val_acc")
    rec = {"name": name, "status": "unreadable", **dict.fromkeys(keys), "epochs": 0, "updated": updated}
    return {**rec, "problems": [why], "checkpoint": False}


def _record(folder: RunsFolder, p: Path, name: str, full: bool) -> dict:
    problems = []
    config = {}
    try:
        read = folder.read(p, "config.json", MAX_CONFIG)
        if read is None:
            problems.append("no config.json yet" if os.path.lexists(p / ".lock") else "no config.json")
        else:
            config = json.loads(read)
            if not isinstance(config, dict):
                config = {}
                raise ValueError("not a mapping")
    except Refused as e:
        problems.append(str(e))
    except ValueError as e:
        problems.append(f"config.json is unreadable ({e.__class__.__name__})")
    metrics = []
    try:
        metrics, note = folder.metrics(p)
        if note:
            problems.append(note)
    except Refused as e:
        problems.append(str(e))
    try:
        has_checkpoint = folder.file(p, "last.pt") is not None
    except Refused as e:
        has_checkpoint = False
        problems.append(str(e))
    train, data = _dict(config.get("train")), _dict(config.get("data"))
    planned = epochs_planned(_int(train.get("epochs")), _plan(config.get("plan")))
    status = run_status(metrics, planned, _holder(folder, p, problems), has_checkpoint)
    accs = [a for a in (_num(m.get("val_acc")) for m in metrics) if a is not None]
    rec = {
        "name": name,
        "status": status.state,
        "live": status.live,
        "preset": _str(config.get("preset")),
        "model": _str(train.get("model")),
        "dataset": _str(data.get("dataset")),
        "epochs": status.done,
        "epochs_planned": status.planned,
        "best_val_acc": max(accs) if accs else None,
        "last_val_acc": _num(metrics[-1].get("val_acc")) if metrics else None,
        "updated": _mtime(p),
        "problems": problems,
        "checkpoint": has_checkpoint,
    }
    if full:
        rec.update(config=config, metrics=metrics)
    return rec


def listing(folder: RunsFolder) -> list[dict]:
    """Every run's record, an unreadable run named as such, newest first."""
    out = []
    for n in folder.names():
        if not _utf8(n):
            out.append(unreadable(_clean(n), "its name is not UTF-8, so no address can name it; rename it"))
            continue
        try:
            out.append(run_record(folder, n))
        except NotFound:  # removed while listing
            continue
    return out


def _utf8(s: str) -> bool:
    try:
        s.encode()
        return True
    except UnicodeEncodeError:  # a name or value with lone surrogates (bytes that were not UTF-8)
        return False


def _clean(s: str) -> str:
    return s if _utf8(s) else s.encode(errors="replace").decode()


def finite(v):
    """``v`` made JSON: a non-finite number (JSON has no NaN) becomes null, text that is not UTF-8
    is replaced, keys become text."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, str):
        return _clean(v)
    if isinstance(v, dict):
        return {_clean(str(k)): finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v
