"""The sections of docs/exercises.md, one writer per exercise: its tables and figures from the runs,
and the reasoning the numbers support. Every number in the prose is read from the runs, the plan,
the presets or the analysis; the templates hold only the words.

Each writer takes (budget, groups by plan key, figure folder, figures' path relative to the page, the
command, the runs folder) and returns its text and its rows of the page's summary table. What they share
(the networks counted, a table and a figure of Groups) is in common.py; the filters and feature maps that
close the page, in pictures.py."""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from ..config import PRESETS
from ..plotting import pyplot
from ..runs import atomic_write
from .common import CLASSES, TRAIN_IMAGES, _fig, _layers, _params, _table, cols
from .pictures import _pictures
from .plan import CROP, LR_FACTORS, Budget
from .results import Group, fmt, named, trend, versus

# Exercise 4's tables: what a group of seeded runs ended with, and when it peaked.
_RUN_COLUMNS = (
    "test acc (last)",
    "best test acc",
    "epoch of best",
    "train acc (last)",
    "train loss (last)",
    "test loss (last)",
    "epoch of min test loss",
    "s per run",
)


def _ex123(b, g, figs, rel, cmd, root):
    from ..chapter import chapter_figures
    from ..hardware import get_device_spec
    from ..roofline import analyze

    f = chapter_figures()
    h100 = get_device_spec("h100")
    batch = 128  # the paper's and the chapter's training batch
    an = analyze("alexnet", (1, 224, 224), batch, h100, "fp32")
    t = an.totals()
    fc_share = t["fc"]["params"] / t["all"]["params"]
    step_ms = sum(tf + tb for tf, tb in analyze("alexnet", (1, 224, 224), batch, h100, "bf16").times()) * 1e3
    # Arithmetic intensity (FLOPs per byte moved, fp32): the FC layers at batch 1, the convolutions at the batch.
    fc1 = max(c.fwd_intensity for c in an.layers1 if c.kind == "fc")
    convs = [c.fwd_intensity for c in an.layers if c.kind == "conv"]
    conv_range = f"{min(convs):.0f}–{max(convs):.0f}"
    # What a 3-channel input adds to conv1: two more input channels, each an extra multiply-add per
    # output pixel and kernel tap.
    conv1 = _layers("alexnet", nn.Conv2d)[0]
    (k, _), out_side = conv1.kernel_size, an.layers1[0].output_shape[-1]
    extra = f"{3 - 1}×{conv1.out_channels}×{out_side}²×{k}²×2"
    text = f"""## Exercises 1–3: where the compute and memory go (computed, not trained)

`alexnet analyze --chapter` and `alexnet analyze --model alexnet --input 1,224,224 --batch {batch}` compute
these; `tests/test_analysis.py` checks them against `torch.utils.flop_counter` and `sum(p.numel())`.
The full tables, the roofline and every derivation are in [compute.md](compute.md). Units: a
multiply-add is 2 FLOPs; MB = 10^6 bytes, MiB = 2^20.

- **1.1 Memory.** The FC layers hold {fc_share:.1%} of the {t["all"]["params"]:,} parameters
  ({t["fc"]["weight_bytes"] / 1e6:.1f} of {t["all"]["weight_bytes"] / 1e6:.1f} MB in fp32);
  the chapter's "164 MB" is the two hidden FC layers' {f["fc_weights"]:,} weights in MiB
  ({f["fc_weight_MiB"]:.2f} MiB = {f["fc_weight_MB"]:.1f} MB). In training, activations dominate:
  autograd keeps {t["all"]["saved_bytes"] / 1e6:.1f} MB at batch {batch}.
- **1.2 Compute.** The convolutions do {f["conv_flops_1ch"]:,} FLOPs per 1×224×224 image against the FC
  layers' {f["fc_flops_1ch"]:,} ({f["conv_fc_ratio_1ch"]:.1f}×; {f["conv_fc_ratio_3ch"]:.1f}× with 3 channels).
  The FC layers cost {f["fc_flops_1ch"] // 2:,} multiply-adds = {f["fc_flops_1ch"]:,} FLOPs; the chapter's
  "81 MFLOPs" matches no unit (the hidden layers are {f["fc_MFLOPs"]:.1f} MFLOPs, {f["fc_binary_MFLOPs"]:.1f} × 2^20).
- **1.3 Bandwidth, latency, size.** FC layers at batch 1 run at {fc1:.1f} FLOPs/byte, far below any
  accelerator's ridge point: inference is bandwidth- and latency-bound, training (batch {batch},
  {conv_range} FLOPs/byte in the convolutions) compute-bound; training memory grows with the batch.
- **2. Chip design:** put the ridge point where the work is: area on matrix units for training,
  on bandwidth or on-chip memory ({t["all"]["weight_bytes"] / 1e6:.0f} MB of weights) for batch-1 inference.
- **3. Why no one benchmarks AlexNet any more:** a training step (batch {batch}) is ~{step_ms:.1f} ms of H100
  roofline time in bf16; its FC-heavy shape ({fc_share:.0%} of parameters memory-bound at small batch), LRN and 11×11 stems are
  unrepresentative of modern networks; MLPerf moved to ResNet-50, BERT and LLMs.

**Where the published solutions are wrong.** A widely copied solution set
(1) computes the convolution costs for a 3-channel input when the chapter's network takes 1 channel
(it overstates conv1 by {extra} = {f["conv_flops_3ch"] - f["conv_flops_1ch"]:,} FLOPs per image);
(2) reports the FC layers' "cost" as their parameter count ({t["fc"]["params"]:,}) instead of their multiply-adds
({f["fc_flops_1ch"] // 2:,}) or FLOPs ({f["fc_flops_1ch"]:,}); and (3) for exercise 8 proposes a lower
learning rate and fewer epochs as ways to overfit, both of which *underfit* (see exercise 8 below:
overfitting needs more fitting — fewer images, no regularisers, enough epochs).
"""
    return text, [
        (
            "1–3",
            "alexnet analyze --chapter",
            f"convs do {f['conv_fc_ratio_1ch']:.1f}× the FC FLOPs; FC layers "
            f"hold {fc_share:.0%} of the parameters; '164 MB' is MiB, '81 MFLOPs' is {f['fc_MFLOPs']:.1f}",
            "[compute.md](compute.md)",
        )
    ]


