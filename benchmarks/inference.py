"""Inference on this CPU: batch-1 latency and batch-64 throughput of four ways to run a trained
network, each with its accuracy on the full 10,000-image test set, in one run (docs/export.md).

    eager fp32     PyTorch, channels_last, inference_mode (what `alexnet evaluate` runs without bf16)
    eager bf16     the same under bf16 autocast (AMX tiles where the CPU has amx_bf16), as training runs
    eager bf16 weights   the network converted to bf16 once (no autocast: no per-call weight casts)
    onnx fp32      the `alexnet export` ONNX model in onnxruntime (MLAS kernels)
    onnx int8      `alexnet export --int8`: onnxruntime static quantization of that model (QDQ, int8
                   weights per channel, uint8 activations, ranges calibrated on 512 training images)

Timing goes through the package's one harness (alexnet.measure.time_turns: warm-up, then the
candidates in alternating turns, so load from other jobs falls on all of them alike); latency is
the median (p50) and 99th percentile of single-image calls, throughput the batch size over the
median batch-64 time. The table goes through alexnet.tables.

    python benchmarks/inference.py alexnet28=runs/a28/last.pt alexnet=runs/a224/last.pt --out runs/inference
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import numpy as np
import torch

from alexnet import data as D
from alexnet.device import autocast
from alexnet.export import check_batch, describe, onnx_session, quantize_int8, to_onnx
from alexnet.measure import machine, time_once, time_turns
from alexnet.runs import load_checkpoint, model_from_checkpoint
from alexnet.tables import Column, markdown

PATHS = ("eager fp32", "eager bf16", "eager bf16 weights", "onnx fp32", "onnx int8")


def runners(model: torch.nn.Module, sessions: dict) -> dict:
    """name -> f(x float NCHW) -> logits (a tensor)."""
    net = model.to(memory_format=torch.channels_last).eval()
    # Autocast casts every weight to bf16 on every call (46.8 M for alexnet); converted once, it does not.
    net_bf16 = copy.deepcopy(net).to(torch.bfloat16)

    def eager(x):
        with torch.inference_mode():
            return net(x.contiguous(memory_format=torch.channels_last))

    def eager_bf16(x):
        with torch.inference_mode(), autocast(torch.device("cpu"), True):
            return net(x.contiguous(memory_format=torch.channels_last)).float()

    def bf16_weights(x):
        with torch.inference_mode():
            return net_bf16(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()

    def ort(sess):
        return lambda x: torch.from_numpy(sess.run(None, {"image": x.contiguous().numpy()})[0])

    return {
        "eager fp32": eager,
        "eager bf16": eager_bf16,
        "eager bf16 weights": bf16_weights,
        "onnx fp32": ort(sessions["fp32"]),
        "onnx int8": ort(sessions["int8"]),
    }


def accuracy(run, split, transform, batch: int = 250, limit: int | None = None) -> tuple[float, torch.Tensor]:
    correct, logits = 0, []
    n = min(len(split), limit or len(split))
    for i in range(0, n, batch):
        y = run(transform(split.images[i : i + batch], train=False))
        logits.append(y.float())
        correct += int((y.argmax(1) == split.labels[i : i + batch]).sum())
    return correct / n, torch.cat(logits)


def bench_network(name: str, ckpt_path: str, out: Path, args, ds, limit: int | None = None) -> list[dict]:
    ckpt = load_checkpoint(ckpt_path)
    model, cfg = model_from_checkpoint(ckpt)
    model.eval()
    meta = describe(ckpt)
    mean, std = meta["mean"], meta["std"]
    transform = D.Transform(
        meta["resolution"], tuple(mean) if mean else None, tuple(std) if std else None, channels_last=False
    )
    fp32, int8 = out / f"{name}.onnx", out / f"{name}.int8.onnx"
    fp32.write_bytes(to_onnx(model, meta))
    # Once, as `alexnet export --int8` runs it, on the same training images (calibration included).
    quant_s = time_once(
        lambda: int8.write_bytes(
            quantize_int8(fp32.read_bytes(), check_batch(ckpt, meta, None, args.calibration, split="train"))
        ),
        "cpu",
    )
    sessions = {"fp32": onnx_session(str(fp32), args.threads), "int8": onnx_session(str(int8), args.threads)}
    run = runners(model, sessions)
    n_test = min(len(ds.test), limit or len(ds.test))
    rows = {p: {"network": name, "path": p, "epoch": ckpt["epoch"], "test_images": n_test} for p in PATHS}
    # Accuracy on all 10,000 test images, and each path's agreement with eager fp32's top-1.
    ref = None
    for p in PATHS:
        acc, logits = accuracy(run[p], ds.test, transform, limit=limit)
        ref = logits if ref is None else ref
        rows[p].update(
            acc=acc,
            agree=float((logits.argmax(1) == ref.argmax(1)).float().mean()),
            max_diff=float((logits - ref).abs().max()),
        )
        print(f"{name} {p}: accuracy {acc:.4f}", flush=True)
    x1 = transform(ds.test.images[:1], train=False)
    x64 = transform(ds.test.images[:64], train=False)
    lat = time_turns(
        {p: (lambda k, f=run[p]: [f(x1) for _ in range(k)]) for p in PATHS},
        "cpu",
        rounds=args.rounds,
        block=args.latency_block,
        warmup=3,
    )
    thr = time_turns(
        {p: (lambda k, f=run[p]: [f(x64) for _ in range(k)]) for p in PATHS},
        "cpu",
        rounds=args.rounds,
        block=args.throughput_block,
        warmup=1,
    )
    base = thr["eager fp32"].median
    for p in PATHS:
        s = sorted(lat[p].seconds)
        rows[p].update(
            p50_ms=1e3 * lat[p].median,
            p99_ms=1e3 * float(np.quantile(s, 0.99)),
            samples=len(s),
            img_per_s=thr[p].per_second(64),
            speedup=base / thr[p].median,
            loss_points=100 * (rows["eager fp32"]["acc"] - rows[p]["acc"]),
        )
    rows["onnx int8"]["note"] = f"quantised in {quant_s:.0f} s on {args.calibration} training images"
    return list(rows.values())


COLUMNS = [
    Column("network", left=True),
    Column("path", left=True),
    Column("test_images", "test images"),
    Column("acc", "test accuracy", "{:.4f}"),
    Column("loss_points", "loss (points)", "{:+.2f}"),
    Column("agree", "top-1 = fp32", "{:.4f}"),
    Column("p50_ms", "batch-1 p50 ms", "{:.2f}"),
    Column("p99_ms", "batch-1 p99 ms", "{:.2f}"),
    Column("img_per_s", "batch-64 img/s", "{:.0f}"),
    Column("speedup", "x eager fp32", "{:.2f}"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "networks",
        nargs="+",
        metavar="NAME=CHECKPOINT[@N]",
        help="@N: accuracy on the first N test images only (default: all 10,000)",
    )
    p.add_argument("--out", default="runs/inference")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (1: the CPU is shared)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--latency-block", type=int, default=40, help="single-image calls per path per round")
    p.add_argument("--throughput-block", type=int, default=2, help="batch-64 calls per path per round")
    p.add_argument("--calibration", type=int, default=512, help="training images that set int8's ranges")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = D.load_dataset("fashion-mnist")
    rows = []
    for spec in args.networks:
        name, _, path = spec.partition("=")
        path, _, n = path.partition("@")
        rows += bench_network(name, path, out, args, ds, int(n) if n else None)
    stamp = machine("cpu").line()
    table = markdown(rows, COLUMNS)
    (out / "inference.md").write_text(f"{table}\n\n{stamp}; {args.threads} onnxruntime threads\n")
    (out / "inference.json").write_text(json.dumps({"machine": stamp, "rows": rows, "pid": os.getpid()}, indent=1))
    print(table)
    print(stamp)


if __name__ == "__main__":
    main()
