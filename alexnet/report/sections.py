"""The sections of `alexnet report`'s page, each a list of ``Block``s built from a run's facts: what ran,
curves, per-class accuracy, confusion, the most confused pairs, first-layer filters, activations,
the layer table; and for several runs, the comparison. ``render`` turns the blocks into HTML and
Markdown.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..confusion import most_confused
from ..imagenet import IMAGE_DATASETS
from ..plotting import pyplot
from ..seeds import initial_first_conv, moved
from .compare import aggregate, budget_series, labelled_groups, summarize
from .facts import Evaluation, RunFacts, book_rows, evaluate_facts, is_d2l_recipe, read_facts
from .figures import confusion_figure, curves_figure, figure_png, misclassified_figure, plot_budget_curve
from .render import Block


def _settings_rows(facts: RunFacts) -> list[dict]:
    from ..config import SECTIONS

    rows = [{"section": "", "setting": "preset", "value": facts.cfg.preset}]
    for sec in SECTIONS:
        rows += [
            {"section": sec, "setting": k, "value": "—" if v is None else v}
            for k, v in dataclasses.asdict(getattr(facts.cfg, sec)).items()
        ]
    return rows


def budget_line(plan: dict) -> str:
    """How a --time-budget run spent its budget: the plan made at the start, and the clock at the end."""
    text = (
        f"{plan['budget_s']:g} s: {plan['steps']} steps = {plan['steps'] / plan['steps_per_epoch']:.2f} epochs "
        f"at {plan['step_s'] * 1e3:.1f} ms a step (measured at the start; start-up {plan['startup_s']:.1f} s, "
        f"evaluation {plan['eval_s']:.1f} s)"
    )
    if plan.get("replans"):
        text += f"; re-planned {len(plan['replans'])} time(s) as the step time moved (first plan: {plan['schedule_steps']} steps)"
    if plan.get("spent_s"):
        text += f"; {plan['spent_s']:.1f} s spent, {plan['spent_s'] / plan['budget_s']:.1%} of the budget"
    return text


NOT_RECORDED = "not recorded (the checkpoint predates the machine record)"


def machine_line(mach: dict) -> str:
    """The machine a checkpoint was written on, in one line ('' when it recorded none of it)."""
    load = mach.get("load_average_1m")
    return ", ".join(
        x
        for x in (
            mach.get("cpu"),
            mach.get("cpu_count") and f"{mach['cpu_count']} CPUs",
            "cpu_flags" in mach and f"flags: {' '.join(mach['cpu_flags']) or 'none of note'}",
            mach.get("torch_threads") and f"{mach['torch_threads']} torch threads",
            load is not None and f"1-minute load {load:.2f} when the checkpoint was written",
        )
        if x
    )


def _precision(amp: str) -> str:
    if amp == "bf16":
        return "bf16 autocast (weights, gradients and optimiser state fp32)"
    return "fp32" if amp == "off" else f"amp {amp}"


def _run_rows(facts: RunFacts) -> list[tuple[str, str]]:
    """What ran, one (name, value) pair a line: status, network, data, machine, time, budget, resumes."""
    cfg, m, ck, mach = facts.cfg, facts.metrics, facts.ckpt or {}, facts.machine
    res, wall = facts.record["resolution"], sum(r["epoch_time_s"] for r in m)
    rows = [
        ("status", facts.status()),
        (
            "model",
            f"{cfg.train.model} ({facts.record['in_channels']} input channel(s), {facts.record['num_classes']} classes)",
        ),
        (
            "data",
            f"{ck.get('dataset', cfg.data.dataset)} at {res}x{res}"
            + (f", first {cfg.data.limit_train} training images" if cfg.data.limit_train else "")
            + (f", first {cfg.data.limit_test} test images" if cfg.data.limit_test else ""),
        ),
        ("device", mach.get("device", NOT_RECORDED)),
        ("machine", machine_line(mach) or NOT_RECORDED),
        ("precision", _precision(cfg.system.amp)),
        ("torch", ck["torch"] if isinstance(ck.get("torch"), str) else "not recorded"),
        (
            "wall time",
            f"{wall:.0f} s over {len(m)} epoch(s) ({wall / len(m):.0f} s per epoch, training and evaluation)",
        ),
        (
            "training images/s",
            f"{sum(r['train_images_per_s'] for r in m) / len(m):.1f} (mean over epochs; per epoch below)",
        ),
    ]
    if plan := facts.plan:
        rows.append(("time budget", budget_line(plan)))
    for c in facts.changes:
        rows.append(("changed on resume", f"from epoch {c['epoch']}: {c['setting']} {c['from']} -> {c['to']}"))
    return rows


# The per-epoch table: its columns, each a metrics key, and how each is printed.
EPOCH_COLUMNS = {
    "epoch": "epoch",
    "train loss": "train_loss",
    "train acc": "train_acc",
    "test loss": "val_loss",
    "test acc": "val_acc",
    "lr": "lr",
    "img/s": "train_images_per_s",
    "train s": "train_time_s",
    "eval s": "eval_time_s",
    "epoch s": "epoch_time_s",
}
EPOCH_FORMATS = {
    "train loss": "{:.4f}",
    "train acc": "{:.4f}",
    "test loss": "{:.4f}",
    "test acc": "{:.4f}",
    "lr": "{:.4g}",
    "img/s": "{:.1f}",
    "train s": "{:.0f}",
    "eval s": "{:.0f}",
    "epoch s": "{:.0f}",
}


def epoch_blocks(metrics: list[dict]) -> list[Block]:
    """One row per epoch: losses, accuracies, learning rate, speed and seconds."""
    return [
        Block(
            "p",
            "Per epoch (test = the run's evaluation split; train loss and accuracy are the epoch's "
            "running means, with dropout and augmentation on):",
        ),
        Block(
            "table",
            rows=[{col: r[key] for col, key in EPOCH_COLUMNS.items()} for r in metrics],
            formats=EPOCH_FORMATS,
        ),
    ]


def section_what_ran(facts: RunFacts, level: int) -> list[Block]:
    """The run itself, every setting, its epochs, and for the chapter's recipe the book's points."""
    blocks = [
        Block("h", "What ran", level),
        Block("table", rows=[{"": k, "value": v} for k, v in _run_rows(facts)]),
        Block("p", "Every setting, as the run recorded it:"),
        Block("table", rows=_settings_rows(facts)),
        *epoch_blocks(facts.metrics),
    ]
    if is_d2l_recipe(facts.cfg):
        blocks += [
            Block("p", "The chapter's recipe: the book's published runs against this one at the same epoch."),
            Block("table", rows=book_rows(facts.metrics), formats={"book": "{}", "this run": "{}"}),
        ]
    return blocks


def budget_blocks(groups: list[tuple[str, list[dict]]]) -> list[Block]:
    """Runs trained to clocks of two or more lengths: what each budget bought."""
    series = budget_series(groups)
    if len({b for points in series.values() for b, *_ in points}) < 2:
        return []
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    plot_budget_curve(ax, series)
    fig.tight_layout()
    rows = [
        {"preset": label, "budget": f"{b:g} s", "network": model, "seeds": a.n, "test acc": a}
        for label, points in series.items()
        for b, a, model in points
    ]
    return [
        Block(
            "p",
            "Trained to a clock (--time-budget): the final test accuracy each budget bought, mean ± std "
            "over the seeds.",
        ),
        Block("table", rows=rows, formats={"test acc": "{:.4f}"}),
        Block("figure", "Test accuracy against the time budget.", name="accuracy-vs-budget.png", png=figure_png(fig)),
    ]


def section_curves(facts: RunFacts, level: int, stem: str) -> list[Block]:
    book = is_d2l_recipe(facts.cfg)
    fig = curves_figure([(facts.dir.name, [facts.record])], book=book, title=f"{facts.dir.name}: {facts.status()}")
    caption = "Train and test loss and accuracy per epoch" + (
        "; the book's published points for this recipe overlaid (d2l 0.17 on a V100 after 10 epochs; d2l 1.0's "
        "notebooks, approximately: loss at 2.30 for two epochs, about 0.83 at the end)"
        if book
        else ""
    )
    return [Block("h", "Curves", level), Block("figure", caption, name=f"{stem}curves.png", png=figure_png(fig))]


def weights_named(facts: RunFacts) -> str:
    """Which weights the page's network is, in words: the file (best.pt, else last.pt, as alexnet
    predict and serve choose) and its epoch, and how that epoch stands to the run's metrics rows."""
    net, last = facts.net, facts.metrics[-1]["epoch"] if facts.metrics else None
    epoch, step = net["epoch"], net["step"]
    if step:
        where = f", step {step} of epoch {epoch + 1}: not the weights of any metrics row"
    elif facts.net_file != "best.pt":
        where = ", the last metrics row"
    elif epoch == last:
        where = ", the best validation accuracy and the last metrics row"
    else:
        where = f", the best validation accuracy; the last metrics row is epoch {last}"
    return f"the weights of {facts.net_file} (epoch {epoch}{where})"


