"""`alexnet bench`: training throughput, memory and accuracy against batch size (exercise 6).

Each batch size gets a fresh model and optimizer and is timed on a fixed random batch already on
the device, so the figure is the training step itself (forward, backward, optimizer), not the
data pipeline. Timing follows timm's benchmark.py: warm-up steps first (allocator growth, kernel
selection), then ``steps`` steps between two device synchronisations.

Memory: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``) next to the estimate of
:func:`alexnet.analysis.training_memory`; on the CPU there is no allocator peak to read, so the
estimate stands next to the process's peak resident set size, which also holds the Python
runtime, torch's libraries and the largest earlier batch (sizes run in increasing order).

Accuracy (``accuracy_epochs`` > 0): each batch size trains with :func:`alexnet.train.fit` under the
preset's recipe with the learning rate scaled linearly with the batch size,
``lr = preset_lr * B / preset_batch`` (both presets use batch 128): the linear scaling rule of
Goyal et al. 2017, "Accurate, Large Minibatch SGD". Its warm-up matters at large batches; the
`cpu` and `fast` presets have a 1-epoch warm-up, the chapter's `d2l` recipe has none.
"""

from __future__ import annotations

import platform
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .analysis import layer_costs, meta_model, sync, training_memory
from .models import build_model, get_spec

OPTIMIZERS = ("sgd", "sgd-momentum", "adam")


class BenchError(ValueError):
    pass


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise BenchError(f"malformed batch sizes {text!r}: expected positive integers such as 16,32,64") from None
    if not sizes or min(sizes) <= 0:
        raise BenchError(f"malformed batch sizes {text!r}: expected positive integers such as 16,32,64")
    return sorted(set(sizes))


def make_optimizer(name: str, params, lr: float = 0.01) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr / 10)
    raise BenchError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if platform.system() == "Darwin" else rss * 1024


def time_training(model_name: str, batch: int, *, steps: int, warmup: int, device: torch.device,
                  in_channels: int = 1, resolution: int | None = None, amp: bool = False,
                  optimizer: str = "sgd", num_classes: int = 10, seed: int = 0, rss_start: int = 0) -> dict:  # fmt: skip
    """Images/s of training steps at one batch size, and peak memory against the estimate."""
    res = resolution or get_spec(model_name).resolution
    dtype = "bf16" if amp else "fp32"
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    model = build_model(model_name, in_channels, num_classes, seed=seed)
    costs = layer_costs(meta_model(model_name, in_channels, num_classes), (batch, in_channels, res, res), dtype,
                        device.type)  # fmt: skip
    estimate = training_memory(costs, dtype, optimizer)["total"]
    flops_per_image = sum(c.fwd_flops + c.bwd_flops for c in costs) / batch
    # channels_last as in training: the faster convolution layout on both CPU and GPU
    model = model.to(device, memory_format=torch.channels_last)
    opt = make_optimizer(optimizer, model.parameters())
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(batch, in_channels, res, res, device=device, generator=gen).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, num_classes, (batch,), device=device, generator=gen)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = time.perf_counter() - t0
    row = {"batch": batch, "images_per_s": batch * steps / dt, "step_ms": dt / steps * 1e3,
           "achieved_tflops": flops_per_image * batch * steps / dt / 1e12, "est_train_MB": estimate / 1e6}  # fmt: skip
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base
        row.update(peak_MB=peak / 1e6, peak_source="cuda allocator", est_over_peak=estimate / peak)
    else:
        # The growth over the RSS before the sweep set the model up is what the estimate predicts.
        rss = peak_rss_bytes()
        row.update(peak_MB=rss / 1e6, peak_source="process peak RSS", rss_growth_MB=(rss - rss_start) / 1e6)
    return row


def train_accuracy(model_name: str, batch: int, epochs: int, run_dir: Path, *, preset: str, device: str,
                   dataset: str, data_dir: str | None, limit_train: int | None, limit_test: int | None,
                   amp: str = "auto") -> dict:  # fmt: skip
    """Train one batch size with the linearly scaled learning rate; returns lr and val accuracy."""
    from .config import PRESETS
    from .train import fit

    base = PRESETS[preset]
    lr = base.train.lr * batch / base.train.batch_size
    cfg = base.replace(model=model_name, batch_size=batch, lr=lr, epochs=epochs, device=device, dataset=dataset,
                       data_dir=data_dir, limit_train=limit_train, limit_test=limit_test, amp=amp)  # fmt: skip
    result = fit(cfg, run_dir, progress=False, quiet=True)
    if result.interrupted:  # fit saved its checkpoint and swallowed the Ctrl-C; the sweep must stop too
        raise KeyboardInterrupt
    return {"lr": lr, "val_acc": result.final.get("val_acc"), "train_loss": result.final.get("train_loss")}


