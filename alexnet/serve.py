"""`alexnet serve`: a local web app over a runs folder, for looking inside runs (live ones too).

    /                        Runs: every run, newest first, with its status (live by its lock)
    /runs/NAME               a run: curves (redrawn as metrics.jsonl grows) above `alexnet report`'s
                             body (per-class accuracy, confusion, filters, activations, layer table)
    /runs/NAME/explore       a test image (by class, or the misclassified) or your own file ->
                             top-5 and each stage's strongest activation maps
    /compare?run=A&run=B     overlaid curves and `alexnet compare`'s table
    /api/...                 the JSON the pages use (and a script can call)

Plain HTML, CSS and JavaScript from alexnet/static/, no build step. Every network runs in one
worker thread with torch at one intra-op thread (``--threads``): requests queue rather than take
the cores from a training run beside the server. Nothing outside the runs folder is ever read: a
run name is resolved (symlinks followed) and must land inside it.
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
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .runs import RunError, epochs_planned, live_holder, load_checkpoint, model_from_checkpoint

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD = 20 * 2**20  # bytes of a request to /predict; more is answered 413
# Pixels of an uploaded image. A 20 MB PNG of one colour can declare 2 gigapixels; the header is
# read before decoding and anything larger than a 50-megapixel photo is refused.
MAX_PIXELS = 50_000_000
EVAL_IMAGES = 2000  # test images the run page's per-class accuracy and confusion matrix cover
MAPS_SHOWN = 8  # strongest activation maps per stage on the explore page


class NotFound(Exception):
    pass


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# The runs folder


class RunsFolder:
    """Run names (paths relative to the folder, one level of grouping allowed: runs/exercises-small/x)
    resolved to directories inside it, and what each one holds."""

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
        except (OSError, RuntimeError):  # missing, or a symlink loop
            raise NotFound(name) from None
        if not p.is_relative_to(self.root) or p == self.root or not p.is_dir() or not _looks_like_run(p):
            raise NotFound(name)
        return p

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
    return any((p / f).exists() for f in ("config.json", "last.pt", "metrics.jsonl", ".lock"))


def _mtime(p: Path) -> float:
    return max(
        (f.stat().st_mtime for f in (p / "metrics.jsonl", p / "config.json", p / "last.pt", p) if f.exists()),
        default=0.0,
    )


def read_metrics_lines(path: Path) -> tuple[list[dict], str | None]:
    """metrics.jsonl's rows and a note when part of it could not be read: a last line still being
    written (another program's, or a copy in progress) is left out; a bad line elsewhere is corruption."""
    try:
        text = (path / "metrics.jsonl").read_text(errors="replace")
    except FileNotFoundError:
        return [], None
    except OSError as e:
        return [], f"metrics.jsonl cannot be read ({e.strerror})"
    rows, lines = [], text.split("\n")
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
            return rows, f"metrics.jsonl line {i + 1} is not a metrics row (corrupt?); showing the rows before it"
    return rows, None


def run_record(folder: RunsFolder, name: str, full: bool = False) -> dict:
    """What the Runs page shows of one run (with ``full``, its settings and every metrics row too).
    Never raises for a run's own content: what cannot be read is named in ``problems``."""
    p = folder.path(name)
    problems = []
    try:
        config = json.loads((p / "config.json").read_text())
        if not isinstance(config, dict):
            raise ValueError("not a mapping")
    except FileNotFoundError:
        config = {}
        problems.append("no config.json yet" if (p / ".lock").exists() else "no config.json")
    except (OSError, ValueError) as e:
        config = {}
        problems.append(f"config.json is unreadable ({e.__class__.__name__})")
    metrics, note = read_metrics_lines(p)
    if note:
        problems.append(note)
    holder = live_holder(p)
    train = config.get("train", {}) if isinstance(config.get("train"), dict) else {}
    planned = epochs_planned(train.get("epochs"), config.get("plan"))
    last_epoch = metrics[-1].get("epoch") if metrics else None
    done = last_epoch if isinstance(last_epoch, int) else len(metrics)  # one row for all where it evaluates at the end
    accs = [m.get("val_acc") for m in metrics if isinstance(m.get("val_acc"), (int, float))]
    last = metrics[-1] if metrics else {}
    if any(isinstance(v, float) and not math.isfinite(v) for v in last.values()):
        status = "diverged"
    elif holder:
        status = "live"
    elif isinstance(planned, int) and done >= planned:
        status = "finished"
    elif not (p / "last.pt").exists() and not metrics:
        status = "empty"
    else:
        status = "interrupted"
    rec = {
        "name": name,
        "status": status,
        "live": holder,
        "preset": config.get("preset"),
        "model": train.get("model"),
        "dataset": (config.get("data") or {}).get("dataset") if isinstance(config.get("data"), dict) else None,
        "epochs": done,
        "epochs_planned": planned,
        "best_val_acc": max(accs) if accs else None,
        "last_val_acc": last.get("val_acc"),
        "updated": _mtime(p),
        "problems": problems,
        "checkpoint": (p / "last.pt").exists(),
    }
    if full:
        rec.update(config=config, metrics=_finite(metrics))
    return rec


def _finite(rows: list[dict]) -> list[dict]:
    """JSON has no NaN: a diverged value becomes null."""
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]


