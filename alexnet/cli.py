"""The `alexnet` command: its subcommands' parsers and their one-line errors (`alexnet --help` lists them)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import signal
import sys
import time
import typing
from pathlib import Path

from . import __version__
from .config import MAX_CLASSES, PRESETS, SECTIONS, Config, ConfigError, choices


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config field, help and choices from the field; unset flags stay out of the
    namespace, so the preset's value (or, on --resume, the run's own) stands."""
    for section in SECTIONS.values():
        group = p.add_argument_group(section.__name__.replace("Config", "").lower())
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            flag = "--" + f.name.replace("_", "-")
            kind = {a for a in typing.get_args(hints[f.name]) if a is not type(None)} or {hints[f.name]}
            if bool in kind:
                group.add_argument(
                    flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=f.metadata["help"]
                )
                continue
            conv = int if int in kind else float if float in kind else str
            allowed = choices(section, f.name)
            group.add_argument(
                flag,
                type=conv,
                default=argparse.SUPPRESS,
                help=f.metadata["help"],
                choices=allowed,
                metavar=None if allowed else f.name.upper(),
            )


def _int_in(lo: int, hi: int):
    """An argparse type: an integer in lo..hi, as the configuration bounds its own fields (a typo
    must not reach the allocator); anything else is the parser's one line."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}..{hi}")
        return value

    return integer


def _flags(args) -> dict:
    fields = {f.name for s in SECTIONS.values() for f in dataclasses.fields(s)}
    return {k: v for k, v in vars(args).items() if k in fields}


def _config_from_args(args) -> tuple[Config, str]:
    from .device import select_device

    preset = args.preset or "auto"
    why = ""
    if preset == "auto":
        device = select_device(getattr(args, "device", "auto"))
        preset = "d2l" if device.type == "cuda" else "cpu"
        why = f" (default on {device.type})"
    return PRESETS[preset].replace(**_flags(args)), why


def cmd_train(args) -> int:
    from .train import fit

    lead = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the run
    if args.resume:
        if args.run_dir is not None and Path(args.run_dir).resolve() != Path(args.resume).resolve():
            raise ConfigError(f"--resume {args.resume} writes to its own directory, not --run-dir {args.run_dir}")
        given = _flags(args) | ({"preset": args.preset} if args.preset else {})
        result = fit(
            Config(), args.resume, resume=True, overrides=given, progress=not args.no_progress, replan=args.replan
        )
    else:
        if args.replan:
            raise ConfigError("--replan re-plans a resumed --time-budget run: give it with --resume RUN_DIR")
        cfg, why = _config_from_args(args)
        if why and lead:
            print(f"no --preset given: using {cfg.preset}{why}")
        result = fit(cfg, args.run_dir, progress=not args.no_progress)
    if result.interrupted:
        return 130
    if not lead:
        return 0
    if result.metrics:
        best = max(m["val_acc"] for m in result.metrics)
        total = sum(m["epoch_time_s"] for m in result.metrics)
        print(
            f"test accuracy {result.final['val_acc']:.4f} (best {best:.4f}) after {result.final['epoch']} epochs, "
            f"{total:.1f}s of training and evaluation"
        )
    print(f"run directory: {result.run_dir}")
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from . import data as D
    from .device import bf16_autocast, channels_last_on, select_device
    from .imagenet import IMAGE_DATASETS
    from .measure import timed
    from .report import plot_confusion
    from .runs import load_checkpoint, model_from_checkpoint
    from .train import evaluate, evaluate_run

    ckpt = load_checkpoint(args.checkpoint)
    model, cfg = model_from_checkpoint(ckpt)
    device = select_device(args.device)
    if cfg.data.dataset in IMAGE_DATASETS:  # the paper's figures: top-1 and top-5 error
        ev = evaluate_run(model, ckpt, device, args.data_dir, args.batch_size, args.ten_crop)
        print(
            f"{ckpt['path']}: {cfg.train.model} on {cfg.data.dataset} val ({ev['images']} images, "
            f"{'10 crops' if ev['ten_crop'] else 'centre crop'}, {ev['skipped']} unreadable skipped)"
        )
        print(f"top-1 error {1 - ev['acc']:.4f}   top-5 error {1 - ev['top5']:.4f}   loss {ev['loss']:.4f}")
        return 0
    ds = D.load_dataset(cfg.data.dataset, args.data_dir or cfg.data.data_dir, device=device)
    transform = D.make_transform(cfg, ds.name, device)
    model = model.to(device)
    if channels_last_on(cfg.system.channels_last, device):
        model = model.to(memory_format=torch.channels_last)
    amp = bf16_autocast(cfg.system.amp, device)  # the run's own precision, where this device has it
    ev, dt = timed(
        lambda: evaluate(
            model,
            D.loader(ds.test, transform, args.batch_size, False),
            device=device,
            amp=amp,
            num_classes=len(ds.classes),
            confusion=True,
            flip_tta=cfg.data.flip_tta,
        ),
        device,
    )
    m = ev["confusion"]
    print(
        f"{ckpt['path']}: {cfg.train.model} on {ds.name} test ({ev['images']} images, {ev['images'] / dt:.0f} img/s"
        f", {'bf16' if amp else 'fp32'})"
    )
    print(f"accuracy {ev['acc']:.4f}   loss {ev['loss']:.4f}")
    print(f"{'class':<12} {'accuracy':>8} {'images':>7}")
    for i, name in enumerate(ds.classes):
        n = int(ev["class_images"][i])
        print(f"{name:<12} {int(ev['class_correct'][i]) / max(n, 1):>8.4f} {n:>7}")
    out = Path(args.out) if args.out else Path(ckpt["path"]).parent / "confusion.png"
    plot_confusion(m, ds.classes, out, f"{cfg.train.model} · {ds.name} · accuracy {ev['acc']:.4f}")
    print(f"confusion matrix: {out}")
    return 0


def cmd_predict(args) -> int:
    from .export import open_model, read_image
    from .imagenet import UNREADABLE

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, not {args.top_k}")
    images = args.images
    if args.weights:  # torchvision's ImageNet file: the first positional is an image too
        from .pretrained import load_torchvision

        model, images = load_torchvision(args.weights, args.model or "alexnet-owt"), [args.checkpoint, *images]
    elif args.model:
        raise ConfigError("--model goes with --weights (a torchvision file); a run or exported file knows its network")
    else:
        model = open_model(args.checkpoint)  # a run, a checkpoint, or an exported .onnx/.safetensors (not .pt2)
    if not images:
        raise ConfigError("give one or more IMAGE files after RUN_OR_CHECKPOINT")
    classes = model.meta["classes"]
    failed = 0
    for path in images:
        try:
            x = read_image(path, model.meta, invert=args.invert)
        except UNREADABLE as e:
            print(f"{path}: cannot read image ({e.__class__.__name__}: {e})", file=sys.stderr)
            failed += 1
            continue
        probs = model(x).float().softmax(1)[0]
        top = probs.topk(min(args.top_k, len(classes)))
        shown = "  ".join(f"{classes[i]} {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{path}: {shown}")
    return 1 if failed else 0


def cmd_summary(args) -> int:
    from .models import get_spec
    from .tracing import InputTooSmall, format_summary, parse_shape, summary

    try:
        side = get_spec(args.model).resolution
        shape = parse_shape(args.input) if args.input else (1, 1, side, side)
        rows = summary(args.model, shape, num_classes=args.num_classes)
    except InputTooSmall:
        raise
    except ValueError as e:  # a malformed --input
        raise ConfigError(str(e)) from None
    print(format_summary(rows))
    return 0


def cmd_compare(args) -> int:
    from .report import write_compare

    table, png, md = write_compare(args.runs, args.out, args.overwrite)
    print(table)
    print(f"curves: {png}   table: {md}")
    return 0


def cmd_filters(args) -> int:
    from .runs import load_checkpoint, model_from_checkpoint
    from .visualize import plot_filters

    ckpt = load_checkpoint(args.run)
    model, cfg = model_from_checkpoint(ckpt)
    out = Path(args.out) if args.out else Path(ckpt["path"]).parent / "filters.png"
    info = plot_filters(model, out, f"{cfg.train.model} · {ckpt['dataset']} · epoch {ckpt['epoch']}")
    o, c, kh, kw = info["shape"]
    print(
        f"{o} first-layer kernels ({kh}x{kw}, {c} input channel{'s' if c > 1 else ''}) in a "
        f"{info['rows']}x{info['cols']} grid: {out}"
    )
    return 0


def _input_image(spec: str, ckpt: dict, cfg: Config):
    """IMAGE as the network sees it, (1, C, H, W): an image file (converted as predict does) or
    ``test:N``, the N-th test image of the run's own dataset. Returns (x, label)."""
    from . import data as D
    from .imagenet import UNREADABLE, checkpoint_input, checkpoint_transform

    if spec.startswith("test:"):
        try:
            n = int(spec[5:])
        except ValueError:
            raise ConfigError(f"{spec}: give test:N with N a whole number") from None
        if cfg.data.dataset not in D.DATASETS:
            raise ConfigError(f"{spec}: test:N reads the chapter's datasets; give an image file for {cfg.data.dataset}")
        ds = D.load_dataset(cfg.data.dataset, cfg.data.data_dir)
        if not 0 <= n < len(ds.test):
            raise ConfigError(f"{spec}: the test set has {len(ds.test)} images (0 to {len(ds.test) - 1})")
        x, label = ds.test.images[n : n + 1], ds.classes[int(ds.test.labels[n])]
    else:
        try:
            x = checkpoint_input(spec, ckpt)
        except UNREADABLE as e:  # FileNotFoundError is an OSError
            raise ConfigError(f"{spec}: cannot read image ({e.__class__.__name__}: {e})") from None
        label = Path(spec).name
    return checkpoint_transform(ckpt)(x, train=False), label


