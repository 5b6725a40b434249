"""Take a trained network out of this package: ONNX, safetensors or torch.export's .pt2, each
checked against its checkpoint on real test images before the file is kept, and read back by
``alexnet predict`` from the file alone.

Every exported file carries the same small description of itself (``describe``): the network's
name and shape, the class names, and how an image becomes its input (the side it is resized to,
the resolution, the normalisation). That description is what ``predict`` needs, so a file works
without the run directory it came from:

    ONNX          the description as metadata (key ``alexnet``, plus readable keys for other tools),
                  a current opset, the batch dimension dynamic
    safetensors   the weights, and the description in the header's metadata (key ``alexnet``): the
                  network is rebuilt by name from the registry, then the weights are loaded strictly
    pt2           torch.export's program, the description as an extra file ``alexnet.json``; written
                  and checked, but not read back by predict (PT2_REFUSED: its loader can run code)

The parity check: the exported model and the checkpoint's network run the same batch of real test
images; the largest logit difference must stay within ``tolerance`` (fp32 reorderings, below) and
every image whose reference top-1 is not a near-tie must get the same top-1. Only then is the file
written (runs.atomic_write), so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .runs import atomic_write, first_line, not_regular
from .weights import (
    META_KEY,
    ExportError,
    Loaded,
    parse_meta,
    read_model_file,
    safetensors_from_bytes,
    torch_runner,
)

FORMATS = {"onnx": ".onnx", "safetensors": ".safetensors", "pt2": ".pt2"}

# fp32 has a unit roundoff of 2^-24 ≈ 6e-8. Another runtime sums each dot product in another order
# (other kernels, blocking, vector widths); the difference of two orders of a K-term sum grows like
# sqrt(K)·u·(size of the terms) in practice (K·u at worst). AlexNet's longest sums are K = 9216
# (owt's fc6) and 6400 (the chapter's), so one layer differs by ~1e-5 of its output scale and eight
# layers by ~1e-4. We allow 1e-3 of the largest logit (at least 1e-3): ten times that, and still a
# thousand times below what a real mistake gives (a dropped ReLU or a transposed kernel moves
# logits by their own size).
RELATIVE_TOLERANCE = 1e-3


# ---------------------------------------------------------------------------------------------
# What a file needs to say about itself


def describe(ckpt: dict) -> dict:
    """The description of a checkpoint's network that every exported file carries."""
    from .imagenet import NATIVE_SIDE, checkpoint_transform

    t = checkpoint_transform(ckpt)
    mean, std = t.mean, t.std
    res = int(ckpt["resolution"])
    return {
        "format_version": 1,
        "model": ckpt["cfg"].train.model,
        "in_channels": int(ckpt["in_channels"]),
        "num_classes": int(ckpt["num_classes"]),
        "classes": list(ckpt["classes"]),
        "resolution": res,
        # Preprocessing, as predict does it from a run: the photo is resized to the dataset's
        # native side (28 for Fashion-MNIST), then to the resolution; `resize` (torchvision's
        # weights) means: shorter side to this, centre crop to the resolution.
        "native": NATIVE_SIDE.get(ckpt["dataset"], res),
        "resize": None,
        "mean": list(mean) if mean else None,
        "std": list(std) if std else None,
        "dataset": ckpt["dataset"],
        "epoch": int(ckpt["epoch"]),
    }


# ---------------------------------------------------------------------------------------------
# One image, as the network sees it (predict from a run, from an exported file, from torchvision's weights)


def read_image(path, meta: dict, invert: bool = False) -> torch.Tensor:
    """(1, C, R, R) float input of the image at ``path`` (a path or a binary file object) for the
    network ``meta`` describes: converted as predict converts it for a run (imagenet.checkpoint_input),
    or, for torchvision's weights, shorter side then centre crop. Pillow's errors (imagenet.UNREADABLE)
    pass through."""
    from .data import Transform
    from .imagenet import checkpoint_input, open_rgb, resize_shorter

    res = meta["resolution"]
    if meta.get("resize"):  # torchvision's: shorter side, then the centre crop
        img = resize_shorter(open_rgb(path, shorter=meta["resize"]), meta["resize"])
        img = img.convert("L" if meta["in_channels"] == 1 else "RGB")
        w, h = img.size
        left, top = (w - res) // 2, (h - res) // 2
        img = img.crop((left, top, left + res, top + res))
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(res, res, -1).permute(2, 0, 1)[None]
        x = 255 - x if invert else x
    else:  # the description holds the checkpoint fields checkpoint_input reads
        x = checkpoint_input(path, meta, invert)
    mean, std = meta.get("mean"), meta.get("std")
    return Transform(res, tuple(mean) if mean else None, tuple(std) if std else None, channels_last=False)(
        x, train=False
    )