def _ex4(b, g, figs, rel, cmd, root):
    a224, l224 = named(g["4-224"], "ex4-alexnet224", "ex4-lenet224set")
    a28, l28 = named(g["4-28"], "ex4-alexnet28", "ex4-lenet")
    whole = g["4-whole"]
    f1 = _fig(
        [a224, l224],
        figs / "ex4-224.png",
        f"exercise 4 at 224: {b.train224} training images, {b.epochs224} epochs, fast recipe, mean ± std over seeds",
    )
    f2 = _fig(
        [a28, l28],
        figs / "ex4-28.png",
        f"exercise 4 at 28x28: {b.train28} training images, {b.epochs28} epochs, cpu recipe, mean ± std over seeds",
    )
    c = cols(*_RUN_COLUMNS)
    rate = a224.last("train_images_per_s")
    speed = (
        ""
        if rate is None
        else f" at about {rate.mean:.0f} images/s here (a full epoch of {TRAIN_IMAGES:,} "
        f"images is ~{TRAIN_IMAGES / rate.mean / 60:.0f} min)"
    )
    lines = [
        "## Exercise 4: more epochs, AlexNet against LeNet",
        "",
        f"`{cmd} --only 4`. Two settings, because AlexNet trains slowly at 224×224{speed}:",
        "",
        f"- **At 224×224 on a fixed subset**: the first {b.train224} training images, {b.epochs224} epochs, "
        f"the `fast` recipe (momentum, warm-up, cosine, crops and flips), batch {b.batch224}, tested on the first "
        f"{b.test224} test images. LeNet trains on the same images at its own 28×28.",
        f"- **At 28×28 on a larger subset**: `alexnet28` (AlexNet's design at native resolution) against "
        f"LeNet, the first {b.train28} training images (not the full {TRAIN_IMAGES:,}: the CPU budget), {b.epochs28} "
        f"epochs, the `cpu` recipe, tested on the first {b.test28} test images.",
        "",
        _table([a224, l224], c),
        "",
        f"![exercise 4 at 224]({rel}/{f1})",
        "",
        _table([a28, l28], c),
        "",
        f"![exercise 4 at 28]({rel}/{f2})",
        "",
        *(_ex4_whole(b, g, figs, rel) if whole else []),
        "What the curves show:",
        "",
        *[
            f"- {grp.label} ({setting}): {trend(grp)}."
            for grp, setting in (
                (a224, "224"),
                (l224, "224 subset"),
                (a28, "28"),
                (l28, "28"),
                *((w, "28") for w in whole),
            )
        ],
        f"- {versus(l224, a224)}.",
        f"- {versus(l28, a28)}.",
        *([f"- {versus(whole[1], whole[0])}."] if whole else []),
        "",
        _ex4_why(b, a28, l28),
        "",
    ]
    ans, fig = _ex4_answer(b, a224, l224, a28, l28, whole, rel, f2)
    return "\n".join(lines), [("4", f"{cmd} --only 4", ans, fig)]


