"""serve's routes: what every route shares (Server), the routes in small groups over it (pages,
runs, uploads, evaluation, test images, reports, figures), the JSON they answer and the error
handlers. Starlette and Jinja2 are the serve extra: imported inside functions."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import sys
from collections import OrderedDict
from pathlib import Path

import torch

from ..confusion import confusion_matrix
from ..runs import RunError
from .folder import BadRequest, NotFound, Refused, RunsFolder, TooLarge, _clean, finite, listing, run_record
from .models import Models, TestSets, Worker, _scale_for, decode_upload, evaluate_chunk, explain, png_uri

TEMPLATES = Path(__file__).parent / "templates"
EVAL_IMAGES = 2000  # test images the run page's per-class accuracy and confusion matrix cover
MAPS_SHOWN = 8  # strongest activation maps per stage on the explore page
MAX_REPORTS = 8  # rendered reports kept (one can be MBs of inlined PNGs), least recently shown dropped
MAX_COMPARED = 16  # runs one /api/compare may name
BODY_TIMEOUT = 60  # seconds an upload's body may take to arrive after its headers


@functools.cache
def templates():
    """The pages' Jinja2 environment: autoescaping on, so every value is escaped unless a template
    says otherwise (none does)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )


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
    """The HTML pages: Jinja2 templates (autoescaped: a run's name is data) given the run's name;
    their script asks the API for the rest."""

    @staticmethod
    def page(file: str, **values):
        from starlette.responses import HTMLResponse

        return HTMLResponse(templates().get_template(file).render(**{k: _clean(v) for k, v in values.items()}))

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
        from ..report import aggregate, cell, group_runs, summarize
        from ..runs import read_run

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
            except Exception:  # a run's content is data: a checkpoint of ours with odd values
                raise BadRequest(
                    f"{n}: cannot be compared (a value of the wrong type in its checkpoint or settings)", 409
                ) from None
            runs.append(r)
            curves.append({"name": n, "metrics": r["metrics"]})

        try:
            rows = [aggregate([summarize(r) for r in g]) for g in group_runs(runs)]
            table = [{k: cell(k, v) for k, v in r.items()} for r in rows]
        except Exception:  # a value of the wrong type in a run's checkpoint or config
            raise BadRequest(
                "these runs cannot be compared (a value of the wrong type in their settings)", 409
            ) from None
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
        except (TooLarge, BadRequest):
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
        conf = confusion_matrix(truth, ev["pred"], k)
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
        """What a rendered report depends on: last.pt (the run's history) and best.pt (its network,
        written after last.pt at an epoch's end). A report rendered between the two is stale."""
        key = []
        for name in ("last.pt", "best.pt"):
            try:
                f = self.server.folder.file(path, name)
                st = f.stat() if f is not None else None
            except (Refused, OSError):
                st = None
            key.append(None if st is None else (st.st_mtime_ns, st.st_size))
        return None if key == [None, None] else tuple(key)

    def keep(self, path: Path, record: dict) -> None:
        self.rendered[str(path)] = record
        self.rendered.move_to_end(str(path))
        while len(self.rendered) > MAX_REPORTS:
            self.rendered.popitem(last=False)

    def render(self, path: Path, key) -> None:
        from ..report import render_html_body

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
        from ..filters import filter_cells, first_conv, mosaic

        _, _, entry = await self.server.loaded(request)
        w = first_conv(entry["model"]).weight.detach().float()
        image, rows, cols = mosaic(filter_cells(w), gap=1)
        return json_response(
            {"shape": list(w.shape), "rows": rows, "cols": cols, "png": png_uri(image, _scale_for(image.shape[0], 360))}
        )

    async def layers(self, request):
        from ..tracing import trace

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


def _maps(request, default: int) -> int:
    try:
        return min(max(int(request.query_params.get("maps", default)), 0), 64)
    except ValueError:
        raise BadRequest("maps must be a whole number") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0][:200] if text else ''}"
