"""The networks serve runs: checkpoints loaded into a small cache, the worker threads they run in,
an upload decoded as `alexnet predict` decodes it, a network's top-5 and strongest activation maps,
and the test images of the chapter's datasets."""

from __future__ import annotations

import asyncio
import base64
import io
import queue
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path

import torch

from ..runs import RunError, load_checkpoint, model_from_checkpoint
from .folder import BadRequest, RunsFolder

# Pixels of an uploaded image. A 20 MB PNG of one colour can declare 2 gigapixels; the header is
# read before decoding and anything larger than a 50-megapixel photo is refused.
MAX_PIXELS = 50_000_000


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
        from ..imagenet import checkpoint_transform

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
    from ..visualize import contrast, stage_maps, strongest

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


def decode_upload(data: bytes, ckpt: dict, invert: bool) -> torch.Tensor:
    """An uploaded file through `alexnet predict`'s conversion; a 4xx BadRequest for what is not an image."""
    from PIL import Image

    from ..imagenet import UNREADABLE, checkpoint_input

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


# Test images, and the evaluation behind per-class accuracy, confusion and "misclassified"


class TestSets:
    """The chapter's datasets' test images, loaded once (never downloaded by the server), the
    ``keep`` most recently used kept (runs may name many data folders)."""

    def __init__(self, keep: int = 2):
        self.keep, self.cache, self.lock = keep, OrderedDict(), threading.Lock()

    def get(self, cfg) -> object:
        from .. import data as D

        if cfg.data.dataset not in D.DATASETS:
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