def _images(n: int | None) -> str:
    return "the whole training set" if n is None else f"the first {n} training images"


def _ex4_why(b, a28, l28) -> str:
    """Why AlexNet and LeNet differ: optimisation speed, capacity, regularisation, the schedule."""
    return (
        "Why they differ. *Optimisation speed* first: LeNet's sigmoids saturate and pass back at most a "
        "quarter of the gradient each, so for the same number of steps LeNet is still early on its curve "
        f"(training loss {fmt(l28.last('train_loss'))} after {b.epochs28} epochs at 28×28, against alexnet28's "
        f"{fmt(a28.last('train_loss'))}); its best epoch is "
        f"{fmt(l28.best_epoch(), '{:.1f}')} of {b.epochs28}, so more epochs would still help it. "
        f"*Capacity*: AlexNet ({_params('alexnet') / 1e6:.1f} M parameters at 224, "
        f"{_params('alexnet28') / 1e6:.2f} M for `alexnet28`) against LeNet's {_params('lenet'):,}: the ReLU "
        "network can fit far more, and does so in fewer steps. *Regularisation*: with dropout, crops and "
        "flips, alexnet28's training accuracy stays close "
        f"to its test accuracy ({fmt(a28.last('train_acc'))} against {fmt(a28.last('val_acc'))}; the "
        "training figure is measured with dropout and augmentation on), so its test loss has not turned "
        "up within this budget; without them and on fewer images it does (exercise 8). The cosine "
        "schedule lowers the learning rate to 0 at the last epoch, so every curve flattens at the end by "
        "design: the flat end says the schedule ran out, not that the model could not learn more."
    )


def _ex4_answer(b, a224, l224, a28, l28, whole, rel, f2) -> tuple[str, str]:
    """Exercise 4's row of the summary table: the answer, and its figures."""
    ans = (
        f"alexnet28 {fmt(a28.last('val_acc'))} vs LeNet {fmt(l28.last('val_acc'))} after {b.epochs28} epochs "
        f"({b.train28} images); AlexNet-224 {fmt(a224.last('val_acc'))} vs LeNet {fmt(l224.last('val_acc'))} "
        f"on {b.train224} images"
    )
    fig = f"[ex4-28.png]({rel}/{f2})"
    if whole:
        aw, lw = whole
        ans = (
            f"alexnet28 {fmt(aw.last('val_acc'))} vs LeNet {fmt(lw.last('val_acc'))} on {_images(b.whole_train)}, "
            f"{b.whole_epochs} epochs (best epoch {fmt(aw.best_epoch(), '{:.1f}')} and "
            f"{fmt(lw.best_epoch(), '{:.1f}')}); " + ans
        )
        fig = f"[ex4-whole.png]({rel}/ex4-whole.png), " + fig
    return ans, fig