def evaluation_note(facts: RunFacts, ev: Evaluation) -> str:
    """Which weights were evaluated, on what, how fast, what they scored against what the run logged
    for them, and whether the per-image predictions agree with evaluate's matrix."""
    row = facts.net_row()
    return (
        f"Evaluated here from {weights_named(facts)} on {int(ev.confusion.sum())} test images in "
        f"{ev.seconds:.1f} s: accuracy {ev.acc:.4f}, loss {ev.loss:.4f}"
        + (f" (the run logged {row['val_acc']:.4f} for epoch {row['epoch']})" if row else "")
        + (
            "; the per-image predictions give the same matrix."
            if ev.agrees
            else "; WARNING: the per-image predictions do not give evaluate's matrix."
        )
    )


def per_class_rows(ev: Evaluation) -> list[dict]:
    """Each class's images, correct ones, accuracy, and the class it is most often taken for."""
    m = ev.confusion.double()
    rows = []
    for i, name in enumerate(ev.classes):
        n = m[i].sum()
        off = m[i].clone()
        off[i] = -1
        j = int(off.argmax())
        rows.append(
            {
                "class": name,
                "images": int(n),
                "correct": int(m[i, i]),
                "accuracy": float(m[i, i] / n) if n else None,
                "most often taken for": f"{ev.classes[j]} ({int(m[i, j])})" if m[i, j] > 0 else "—",
            }
        )
    return rows