# ---------------------------------------------------------------------------------------------
# Networks: loaded once per checkpoint version, run in one worker thread


class Models:
    """Checkpoints loaded into networks, the few most recently used kept (an AlexNet at 224 is
    ~180 MB), reloaded when the checkpoint file changes (a live run writes a new one each epoch)."""

    def __init__(self, keep: int = 3):
        self.keep, self.cache, self.lock = keep, OrderedDict(), threading.Lock()

    def get(self, run: Path) -> dict:
        ck = run / ("best.pt" if (run / "best.pt").exists() else "last.pt")
        try:
            st = ck.stat()
        except FileNotFoundError:
            raise BadRequest(
                "the run has no checkpoint yet (the first one is written after its first epoch)", 409
            ) from None
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
            raise BadRequest(f"checkpoint unreadable: {e}", 409) from None
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
    """The chapter's datasets' test images, loaded once (never downloaded by the server)."""

    def __init__(self):
        self.cache, self.lock = {}, threading.Lock()

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
            return self.cache[key]


@torch.inference_mode()
def evaluate_chunk(entry: dict, ds, start: int, stop: int) -> torch.Tensor:
    x = ds.test.images[start:stop]
    return entry["model"](entry["transform"](x, train=False)).argmax(1)


# ---------------------------------------------------------------------------------------------
# The app: what every route shares (Server), the routes in small groups over it, and create_app
# wiring them to paths. Starlette is the serve extra: imported inside functions, so the CLI's other
# commands never load it.


def json_response(data: dict, status: int = 200):
    from starlette.responses import JSONResponse

    return JSONResponse(data, status_code=status)


def error(status: int, message: str):
    return json_response({"error": message}, status)