def _ex4_whole(b, g, figs, rel) -> list[str]:
    """Exercise 4's third setting: alexnet28 and LeNet on every training image, for longer."""
    (a28, l28), whole = named(g["4-28"], "ex4-alexnet28", "ex4-lenet"), g["4-whole"]
    aw, lw = whole
    f = _fig(
        whole,
        figs / "ex4-whole.png",
        f"exercise 4 at 28x28: {_images(b.whole_train)}, {b.whole_epochs} epochs, cpu recipe, mean ± std over seeds",
    )
    test = "the whole test set" if b.whole_test is None else f"the first {b.whole_test} test images"
    c = cols(*_RUN_COLUMNS)
    return [
        f"- **At 28×28 on {_images(b.whole_train)}**, for {b.whole_epochs} epochs (the `cpu` preset "
        f"trains {PRESETS['cpu'].train.epochs}), the same recipe, tested on {test}:",
        "",
        _table(whole, c),
        "",
        f"![exercise 4 on the whole training set]({rel}/{f})",
        "",
        f"The gap in test accuracy, alexnet28 minus LeNet: {_gap(a28, l28)} on {b.train28} images × "
        f"{b.epochs28} epochs, {_gap(aw, lw)} here. LeNet's training loss ends at {fmt(lw.last('train_loss'))}, "
        f"alexnet28's at {fmt(aw.last('train_loss'))}.",
        "",
    ]


def _gap(a: Group, b: Group) -> str:
    sa, sb = a.last("val_acc"), b.last("val_acc")
    return "—" if sa is None or sb is None else f"{sa.mean - sb.mean:+.4f}"


def _ex5(b, g, figs, rel, cmd, root):
    from ..models import build_model
    from ..tracing import trace

    rows28, rows224 = trace(build_model("alexnet28"), (1, 1, 28, 28)), trace(build_model("alexnet"), (1, 1, 224, 224))
    p28, f28, f224 = sum(r.params for r in rows28), sum(r.flops for r in rows28), sum(r.flops for r in rows224)
    big, small = named(g["5"], "ex4-alexnet224", "ex5-alexnet-small")
    f = _fig(
        [big, small],
        figs / "ex5.png",
        f"exercise 5: alexnet vs alexnet-small, {b.train224} images, {b.epochs224} epochs, mean ± std over seeds",
    )

    def size(name):
        rows = trace(build_model(name, 1, 10), (1, 1, 224, 224))
        return sum(r.params for r in rows) / 1e6, sum(r.flops for r in rows) / 1e9

    (pb, fb), (ps, fs) = size("alexnet"), size("alexnet-small")
    convs28, fcs28 = _layers("alexnet28", nn.Conv2d), _layers("alexnet28", nn.Linear)
    ((kh, kw),) = {m.kernel_size for m in convs28}  # one kernel size throughout
    (hidden,) = {m.out_features for m in _layers("alexnet-small", nn.Linear)[:-1]}
    tb, ts = big.time(), small.time()
    speed = f"{tb.mean / ts.mean:.2f}×" if tb and ts and ts.mean else "—"
    c = cols("test acc (last)", "best test acc", "train loss (last)", "s per run", "train img/s")
    text = "\n".join(
        [
            "## Exercise 5: a simpler network for Fashion-MNIST",
            "",
            "**5.1 Simplify AlexNet.** `alexnet-small` halves every convolution's width and uses "
            f"{hidden}-wide FC layers: {ps:.1f} M parameters and {fs:.2f} GFLOPs per image against {pb:.1f} M and {fb:.2f}. "
            f"`{cmd} --only 5` trains both {b.epochs224} epochs on the first {b.train224} images at 224×224 "
            f"(the `fast` recipe, batch {b.batch224}):",
            "",
            _table([big, small], c),
            "",
            f"![exercise 5]({rel}/{f})",
            "",
            f"- `alexnet-small` trains {speed} as fast per run; {versus(big, small)}.",
            "",
            f"**5.2 A network for 28×28.** `alexnet28` keeps AlexNet's design ({len(convs28)} conv + {len(fcs28)} FC, "
            f"ReLU, overlapping max-pool, dropout) at native resolution with {kh}×{kw} convolutions: {p28 / 1e6:.2f} M parameters, "
            f"{f28 / 1e9:.3f} GFLOPs per image ({f224 / f28:.0f}× fewer than `alexnet`), and needs no 224×224 "
            "upsampling, which adds no information. Exercise 4's 28×28 table measures it over seeds; its "
            f"full-data run (`alexnet train --preset cpu`, {PRESETS['cpu'].train.epochs} epochs on {TRAIN_IMAGES:,} "
            "images) is in "
            "[results.md](results.md#accuracy-and-time).",
            "",
        ]
    )
    return text, [
        (
            "5",
            f"{cmd} --only 5",
            f"alexnet-small {fmt(small.last('val_acc'))} vs alexnet "
            f"{fmt(big.last('val_acc'))}, {speed} faster ({b.train224} images, {b.epochs224} epochs)",
            f"[ex5.png]({rel}/{f})",
        )
    ]