def sweep(model_name: str, batch_sizes: list[int], *, steps: int = 10, warmup: int = 3, device: str = "auto",
          in_channels: int = 1, resolution: int | None = None, amp: str = "auto", optimizer: str = "sgd",
          accuracy_epochs: int = 0, preset: str = "auto", dataset: str = "fashion-mnist",
          data_dir: str | None = None, limit_train: int | None = None, limit_test: int | None = None,
          out_dir: Path | None = None, threads: int | None = None, say=print) -> tuple[list[dict], str]:  # fmt: skip
    """Run the whole exercise: one row per batch size, and the header line that stamps it."""
    from .device import bf16_autocast, describe, select_device

    if threads is not None:
        if threads <= 0:
            raise BenchError(f"--threads must be positive, not {threads}")
        # On a CPU shared with other jobs, fewer threads than cores avoids OpenMP barriers that
        # wait for a descheduled thread: 2 threads on 2 busy cores measured ~50x slower LeNet steps.
        torch.set_num_threads(threads)

    get_spec(model_name)
    if optimizer not in OPTIMIZERS:
        raise BenchError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if steps <= 0 or warmup < 0:
        raise BenchError("--steps must be positive and --warmup not negative")
    dev = select_device(device)
    use_amp = bf16_autocast(amp, dev)
    res = resolution or get_spec(model_name).resolution
    if preset == "auto":
        preset = "d2l" if dev.type == "cuda" else "cpu"
    header = (f"{model_name} {in_channels}x{res}x{res}, {'bf16 autocast' if use_amp else 'fp32'}, "
              f"optimizer {optimizer}, {warmup} warm-up + {steps} timed steps, device {describe(dev)}, "
              f"torch {torch.__version__}")  # fmt: skip
    if accuracy_epochs:
        header += f"; accuracy: preset {preset}, {accuracy_epochs} epochs, lr scaled linearly from batch 128"
    rows: list[dict] = []
    rss_start = peak_rss_bytes()
    try:
        for b in batch_sizes:
            try:
                row = time_training(model_name, b, steps=steps, warmup=warmup, device=dev, in_channels=in_channels,
                                    resolution=res, amp=use_amp, optimizer=optimizer, rss_start=rss_start)  # fmt: skip
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                say(f"batch {b}: out of memory; larger batches skipped")
                rows.append({"batch": b, "note": "out of memory"})
                break
            if accuracy_epochs:
                row.update(train_accuracy(model_name, b, accuracy_epochs, Path(out_dir or ".") / f"batch{b}",
                                          preset=preset, device=str(dev), dataset=dataset, data_dir=data_dir,
                                          limit_train=limit_train, limit_test=limit_test,
                                          amp="bf16" if use_amp else "off"))  # fmt: skip
            say(f"batch {b}: {row['images_per_s']:.1f} images/s"
                + (f", val acc {row['val_acc']:.4f}" if "val_acc" in row else ""))  # fmt: skip
            rows.append(row)
    except KeyboardInterrupt:
        say(f"interrupted: keeping the {len(rows)} batch sizes measured so far")
    return rows, header


COLUMNS = [  # (key, header, format)
    ("batch", "batch", "{}"),
    ("images_per_s", "images/s", "{:.1f}"),
    ("step_ms", "step ms", "{:.1f}"),
    ("achieved_tflops", "achieved TFLOP/s", "{:.3f}"),
    ("est_train_MB", "estimated memory MB", "{:.1f}"),
    ("peak_MB", "peak MB", "{:.1f}"),
    ("rss_growth_MB", "peak RSS - RSS at start MB", "{:.1f}"),
    ("est_over_peak", "estimate / peak", "{:.3f}"),
    ("lr", "lr", "{:.4g}"),
    ("val_acc", "val acc", "{:.4f}"),
    ("note", "note", "{}"),
]


def _present(rows):
    return [c for c in COLUMNS if any(c[0] in r for r in rows)]


def to_csv(rows: list[dict]) -> str:
    cols = _present(rows)
    lines = [",".join(k for k, _, _ in cols) + (",peak_source" if any("peak_source" in r for r in rows) else "")]
    for r in rows:
        vals = [f"{r[k]:.6g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k, _, _ in cols]
        if "peak_source" in lines[0]:
            vals.append(r.get("peak_source", ""))
        lines.append(",".join(vals))
    return "\n".join(lines) + "\n"


def to_markdown(rows: list[dict], header: str) -> str:
    cols = _present(rows)
    source = next((r["peak_source"] for r in rows if "peak_source" in r), "")
    names = [h if k != "peak_MB" else f"peak MB ({source})" for k, h, _ in cols]
    lines = [header, "", "| " + " | ".join(names) + " |", "|" + "|".join("---:" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f.format(r[k]) if k in r and r[k] is not None else "" for k, _, f in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(rows: list[dict], header: str, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "bench.csv", "markdown": out_dir / "bench.md", "plot": out_dir / "bench.png"}
    paths["csv"].write_text(to_csv(rows))
    paths["markdown"].write_text(to_markdown(rows, header))
    plot(rows, paths["plot"], header)
    return paths