def confused_pairs_blocks(ev: Evaluation, stem: str) -> list[Block]:
    """The three pairs of classes most often confused, and a few of their misclassified test images."""
    m = ev.confusion.double()
    pairs = most_confused(ev.confusion, 3)
    rows = [
        {
            "true": ev.classes[a],
            "predicted": ev.classes[b],
            "test images": n,
            "share of the true class": n / max(1, int(m[a].sum())),
        }
        for a, b, n in pairs
    ]
    blocks = [Block("table", rows=rows, formats={"share of the true class": "{:.1%}"})]
    if pairs:
        blocks.append(
            Block(
                "figure",
                "A few misclassified test images of each pair (as stored, before the resize), "
                "with their index in the test split and the probability given to the wrong class.",
                name=f"{stem}misclassified.png",
                png=figure_png(misclassified_figure(ev, pairs)),
            )
        )
    return blocks


def section_classes(facts: RunFacts, ev: Evaluation | None, level: int, stem: str) -> list[Block]:
    """Per-class accuracy, the confusion matrix, the most confused pairs with their test images."""
    titles = ("Per-class accuracy", "Confusion matrix", "Most confused pairs")
    if ev is None:
        why = facts.missing.get("evaluation", "")
        return [b for t in titles for b in (Block("h", t, level), Block("p", f"Not computed: {why}"))]
    fig = confusion_figure(ev.confusion, ev.classes, f"{facts.dir.name} · accuracy {ev.acc:.4f}")
    return [
        Block("h", titles[0], level),
        Block("p", evaluation_note(facts, ev)),
        Block("table", rows=per_class_rows(ev), formats={"accuracy": "{:.4f}"}),
        Block("h", titles[1], level),
        Block(
            "figure",
            "Rows: the true class; columns: the predicted one; colour: the share of the row, numbers: test images.",
            name=f"{stem}confusion.png",
            png=figure_png(fig, 110),
        ),
        Block("h", titles[2], level),
        *confused_pairs_blocks(ev, stem),
    ]