def _ex6(b, g, figs, rel, cmd, root):
    text = """## Exercise 6: batch size, throughput, accuracy and memory

Not rerun here: `alexnet bench --model alexnet --batch-sizes 8,16,32,64,128,256` measures it, and its
table, figure and reading are in
[compute.md](compute.md#exercise-6-batch-size-throughput-memory-and-accuracy-measured-here)
([figure](figures/batch-size-alexnet.png)): throughput rises with the batch until the CPU is busy,
memory grows linearly with it, and accuracy after a fixed number of epochs falls at large batches.

Memory: on a GPU `alexnet bench` reports `torch.cuda.max_memory_allocated` (the GPU memory the
exercise asks about) beside the estimate. **No GPU was available here, so every memory figure
measured on this machine is the process's peak resident set size (RSS)**, which also counts the
Python interpreter, PyTorch's libraries and the allocator's caches; it is not GPU memory.
"""
    return text, [
        (
            "6",
            "alexnet bench --model alexnet --batch-sizes 8,16,32,64,128,256",
            "throughput rises with the batch, then levels off (CPU); memory linear in batch (CPU: RSS); "
            "the figures: compute.md",
            "[batch-size-alexnet.png](figures/batch-size-alexnet.png)",
        )
    ]


def _ex7(b, g, figs, rel, cmd, root):
    rows = g["7"]
    f = _fig(
        rows,
        figs / "ex7.png",
        f"exercise 7: the LeNet family, {b.train28} images, {b.epochs7} epochs, mean ± std over seeds",
    )
    c = cols(
        "test acc (last)", "best test acc", "train acc (last)", "gap (train − test)", "train loss (last)", "s per run"
    )
    lenet, relu, drop, flip, crop, both = named(
        rows, "ex7-lenet", "ex7-relu", "ex7-relu-dropout", "ex7-flip", "ex7-crop", "ex7-both"
    )
    steps = [
        (lenet, relu, "ReLU instead of sigmoid"),
        (relu, drop, "dropout"),
        (drop, flip, "horizontal flips"),
        (drop, crop, "random crops"),
        (drop, both, "flips and crops"),
    ]

    def verdict(a, b2):
        sa, sb = a.last("val_acc"), b2.last("val_acc")
        if sa is None or sb is None:
            return "not measured"
        if not sb.exceeds(sa):
            return "no measurable effect"
        return "helps" if sb.mean > sa.mean else "hurts"

    (dropout,) = {m.p for m in _layers("lenet-relu", nn.Dropout)}
    text = "\n".join(
        [
            "## Exercise 7: ReLU and dropout in LeNet, then the images' invariances",
            "",
            f"`{cmd} --only 7`: one change at a time, each over {len(b.seeds)} seeds, the `cpu` recipe "
            f"(momentum {PRESETS['cpu'].train.momentum:g}, warm-up, cosine, label smoothing, normalised input) with "
            "**augmentation off** "
            f"unless the row adds it; the first {b.train28} training images, {b.epochs7} epochs, the first "
            f"{b.test28} test images. `lenet-relu-nodrop` is LeNet with ReLU only; `lenet-relu` adds dropout "
            f"(p = {dropout:g}) after the two hidden FC layers.",
            "",
            _table(rows, c),
            "",
            f"![exercise 7]({rel}/{f})",
            "",
            *[f"- **{what}**: {verdict(a, b2)}. {versus(a, b2)}." for a, b2, what in steps],
            "",
            "Why. ReLU does not saturate, so gradients reach LeNet's first layers undiminished and the same "
            "number of steps goes much further. "
            + (
                "Dropout regularises a network that is hardly overfitting: LeNet-ReLU's training accuracy is "
                f"only {fmt(relu.gap(), '{:+.4f}')} above its test accuracy, so dropout's noise costs more fit "
                "than it saves in generalisation, within this budget. "
                if verdict(relu, drop) == "hurts"
                else f"Dropout: {verdict(relu, drop)} here (LeNet-ReLU's gap without it: {fmt(relu.gap(), '{:+.4f}')}). "
            )
            + (
                f"Augmentation likewise fights an overfitting that a {_params('lenet'):,}-parameter network on this many "
                "images barely has: in a fixed number of epochs it makes the training task harder (the training "
                "accuracy falls with each added augmentation) and its benefit, invariance, pays only when the "
                "model would otherwise memorise its training set."
                if "hurts" in (verdict(drop, crop), verdict(drop, both))
                else "Augmentation pays when the model would otherwise memorise its training set."
            ),
            "",
            "**Which invariances Fashion-MNIST has.** Clothes are photographed upright and centred, so a "
            "horizontal flip yields another plausible garment (a left-facing shoe becomes a right-facing "
            f"one) and a {CROP}-pixel shift another plausible framing. A **vertical flip** does not: an upside-down "
            "shirt, dress or ankle boot never occurs in the test set, and flipping turns a sandal's sole to "
            "the top, so it would teach the network invariances the data do not have and spend capacity on "
            "them. It is therefore not offered as an option, nor measured.",
            "",
        ]
    )
    ans = (
        f"ReLU: {verdict(lenet, relu)} ({fmt(lenet.last('val_acc'))} → {fmt(relu.last('val_acc'))}); dropout: "
        f"{verdict(relu, drop)}; flips: {verdict(drop, flip)}; crops: {verdict(drop, crop)}; both: {verdict(drop, both)}"
    )
    return text, [("7", f"{cmd} --only 7", ans, f"[ex7.png]({rel}/{f})")]


