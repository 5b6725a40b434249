"""`alexnet serve`: a local web app over a runs folder, for looking inside runs (live ones too).

    /                           Runs: every run, newest first, with its status (live by its lock)
    /runs/NAME                  a run: curves (redrawn as metrics.jsonl grows) above `alexnet report`'s
                                body (per-class accuracy, confusion, filters, activations, layer table)
    /runs/NAME/-/explore        a test image (by class, or the misclassified) or your own file ->
                                top-5 and each stage's strongest activation maps
    /compare?run=A&run=B        overlaid curves and `alexnet compare`'s table
    /api/...                    the JSON the pages use (and a script can call)

A run's own pages and endpoints sit after a ``/-/`` separator (as GitLab's do), so no run name can
collide with them: a run named ``grp/report`` is ``/api/runs/grp/report`` and its report
``/api/runs/grp/report/-/report``.

Plain HTML, CSS and JavaScript from alexnet/static/, no build step. Every network runs in one
worker thread with torch at one intra-op thread (``--threads``): requests queue rather than take
the cores from a training run beside the server; a report renders in a second worker, so an upload
never waits behind a whole test-set evaluation.

Everything a request brings and every file of a run is data, whatever it holds. The server answers
only to the host names it was started for (DNS rebinding) and refuses a POST from another origin;
every file it reads is resolved (symlinks followed) and must be a regular file inside the runs
folder, opened without blocking and read up to a byte cap, off the event loop; one odd run is
listed as unreadable rather than breaking the listing of all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import html
import io
import json
import math
import os
import queue
import socket
import stat
import sys
import threading
import time
import warnings
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path

import torch

from .runs import RUN_FILES, RunError, epochs_planned, live_holder, load_checkpoint, model_from_checkpoint

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD = 20 * 2**20  # bytes of a request to /predict; more is answered 413
# Pixels of an uploaded image. A 20 MB PNG of one colour can declare 2 gigapixels; the header is
# read before decoding and anything larger than a 50-megapixel photo is refused.
MAX_PIXELS = 50_000_000
EVAL_IMAGES = 2000  # test images the run page's per-class accuracy and confusion matrix cover
MAPS_SHOWN = 8  # strongest activation maps per stage on the explore page
# Bounds on what is read from a run: its config.json whole up to 1 MiB (ours are ~2 KB), the last
# 4 MiB of metrics.jsonl (~20,000 epochs' rows; a 146 MB file took 5 s to parse on every poll),
# the first 4 KiB of .lock (one line naming its holder).
MAX_CONFIG = 2**20
MAX_METRICS = 4 * 2**20
MAX_LOCK = 4096
# Bytes of uploads being received or waiting for the worker at once, each counted by its
# Content-Length (MAX_UPLOAD without one): each is held whole, so 150 uploads of 19.5 MB took 3.1 GB.
# One past it is answered 503; small uploads (a photo, ~100 KB) still pass by the hundred.
UPLOAD_BUDGET = 100 * 2**20
MAX_REPORTS = 8  # rendered reports kept (one can be MBs of inlined PNGs), least recently shown dropped
MAX_COMPARED = 16  # runs one /api/compare may name
# The connection itself: a request's headers must arrive within HEADER_TIMEOUT s of its connection
# (or of the previous answer), an upload's body within BODY_TIMEOUT s; at most MAX_CONNECTIONS are
# kept open and MAX_CONCURRENT answered at once (uvicorn answers 503 beyond it).
HEADER_TIMEOUT = 10
BODY_TIMEOUT = 60
MAX_CONNECTIONS = 256
MAX_CONCURRENT = 64
MAX_HEADER_BYTES = 64 * 2**10
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


class NotFound(Exception):
    pass


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Refused(Exception):
    """A file of a run that is not read: outside the runs folder, not a regular file, or too large.
    The message is one line naming the file and why."""


# ---------------------------------------------------------------------------------------------
# The runs folder: names, files (resolved, regular, capped), and one run's record


def read_capped(path: Path, cap: int, tail: bool = False, label: str | None = None) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of the regular file ``path`` (with ``tail``, its last ``cap`` bytes) and
    whether some were left out. Opened without following a last symlink and without blocking (a
    FIFO put there in a race would otherwise hang the thread), then checked to be a regular file.
    Errors name the file as ``label`` (its name in the run)."""
    label = label or path.name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY)
    except OSError as e:
        raise Refused(f"{label} cannot be opened ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{label} is not a regular file; not read")
        cut = st.st_size > cap
        if cut and not tail:
            raise Refused(f"{label} is over {cap // 2**10} KiB ({st.st_size:,} bytes); not read")
        if cut:
            os.lseek(fd, st.st_size - cap, os.SEEK_SET)
        chunks, left = [], cap
        while left > 0:
            b = os.read(fd, min(left, 2**20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks), cut
    except OSError as e:
        raise Refused(f"{label} cannot be read ({e.strerror})") from None
    finally:
        os.close(fd)


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

    def read(self, run: Path, name: str, cap: int, tail: bool = False) -> tuple[bytes, bool] | None:
        """The bytes of ``run/name`` (see ``file`` and ``read_capped``), or None when there is none."""
        f = self.file(run, name)
        return None if f is None else read_capped(f, cap, tail, name)

    def check(self, run: Path) -> None:
        """Refused unless every file a run holds is absent or a regular file inside the folder: for
        the readers that open a run's files themselves (report, compare)."""
        for name in (*RUN_FILES, ".lock"):
            self.file(run, name)

    def checkpoint(self, run: Path) -> Path:
        """The checkpoint a run's networks come from (best.pt, else last.pt), resolved and checked."""
        for name in ("best.pt", "last.pt"):
            try:
                f = self.file(run, name)
            except Refused as e:
                raise BadRequest(f"checkpoint unreadable: {e}", 409) from None
            if f is not None:
                return f
        raise BadRequest("the run has no checkpoint yet (the first one is written after its first epoch)", 409)

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


def read_metrics_lines(data: bytes, cut: bool) -> tuple[list[dict], str | None]:
    """metrics.jsonl's rows (of its last MAX_METRICS bytes when ``cut``) and a note when part of it
    could not be read: a last line still being written (another program's, or a copy in progress)
    is left out; a bad line elsewhere is corruption."""
    text = data.decode(errors="replace")
    lines = text.split("\n")
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
            where = f"line {i + 1}" if not cut else f"a line {len(lines) - i} from the end"
            return rows, f"metrics.jsonl {where} is not a metrics row (corrupt?); showing the rows before it"
    if cut:
        return rows, f"metrics.jsonl is over {MAX_METRICS // 2**20} MiB; showing its last {len(rows)} rows"
    return rows, None


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
            config = json.loads(read[0])
            if not isinstance(config, dict):
                config = {}
                raise ValueError("not a mapping")
    except Refused as e:
        problems.append(str(e))
    except ValueError as e:
        problems.append(f"config.json is unreadable ({e.__class__.__name__})")
    metrics = []
    try:
        read = folder.read(p, "metrics.jsonl", MAX_METRICS, tail=True)
        if read is not None:
            metrics, note = read_metrics_lines(*read)
            if note:
                problems.append(note)
    except Refused as e:
        problems.append(str(e))
    holder = _holder(folder, p, problems)
    train, data = _dict(config.get("train")), _dict(config.get("data"))
    planned = epochs_planned(_int(train.get("epochs")), _plan(config.get("plan")))
    last = metrics[-1] if metrics else {}
    last_epoch = _int(last.get("epoch"))
    done = last_epoch if last_epoch is not None else len(metrics)  # one row for all where it evaluates at the end
    accs = [a for a in (_num(m.get("val_acc")) for m in metrics) if a is not None]
    try:
        has_checkpoint = folder.file(p, "last.pt") is not None
    except Refused as e:
        has_checkpoint = False
        problems.append(str(e))
    if any(isinstance(v, float) and not math.isfinite(v) for v in last.values()):
        status = "diverged"
    elif holder:
        status = "live"
    elif isinstance(planned, int) and done >= planned:
        status = "finished"
    elif not has_checkpoint and not metrics:
        status = "empty"
    else:
        status = "interrupted"
    rec = {
        "name": name,
        "status": status,
        "live": holder,
        "preset": _str(config.get("preset")),
        "model": _str(train.get("model")),
        "dataset": _str(data.get("dataset")),
        "epochs": done,
        "epochs_planned": planned,
        "best_val_acc": max(accs) if accs else None,
        "last_val_acc": _num(last.get("val_acc")),
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


# ---------------------------------------------------------------------------------------------
# Networks: loaded once per checkpoint version, run in one worker thread


class Worker:
    """One daemon thread running the functions submitted to it in order. A daemon, unlike a
    ThreadPoolExecutor's thread, so that Ctrl-C or SIGTERM stop the server even mid-evaluation."""

    def __init__(self, name: str):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def _loop(self) -> None:
        while True:
            future, fn, args = self.jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:
                future.set_exception(e)

    def submit(self, fn, *args) -> Future:
        future = Future()
        self.jobs.put((future, fn, args))
        return future

    async def run(self, fn, *args):
        """``fn(*args)`` in this worker, awaited."""
        return await asyncio.wrap_future(self.submit(fn, *args))


class Models:
    """Checkpoints loaded into networks, the few most recently used kept (an AlexNet at 224 is
    ~180 MB), reloaded when the checkpoint file changes (a live run writes a new one each epoch)."""

    def __init__(self, folder: RunsFolder, keep: int = 3):
        self.folder, self.keep, self.cache, self.lock = folder, keep, OrderedDict(), threading.Lock()

    def get(self, run: Path) -> dict:
        ck = self.folder.checkpoint(run)
        try:
            st = ck.stat()
        except OSError:
            raise BadRequest("the run's checkpoint went away while it was being read; ask again", 409) from None
        key = (str(run), st.st_mtime_ns, st.st_size)
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        try:
            ckpt = load_checkpoint(ck)
            model, cfg = model_from_checkpoint(ckpt)
        except RunError as e:
            # A rename landing between stat and load gives the new file: fine. A torn or foreign file: say so.
            raise BadRequest(f"checkpoint unreadable: {str(e).replace(str(ck), ck.name)}", 409) from None
        from .imagenet import checkpoint_transform

        entry = {
            "model": model.eval(),
            "ckpt": {k: v for k, v in ckpt.items() if k not in ("model", "optimizer")},
            "transform": checkpoint_transform(ckpt),
            "file": ck.name,
            "eval": None,
        }
        with self.lock:
            for k in [k for k in self.cache if k[0] == str(run)]:
                del self.cache[k]  # an older version of this run's checkpoint
            self.cache[key] = entry
            while len(self.cache) > self.keep:
                self.cache.popitem(last=False)
        return entry


def png_uri(image: torch.Tensor, scale: int = 1) -> str:
    """A (H, W, C) image in [0, 1] as a PNG data URI, each pixel ``scale`` x ``scale``."""
    from PIL import Image

    a = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if scale > 1:
        a = a.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    a = a.numpy()
    im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a, "L" if a.shape[-1] == 1 else "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _scale_for(side: int, target: int = 96) -> int:
    return max(1, min(8, target // max(side, 1)))


@torch.inference_mode()
def explain(entry: dict, x: torch.Tensor, maps: int) -> dict:
    """Top-5 for one uint8 image (1, C, h, w) and, with ``maps``, each convolutional stage's
    strongest maps and the input as the network saw it."""
    from .visualize import contrast, stage_maps, strongest

    model, ckpt = entry["model"], entry["ckpt"]
    xin = entry["transform"](x, train=False)
    probs = model(xin).float().softmax(1)[0]
    top = probs.topk(min(5, len(ckpt["classes"])))
    ranked = zip(top.values.tolist(), top.indices.tolist())
    out = {
        "top": [{"class": ckpt["classes"][i], "p": round(p, 6)} for p, i in ranked],
        "checkpoint": entry["file"],
        "epoch": ckpt["epoch"],
    }
    if maps:
        shown = contrast(xin[:1])[0]
        shown = shown if shown.shape[0] == 3 else shown[:1]  # colour, else the first channel in grey
        out["input"] = {
            "shape": list(xin.shape[1:]),
            "png": png_uri(shown.permute(1, 2, 0), _scale_for(xin.shape[-1], 160)),
        }
        out["stages"] = []
        for name, m in stage_maps(model, xin):
            sel = contrast(strongest(m, maps)[:, None])
            s = _scale_for(m.shape[-1])
            out["stages"].append(
                {"name": name, "shape": list(m.shape), "maps": [png_uri(c.permute(1, 2, 0), s) for c in sel]}
            )
    return out


def _maps(request, default: int) -> int:
    try:
        return min(max(int(request.query_params.get("maps", default)), 0), 64)
    except ValueError:
        raise BadRequest("maps must be a whole number") from None


def decode_upload(data: bytes, ckpt: dict, invert: bool) -> torch.Tensor:
    """An uploaded file through `alexnet predict`'s conversion; a 4xx BadRequest for what is not an image."""
    from PIL import Image

    from .imagenet import UNREADABLE, checkpoint_input

    if not data:
        raise BadRequest("the uploaded file is empty")
    try:
        with warnings.catch_warnings():  # only the worker thread decodes: no other thread shares the filters
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, not printed
            with Image.open(io.BytesIO(data)) as im:  # the header only: the size before any pixel is decoded
                w, h = im.size
    except Image.DecompressionBombError:  # Pillow's own refusal, past twice its pixel limit
        raise BadRequest(
            f"the image declares over {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb)", 413
        ) from None
    except UNREADABLE as e:
        raise BadRequest(f"not an image Pillow can read ({e.__class__.__name__})", 415) from None
    if w * h > MAX_PIXELS:
        raise BadRequest(
            f"image of {w}x{h} pixels is over the {MAX_PIXELS // 1_000_000} megapixel limit (a decompression bomb?)",
            413,
        )
    try:
        return checkpoint_input(io.BytesIO(data), ckpt, invert)
    except UNREADABLE as e:
        raise BadRequest(f"the image cannot be decoded ({e.__class__.__name__}: {str(e)[:160]})", 415) from None


# ---------------------------------------------------------------------------------------------
# Test images, and the evaluation behind per-class accuracy, confusion and "misclassified"


class TestSets:
    """The chapter's datasets' test images, loaded once (never downloaded by the server), the
    ``keep`` most recently used kept (runs may name many data folders)."""

    def __init__(self, keep: int = 2):
        self.keep, self.cache, self.lock = keep, OrderedDict(), threading.Lock()

    def get(self, cfg) -> object:
        from . import data as D

        if cfg.data.dataset not in ("fashion-mnist", "mnist", "cifar10"):
            raise BadRequest(f"test images of {cfg.data.dataset} runs are not served; upload an image instead", 409)
        key = (cfg.data.dataset, cfg.data.data_dir)
        with self.lock:
            if key not in self.cache:
                try:
                    self.cache[key] = D.load_dataset(cfg.data.dataset, cfg.data.data_dir, download=False)
                except (D.DataError, OSError) as e:
                    raise BadRequest(f"the {cfg.data.dataset} test set is not on this machine ({e})", 409) from None
                while len(self.cache) > self.keep:
                    self.cache.popitem(last=False)
            self.cache.move_to_end(key)
            return self.cache[key]


@torch.inference_mode()
def evaluate_chunk(entry: dict, ds, start: int, stop: int) -> torch.Tensor:
    x = ds.test.images[start:stop]
    return entry["model"](entry["transform"](x, train=False)).argmax(1)


# ---------------------------------------------------------------------------------------------
# The app: what every route shares (Server), the routes in small groups over it, and create_app
# wiring them to paths. Starlette is the serve extra: imported inside functions, so the CLI's other
# commands never load it.


def json_response(data, status: int = 200, headers: dict | None = None):
    """JSON of ``data`` made finite and UTF-8 (see ``finite``): never NaN, never a 500 from encoding."""
    from starlette.responses import Response

    body = json.dumps(finite(data), allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def error(status: int, message: str):
    return json_response({"error": message}, status)


async def off_loop(fn, *args):
    """``fn(*args)`` in a thread of the pool for file reads, so that a slow disk or a large file
    never holds the event loop (every other request would wait)."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


class Server:
    """What every route shares: the runs folder, the networks and test sets loaded from it, the
    worker thread every network runs in and the one reports render in."""

    def __init__(self, runs_dir: str | os.PathLike, threads: int = 1):
        self.folder = RunsFolder(runs_dir)
        self.models, self.tests = Models(self.folder), TestSets()
        torch.set_num_threads(threads)
        self.worker, self.reporter = Worker("alexnet-infer"), Worker("alexnet-report")

    async def compute(self, fn, *args):
        """``fn(*args)`` in the worker thread, awaited: requests queue rather than share the cores."""
        return await self.worker.run(fn, *args)

    async def run_path(self, request) -> tuple[str, Path]:
        """The run the URL names and its directory (NotFound outside the folder)."""
        name = request.path_params["name"]
        return name, await off_loop(self.folder.path, name)

    async def loaded(self, request) -> tuple[str, Path, dict]:
        """The run the URL names, its directory and its network (Models' entry)."""
        name, path = await self.run_path(request)
        return name, path, await self.compute(self.models.get, path)

    async def test_set(self, entry: dict):
        return await self.compute(self.tests.get, entry["ckpt"]["cfg"])


class Routes:
    """A group of routes; its methods are the endpoints."""

    def __init__(self, server: Server):
        self.server = server


class Pages(Routes):
    """The HTML pages: static files with the run's name filled in; their script asks the API for the rest."""

    @staticmethod
    def page(file: str, **values):
        from starlette.responses import HTMLResponse

        text = (STATIC / file).read_text()
        for k, v in values.items():
            text = text.replace("{{" + k + "}}", html.escape(_clean(v), quote=True))
        return HTMLResponse(text)

    async def runs(self, request):
        return self.page("runs.html", root=str(self.server.folder.root))

    async def run(self, request):
        name, _ = await self.server.run_path(request)
        return self.page("run.html", name=name)

    async def explore(self, request):
        name, _ = await self.server.run_path(request)
        return self.page("explore.html", name=name)

    async def compare(self, request):
        return self.page("compare.html")

    async def favicon(self, request):
        from starlette.responses import Response

        return Response(status_code=204)


class RunsApi(Routes):
    """/api/runs: every run's record, one run's record with its settings and metrics, runs compared."""

    async def listing(self, request):
        folder = self.server.folder
        return json_response({"root": str(folder.root), "runs": await off_loop(listing, folder)})

    async def one(self, request):
        name = request.path_params["name"]
        return json_response(await off_loop(run_record, self.server.folder, name, True))

    async def compare(self, request):
        from .report import FORMATS, Spread, aggregate, group_runs, summarize
        from .runs import read_run

        names = request.query_params.getlist("run")
        if not names:
            raise BadRequest("name the runs: /api/compare?run=A&run=B")
        if len(names) > MAX_COMPARED:
            raise BadRequest(f"compare at most {MAX_COMPARED} runs at once, not {len(names)}")
        folder, runs, curves = self.server.folder, [], []

        def read(p: Path) -> dict:
            folder.check(p)  # read_run opens the run's files itself
            return read_run(p)

        for n in names:
            p = await off_loop(folder.path, n)
            try:
                r = await self.server.compute(read, p)
            except (RunError, Refused) as e:
                raise BadRequest(f"{n}: {str(e).replace(str(p), n)}", 409) from None
            except Exception as e:  # a run's content is data: a checkpoint of ours with odd values
                raise BadRequest(f"{n}: cannot be compared ({e.__class__.__name__})", 409) from None
            runs.append(r)
            curves.append({"name": n, "metrics": r["metrics"]})

        def cell(k, v):
            return v.format(FORMATS.get(k, "{}")) if isinstance(v, Spread) else FORMATS.get(k, "{}").format(v)

        try:
            rows = [aggregate([summarize(r) for r in g]) for g in group_runs(runs)]
            table = [{k: cell(k, v) for k, v in r.items()} for r in rows]
        except Exception as e:  # a value of the wrong type in a run's checkpoint or config
            raise BadRequest(f"these runs cannot be compared ({e.__class__.__name__})", 409) from None
        return json_response({"runs": curves, "table": table})


class Uploads(Routes):
    """The explore page's own image: an upload run through `alexnet predict`'s conversion and the network."""

    async def predict(self, request):
        """POST /api/runs/NAME/-/predict: an uploaded image (multipart field 'file') -> top-5, and
        with ?maps=N each stage's N strongest maps."""
        server = self.server
        name, path = await server.run_path(request)
        if request.method != "POST":  # else the run-record route would take the path: "no such run"
            raise BadRequest("POST the image here as multipart/form-data field 'file'", 405)
        maps = _maps(request, 0)
        try:
            with _deadline(BODY_TIMEOUT):
                form = await request.form(max_files=1, max_fields=8)
                upload = form.get("file")
                data = await upload.read() if upload is not None and not isinstance(upload, str) else None
        except (_TooLarge, BadRequest):
            raise
        except Exception as e:  # a body that is not multipart: Starlette's own parser errors
            why = e.__class__.__name__
            raise BadRequest(f"send the image as multipart/form-data field 'file' ({why})") from None
        if data is None:
            raise BadRequest("no file: send the image as multipart/form-data field 'file'")
        invert = str(form.get("invert", "")).lower() in ("1", "true", "on", "yes")
        entry = await server.compute(server.models.get, path)
        x = await server.compute(decode_upload, data, entry["ckpt"], invert)
        del data
        out = await server.compute(explain, entry, x, maps)
        return json_response({"run": name, "image": upload.filename, "invert": invert, **out})


@contextlib.contextmanager
def _deadline(seconds: float):
    """A 408 when the awaits inside take longer than ``seconds`` (a body trickled in)."""
    import anyio

    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError:
        raise BadRequest(f"the upload did not arrive within {seconds} s", 408) from None


class Evaluation(Routes):
    """The checkpoint's predictions on the first EVAL_IMAGES test images, computed in chunks in the
    worker thread (uploads interleave with them), started on first request; and from them the run
    page's per-class accuracy and confusion matrix."""

    def state(self, entry: dict, ds) -> dict:
        models, worker = self.server.models, self.server.worker
        with models.lock:
            if entry["eval"] is None:
                n = min(len(ds.test), EVAL_IMAGES)
                entry["eval"] = {"images": n, "done": 0, "pred": torch.empty(n, dtype=torch.long), "error": None}

                def chunk(start):
                    ev = entry["eval"]
                    try:
                        stop = min(start + 250, n)
                        ev["pred"][start:stop] = evaluate_chunk(entry, ds, start, stop)
                        ev["done"] = stop
                        if stop < n:
                            worker.submit(chunk, stop)
                    except Exception as e:
                        ev["error"] = f"the evaluation failed ({e.__class__.__name__}: {str(e)[:200]})"

                worker.submit(chunk, 0)
            return entry["eval"]

    @staticmethod
    def progress(ev: dict) -> dict:
        return {"done": ev["done"], "images": ev["images"], "error": ev["error"]}

    async def confusion(self, request):
        """Per-class accuracy and the confusion matrix on the first EVAL_IMAGES test images."""
        _, _, entry = await self.server.loaded(request)
        ds = await self.server.test_set(entry)
        ev = self.state(entry, ds)
        if ev["error"] or ev["done"] < ev["images"]:
            return json_response({"pending": not ev["error"], **self.progress(ev)})
        n, k = ev["images"], len(ds.classes)
        truth = ds.test.labels[:n].long()
        conf = torch.bincount(truth * k + ev["pred"], minlength=k * k).view(k, k)
        per = (conf.diag().double() / conf.sum(1).clamp_min(1)).tolist()
        return json_response(
            {
                "images": n,
                "of": len(ds.test),
                "classes": ds.classes,
                "confusion": conf.tolist(),
                "per_class": per,
                "accuracy": conf.diag().sum().item() / n,
                "checkpoint": entry["file"],
                "epoch": entry["ckpt"]["epoch"],
            }
        )


class TestImages(Routes):
    """/api/runs/NAME/test...: the run's test images, listed by class or misclassified, each explained
    (top-5 and maps) or as a PNG."""

    def __init__(self, server: Server, evaluation: Evaluation):
        super().__init__(server)
        self.evaluation = evaluation

    async def item(self, request):
        """The run's name, its loaded model, its test set and the index asked for (404 outside it)."""
        name, _, entry = await self.server.loaded(request)
        ds = await self.server.test_set(entry)
        i = request.path_params["index"]
        if not 0 <= i < len(ds.test):
            raise NotFound(f"test image {i}")
        return name, entry, ds, i

    async def image(self, request):
        name, entry, ds, i = await self.item(request)
        maps = _maps(request, MAPS_SHOWN)
        out = await self.server.compute(explain, entry, ds.test.images[i : i + 1], maps)
        shown = ds.test.images[i].float().div(255).permute(1, 2, 0)
        label = ds.classes[int(ds.test.labels[i])]
        image = png_uri(shown, _scale_for(shown.shape[0], 112))
        return json_response({"run": name, "index": i, "label": label, "image": image, **out})

    async def png(self, request):
        from starlette.responses import Response

        _, _, ds, i = await self.item(request)
        uri = png_uri(ds.test.images[i].float().div(255).permute(1, 2, 0), 2)
        return Response(
            base64.b64decode(uri.split(",", 1)[1]), media_type="image/png", headers={"cache-control": "max-age=3600"}
        )

    async def listing(self, request):
        """Indices of test images: of one class (?class=NAME), or (?misclassified=1) the ones the run gets wrong."""
        _, _, entry = await self.server.loaded(request)
        ds = await self.server.test_set(entry)
        n = min(len(ds.test), EVAL_IMAGES)
        if request.query_params.get("misclassified"):
            ev = self.evaluation.state(entry, ds)
            if ev["done"] < ev["images"]:
                return json_response({"pending": True, **Evaluation.progress(ev)})
            wrong = (ev["pred"] != ds.test.labels[:n]).nonzero().flatten()[:48].tolist()
            return json_response(
                {
                    "indices": wrong,
                    "labels": [ds.classes[int(ds.test.labels[i])] for i in wrong],
                    "predicted": [ds.classes[int(ev["pred"][i])] for i in wrong],
                    "of": n,
                }
            )
        cls = request.query_params.get("class") or ds.classes[0]
        if cls not in ds.classes:
            raise BadRequest(f"class {cls!r} is not one of: {', '.join(ds.classes)}")
        idx = (ds.test.labels[:n] == ds.classes.index(cls)).nonzero().flatten()[:48].tolist()
        return json_response({"indices": idx, "labels": [cls] * len(idx), "classes": ds.classes, "of": n})


class Reports(Routes):
    """`alexnet report`'s body for a run, rendered in its own worker thread (a whole test-set
    evaluation: seconds at 28x28, minutes at 224x224, which uploads must not wait behind), the
    newest rendering kept per run for the MAX_REPORTS runs shown last. A live run's newer
    checkpoint is rendered again only when asked (?render=1): an AlexNet at 224 takes minutes of
    evaluation, which would otherwise be spent beside the training run every epoch."""

    def __init__(self, server: Server):
        super().__init__(server)
        self.rendered: OrderedDict[str, dict] = OrderedDict()  # run path -> {"key", "html", "error", "pending"}

    def checkpoint_key(self, path: Path):
        try:
            f = self.server.folder.file(path, "last.pt")
            st = f.stat() if f is not None else None
        except (Refused, OSError):
            return None
        return None if st is None else (st.st_mtime_ns, st.st_size)

    def keep(self, path: Path, record: dict) -> None:
        self.rendered[str(path)] = record
        self.rendered.move_to_end(str(path))
        while len(self.rendered) > MAX_REPORTS:
            self.rendered.popitem(last=False)

    def render(self, path: Path, key) -> None:
        from .report import render_html_body

        try:
            self.server.folder.check(path)  # the report opens the run's files itself
            body, error = render_html_body(path, device="cpu", level=2), None
        except (RunError, Refused) as e:
            body, error = None, str(e).replace(str(path), path.name)
        except Exception as e:
            body, error = None, f"{e.__class__.__name__}: {str(e)[:300]}"
        self.keep(path, {"key": key, "html": body, "error": error})

    async def body(self, request):
        _, path = await self.server.run_path(request)
        key, have = await off_loop(self.checkpoint_key, path), self.rendered.get(str(path))
        if have is None or (have["key"] != key and request.query_params.get("render")):
            if have is None or have.get("pending") is None:
                self.keep(path, {**(have or {}), "key": key, "pending": True})
                self.server.reporter.submit(self.render, path, key)
            return json_response({"pending": True})
        self.rendered.move_to_end(str(path))
        if have.get("pending"):
            return json_response({"pending": True})
        return json_response({"html": have["html"], "error": have["error"], "stale": have["key"] != key})


class Figures(Routes):
    """The run's network drawn: its first layer's kernels, and its layer table."""

    async def filters(self, request):
        from .filters import filter_cells, first_conv, mosaic

        _, _, entry = await self.server.loaded(request)
        w = first_conv(entry["model"]).weight.detach().float()
        image, rows, cols = mosaic(filter_cells(w), gap=1)
        return json_response(
            {"shape": list(w.shape), "rows": rows, "cols": cols, "png": png_uri(image, _scale_for(image.shape[0], 360))}
        )

    async def layers(self, request):
        from .tracing import trace

        _, _, entry = await self.server.loaded(request)
        ck = entry["ckpt"]
        shape = (1, int(ck["in_channels"]), int(ck["resolution"]), int(ck["resolution"]))
        rows = await self.server.compute(trace, entry["model"], shape)
        return json_response(
            {
                "input": list(shape),
                "layers": [
                    {
                        "index": r.index,
                        "name": r.name,
                        "path": r.path,
                        "shape": list(r.output_shape),
                        "params": r.params,
                        "flops": r.flops,
                    }
                    for r in rows
                ],
            }
        )


async def not_found(request, exc):
    from starlette.responses import HTMLResponse

    if request.url.path.startswith("/api/"):
        return error(404, "no such run" if isinstance(exc, NotFound) else "not found")
    return HTMLResponse(
        "<!doctype html><title>not found</title><p>No such run or page. <a href='/'>Runs</a>", status_code=404
    )


async def bad_request(request, exc: BadRequest):
    return error(exc.status, str(exc))


async def http_error(request, exc):
    """Starlette's own 4xx (a method a route does not take, ...) as the API's JSON."""
    return error(exc.status_code, str(exc.detail).lower())


async def unexpected(request, exc: Exception):
    # One request's failure, not the server's: a line on stderr, a plain answer, and it serves on.
    print(f"alexnet serve: {request.method} {request.url.path}: {_one_line(exc)}", file=sys.stderr, flush=True)
    return error(500, "the server failed to answer this request (its log names why); it serves on")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0][:200] if text else ''}"


def allowed_hosts(host: str = "127.0.0.1", port: int = 8000, extra=()) -> frozenset[str]:
    """The Host header values this server answers to: the address it is bound to with its port,
    every loopback name for a loopback bind, and this machine's names and addresses for a bind on
    every interface; ``extra`` (--allow-host) adds names. Any other Host is a DNS-rebinding page's
    (evil.example resolved to 127.0.0.1) or a mistake, and gets 421."""
    h = host.lower().strip("[]")
    names = {f"[{h}]" if ":" in h else h}
    if h in ("127.0.0.1", "localhost", "::1") or h.startswith("127."):
        names |= set(LOOPBACK)
    if h in ("", "0.0.0.0", "::"):
        names |= set(LOOPBACK)
        with contextlib.suppress(OSError):
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
            for info in socket.getaddrinfo(socket.gethostname(), None):
                a = info[4][0].lower()
                names.add(f"[{a}]" if ":" in a else a)
    names |= {n.lower() for n in extra}
    return frozenset({f"{n}:{port}" for n in names} | (names if port == 80 else set()))


class Guard:
    """What is refused before any route runs: a Host the server was not started for (421), a
    request that changes state (every method but GET and HEAD) from a foreign origin (403: an
    Origin header not the server's own, or Sec-Fetch-Site: cross-site), and an upload that would
    take the bytes being received or computed at once past UPLOAD_BUDGET (503: each is held whole)."""

    def __init__(self, app, hosts: frozenset[str]):
        self.app, self.hosts, self.inflight = app, hosts, 0
        self.origins = frozenset(f"http://{h}" for h in hosts) | frozenset(f"https://{h}" for h in hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            shown = " or ".join(sorted(self.hosts)[:4])
            return await send_json(send, 421, f"this server answers to {shown} only, not Host {host[:80]!r}")
        if scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        origin = headers.get("origin")
        if (origin is not None and origin.lower() not in self.origins) or headers.get("sec-fetch-site") == "cross-site":
            who = origin[:80] if origin is not None else "a cross-site page"
            return await send_json(send, 403, f"a request from another origin ({who!r}) is refused")
        length = headers.get("content-length", "")
        size = min(int(length), MAX_UPLOAD + 1) if length.isdigit() else MAX_UPLOAD
        if self.inflight + size > UPLOAD_BUDGET:
            busy = f"{self.inflight / 2**20:.0f} MiB of uploads are being answered; try again shortly"
            return await send_json(send, 503, busy, [(b"retry-after", b"1")])
        self.inflight += size
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= size


def create_app(
    runs_dir: str | os.PathLike = "runs", threads: int = 1, host: str = "127.0.0.1", port: int = 8000, allow=()
):
    """The web app over ``runs_dir``, answering to the names ``host:port`` is reached by (see
    ``allowed_hosts``): each path wired to its group's endpoint. A run's own pages and endpoints
    follow a ``/-/`` that no run name can hold (names have one or two parts), so none collides."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    server = Server(runs_dir, threads)
    pages, runs, evaluation, figures = Pages(server), RunsApi(server), Evaluation(server), Figures(server)
    tests, reports, uploads = TestImages(server, evaluation), Reports(server), Uploads(server)
    run = "/api/runs/{name:path}/-"
    app = Starlette(
        routes=[
            Route("/", pages.runs),
            Route("/compare", pages.compare),
            Route("/favicon.ico", pages.favicon),
            Route("/runs/{name:path}/-/explore", pages.explore),
            Route("/runs/{name:path}", pages.run),
            Route("/api/runs", runs.listing),
            Route("/api/compare", runs.compare),
            Route(f"{run}/predict", uploads.predict, methods=["GET", "POST"]),
            Route(run + "/test/{index:int}/png", tests.png),
            Route(run + "/test/{index:int}", tests.image),
            Route(f"{run}/test", tests.listing),
            Route(f"{run}/evaluation", evaluation.confusion),
            Route(f"{run}/filters", figures.filters),
            Route(f"{run}/report", reports.body),
            Route(f"{run}/layers", figures.layers),
            Route("/api/runs/{name:path}", runs.one),
            Mount("/static", StaticFiles(directory=STATIC)),
        ],
        exception_handlers={
            NotFound: not_found,
            404: not_found,
            HTTPException: http_error,
            BadRequest: bad_request,
            Exception: unexpected,
        },
    )
    app.add_middleware(BodyLimit, limit=MAX_UPLOAD)
    app.add_middleware(Guard, hosts=allowed_hosts(host, port, allow))
    app.state.worker, app.state.reporter = server.worker, server.reporter
    app.state.folder, app.state.reports = server.folder, reports
    return app


class BodyLimit:
    """413 for a request body over ``limit`` bytes, by its Content-Length before anything is read, or
    (chunked, or a lying length) as soon as the bytes received pass it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        too_large = f"the upload is over {self.limit // 2**20} MB"
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await send_json(send, 413, too_large)
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking_send)
        except _TooLarge:
            if not started:
                await send_json(send, 413, too_large)


class _TooLarge(Exception):
    pass


async def send_json(send, status: int, message: str, headers=()) -> None:
    body = json.dumps({"error": message}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------
# The connection: uvicorn's h11 protocol with a deadline for headers and a cap on connections


def protocol():
    """uvicorn's h11 protocol, bounded. Out of the box it waits forever for a request's headers
    (the keep-alive timer runs only between answers), so 1,100 connections that never finish their
    headers held every file descriptor and the server stopped accepting. Here the headers must be
    complete HEADER_TIMEOUT s after the connection (or the previous answer), and a connection past
    MAX_CONNECTIONS is closed at once."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Bounded(H11Protocol):
        header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > MAX_CONNECTIONS:
                transport.abort()
                return
            self.arm()

        def arm(self):
            self.disarm()
            self.header_timer = self.loop.call_later(HEADER_TIMEOUT, self.headers_late)

        def disarm(self):
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def headers_late(self):
            self.header_timer = None
            if self.conn.their_state in (h11.IDLE, h11.MUST_CLOSE) and not self.transport.is_closing():
                self.transport.abort()  # never began, or is still sending, its request's headers

        def handle_events(self):
            super().handle_events()
            if self.conn.their_state not in (h11.IDLE, h11.MUST_CLOSE):
                self.disarm()  # the headers are in

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self.arm()

        def connection_lost(self, exc):
            self.disarm()
            super().connection_lost(exc)

    return Bounded


def quiet_exceptions(loop, context) -> None:
    """The event loop's errors (a connection reset mid-answer, accept() out of descriptors) as one
    line each, at most one a second, instead of a traceback per connection."""
    now = time.monotonic()
    if now - getattr(quiet_exceptions, "last", 0.0) < 1.0:
        return
    quiet_exceptions.last = now
    exc = context.get("exception")
    why = _one_line(exc) if exc is not None else ""
    print(f"alexnet serve: {context.get('message', 'error')} {why}".strip(), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The command


def add_parser(sub) -> None:
    s = sub.add_parser(
        "serve",
        help="web app over a runs folder: runs, live curves, explore a network, compare",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--runs", default="runs", help="the runs folder to serve")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface; there is no login)")
    s.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name the server answers to (with --port), e.g. the name a proxy forwards; repeatable",
    )
    s.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for inference (1 leaves the other cores to a training run)",
    )
    s.set_defaults(func=cmd_serve)


def uvicorn_config(app, host: str, port: int):
    """uvicorn's settings for the app: the bounded protocol, idle connections closed after 5 s,
    answers beyond MAX_CONCURRENT at once a 503, headers capped at MAX_HEADER_BYTES."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=protocol(),
        timeout_keep_alive=5,
        limit_concurrency=MAX_CONCURRENT,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=3,  # a report rendering for minutes never holds Ctrl-C
    )


def cmd_serve(args) -> int:
    from .config import ConfigError

    try:
        import uvicorn
    except ImportError:
        raise ConfigError("alexnet serve needs the serve extra: pip install 'alexnet[serve]'") from None
    if not Path(args.runs).is_dir():
        raise ConfigError(f"--runs {args.runs}: no such directory")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, not {args.port}")
    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, not {args.threads}")
    bad = next((h for h in args.allow_host if not h or any(c in h for c in "/:@ \t")), None)
    if bad is not None:
        raise ConfigError(f"--allow-host {bad!r}: give a host name alone, without scheme, port or path")
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:  # bound here, not by uvicorn: its failure is a log line and exit status 3, and once this
        # line is printed the port already answers
        sock = socket.create_server((args.host, args.port), family=family)
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    app = create_app(args.runs, args.threads, args.host, args.port, args.allow_host)
    server = uvicorn.Server(uvicorn_config(app, args.host, args.port))
    print(f"serving {Path(args.runs).resolve()} on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)

    async def serve():
        asyncio.get_running_loop().set_exception_handler(quiet_exceptions)
        await server.serve(sockets=[sock])

    asyncio.run(serve())
    return 0
