"""A network on a device's roofline: per-layer times, what bounds each layer, and the
`alexnet analyze` report (table, Markdown, CSV, JSON, plot).

``analyze`` puts :mod:`alexnet.costs` (FLOPs, bytes, memory) against a :class:`DeviceSpec` from
:mod:`alexnet.hardware`; :class:`Analysis` sums them by kind of layer and answers which kind
dominates parameters, FLOPs, memory and time; ``format_analysis`` and ``plot_roofline`` print it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from .costs import DTYPE_BYTES, MASTER_BYTES, OPTIMIZER_STATE, LayerCost, inference_memory, layer_costs, training_memory
from .hardware import DeviceSpec
from .plotting import pyplot
from .tables import grid
from .tracing import KINDS, meta_model


def roofline_time(flops: int, nbytes: int, spec: DeviceSpec, dtype: str) -> float:
    """Seconds for a kernel that overlaps arithmetic and memory traffic perfectly."""
    return max(flops / spec.peak(dtype), nbytes / spec.bandwidth)


def is_memory_bound(flops: int, nbytes: int, spec: DeviceSpec, dtype: str) -> bool:
    return nbytes / spec.bandwidth > flops / spec.peak(dtype)


def compute_bound_from(c1: LayerCost, spec: DeviceSpec, dtype: str) -> int | None:
    """The smallest batch at which a layer's forward pass is compute-bound, from its batch-1 cost.

    FLOPs grow as B * f and bytes as W + B * a (weights are read once per batch), so the layer is
    compute-bound once B * f / peak >= (W + B * a) / bandwidth. None: memory-bound at any batch.
    """
    f, w = c1.fwd_flops, c1.weight_bytes
    a = c1.fwd_bytes - w
    slack = f / spec.peak(dtype) - a / spec.bandwidth
    if f == 0 or slack <= 0:
        return None
    return max(1, math.ceil(w / spec.bandwidth / slack))


def layer_times(c: LayerCost, spec: DeviceSpec, dtype: str) -> tuple[float, float]:
    """Roofline seconds of the forward pass and of the backward pass (its two kernels) of a layer."""
    fwd = roofline_time(c.fwd_flops, c.fwd_bytes, spec, dtype)
    bwd = roofline_time(c.bwd_input_flops, c.bwd_input_bytes, spec, dtype) + roofline_time(
        c.bwd_weight_flops, c.bwd_weight_bytes, spec, dtype
    )
    return fwd, bwd


@dataclass
class Analysis:
    """Everything `alexnet analyze` prints, for one model, input, batch size, dtype and device."""

    model: str
    input_shape: tuple[int, ...]  # (C, H, W)
    batch: int
    dtype: str
    spec: DeviceSpec
    layers: list[LayerCost]  # at the batch size
    layers1: list[LayerCost]  # at batch 1

    def times(self, layers=None) -> list[tuple[float, float]]:
        return [layer_times(c, self.spec, self.dtype) for c in (layers or self.layers)]

    def totals(self) -> dict[str, dict]:
        """Sums by kind (conv, fc, rest) and over all layers, at the batch size."""
        out = {}
        t_b, t_1 = self.times(), self.times(self.layers1)
        for kind in (*KINDS, "all"):
            idx = [i for i, c in enumerate(self.layers) if kind in ("all", c.kind)]
            s = {
                f: sum(getattr(self.layers[i], f) for i in idx)
                for f in (
                    "params",
                    "weight_bytes",
                    "fwd_flops",
                    "bwd_flops",
                    "act_bytes",
                    "saved_bytes",
                    "fwd_bytes",
                    "bwd_bytes",
                )
            }
            s["fwd_time"] = sum(t_b[i][0] for i in idx)
            s["bwd_time"] = sum(t_b[i][1] for i in idx)
            s["fwd_time_batch1"] = sum(t_1[i][0] for i in idx)
            out[kind] = s
        return out

    def memory(self) -> dict[str, dict]:
        rows = {
            "inference, batch 1": inference_memory(self.layers1, self.dtype),
            f"inference, batch {self.batch}": inference_memory(self.layers, self.dtype),
        }
        for opt in OPTIMIZER_STATE:
            rows[f"training {opt}, batch {self.batch}"] = training_memory(self.layers, self.dtype, opt)
        return rows

    def answers(self) -> list[str]:
        """One sentence per question: which kind of layer dominates parameters, FLOPs, memory and time."""
        t = self.totals()
        a, B = t["all"], self.batch
        names = {"conv": "convolutions", "fc": "fully connected layers", "rest": "layers without weights"}

        def top(field):
            k = max(KINDS, key=lambda k: t[k][field])
            return k, t[k][field] / a[field] if a[field] else 0.0

        kp, fp = top("params")
        kf, ff = top("fwd_flops")
        kt, ft = top("fwd_time_batch1")
        for s in t.values():
            s["step_time"] = s["fwd_time"] + s["bwd_time"]
        kT, fT = top("step_time")
        inf1 = inference_memory(self.layers1, self.dtype)
        adam = training_memory(self.layers, self.dtype, "adam")
        sgd = training_memory(self.layers, self.dtype, "sgd")
        state = adam["weights"] + adam["gradients"] + adam["optimizer"]
        mb = 1e6
        out = [
            (
                f"Parameters: the {names[kp]} hold {fp:.1%} of the {a['params']:,} parameters "
                f"({a['params'] * MASTER_BYTES / mb:.1f} MB in fp32)."
            ),
            (
                f"Compute: the {names[kf]} do {ff:.1%} of the {a['fwd_flops'] / B / 1e9:.3f} GFLOPs of a forward pass "
                f"per image; the backward pass costs {a['bwd_flops'] / a['fwd_flops']:.2f}x the forward."
            ),
            (
                f"Inference memory: at batch 1 the weights ({inf1['weights'] / mb:.1f} MB) "
                f"{'outweigh' if inf1['weights'] > inf1['activations'] else 'are outweighed by'} the live activations "
                f"({inf1['activations'] / mb:.1f} MB)."
            ),
            (
                f"Training memory at batch {B}: autograd keeps {a['saved_bytes'] / mb:.1f} MB of activations for the "
                f"backward pass ({adam['activations'] / mb:.1f} MB with the largest gradient pair in flight) against "
                f"{state / mb:.1f} MB of weights, gradients and Adam state "
                f"({(sgd['weights'] + sgd['gradients']) / mb:.1f} MB with plain SGD), so "
                f"{'activations' if adam['activations'] > state else 'parameters and their state'} dominate."
            ),
            (
                f"Time on {self.spec.name} ({self.dtype}): at batch 1 the {names[kt]} take {ft:.1%} of the roofline "
                f"inference time ({a['fwd_time_batch1'] * 1e3:.4g} ms); a training step at batch {B} takes "
                f"{(a['fwd_time'] + a['bwd_time']) * 1e3:.4g} ms, {fT:.1%} of it in the {names[kT]}."
            ),
        ]
        fc1 = [c for c in self.layers1 if c.kind == "fc"]
        fcB = [c for c in self.layers if c.kind == "fc"]
        if fc1:
            big1 = max(fc1, key=lambda c: c.params)
            bigB = next(c for c in fcB if c.index == big1.index)
            ridge = self.spec.ridge(self.dtype)

            def bound(c):
                slow = is_memory_bound(c.fwd_flops, c.fwd_bytes, self.spec, self.dtype)
                return "memory-bound" if slow else "compute-bound"

            turn = compute_bound_from(big1, self.spec, self.dtype)
            out.append(
                f"Bound: {big1.label} runs at {big1.fwd_intensity:.2f} FLOPs/byte at batch 1 ({bound(big1)}) and "
                f"{bigB.fwd_intensity:.1f} at batch {B} ({bound(bigB)}); this device's ridge point is {ridge:.1f}, "
                + (f"which {big1.label} reaches from batch {turn}." if turn else f"which {big1.label} never reaches.")
            )
        return out


def analyze(
    model_name: str,
    input_chw: tuple[int, ...],
    batch: int,
    spec: DeviceSpec,
    dtype: str = "fp32",
    num_classes: int = 10,
) -> Analysis:
    if batch <= 0:
        raise ValueError(f"batch size must be positive, not {batch}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPE_BYTES)}")
    model = meta_model(model_name, input_chw[0], num_classes)
    kind = spec.kind
    return Analysis(
        model_name,
        tuple(input_chw),
        batch,
        dtype,
        spec,
        layer_costs(model, (batch, *input_chw), dtype, kind),
        layer_costs(model, (1, *input_chw), dtype, kind),
    )


# ---------------------------------------------------------------------------------------------
# Printing


def _bound(flops, nbytes, spec, dtype) -> str:
    if not nbytes:
        return "-"
    return "mem" if is_memory_bound(flops, nbytes, spec, dtype) else "comp"


LAYER_COLUMNS = [  # (header, value of (Analysis, LayerCost, (t_fwd, t_bwd)), format in tables)
    ("#", lambda an, c, t: c.index, "{}"),
    ("layer", lambda an, c, t: c.label, "{}"),
    ("output", lambda an, c, t: "x".join(map(str, c.output_shape)), "{}"),
    ("params", lambda an, c, t: c.params, "{:,}"),
    ("weight MB", lambda an, c, t: c.weight_bytes / 1e6, "{:.4g}"),
    ("fwd MFLOP/img", lambda an, c, t: c.fwd_flops / an.batch / 1e6, "{:.4g}"),
    ("fwd GFLOP", lambda an, c, t: c.fwd_flops / 1e9, "{:.4g}"),
    ("bwd-in GFLOP", lambda an, c, t: c.bwd_input_flops / 1e9, "{:.4g}"),
    ("bwd-w GFLOP", lambda an, c, t: c.bwd_weight_flops / 1e9, "{:.4g}"),
    ("act MB", lambda an, c, t: c.act_bytes / 1e6, "{:.4g}"),
    ("saved MB", lambda an, c, t: c.saved_bytes / 1e6, "{:.4g}"),
    ("fwd moved MB", lambda an, c, t: c.fwd_bytes / 1e6, "{:.4g}"),
    ("bwd moved MB", lambda an, c, t: c.bwd_bytes / 1e6, "{:.4g}"),
    ("AI fwd", lambda an, c, t: c.fwd_intensity, "{:.1f}"),
    ("AI bwd", lambda an, c, t: c.bwd_intensity, "{:.1f}"),
    ("fwd ms", lambda an, c, t: t[0] * 1e3, "{:.4g}"),
    ("bwd ms", lambda an, c, t: t[1] * 1e3, "{:.4g}"),
    (
        "bound",
        lambda an, c, t: (
            f"{_bound(c.fwd_flops, c.fwd_bytes, an.spec, an.dtype)}/"
            f"{_bound(c.bwd_flops, c.bwd_bytes, an.spec, an.dtype)}"
        ),
        "{}",
    ),
]


def format_analysis(an: Analysis, fmt: str = "table") -> str:
    """The analysis as a table (text or Markdown: per layer, totals by kind, memory, answers), CSV or JSON."""
    if fmt == "json":
        return json.dumps(analysis_dict(an), indent=2)
    if fmt == "csv":
        return _analysis_csv(an)
    if fmt not in ("table", "markdown"):
        raise ValueError(f"unknown format {fmt!r}; choose table, csv, json or markdown")
    md = fmt == "markdown"
    spec = an.spec
    out = [
        (
            f"{an.model}, input {'x'.join(map(str, an.input_shape))}, batch {an.batch}, {an.dtype}, "
            f"device {spec.name}: {spec.peak(an.dtype) / 1e12:.3g} TFLOP/s, {spec.bandwidth / 1e9:.4g} GB/s, "
            f"ridge {spec.ridge(an.dtype):.1f} FLOPs/byte ({spec.about})"
        ),
        (
            "FLOPs and bytes per batch unless marked /img; 1 multiply-add = 2 FLOPs; MB = 10^6 bytes; "
            "AI = arithmetic intensity (FLOPs/byte); times are roofline estimates; bound: fwd/bwd (mem or comp)."
        ),
        "",
    ]
    rows = [[f.format(get(an, c, t)) for _, get, f in LAYER_COLUMNS] for c, t in zip(an.layers, an.times())]
    out += grid([h for h, _, _ in LAYER_COLUMNS], rows, "markdown" if md else "text", left=(1, 2)).split("\n")

    out += ["", f"Totals by kind at batch {an.batch} (inference times at batch 1 in the last column):", ""]
    out += grid(*_totals_rows(an), "markdown" if md else "text").split("\n")

    out += [
        "",
        (
            "Memory (MB; weights, gradients and optimizer state in fp32; activations: the live pair of one layer "
            "for inference, what autograd saves plus the largest gradient pair for training):"
        ),
        "",
    ]
    out += grid(*_memory_rows(an), "markdown" if md else "text").split("\n")
    out += [""] + [("- " if md else "") + s for s in an.answers()]
    return "\n".join(out)


def _analysis_csv(an: Analysis) -> str:
    """One row per layer, every figure a column: for a spreadsheet."""
    head = [
        "index",
        "label",
        "kind",
        "output_shape",
        "params",
        "weight_bytes",
        "fwd_flops",
        "bwd_input_flops",
        "bwd_weight_flops",
        "act_bytes",
        "saved_bytes",
        "fwd_bytes",
        "bwd_bytes",
        "fwd_intensity",
        "bwd_intensity",
        "fwd_time_s",
        "bwd_time_s",
        "fwd_bound",
        "bwd_bound",
    ]
    lines = [",".join(head)]
    for c, (tf, tb) in zip(an.layers, an.times()):
        vals = [
            c.index,
            c.label,
            c.kind,
            "x".join(map(str, c.output_shape)),
            c.params,
            c.weight_bytes,
            c.fwd_flops,
            c.bwd_input_flops,
            c.bwd_weight_flops,
            c.act_bytes,
            c.saved_bytes,
            c.fwd_bytes,
            c.bwd_bytes,
            f"{c.fwd_intensity:.6g}",
            f"{c.bwd_intensity:.6g}",
            f"{tf:.6g}",
            f"{tb:.6g}",
            _bound(c.fwd_flops, c.fwd_bytes, an.spec, an.dtype),
            _bound(c.bwd_flops, c.bwd_bytes, an.spec, an.dtype),
        ]
        lines.append(",".join(map(str, vals)))
    return "\n".join(lines)


def _totals_rows(an: Analysis) -> tuple[list[str], list[list[str]]]:
    """The totals by kind of layer: header and rows."""
    head = [
        "kind",
        "params",
        "share",
        "weight MB",
        "fwd GFLOP",
        "share",
        "bwd GFLOP",
        "act MB",
        "saved MB",
        f"fwd ms (B={an.batch})",
        f"bwd ms (B={an.batch})",
        "fwd ms (B=1)",
    ]
    t = an.totals()
    a = t["all"]
    rows = [
        [
            k,
            f"{s['params']:,}",
            f"{s['params'] / max(a['params'], 1):.1%}",
            f"{s['weight_bytes'] / 1e6:.1f}",
            f"{s['fwd_flops'] / 1e9:.2f}",
            f"{s['fwd_flops'] / max(a['fwd_flops'], 1):.1%}",
            f"{s['bwd_flops'] / 1e9:.2f}",
            f"{s['act_bytes'] / 1e6:.1f}",
            f"{s['saved_bytes'] / 1e6:.1f}",
            f"{s['fwd_time'] * 1e3:.4g}",
            f"{s['bwd_time'] * 1e3:.4g}",
            f"{s['fwd_time_batch1'] * 1e3:.4g}",
        ]
        for k, s in t.items()
    ]
    return head, rows


def _memory_rows(an: Analysis) -> tuple[list[str], list[list[str]]]:
    """Memory for inference and training, by what holds it: header and rows."""
    head = ["what", "weights", "gradients", "optimizer", "activations", "total"]
    rows = [[k, *(f"{m[f] / 1e6:.1f}" for f in head[1:])] for k, m in an.memory().items()]
    return head, rows


def analysis_dict(an: Analysis) -> dict:
    import dataclasses

    layers = []
    for c, (tf, tb) in zip(an.layers, an.times()):
        d = dataclasses.asdict(c)
        d.update(
            fwd_intensity=c.fwd_intensity,
            bwd_intensity=c.bwd_intensity,
            fwd_time_s=tf,
            bwd_time_s=tb,
            fwd_bound=_bound(c.fwd_flops, c.fwd_bytes, an.spec, an.dtype),
            bwd_bound=_bound(c.bwd_flops, c.bwd_bytes, an.spec, an.dtype),
        )
        layers.append(d)
    return {
        "model": an.model,
        "input": list(an.input_shape),
        "batch": an.batch,
        "dtype": an.dtype,
        "device": dataclasses.asdict(an.spec),
        "units": "FLOPs (1 multiply-add = 2), bytes, seconds",
        "layers": layers,
        "totals": an.totals(),
        "memory_bytes": an.memory(),
        "answers": an.answers(),
    }


def plot_roofline(an: Analysis, path) -> None:
    """Every conv and FC layer on the device's roofline: forward and backward at the batch size,
    forward at batch 1 (hollow), so inference vs training and batch size can be read off."""
    plt = pyplot()

    spec, dt = an.spec, an.dtype
    fig, ax = plt.subplots(figsize=(9, 6))
    pts = []
    k = 0
    for c1, c in zip(an.layers1, an.layers):
        if c.kind == "rest":
            continue
        color = "tab:blue" if c.kind == "conv" else "tab:red"
        for _cost, flops, nbytes, marker, filled, text in (
            (c, c.bwd_flops, c.bwd_bytes, "^", True, None),  # the same intensity as forward: same GEMM shapes
            (c, c.fwd_flops, c.fwd_bytes, "o", True, f"{c.label}"),
            (c1, c1.fwd_flops, c1.fwd_bytes, "o", False, f"{c.label} B=1"),
        ):
            if not flops:
                continue
            ai = flops / nbytes
            perf = flops / roofline_time(flops, nbytes, spec, dt)
            ax.scatter(
                [ai],
                [perf],
                s=60 if marker == "^" else 36,
                marker=marker,
                edgecolors=color,
                facecolors=color if filled else "none",
                alpha=0.5 if marker == "^" else 1.0,
            )
            pts.append(ai)
            if text:
                k += 1  # stagger the labels: layers of one kind sit close together on the roof
                ax.annotate(
                    text,
                    (ai, perf),
                    fontsize=7,
                    xytext=(4, -10 - 9 * (k % 4)),
                    textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "gray"},
                )
    lo, hi = min(pts + [0.1]) / 2, max(pts + [spec.ridge(dt) * 10]) * 2
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(xs, [min(spec.peak(dt), x * spec.bandwidth) for x in xs], "k-", lw=1.2)
    ax.axvline(spec.ridge(dt), color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs/byte)")
    ax.set_ylabel("attainable FLOP/s")
    ax.scatter([], [], marker="o", color="tab:blue", label="conv")
    ax.scatter([], [], marker="o", color="tab:red", label="fc")
    ax.scatter([], [], marker="o", color="gray", label=f"forward, batch {an.batch}")
    ax.scatter([], [], marker="^", color="gray", alpha=0.5, label=f"backward, batch {an.batch}")
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="gray", label="forward, batch 1 (inference)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(
        f"{an.model} {'x'.join(map(str, an.input_shape))} on {spec.name} ({dt}): "
        f"{spec.peak(dt) / 1e12:.3g} TFLOP/s, {spec.bandwidth / 1e9:.4g} GB/s",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