def _break_outcome(grp: Group, bacc, seeds: int) -> str:
    """What one change to the recipe did: broke training, slowed it, or no measurable harm."""
    s = grp.last("val_acc")
    if grp.failed:
        where = grp.failed[0].split(";")[0]  # "epoch 3: loss became nan by step 21"
        rest = f", the others end at {s.format()}" if s is not None else ""
        # Every seed diverging, or the rest left at chance, is a broken recipe; some seeds diverging
        # while the others learn, a rate at the edge of stability.
        word = "breaks" if len(grp.failed) >= seeds or (s is not None and s.mean < 0.2) else "unstable"
        return f"**{word}**: {len(grp.failed)} of {seeds} seeds diverged ({where}){rest}"
    if s is None:
        return "not measured"
    if s.mean < 0.2:
        return f"**breaks**: test accuracy {s.format()} (chance is {1 / CLASSES:.2f})"
    if bacc is not None and s.exceeds(bacc) and s.mean < bacc.mean:
        return f"**slows**: {s.format()} against the recipe's {bacc.format()}, lower by more than the seeds' spread"
    return f"no measurable harm: {s.format()} against {fmt(bacc)}"


def _why_training_breaks(brk, recipe) -> str:
    """Exercise 8's explanation, with the numbers of the networks and the recipe it names."""
    sigmoids = len(_layers("alexnet28-sigmoid", nn.Sigmoid))
    # Per layer, the signal's std scales with the weights' std: PyTorch's default has variance
    # 1/(3 fan_in), Xavier's 2/(fan_in + fan_out) = 1/fan_in at equal fans, He's 2/fan_in.
    xavier, he = math.sqrt(3), math.sqrt(6)
    lr10 = named(brk, "ex8-lr10").spec.config(0, {}).train
    return (
        f"Why. Sigmoids saturate: each of the {sigmoids} passes back at most a quarter of the gradient, so "
        "the first convolutions barely learn in this budget. PyTorch's default initialisation "
        f"(Kaiming-uniform with a = √5, i.e. a variance of 1/(3·fan_in)) shrinks the signal about {xavier:.1f}× more "
        f"per ReLU layer than Xavier does ({he:.1f}× more than He), so a deep network without batch norm starts with "
        f"vanishing activations and learns late. A learning rate of {lr10.lr:g} with momentum {lr10.momentum:g} is "
        f"an effective step of {lr10.lr / (1 - lr10.momentum):.3g} "
        "(lr / (1 − momentum)) on a network without batch norm: the first large steps push the ReLUs "
        f"into being dead (the loss stuck at chance, log {CLASSES} ≈ {math.log(CLASSES):.2f}) or the loss to "
        "infinity. A warm-up takes small steps while the weights are still random; whether it rescues a rate is the "
        f"comparison of the with/without pairs above, at {LR_FACTORS[0]}× and at {LR_FACTORS[1]}× the recipe's "
        f"{recipe.spec.config(0, {}).train.lr:g}."
    )


