"""`alexnet bench`: training throughput, memory and accuracy against batch size (exercise 6).

What is timed is what `alexnet train` runs: :func:`alexnet.train.train_step` with the optimizer
of :func:`alexnet.train.make_optimizer` under the preset's recipe (momentum, weight decay, label
smoothing, fused SGD), its precision, layout and compilation; for a network whose leading block is
``Frozen`` (the speedrun's), only the trained rest, on the block's output, as the trainer does after
computing that block once per image. Each batch size gets a fresh model and optimizer and a fixed
random batch already on the device, so the figure is the training step, not the data pipeline.
Timing is :mod:`alexnet.measure`'s: warm-up steps first (allocator growth, kernel selection,
compilation), then single steps with the device synchronised around each; the median is the
figure, the best is shown beside it.

Memory: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``) next to the estimate of
:func:`alexnet.costs.training_memory`; on the CPU there is no allocator peak to read, so the
estimate stands next to the process's peak resident set size, which also holds the Python
runtime, torch's libraries and the largest earlier batch (sizes run in increasing order).

Accuracy (``accuracy_epochs`` > 0): each batch size trains with :func:`alexnet.train.fit` under the
preset's recipe with the learning rate scaled linearly with the batch size,
``lr = preset_lr * B / preset_batch`` (both presets use batch 128): the linear scaling rule of
Goyal et al. 2017, "Accurate, Large Minibatch SGD". Its warm-up matters at large batches; the
`cpu` and `fast` presets have a 1-epoch warm-up, the chapter's `d2l` recipe has none.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import train as T  # called through the module: one step, one optimizer, whoever times them
from .config import Config
from .costs import layer_costs, training_memory
from .device import CompiledOrEager, autocast, channels_last_on, use_compile
from .measure import peak_rss_bytes, time_turns
from .models import Frozen, build_model, get_spec
from .plotting import pyplot
from .runs import atomic_write
from .tables import Column, present
from .tables import csv as csv_table
from .tables import markdown as markdown_table
from .tracing import meta_model


class BenchError(ValueError):
    pass


MAX_BATCH = 1 << 20  # as the configuration bounds --batch-size (tests/test_analysis.py checks they agree)


def parse_batch_sizes(text: str) -> list[int]:
    """``--batch-sizes``: distinct integers in 1..MAX_BATCH, smallest first. The other integer flags
    are bounded where the parser is built (cli's ``_int_in``); this one is a list."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise BenchError(f"malformed batch sizes {text!r}: expected positive integers such as 16,32,64") from None
    if not sizes or min(sizes) <= 0:
        raise BenchError(f"malformed batch sizes {text!r}: expected positive integers such as 16,32,64")
    if max(sizes) > MAX_BATCH:
        raise BenchError(f"--batch-sizes: {max(sizes)} is outside 1..{MAX_BATCH}")
    return sorted(set(sizes))


def trained_part(model: torch.nn.Module, x: torch.Tensor, amp: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    """The part of ``model`` a training step runs, and its input: after a ``Frozen`` leading block,
    the rest on the block's output (bf16 under autocast, as InMemory.precompute keeps it)."""
    if isinstance(model, torch.nn.Sequential) and isinstance(model[0], Frozen):
        with torch.no_grad(), autocast(x.device, amp):
            x = model[0](x)
        return model[1:], x
    return model, x


def step_recipe(preset: str, model_name: str, device: torch.device) -> Config:
    """The preset's recipe for ``model_name`` on ``device``, as `alexnet train` would resolve it."""
    from .config import PRESETS

    cfg = PRESETS[preset].replace(model=model_name)
    return cfg.replace(compile="on" if use_compile(cfg.system.compile, device) else "off")


def time_training(
    model_name: str,
    batch: int,
    *,
    steps: int,
    warmup: int,
    device: torch.device,
    cfg: Config,
    in_channels: int = 1,
    resolution: int | None = None,
    amp: bool = False,
    num_classes: int = 10,
    seed: int = 0,
    rss_start: int = 0,
) -> dict:
    """Images/s of `alexnet train`'s step under ``cfg``'s recipe at one batch size, and peak memory
    against the estimate."""
    res = resolution or get_spec(model_name).resolution
    dtype = "bf16" if amp else "fp32"
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    model = build_model(model_name, in_channels, num_classes, seed=seed)
    nhwc = channels_last_on(cfg.system.channels_last, device)
    memory_format = torch.channels_last if nhwc else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(batch, in_channels, res, res, device=device, generator=gen).contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch,), device=device, generator=gen)
    part, x = trained_part(model, x, amp)
    meta, shape = meta_model(model_name, in_channels, num_classes), (batch, in_channels, res, res)
    if part is not model:  # the frozen block's layers are not in the step
        meta, shape = meta[1:], tuple(x.shape)
    costs = layer_costs(meta, shape, dtype, device.type)
    optimizer_state = "sgd-momentum" if cfg.train.momentum > 0 else "sgd"
    estimate = training_memory(costs, dtype, optimizer_state)["total"]
    flops_per_image = sum(c.fwd_flops + c.bwd_flops for c in costs) / batch
    opt = T.make_optimizer(part, cfg, device)
    net = CompiledOrEager(part, cfg.system.compile == "on")

    def run(k: int) -> None:
        for _ in range(k):
            T.train_step(net, opt, x, y, device=device, amp=amp, label_smoothing=cfg.train.label_smoothing)

    t = time_turns({"step": run}, device, rounds=steps, warmup=warmup)["step"]
    row = {
        "batch": batch,
        "images_per_s": t.per_second(batch),
        "step_ms": t.median * 1e3,
        "best_step_ms": t.best * 1e3,
        "achieved_tflops": flops_per_image * batch / t.median / 1e12,
        "est_train_MB": estimate / 1e6,
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base
        row.update(peak_MB=peak / 1e6, peak_source="cuda allocator", est_over_peak=estimate / peak)
    else:
        # The growth over the RSS before the sweep set the model up is what the estimate predicts.
        rss = peak_rss_bytes()
        row.update(peak_MB=rss / 1e6, peak_source="process peak RSS", rss_growth_MB=(rss - rss_start) / 1e6)
    return row


def train_accuracy(
    model_name: str,
    batch: int,
    epochs: int,
    run_dir: Path,
    *,
    preset: str,
    device: str,
    dataset: str,
    data_dir: str | None,
    limit_train: int | None,
    limit_test: int | None,
    amp: str = "auto",
) -> dict:
    """Train one batch size with the linearly scaled learning rate; returns lr and val accuracy."""
    from .config import PRESETS
    from .train import fit

    base = PRESETS[preset]
    lr = base.train.lr * batch / base.train.batch_size
    cfg = base.replace(
        model=model_name,
        batch_size=batch,
        lr=lr,
        epochs=epochs,
        device=device,
        dataset=dataset,
        data_dir=data_dir,
        limit_train=limit_train,
        limit_test=limit_test,
        amp=amp,
        # The sweep measures each batch size's peak memory in this process: memory a kept heap
        # would carry from one row into the next (--malloc keep) must not count.
        malloc="system",
    )
    result = fit(cfg, run_dir, progress=False, quiet=True)
    if result.interrupted:  # fit saved its checkpoint and swallowed the Ctrl-C; the sweep must stop too
        raise KeyboardInterrupt
    return {"lr": lr, "val_acc": result.final.get("val_acc"), "train_loss": result.final.get("train_loss")}


def refuse_what_cannot_fit(
    model_name: str,
    batch_sizes: list[int],
    device: torch.device,
    in_channels: int,
    resolution: int,
    amp: bool,
    optimizer: str,
) -> None:
    """Before allocating anything: a batch whose estimated training memory exceeds what the device
    can still allocate is one line (else the kernel's OOM killer ends the process without a word)."""
    from .device import free_memory

    free = free_memory(device)
    if free is None:
        return
    for b in batch_sizes:
        costs = layer_costs(
            meta_model(model_name, in_channels, 10),
            (b, in_channels, resolution, resolution),
            "bf16" if amp else "fp32",
            device.type,
        )
        need = training_memory(costs, "bf16" if amp else "fp32", optimizer)["total"]
        if need > free:
            raise BenchError(
                f"batch {b}: training {model_name} at {resolution}x{resolution} needs about "
                f"{need / 1e9:.1f} GB (the analysis's estimate), more than the {free / 1e9:.1f} GB "
                f"{device.type} can still allocate; choose smaller --batch-sizes"
            )


def _sweep_header(model_name, preset, cfg, dev, in_channels, res, use_amp, steps, warmup, accuracy_epochs) -> str:
    """The line that stamps a sweep: network, input, precision, the recipe whose step is timed, how
    it is timed, and the machine."""
    from .measure import machine

    t = cfg.train
    recipe = (
        f"SGD lr {t.lr:g}"
        + (f", {'Nesterov ' if t.nesterov else ''}momentum {t.momentum:g}" if t.momentum else "")
        + (f", weight decay {t.weight_decay:g}" if t.weight_decay else "")
        + (f", label smoothing {t.label_smoothing:g}" if t.label_smoothing else "")
    )
    header = (
        f"{model_name} {in_channels}x{res}x{res}, {'bf16 autocast' if use_amp else 'fp32'}, "
        f"the `{preset}` preset's training step ({recipe}; "
        f"{'compiled' if cfg.system.compile == 'on' else 'eager'}), {warmup} warm-up + median of {steps} "
        f"timed steps; {machine(dev).line()}"
    )
    if accuracy_epochs:
        header += f"; accuracy: preset {preset}, {accuracy_epochs} epochs, lr scaled linearly from batch 128"
    return header


def sweep(
    model_name: str,
    batch_sizes: list[int],
    *,
    steps: int = 10,
    warmup: int = 3,
    device: str = "auto",
    in_channels: int = 1,
    resolution: int | None = None,
    amp: str = "auto",
    accuracy_epochs: int = 0,
    preset: str = "auto",
    dataset: str = "fashion-mnist",
    data_dir: str | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    out_dir: Path | None = None,
    threads: int | None = None,
    say=print,
) -> tuple[list[dict], str]:
    """Run the whole exercise: one row per batch size, and the header line that stamps it. ``preset``
    is the recipe whose step is timed (and trained, with ``accuracy_epochs``); auto: `d2l` on CUDA,
    `cpu` elsewhere."""
    from .device import bf16_autocast, select_device

    # steps, warmup, threads and the other integers arrive bounded: the parser checks every flag.
    if threads is not None:
        # On a CPU shared with other jobs, fewer threads than cores avoids OpenMP barriers that
        # wait for a descheduled thread: 2 threads on 2 busy cores measured ~50x slower LeNet steps.
        torch.set_num_threads(threads)

    get_spec(model_name)
    dev = select_device(device)
    use_amp = bf16_autocast(amp, dev)
    res = resolution or get_spec(model_name).resolution
    if preset == "auto":
        preset = "d2l" if dev.type == "cuda" else "cpu"
    cfg = step_recipe(preset, model_name, dev)
    t = cfg.train
    header = _sweep_header(model_name, preset, cfg, dev, in_channels, res, use_amp, steps, warmup, accuracy_epochs)
    refuse_what_cannot_fit(
        model_name, batch_sizes, dev, in_channels, res, use_amp, "sgd-momentum" if t.momentum > 0 else "sgd"
    )  # as time_training estimates it
    rows: list[dict] = []
    timing = dict(steps=steps, warmup=warmup, device=dev, in_channels=in_channels, resolution=res, amp=use_amp, cfg=cfg)
    timing["rss_start"] = peak_rss_bytes()
    data = dict(preset=preset, device=str(dev), dataset=dataset, data_dir=data_dir, amp="bf16" if use_amp else "off")
    data.update(limit_train=limit_train, limit_test=limit_test)
    try:
        for b in batch_sizes:
            try:
                row = time_training(model_name, b, **timing)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                say(f"batch {b}: out of memory; larger batches skipped")
                rows.append({"batch": b, "note": "out of memory"})
                break
            if accuracy_epochs:
                row.update(train_accuracy(model_name, b, accuracy_epochs, Path(out_dir or ".") / f"batch{b}", **data))
            say(
                f"batch {b}: {row['images_per_s']:.1f} images/s"
                + (f", val acc {row['val_acc']:.4f}" if "val_acc" in row else "")
            )
            rows.append(row)
    except KeyboardInterrupt:
        say(f"interrupted: keeping the {len(rows)} batch sizes measured so far")
    return rows, header


COLUMNS = [
    Column("batch"),
    Column("images_per_s", "images/s", "{:.1f}"),
    Column("step_ms", "step ms (median)", "{:.1f}"),
    Column("best_step_ms", "best step ms", "{:.1f}"),
    Column("achieved_tflops", "achieved TFLOP/s", "{:.3f}"),
    Column("est_train_MB", "estimated memory MB", "{:.1f}"),
    Column("peak_MB", "peak MB", "{:.1f}"),
    Column("rss_growth_MB", "peak RSS - RSS at start MB", "{:.1f}"),
    Column("est_over_peak", "estimate / peak", "{:.3f}"),
    Column("lr", "lr", "{:.4g}"),
    Column("val_acc", "val acc", "{:.4f}"),
    Column("note", "note", left=True),
    Column("peak_source", "peak source", left=True),
]


def to_csv(rows: list[dict]) -> str:
    return csv_table(rows, present(COLUMNS, rows))


def to_markdown(rows: list[dict], header: str) -> str:
    return header + "\n\n" + markdown_table(rows, present(COLUMNS, rows)) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    plt = pyplot()

    rows = [r for r in rows if "images_per_s" in r]
    acc = [r for r in rows if r.get("val_acc") is not None]
    fig, axes = plt.subplots(1, 3 if acc else 2, figsize=(12 if acc else 9, 3.8))
    b = [r["batch"] for r in rows]
    axes[0].plot(b, [r["images_per_s"] for r in rows], "-o")
    axes[0].set_ylabel("training images/s")
    axes[1].plot(b, [r["est_train_MB"] for r in rows], "-o", label="estimate")
    axes[1].plot(b, [r["peak_MB"] for r in rows], "--s", label=rows[0]["peak_source"] if rows else "peak")
    if rows and "rss_growth_MB" in rows[0]:
        axes[1].plot(b, [r["rss_growth_MB"] for r in rows], ":^", label="peak RSS - RSS at start")
    axes[1].set_ylabel("memory (MB)")
    axes[1].legend(fontsize=8)
    if acc:
        axes[2].plot([r["batch"] for r in acc], [r["val_acc"] for r in acc], "-o")
        axes[2].set_ylabel("validation accuracy")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    finally:
        plt.close(fig)


def write_results(rows: list[dict], header: str, out_dir: Path) -> dict[str, Path]:
    """bench.csv, bench.md and bench.png in ``out_dir``, each written whole or not at all (runs'
    atomic_write): an interrupted sweep's second write keeps the first one's files readable."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "bench.csv", "markdown": out_dir / "bench.md", "plot": out_dir / "bench.png"}
    atomic_write(paths["csv"], to_csv(rows))
    atomic_write(paths["markdown"], to_markdown(rows, header))
    plot(rows, paths["plot"], header)
    return paths