def section_filters(facts: RunFacts, model, level: int, stem: str) -> list[Block]:
    from ..visualize import (
        LOW_FREQUENCY,
        chance_share,
        filter_panels_figure,
        first_conv,
        low_frequency_share,
        orientation_strength,
    )

    head = [Block("h", "First-layer filters", level)]
    if model is None:
        return head + [Block("p", f"Not shown: {facts.missing.get('weights')}")]
    w = first_conv(model).weight.detach().cpu()
    w0 = initial_first_conv(facts.cfg, facts.record["in_channels"], facts.record["num_classes"])
    net = facts.net
    at = f"epoch {net['epoch']}" + (f", step {net['step']}" if net["step"] else "")
    panels = ([("at initialisation (rebuilt from the seed)", w0)] if w0 is not None else []) + [(f"trained ({at})", w)]
    if w0 is not None:  # what training added: hidden in the trained kernels under the initial noise
        panels.append(("the change W - W0", w - w0))
    o, c, kh, kw = w.shape
    share = low_frequency_share(w)

    def row(label, weight, s):
        return {
            "weights": label,
            "median low-frequency share": float(s.median()),
            "mean share": float(s.mean()),
            "median orientation": float(orientation_strength(weight).median()),
            "norm": float(weight.norm()),
        }

    rows = [row(f"trained ({at})", w, share)]
    text = (
        f"The low-frequency share of a kernel is the part of its energy (squared norm) at spatial frequencies "
        f"of at most {LOW_FREQUENCY:g} cycles per pixel (periods of {1 / LOW_FREQUENCY:g} pixels or longer): 1 for "
        f"a constant kernel, 0 for a checkerboard; white noise gives {chance_share(kh, kw):.2f} for {kh}x{kw}. "
        "Its orientation is how much of its energy away from frequency 0 lies along one direction: 1 for "
        "stripes, about 0 for a round blob; white noise, by chance, a little above 0."
    )
    if w0 is not None:
        s0 = low_frequency_share(w0)
        rows.insert(0, row("at initialisation", w0, s0))
        rows.append(row("the change W - W0", w - w0, low_frequency_share(w - w0)))
        text += (
            f" Training moved the kernels by {moved(w, w0):.0%} of their initial norm (||W - W0|| / ||W0||); "
            f"{int((share > s0).sum())} of {o} kernels gained low-frequency share."
        )
    else:
        text += " The first layer is fitted to the data, not drawn from the seed: there is no initial state to show."
    fig = filter_panels_figure(panels)
    return head + [
        Block("p", text),
        Block(
            "table",
            rows=rows,
            formats={
                "median low-frequency share": "{:.3f}",
                "mean share": "{:.3f}",
                "norm": "{:.3f}",
                "median orientation": "{:.3f}",
            },
        ),
        Block(
            "figure",
            f"{o} kernels {kh}x{kw} on {c} channel(s), each scaled to its own range.",
            name=f"{stem}filters.png",
            png=figure_png(fig, 110),
        ),
    ]


def section_activations(facts: RunFacts, model, ev: Evaluation | None, level: int, stem: str) -> list[Block]:
    import torch

    from ..visualize import class_activations_figure

    head = [Block("h", "Activations, one test image per class", level)]
    if model is None or ev is None:
        return head + [Block("p", f"Not shown: {facts.missing.get('weights') or facts.missing.get('evaluation')}")]
    picks = [int((ev.labels == k).nonzero()[0]) for k in range(len(ev.classes)) if (ev.labels == k).any()]
    x = ev.transform(ev.images[picks], train=False).contiguous()
    labels = [f"#{i} {ev.classes[int(ev.labels[i])]}\n-> {ev.classes[int(ev.preds[i])]}" for i in picks]
    model = model.cpu().float().to(memory_format=torch.contiguous_format)
    fig = class_activations_figure(model, x, labels)
    return head + [
        Block(
            "figure",
            "The first test image of each class (its index, true class -> predicted), then "
            "each convolutional stage's strongest feature maps, after the stage's ReLU.",
            name=f"{stem}activations.png",
            png=figure_png(fig, 90),
        )
    ]