def _ex8(b, g, figs, rel, cmd, root):
    over = g["8-overfit"]
    brk = g["8-break"]
    long_runs = named(over, "ex8-long-all", "ex8-long-nodrop", "ex8-long-noaug", "ex8-long-nowd", "ex8-long-none")
    none1, recipe = long_runs[-1], named(brk, "ex8-all")
    n1, e1, eo = b.sizes8[0], b.epochs8[0], b.overfit_epochs
    f1 = _fig(
        long_runs,
        figs / "ex8-overfit.png",
        f"exercise 8: alexnet28 on {n1} images, {eo} epochs, regularisers removed",
        keys=("train_acc", "val_acc", "val_loss"),
    )
    f3 = _fig(
        brk,
        figs / "ex8-break.png",
        f"exercise 8: breaking alexnet28 ({n1} images, {e1} epochs)",
        keys=("train_loss", "val_loss", "val_acc"),
    )
    f2 = _gap_figure(over, b, figs / "ex8-gap.png")
    c = cols(
        "train acc (last)",
        "test acc (last)",
        "best test acc",
        "gap (train − test)",
        "test loss (last)",
        "epoch of min test loss",
    )
    bacc = recipe.last("val_acc")

    def outcome(grp):
        return _break_outcome(grp, bacc, len(b.seeds))

    tr = none1.last("train_acc")
    text = "\n".join(
        [
            "## Exercise 8: making AlexNet overfit, and breaking its training",
            "",
            f"`{cmd} --only 8`, all with `alexnet28` (AlexNet's design at 28×28; at 224×224 this sweep would "
            "take hours here) and the `cpu` recipe, over seeds. Training accuracy is the running accuracy of "
            "the epoch *as trained*, with dropout and augmentation on where they are.",
            "",
            *_ex8_overfitting(b, over, rel, f1, f2, c),
            *_ex8_breaking(b, brk, recipe, rel, f3, outcome),
        ]
    )
    ans = (
        f"overfits with no regularisers on {n1} images: train {fmt(tr)}, test {fmt(none1.last('val_acc'))}; "
        + "; ".join(f"{grp.label}: {outcome(grp).split(':')[0].replace('*', '')}" for grp in brk if grp is not recipe)
    )
    return text, [("8", f"{cmd} --only 8", ans, f"[ex8-gap.png]({rel}/{f2}), [ex8-break.png]({rel}/{f3})")]