# ---------------------------------------------------------------------------------------------
# Opening a model: a run, a checkpoint, or an exported file


def onnx_session(data: bytes | str, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # warnings about unused initialisers are not the user's business
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _external_data(data: bytes, where: str) -> str | None:
    """The first tensor of an ONNX model that names a file of external data, or None. Those files are
    opened by path, relative to the working directory for a model read from bytes: a model that is
    not self-contained is refused rather than let choose what is read."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf's DecodeError and the like
        raise ExportError(f"{where}: not a readable ONNX model ({first_line(e)})") from None
    return next((t.name or "a tensor" for t in _get_all_tensors(proto) if uses_external_data(t)), None)


def _open_onnx(data: bytes, where: str) -> Loaded:
    if tensor := _external_data(data, where):
        raise ExportError(
            f"{where}: {tensor} is kept in a file outside the model; predict reads only self-contained files"
        )
    try:
        sess = onnx_session(data)
    except Exception as e:
        raise ExportError(f"{where}: not a readable ONNX model ({first_line(e)})") from None
    meta = parse_meta(sess.get_modelmeta().custom_metadata_map.get(META_KEY), where)
    # The graph against its description, before the first image: one float input (B, C, R, R),
    # logits (B, classes) first among the outputs.
    c, r, n = meta["in_channels"], meta["resolution"], meta["num_classes"]
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or list(inputs[0].shape[1:]) != [c, r, r]:
        got = ", ".join(f"{i.type} {i.shape}" for i in inputs) or "nothing"
        raise ExportError(f"{where}: its graph takes {got}, its description one float (batch, {c}, {r}, {r}) input")
    if not outputs or len(outputs[0].shape) != 2 or outputs[0].shape[1] != n:
        got = outputs[0].shape if outputs else "nothing"
        raise ExportError(f"{where}: its graph gives {got}, its description (batch, {n}) logits")
    name = inputs[0].name

    def run(x):
        return torch.from_numpy(sess.run(None, {name: x.float().contiguous().numpy()})[0])

    return Loaded(run, meta, "onnx")


def _open_pt2(data: bytes, where: str) -> Loaded:
    """The program in .pt2 bytes that this process has just written (export's parity check), never
    a file's: torch.export.load unpickles what the archive marks as pickled (open_model)."""
    extra = {f"{META_KEY}.json": ""}
    try:
        with _quiet():
            program = torch.export.load(io.BytesIO(data), extra_files=extra)
    except Exception as e:
        raise ExportError(f"{where}: not a readable torch.export program ({first_line(e)})") from None
    meta = parse_meta(extra[f"{META_KEY}.json"] or None, where)
    module = program.module()

    def run(x):
        with torch.inference_mode():
            return module(x)

    return Loaded(run, meta, "pt2")


_OPENERS = {"onnx": _open_onnx, "safetensors": safetensors_from_bytes, "pt2": _open_pt2}
# The modules each format needs beyond torch: the `export` extra (pyproject.toml).
_NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "safetensors": ("safetensors",), "pt2": ()}


def require_extra(fmt: str) -> None:
    """One line naming the install command when ``fmt``'s modules are missing, before any work."""
    import importlib

    for name in _NEEDS[fmt]:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ExportError(
                f"{fmt} files need the export extra, which is not installed here (no module {name!r}): "
                f"pip install 'alexnet[export]'"
            ) from None


def exported_format(path: str | os.PathLike) -> str | None:
    suffix = Path(path).suffix.lower()
    return next((f for f, s in FORMATS.items() if s == suffix), None)


# Why predict does not read .pt2 files. torch.export.load (torch 2.13) unpickles every weight and
# constant the archive marks ``use_pickle`` with torch.load(weights_only=False), opaque constants
# with pickle.loads, and, for archives of the older layout, falls back from weights_only=True to
# weights_only=False; an archive's own JSON decides which path is taken. A file from elsewhere can
# therefore run code while it is read. ONNX and safetensors hold only data, and say the same thing.
PT2_REFUSED = (
    "predict does not read .pt2 files: torch.export.load unpickles the parts an archive marks as "
    "pickled, so a .pt2 from elsewhere can run code while it is read; predict from the run, or from "
    "its .onnx or .safetensors export"
)


def open_model(path: str | os.PathLike) -> Loaded:
    """A run directory, a checkpoint, or an ONNX or safetensors file this module exported, as a
    runnable model (a .pt2 is refused unread: PT2_REFUSED)."""
    fmt = exported_format(path)
    if fmt == "pt2":
        raise ExportError(f"{path}: {PT2_REFUSED}")
    if fmt is not None:
        require_extra(fmt)
    if fmt is None:
        from .runs import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(path, ExportError)
        model, _ = model_from_checkpoint(ckpt)
        return Loaded(torch_runner(model), describe(ckpt), "checkpoint", model)
    return _OPENERS[fmt](read_model_file(path), str(path))


@contextlib.contextmanager
def _quiet():
    """torch.onnx and torch.export print progress and warnings of their own (torchvision not
    installed, deprecations); the command says what matters in its own lines."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---------------------------------------------------------------------------------------------
# Writing each format (to bytes: nothing touches the disk before the check passes)


def _example(meta: dict, batch: int = 2) -> torch.Tensor:
    return torch.zeros(batch, meta["in_channels"], meta["resolution"], meta["resolution"])


def to_onnx(model: nn.Module, meta: dict) -> bytes:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=65536)
    with _quiet():
        program = torch.onnx.export(
            model,
            (_example(meta),),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
        )
    proto = program.model_proto
    res, c = meta["resolution"], meta["in_channels"]
    readable = {
        META_KEY: json.dumps(meta),
        "model_name": meta["model"],
        "input_size": f"{c}x{res}x{res}",
        "normalization_mean": json.dumps(meta.get("mean")),
        "normalization_std": json.dumps(meta.get("std")),
        "class_names": json.dumps(meta["classes"]),
        "preprocessing": _preprocessing_text(meta),
    }
    for k, v in readable.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    proto.doc_string = (
        f"{meta['model']} from the alexnet package: input 'image' (B, {c}, {res}, {res}), output 'logits'"
    )
    return proto.SerializeToString()


def _preprocessing_text(meta: dict) -> str:
    res, c = meta["resolution"], meta["in_channels"]
    if meta.get("resize"):
        first = f"shorter side to {meta['resize']} (bilinear), centre crop {res}x{res}"
    else:
        first = f"resize to {meta['native']}x{meta['native']} (bilinear)" + (
            f", then to {res}x{res} (bilinear, align_corners=False)" if meta["native"] != res else ""
        )
    norm = f", subtract mean {meta['mean']} and divide by std {meta['std']}" if meta.get("mean") else ""
    return f"{'grey' if c == 1 else 'RGB'}; {first}; scale to [0, 1]{norm}; NCHW float32"


def to_safetensors(model: nn.Module, meta: dict) -> bytes:
    from safetensors.torch import save

    # Clone: safetensors refuses tensors that share memory, and contiguous copies cost nothing here.
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={META_KEY: json.dumps(meta)})


def to_pt2(model: nn.Module, meta: dict) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=65536)
    with _quiet():
        program = torch.export.export(model, (_example(meta),), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={f"{META_KEY}.json": json.dumps(meta)})
    return buf.getvalue()


_WRITERS = {"onnx": to_onnx, "safetensors": to_safetensors, "pt2": to_pt2}


# ---------------------------------------------------------------------------------------------
# The check


@dataclass
class Parity:
    images: int
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    top1_agree: float  # fraction of all images
    disagree_clear: int  # disagreements on images whose reference top-2 margin exceeds 2 x tolerance

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.disagree_clear == 0

    def line(self) -> str:
        return (
            f"parity on {self.images} test images: max |logit diff| {self.max_abs_diff:.2e} "
            f"(tolerance {self.tolerance:.1e}), top-1 agreement {self.top1_agree:.4f}"
        )


def parity(reference: torch.Tensor, exported: torch.Tensor, relative: float = RELATIVE_TOLERANCE) -> Parity:
    reference, exported = reference.float(), exported.float()
    if exported.shape != reference.shape:
        raise ExportError(
            f"the exported model gives logits of shape {tuple(exported.shape)}, the checkpoint {tuple(reference.shape)}"
        )
    scale = float(reference.abs().max())
    tol = relative * max(1.0, scale)
    diff = float((reference - exported).abs().max()) if reference.numel() else 0.0
    if diff != diff:  # NaN
        diff = float("inf")
    agree = reference.argmax(1) == exported.argmax(1)
    top2 = reference.topk(min(2, reference.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, -1] if reference.shape[1] > 1 else torch.full((len(reference),), float("inf"))
    clear = margin > 2 * tol
    return Parity(len(reference), diff, scale, tol, float(agree.float().mean()), int((~agree & clear).sum()))


def check_batch(ckpt: dict, meta: dict, data_dir: str | None, n: int, split: str = "test") -> torch.Tensor:
    """``n`` images of the run's dataset as evaluation feeds them to the network: the first ``n`` test
    images, or (``split="train"``, int8's calibration) ``n`` training images drawn with a fixed seed."""
    from . import data as D
    from .imagenet import IMAGE_DATASETS, UNREADABLE, find_images

    cfg = ckpt["cfg"]
    g = torch.Generator().manual_seed(0)
    if cfg.data.dataset in IMAGE_DATASETS:
        train, val = find_images(cfg.data.dataset, data_dir or cfg.data.data_dir)
        paths = val.paths if split == "test" else [train.paths[i] for i in torch.randperm(len(train), generator=g)]
        xs = []
        for p in paths:
            if len(xs) == n:
                break
            try:
                xs.append(read_image(p, meta))
            except UNREADABLE:
                continue
        return torch.cat(xs)
    ds = D.load_dataset(cfg.data.dataset, data_dir or cfg.data.data_dir, download=False)
    mean, std = meta.get("mean"), meta.get("std")
    transform = D.Transform(
        meta["resolution"], tuple(mean) if mean else None, tuple(std) if std else None, channels_last=False
    )
    images = ds.test.images[:n] if split == "test" else ds.train.images[torch.randperm(len(ds.train), generator=g)[:n]]
    return transform(images, train=False)


# ---------------------------------------------------------------------------------------------
# int8: onnxruntime's static quantization, calibrated on training images


# 8-bit activations hold each layer's calibrated range in 256 steps; through eight layers the logits
# move by a few percent of their largest value, so no fp32-style logit tolerance holds and near-ties
# flip. The int8 check is on decisions: every check image whose fp32 top-1 leads its runner-up by
# more than 2 x 5 % of the largest logit must keep it (docs/export.md measures the accuracy on all
# 10,000 test images against fp32).
INT8_RELATIVE_TOLERANCE = 0.05


class _Calibration:
    """onnxruntime's CalibrationDataReader: batches of training images."""

    def __init__(self, images: torch.Tensor, batch: int = 64):
        self.batches = iter([images[i : i + batch].contiguous().numpy() for i in range(0, len(images), batch)])

    def get_next(self):
        x = next(self.batches, None)
        return None if x is None else {"image": x}


def quantize_int8(fp32: bytes, calibration: torch.Tensor) -> bytes:
    """The int8 model of an fp32 ONNX model: QDQ, int8 weights per output channel, uint8 activations
    whose ranges are the min and max seen on ``calibration`` (normalised training images)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        src, pre, out = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        Path(src).write_bytes(fp32)
        quant_pre_process(src, pre, skip_symbolic_shape=True)  # shapes and fusions first, as onnxruntime advises
        quantize_static(
            pre,
            out,
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(out)
    meta_src = onnx.load_from_string(fp32).metadata_props
    del proto.metadata_props[:]
    for entry in meta_src:  # the description, marked int8
        value = entry.value
        if entry.key == META_KEY:
            value = json.dumps({**json.loads(value), "precision": "int8"})
        proto.metadata_props.append(onnx.StringStringEntryProto(key=entry.key, value=value))
    return proto.SerializeToString()


def _check_output(out: Path, fmt: str) -> None:
    """The file to write: the format's suffix, in a folder that exists, not over something that is
    not a file."""
    if exported_format(out) != fmt:
        raise ExportError(f"{out}: a {fmt} file should end in {FORMATS[fmt]}")
    if not out.parent.is_dir():
        raise ExportError(f"{out}: no folder {out.parent} to write it in")
    if os.path.lexists(out) and (why := not_regular(out)):
        raise ExportError(f"{out}: {why}; not replaced")


@dataclass
class Exported:
    path: Path
    format: str
    parity: Parity
    bytes: int


def default_output(ckpt: dict, fmt: str, int8: bool = False) -> Path:
    """Beside the checkpoint: RUN/alexnet28.onnx, RUN/alexnet28.int8.onnx (a checkpoint outside a run:
    beside it)."""
    p = Path(ckpt["path"])
    return p.parent / f"{ckpt['cfg'].train.model}{'.int8' if int8 else ''}{FORMATS[fmt]}"


def export(
    source: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike | None = None,
    *,
    data_dir: str | None = None,
    check_images: int = 256,
    int8: bool = False,
    calibration_images: int = 512,
    say: Callable[[str], None] = print,
) -> Exported:
    """Export the network of a run or checkpoint to ``fmt``, check it, and only then write it.
    ``int8`` (ONNX only): quantise the checked fp32 model, calibrated on training images, and check
    its decisions against the checkpoint's."""
    from .runs import load_checkpoint, model_from_checkpoint

    # What can be checked before the checkpoint is read and the network exported and run.
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise ExportError(f"--int8 quantises ONNX models (onnxruntime); not --format {fmt}")
    if check_images < 1:
        raise ExportError(f"--check-images must be at least 1, not {check_images}")
    require_extra(fmt)
    if out is not None:
        _check_output(Path(out), fmt)
    ckpt = load_checkpoint(source, ExportError)
    model, cfg = model_from_checkpoint(ckpt)
    model.eval()
    if cfg.system.model_parallel:
        say(
            f"the run trained {cfg.train.model} on two devices ({cfg.system.model_parallel}); its checkpoint holds "
            f"the grouped single-device network, which is what is exported"
        )
    meta = describe(ckpt)
    out = Path(out) if out else default_output(ckpt, fmt, int8)
    _check_output(out, fmt)
    x = check_batch(ckpt, meta, data_dir, check_images)
    try:
        data = _WRITERS[fmt](model, meta)
    except Exception as e:  # the exporters raise many kinds; any of them means this network does not export
        raise ExportError(
            f"{cfg.train.model} does not export to {fmt}: {e.__class__.__name__}: {first_line(e)}"
        ) from None
    loaded = _OPENERS[fmt](data, f"{out} (before writing)")
    with torch.inference_mode():
        reference = model(x)
    par = parity(reference, loaded(x))
    say(f"{fmt}: {par.line()}")
    if not par.ok:
        raise ExportError(f"{out}: not written: the {fmt} model does not match the checkpoint ({par.line()})")
    if int8:
        data = quantize_int8(data, check_batch(ckpt, meta, data_dir, calibration_images, split="train"))
        par = parity(reference, _open_onnx(data, f"{out} (before writing)")(x), INT8_RELATIVE_TOLERANCE)
        say(
            f"int8: parity on {par.images} test images: max |logit diff| {par.max_abs_diff:.2e}, top-1 agreement "
            f"{par.top1_agree:.4f}; {par.disagree_clear} changed decisions with a top-2 margin above "
            f"{2 * par.tolerance:.2e}"
        )
        if par.disagree_clear:
            raise ExportError(
                f"{out}: not written: the int8 model changes {par.disagree_clear} clear decisions of "
                f"the checkpoint ({par.line()})"
            )
    atomic_write(out, data)
    return Exported(out, fmt, par, len(data))


# ---------------------------------------------------------------------------------------------
# The command


def cmd_export(args) -> int:
    result = export(
        args.source, args.format, args.out, data_dir=args.data_dir, check_images=args.check_images, int8=args.int8
    )
    print(f"written: {result.path} ({result.bytes / 1e6:.1f} MB)")
    return 0


def add_export_parser(sub) -> None:
    e = sub.add_parser(
        "export",
        help="write a run's network as ONNX, safetensors or torch.export .pt2, checked "
        "against the checkpoint on real test images",
    )
    e.add_argument("source", metavar="RUN_OR_CHECKPOINT")
    e.add_argument("--format", required=True, choices=list(FORMATS))
    e.add_argument("-o", "--out", help="file to write (default: RUN/MODEL.onnx, .safetensors or .pt2)")
    e.add_argument("--data-dir", help="where the run's test images are (default: as the run recorded)")
    e.add_argument("--check-images", type=int, default=256, help="test images the parity check runs")
    e.add_argument(
        "--int8",
        action="store_true",
        help="ONNX: write the int8 model (onnxruntime static quantisation, "
        "calibrated on 512 training images, checked on decisions): the fastest CPU path at batch 1 "
        "(docs/export.md); default name RUN/MODEL.int8.onnx",
    )
    e.set_defaults(func=cmd_export)