class Server:
    """What every route shares: the runs folder, the networks and test sets loaded from it, and the
    one worker thread every network runs in."""

    def __init__(self, runs_dir: str | os.PathLike, threads: int = 1):
        self.folder, self.models, self.tests = RunsFolder(runs_dir), Models(), TestSets()
        torch.set_num_threads(threads)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alexnet-infer")

    async def compute(self, fn, *args):
        """``fn(*args)`` in the worker thread, awaited: requests queue rather than share the cores."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    def run_path(self, request) -> tuple[str, Path]:
        """The run the URL names and its directory (NotFound outside the folder)."""
        name = request.path_params["name"]
        return name, self.folder.path(name)

    async def loaded(self, request) -> tuple[str, Path, dict]:
        """The run the URL names, its directory and its network (Models' entry)."""
        name, path = self.run_path(request)
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
            text = text.replace("{{" + k + "}}", html.escape(v, quote=True))
        return HTMLResponse(text)

    async def runs(self, request):
        return self.page("runs.html", root=str(self.server.folder.root))

    async def run(self, request):
        name, _ = self.server.run_path(request)
        return self.page("run.html", name=name)

    async def explore(self, request):
        name, _ = self.server.run_path(request)
        return self.page("explore.html", name=name)

    async def compare(self, request):
        return self.page("compare.html")

    async def favicon(self, request):
        from starlette.responses import Response

        return Response(status_code=204)


class RunsApi(Routes):
    """/api/runs: every run's record, one run's record with its settings and metrics, runs compared."""

    async def listing(self, request):
        folder, out = self.server.folder, []
        for n in folder.names():
            try:
                out.append(run_record(folder, n))
            except NotFound:  # removed while listing
                continue
        return json_response({"root": str(folder.root), "runs": out})

    async def one(self, request):
        name, _ = self.server.run_path(request)
        return json_response(run_record(self.server.folder, name, full=True))

    async def compare(self, request):
        from .report import FORMATS, Spread, aggregate, group_runs, summarize
        from .runs import read_run

        names = request.query_params.getlist("run")
        if not names:
            raise BadRequest("name the runs: /api/compare?run=A&run=B")
        runs, curves = [], []
        for n in names:
            p = self.server.folder.path(n)
            try:
                r = await self.server.compute(read_run, p)
            except RunError as e:
                raise BadRequest(f"{n}: {e}", 409) from None
            runs.append(r)
            curves.append({"name": n, "metrics": _finite(r["metrics"])})
        rows = [aggregate([summarize(r) for r in g]) for g in group_runs(runs)]

        def cell(k, v):
            return v.format(FORMATS.get(k, "{}")) if isinstance(v, Spread) else FORMATS.get(k, "{}").format(v)

        table = [{k: cell(k, v) for k, v in r.items()} for r in rows]
        return json_response({"runs": curves, "table": table})


class Uploads(Routes):
    """The explore page's own image: an upload run through `alexnet predict`'s conversion and the network."""

    async def predict(self, request):
        """POST /api/runs/NAME/predict: an uploaded image (multipart field 'file') -> top-5, and with
        ?maps=N each stage's N strongest maps."""
        server = self.server
        name, path = server.run_path(request)
        try:
            form = await request.form(max_files=1, max_fields=8)
        except _TooLarge:
            raise
        except Exception as e:  # a body that is not multipart: Starlette's own parser errors
            why = e.__class__.__name__
            raise BadRequest(f"send the image as multipart/form-data field 'file' ({why})") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequest("no file: send the image as multipart/form-data field 'file'")
        data = await upload.read()
        invert = str(form.get("invert", "")).lower() in ("1", "true", "on", "yes")
        maps = _maps(request, 0)
        entry = await server.compute(server.models.get, path)
        x = await server.compute(decode_upload, data, entry["ckpt"], invert)
        out = await server.compute(explain, entry, x, maps)
        return json_response({"run": name, "image": upload.filename, "invert": invert, **out})


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
                        ev["error"] = f"{e.__class__.__name__}: {str(e)[:200]}"

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
    """`alexnet report`'s body for a run, rendered in the worker thread, the newest rendering kept
    per run. A live run's newer checkpoint is rendered again only when asked (?render=1): an AlexNet
    at 224 takes minutes of evaluation, which would otherwise be spent beside the training run every
    epoch."""

    def __init__(self, server: Server):
        super().__init__(server)
        self.rendered: dict[str, dict] = {}  # run path -> {"key", "html", "error"} or {"pending": True}

    @staticmethod
    def checkpoint_key(path: Path):
        try:
            st = (path / "last.pt").stat()
            return (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return None

    def render(self, path: Path, key) -> None:
        from .report import render_html_body

        try:
            body = render_html_body(path, device="cpu", level=2)
            self.rendered[str(path)] = {"key": key, "html": body, "error": None}
        except Exception as e:
            self.rendered[str(path)] = {"key": key, "html": None, "error": f"{e.__class__.__name__}: {str(e)[:300]}"}

    async def body(self, request):
        _, path = self.server.run_path(request)
        key, have = self.checkpoint_key(path), self.rendered.get(str(path))
        if have is None or (have["key"] != key and request.query_params.get("render")):
            if have is None or have.get("pending") is None:
                self.rendered[str(path)] = {**(have or {}), "key": key, "pending": True}
                self.server.worker.submit(self.render, path, key)
            return json_response({"pending": True})
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


async def unexpected(request, exc: Exception):
    # One request's failure, not the server's: the message goes back and the server serves on.
    return error(500, f"{exc.__class__.__name__}: {str(exc)[:300]}")


def create_app(runs_dir: str | os.PathLike = "runs", threads: int = 1):
    """The web app over ``runs_dir``: each path wired to its group's endpoint."""
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    server = Server(runs_dir, threads)
    pages, runs, evaluation, figures = Pages(server), RunsApi(server), Evaluation(server), Figures(server)
    tests, reports, uploads = TestImages(server, evaluation), Reports(server), Uploads(server)
    app = Starlette(
        routes=[
            Route("/", pages.runs),
            Route("/compare", pages.compare),
            Route("/favicon.ico", pages.favicon),
            Route("/runs/{name:path}/explore", pages.explore),
            Route("/runs/{name:path}", pages.run),
            Route("/api/runs", runs.listing),
            Route("/api/compare", runs.compare),
            Route("/api/runs/{name:path}/predict", uploads.predict, methods=["POST"]),
            Route("/api/runs/{name:path}/test/{index:int}/png", tests.png),
            Route("/api/runs/{name:path}/test/{index:int}", tests.image),
            Route("/api/runs/{name:path}/test", tests.listing),
            Route("/api/runs/{name:path}/evaluation", evaluation.confusion),
            Route("/api/runs/{name:path}/filters", figures.filters),
            Route("/api/runs/{name:path}/report", reports.body),
            Route("/api/runs/{name:path}/layers", figures.layers),
            Route("/api/runs/{name:path}", runs.one),
            Mount("/static", StaticFiles(directory=STATIC)),
        ],
        exception_handlers={NotFound: not_found, 404: not_found, BadRequest: bad_request, Exception: unexpected},
    )
    app.add_middleware(BodyLimit, limit=MAX_UPLOAD)
    app.state.worker, app.state.folder = server.worker, server.folder
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
        too_large = f"the upload is over {self.limit // 2**20} MB".encode()
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_json(send, 413, too_large)
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
                await _send_json(send, 413, too_large)


class _TooLarge(Exception):
    pass


async def _send_json(send, status: int, message: bytes) -> None:
    body = b'{"error": "' + message + b'"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
        "--threads",
        type=int,
        default=1,
        help="torch threads for inference (1 leaves the other cores to a training run)",
    )
    s.set_defaults(func=cmd_serve)


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
    import socket

    try:  # uvicorn's own failure is a log line and exit status 3; say it as every command does
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    app = create_app(args.runs, args.threads)
    print(f"serving {Path(args.runs).resolve()} on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