def _ex8_overfitting(b, over, rel, f1, f2, c) -> list[str]:
    """Exercise 8's first half: the regularisers removed one at a time and together, on few images."""
    long_all, nodrop, noaug, nowd, none1, none2 = named(
        over, "ex8-long-all", "ex8-long-nodrop", "ex8-long-noaug", "ex8-long-nowd", "ex8-long-none", "ex8-none-n2"
    )
    n1, n2 = b.sizes8
    e2, eo = b.epochs8[1], b.overfit_epochs
    tr = none1.last("train_acc")
    return [
        f"**Overfitting.** Remove the regularisers one at a time and together on the first {n1} training "
        f"images ({eo} epochs, {eo * (n1 // b.batch)} steps), and compare with {n2} images ({e2} epochs). "
        "*None* means no dropout, no crops or flips, no weight decay and no label smoothing. Test accuracy "
        f"here is on the first {max(32, b.test28 // 5)} test images.",
        "",
        _table(over, c),
        "",
        f"![overfitting]({rel}/{f1})",
        "",
        f"![generalisation gap against training-set size]({rel}/{f2})",
        "",
        f"- With every regulariser removed on {n1} images, training accuracy reaches {fmt(tr)} while test "
        f"accuracy is {fmt(none1.last('val_acc'))}: a gap of {fmt(none1.gap(), '{:+.4f}')}; {trend(none1)}.",
        f"- {versus(long_all, none1, 'val_acc')}.",
        *[f"- {grp.label}: {versus(long_all, grp)}." for grp in (nodrop, noaug, nowd)],
        f"- {n2} images, none: gap {fmt(none2.gap(), '{:+.4f}')} against {fmt(none1.gap(), '{:+.4f}')} at {n1}"
        + (
            ": more data closes the gap beyond the seeds' spread"
            if none2.gap() and none1.gap() and none2.gap().exceeds(none1.gap()) and none2.gap().mean < none1.gap().mean
            else ": not a difference these seeds resolve"
        )
        + ".",
        "",
        "So to overfit: *more* fitting, not less — fewer images, no regularisers, and enough epochs for "
        "the training accuracy to approach 1.0"
        + (
            ""
            if tr is None
            else f" (here {tr.mean:.4f} after {eo} epochs"
            + (")" if tr.mean >= 0.99 else "; more epochs would take it further)")
        )
        + ". A lower learning rate or fewer epochs (the published "
        "solution's suggestion) make the network fit its training set *less*: they underfit.",
        "",
    ]


def _ex8_breaking(b, brk, recipe, rel, f3, outcome) -> list[str]:
    """Exercise 8's second half: one change each to the recipe that breaks training."""
    n1, e1 = b.sizes8[0], b.epochs8[0]
    return [
        f"**Breaking training.** One change each to the recipe, on the same {n1} images and {e1} epochs:",
        "",
        _table(brk, cols("test acc (last)", "best test acc", "train loss (last)", "epoch of best")),
        "",
        f"![breaking training]({rel}/{f3})",
        "",
        *[f"- {grp.label}: {outcome(grp)}." for grp in brk if grp is not recipe],
        "",
        _why_training_breaks(brk, recipe),
        "",
    ]


def _gap_figure(over: list[Group], b: Budget, path: Path) -> str:
    plt = pyplot()

    n1, n2 = b.sizes8
    fig, ax = plt.subplots(figsize=(5, 3.4))
    pairs = (
        ("all regularisers", named(over, "ex8-long-all", "ex8-all-n2")),
        ("none", named(over, "ex8-long-none", "ex8-none-n2")),
    )
    for label, pair in pairs:
        pts = [(n, grp.gap()) for n, grp in zip((n1, n2), pair) if grp.gap() is not None]
        label = f"{label} ({b.overfit_epochs} and {b.epochs8[1]} epochs)"
        if pts:
            ax.errorbar(
                [n for n, _ in pts],
                [s.mean for _, s in pts],
                yerr=[s.std for _, s in pts],
                fmt="-o",
                capsize=3,
                label=label,
            )
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("train acc − test acc (last epoch)")
    ax.set_title("alexnet28: generalisation gap vs training-set size (mean ± std)", fontsize=8)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)
    return path.name


SECTIONS = (_ex123, _ex4, _ex5, _ex6, _ex7, _ex8, _pictures)