def section_layers(facts: RunFacts, level: int) -> list[Block]:
    from ..models import build_model
    from ..tracing import trace

    c, k, res = facts.record["in_channels"], facts.record["num_classes"], facts.record["resolution"]
    rows = trace(build_model(facts.cfg.train.model, c, k), (1, c, res, res))
    table = [
        {
            "#": r.index,
            "layer": r.name,
            "module": r.path,
            "output shape": "x".join(map(str, r.output_shape)),
            "params": r.params,
            "FLOPs": r.flops,
        }
        for r in rows
    ]
    params, flops = sum(r.params for r in rows), sum(r.flops for r in rows)
    table.append({"#": "", "layer": "total", "module": "", "output shape": "", "params": params, "FLOPs": flops})
    return [
        Block("h", "Layers", level),
        Block(
            "p",
            f"One {c}x{res}x{res} image: {params:,} parameters ({params * 4 / 1e6:.1f} MB of fp32 weights), "
            f"{flops / 1e9:.3f} GFLOPs forward (1 multiply-add = 2 FLOPs; convolutions and matrix products "
            "only, as alexnet summary counts them).",
        ),
        Block("table", rows=table, formats={"params": "{:,}", "FLOPs": "{:,}", "#": "{}"}),
    ]


def run_blocks(
    run_dir: str | Path, level: int = 2, device: str = "auto", data_dir: str | None = None, stem: str = ""
) -> list[Block]:
    """Every section of one run's report, as blocks; headings start at ``level``."""
    from ..data import DataError
    from ..device import select_device
    from ..runs import model_from_checkpoint

    facts = read_facts(run_dir)
    model = ev = None
    if facts.net is None:
        no_checkpoint = "the run directory holds no checkpoint (best.pt or last.pt)"
        facts.missing.setdefault("weights", no_checkpoint)
        facts.missing.setdefault("evaluation", no_checkpoint)
    else:
        model, _ = model_from_checkpoint(facts.net)
        if facts.cfg.data.dataset in IMAGE_DATASETS:
            facts.missing["evaluation"] = (
                "per-class figures are made for in-memory datasets only (use alexnet evaluate)"
            )
        else:
            try:
                ev = evaluate_facts(facts, model, select_device(device), data_dir)
            except DataError as e:
                facts.missing["evaluation"] = f"the run's test set cannot be read ({e})"
    return (
        section_what_ran(facts, level)
        + section_curves(facts, level, stem)
        + section_classes(facts, ev, level, stem)
        + section_filters(facts, model, level, stem)
        + section_activations(facts, model, ev, level, stem)
        + section_layers(facts, level)
    )


def comparison_blocks(run_dirs: list, level: int = 2) -> list[Block]:
    """`alexnet compare`'s table and overlaid curves: one row and one curve per configuration, its
    seeds folded into mean ± std."""
    runs = [read_facts(r, network=False).record for r in run_dirs]
    groups = labelled_groups(runs)
    rows = [aggregate([summarize(r) for r in g]) for _, g in groups]
    fig = curves_figure(groups, book=any(is_d2l_recipe(g[0]["cfg"]) for _, g in groups))
    return [
        Block("h", "Comparison", level),
        Block(
            "p",
            "One row per configuration; runs that differ only in their seed are one row, mean ± std over "
            "the seeds (sample standard deviation), and one curve with a band of ± one std.",
        ),
        Block("table", rows=rows),
        Block("figure", "The runs' curves overlaid.", name="comparison.png", png=figure_png(fig)),
        *budget_blocks(groups),
    ]