def cmd_activations(args) -> int:
    from .runs import load_checkpoint, model_from_checkpoint
    from .visualize import plot_activations

    ckpt = load_checkpoint(args.run)
    model, cfg = model_from_checkpoint(ckpt)
    x, label = _input_image(args.image, ckpt, cfg)
    out = Path(args.out) if args.out else Path(ckpt["path"]).parent / "activations"
    stem = args.image.replace(":", "") if args.image.startswith("test:") else Path(args.image).stem
    pred = ckpt["classes"][int(model.eval()(x).argmax(1))]
    written = plot_activations(model, x, out, stem, args.max_channels, f"{cfg.train.model} · {label} -> {pred}")
    for w in written:
        print(f"{w['stage']:<28} {w['shown']:>3} of {w['channels']:>3} maps: {w['path']}")
    return 0


def cmd_models(args) -> int:
    from .models import MODELS

    for name, spec in MODELS.items():
        print(f"{name:<14} {spec.resolution:>4}px  {spec.about}")
    return 0


def cmd_analyze(args) -> int:
    from .tracing import InputTooSmall

    try:
        return _analyze(args)
    except InputTooSmall:
        raise
    except ValueError as e:  # a malformed --input, --batch or spec
        raise ConfigError(str(e)) from None


def _analyze(args) -> int:
    from .chapter import chapter_figures, format_chapter
    from .hardware import DEVICES, get_device_spec
    from .roofline import analyze, format_analysis, plot_roofline
    from .tracing import parse_shape

    if args.chapter:
        print(format_chapter(chapter_figures()))
        return 0
    from .models import get_spec

    res = get_spec(args.model).resolution
    shape = parse_shape(args.input or f"1,{res},{res}")
    if args.batch is not None and shape[0] not in (1, args.batch):
        raise ValueError(f"--input gives batch {shape[0]} and --batch gives {args.batch}; give it once")
    batch = args.batch or (shape[0] if shape[0] > 1 else 128)
    # Check the model and the input before spending seconds measuring the machine.
    an = analyze(args.model, shape[1:], batch, DEVICES["h100"], args.dtype, args.num_classes)
    if args.device != "h100":
        an = analyze(args.model, shape[1:], batch, get_device_spec(args.device), args.dtype, args.num_classes)
    print(format_analysis(an, args.format))
    if args.plot:
        plot_roofline(an, args.plot)
        print(f"roofline plot: {args.plot}", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from .bench import parse_batch_sizes, sweep, to_markdown, write_results

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"bench-{args.model}-{stamp}"
    rows, header = sweep(
        args.model,
        parse_batch_sizes(args.batch_sizes),
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        in_channels=args.in_channels,
        resolution=args.resolution,
        amp=args.amp,
        accuracy_epochs=args.accuracy_epochs,
        preset=args.preset,
        dataset=args.dataset,
        data_dir=args.data_dir,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        out_dir=out,
        threads=args.threads,
    )
    paths = write_results(rows, header, out)
    print(to_markdown(rows, header))
    print(f"written: {paths['csv']}, {paths['markdown']}, {paths['plot']}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong argument is one line (argparse prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_train(sub) -> None:
    t = sub.add_parser(
        "train", help="train a model; writes a run directory", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    t.add_argument(
        "--preset",
        choices=["auto", *PRESETS],
        default=None,
        help="recipe: d2l (the chapter's), fast, cpu; paper, paper-step, imagenet-fast (image folders, "
        "docs/imagenet.md); auto = d2l on a GPU, cpu otherwise",
    )
    t.add_argument(
        "--run-dir", help="where to write the run: a new or empty directory (default: a unique runs/PRESET-MODEL-TIME)"
    )
    t.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR with its own settings; only "
        "--epochs (to extend it) and where/how fast it runs (--device, --amp, ...) may change",
    )
    t.add_argument(
        "--replan",
        action="store_true",
        help="with --resume of a --time-budget run: measure the step "
        "time here and re-plan the remaining steps (else the recorded plan is kept)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of a checkpoint")
    e.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    e.add_argument("--device", default="auto")
    e.add_argument("--data-dir")
    e.add_argument("--batch-size", type=_int_in(1, 1 << 20), default=1000)
    e.add_argument("--out", help="confusion-matrix PNG (default: next to the checkpoint)")
    e.add_argument(
        "--ten-crop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="image folders: the paper's 10-crop evaluation (default: as the run was trained)",
    )
    e.set_defaults(func=cmd_evaluate)


def _add_predict(sub) -> None:
    r = sub.add_parser("predict", help="classify image files with a checkpoint or an exported model")
    r.add_argument(
        "checkpoint",
        metavar="RUN_OR_CHECKPOINT",
        help="a run, a checkpoint, or a file written by "
        "`alexnet export` (.onnx, .safetensors; not .pt2, whose loader can run code); with --weights, the first image",
    )
    r.add_argument("images", nargs="*", metavar="IMAGE")
    r.add_argument(
        "--weights",
        metavar="FILE",
        help="torchvision's ImageNet weights (alexnet-owt-7be5be79.pth): "
        "ImageNet class names, torchvision's preprocessing (shorter side 256, centre crop 224)",
    )
    r.add_argument("--model", help="the network of --weights (default alexnet-owt)")
    r.add_argument("--top-k", type=int, default=3)
    r.add_argument(
        "--invert",
        action="store_true",
        help="invert grey levels (Fashion-MNIST items are light on black; photos are usually dark on light)",
    )
    r.set_defaults(func=cmd_predict)


def _add_summary(sub) -> None:
    s = sub.add_parser("summary", help="layer-by-layer output shape, parameters and FLOPs")
    s.add_argument("--model", default="alexnet")
    s.add_argument("--input", help="N,C,H,W (or C,H,W); default: one 1-channel image at the model's resolution")
    s.add_argument("--num-classes", type=_int_in(1, MAX_CLASSES), default=10)
    s.set_defaults(func=cmd_summary)


def _add_compare(sub) -> None:
    c = sub.add_parser("compare", help="table and overlaid curves of finished runs (the exercises' comparisons)")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", default="compare.png", help="PNG of the curves; the table goes beside it as .md")
    c.add_argument(
        "--overwrite", action="store_true", help="replace a PNG or .md at --out that alexnet compare did not write"
    )
    c.set_defaults(func=cmd_compare)


def _add_filters(sub) -> None:
    f = sub.add_parser("filters", help="the first layer's kernels as an image grid (the chapter's Figure 8.1.2)")
    f.add_argument("run", metavar="RUN_OR_CHECKPOINT")
    f.add_argument("--out", help="PNG to write (default: RUN/filters.png)")
    f.set_defaults(func=cmd_filters)


def _add_activations(sub) -> None:
    v = sub.add_parser("activations", help="feature maps of each convolutional stage for one image")
    v.add_argument("run", metavar="RUN_OR_CHECKPOINT")
    v.add_argument("image", metavar="IMAGE", help="an image file, or test:N for the run's N-th test image")
    v.add_argument("--out", help="directory for the PNGs (default: RUN/activations)")
    v.add_argument("--max-channels", type=_int_in(1, 4096), default=32, help="maps shown per stage, strongest first")
    v.set_defaults(func=cmd_activations)


def _add_models(sub) -> None:
    m = sub.add_parser("models", help="list the registered networks")
    m.set_defaults(func=cmd_models)


def _add_analyze(sub) -> None:
    a = sub.add_parser(
        "analyze",
        help="per-layer FLOPs, bytes, arithmetic intensity, roofline time and memory",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a.add_argument("--model", default="alexnet")
    a.add_argument("--input", help="C,H,W or N,C,H,W (default: 1 channel at the model's own resolution)")
    a.add_argument(
        "--batch", type=_int_in(1, 1 << 20), help="batch size B (default: N of --input if above 1, else 128)"
    )
    a.add_argument("--num-classes", type=_int_in(1, MAX_CLASSES), default=10)
    a.add_argument(
        "--device",
        default="h100",
        choices=["h100", "a100", "cpu", "measured"],
        help="device spec for the roofline; measured = a large GEMM and a large copy on this machine",
    )
    a.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    a.add_argument("--format", default="table", choices=["table", "csv", "json", "markdown"])
    a.add_argument("--plot", metavar="PNG", help="draw every conv and FC layer on the device's roofline")
    a.add_argument(
        "--chapter",
        action="store_true",
        help="only the chapter's figures: 164 MB / 81 MFLOPs, conv/FC ratios, LeNet vs AlexNet",
    )
    a.set_defaults(func=cmd_analyze)


def _add_bench(sub) -> None:
    b = sub.add_parser(
        "bench",
        help="training images/s, peak memory (and accuracy) against batch size",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    b.add_argument("--model", default="alexnet")
    b.add_argument("--batch-sizes", default="16,32,64,128,256,512")
    # Every integer flag bounded by _int_in, as train's are by the configuration: a typo is one line,
    # never a traceback, a silent default (--resolution 0) or an allocation the machine cannot hold.
    b.add_argument("--steps", type=_int_in(1, 100_000), default=10, help="timed training steps per batch size")
    b.add_argument("--warmup", type=_int_in(0, 100_000), default=3, help="untimed steps first")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    b.add_argument("--in-channels", type=_int_in(1, 64), default=1)
    b.add_argument("--resolution", type=_int_in(1, 1024), help="input side (default: the model's own)")
    b.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "bf16", "off"],
        help="bf16 autocast (auto: as alexnet train, on where the hardware has bf16 units)",
    )
    b.add_argument(
        "--accuracy-epochs",
        type=_int_in(0, 100_000),
        default=0,
        help="also train each batch size this many epochs, lr = preset lr x B / 128, and report accuracy",
    )
    b.add_argument(
        "--preset",
        choices=["auto", *PRESETS],
        default="auto",
        help="the recipe whose training step is timed (optimizer, label smoothing, compilation) and "
        "trained by --accuracy-epochs; auto: d2l on CUDA, cpu elsewhere",
    )
    b.add_argument("--dataset", default="fashion-mnist")
    b.add_argument("--data-dir")
    b.add_argument("--limit-train", type=_int_in(1, 1 << 31), help="use only the first N training images")
    b.add_argument("--limit-test", type=_int_in(1, 1 << 31), help="use only the first N test images")
    b.add_argument("--out", help="directory for bench.csv, bench.md, bench.png (default runs/bench-MODEL-TIME)")
    b.add_argument(
        "--threads", type=_int_in(1, 1024), help="CPU threads (default: torch's); 1 on a CPU shared with other jobs"
    )
    b.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    from .export import add_export_parser

    p = _Parser(prog="alexnet", description="AlexNet (D2L 8.1): train, evaluate and measure.")
    # torch's version from its metadata: `alexnet --version` answers without importing torch
    versions = f"alexnet {__version__} (torch {importlib.metadata.version('torch')})"
    p.add_argument("--version", action="version", version=versions)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    from .exercises import add_parser as _add_exercises  # its parser and command live with it
    from .report import add_report_parser

    for add in (
        _add_train,
        _add_evaluate,
        _add_predict,
        _add_summary,
        _add_compare,
        _add_filters,
        _add_activations,
        _add_exercises,
        _add_models,
        _add_analyze,
        _add_bench,
        add_report_parser,
        add_export_parser,
    ):
        add(sub)
    from .serve import add_parser as _add_serve  # its own module: the web app's imports load only when served

    _add_serve(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun worker ends here, without the interpreter's shutdown. One of Gloo's threads may
        # still be freeing its last collective, whose tensors were made in Python; freeing one needs
        # the GIL, which the shutdown no longer gives, and the thread's exit ends the process in
        # std::terminate (SIGABRT: "terminate called without an active exception", now and then
        # on a loaded machine; docs/imagenet.md, pytorch/pytorch#179291). Nothing is lost by skipping it:
        # every file was written atomically and closed, and the run's lock released.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    from .bench import BenchError
    from .data import DataError
    from .models import UnknownModel
    from .report import ReportError
    from .runs import RunError, first_line
    from .tracing import InputTooSmall
    from .visualize import VisualizeError

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:  # a (second) Ctrl-C wherever it lands: every file written is whole
        print("alexnet: interrupted", file=sys.stderr)
        code = 130
    except (
        DataError,
        ConfigError,
        RunError,
        UnknownModel,
        InputTooSmall,
        ReportError,
        BenchError,
        VisualizeError,
    ) as e:
        print(f"alexnet: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # torch's allocators raise RuntimeError (OutOfMemoryError on CUDA)
        if not _out_of_memory(e):
            raise
        print(
            f"alexnet: error: out of memory ({first_line(e)}); try a smaller batch or input",
            file=sys.stderr,
        )
        return 2
    if code == 130 and argv is None:  # the process is ending: another Ctrl-C must not interrupt its exit
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


def _out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or any(
        s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory")
    )


if __name__ == "__main__":
    sys.exit(main())
