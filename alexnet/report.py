"""Side-by-side comparison of finished runs: the table and the overlaid curves an exercise asks for
(AlexNet vs LeNet, simplified vs full, ReLU + dropout vs sigmoid, one recipe vs another).

Runs of one configuration that differ only in their seed are one row, mean ± std over the seeds
(the sample standard deviation), and one curve with a band of ± one std.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from .models import build_model
from .runs import not_regular
from .tables import Column, markdown
from .tracing import trace


class ReportError(ValueError):
    pass


def summarize(run: dict) -> dict:
    """One row of the comparison table from ``runs.read_run``'s record: the model is built in the
    shape its checkpoint records (channels, classes, resolution), so a 1000-class run counts 1000."""
    cfg, m = run["config"], run["metrics"]
    model, channels, res = cfg["train"]["model"], run["in_channels"], run["resolution"]
    rows = trace(build_model(model, channels, run["num_classes"]), (1, channels, res, res))
    return {
        "run": run["dir"].name,
        "model": model,
        "preset": cfg.get("preset", ""),
        "input": f"{res}x{res}",
        "params_M": sum(r.params for r in rows) / 1e6,
        "GFLOPs": sum(r.flops for r in rows) / 1e9,
        "epochs": len(m),
        "train_loss": m[-1]["train_loss"],
        "val_acc": m[-1]["val_acc"],
        "best_val_acc": max(r["val_acc"] for r in m),
        "gap": m[-1]["train_acc"] - m[-1]["val_acc"],
        "img_per_s": sum(r["train_images_per_s"] for r in m) / len(m),
        "time_s": sum(r["epoch_time_s"] for r in m),
    }


# Settings that change where or how fast a run goes, not what it computes; with the seed, the runs
# that differ only in these are repeats of one configuration.
NOT_RECIPE = frozenset(
    {
        "seed",
        "seed_streams",
        "device",
        "log_every",
        "workers",
        "data_dir",
        "compile",
        "eval_batch_size",
        "model_parallel",
        "tensorboard",
    }
)


def recipe_key(cfg) -> tuple:
    """What makes two runs the same configuration: every setting but the seed and the machine's."""
    return tuple(sorted((k, v) for k, v in cfg.flat().items() if k not in NOT_RECIPE))


def group_runs(runs: list[dict]) -> list[list[dict]]:
    """``read_run`` records grouped by configuration, in the order each configuration first appears."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(recipe_key(run["cfg"]), []).append(run)
    return list(groups.values())


class Spread(tuple):
    """(mean, std, n) over seeds; formats as 'mean ± std'."""

    def __new__(cls, values):
        vals = [float(v) for v in values]
        n = len(vals)
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
        return super().__new__(cls, (mean, std, n))

    mean = property(lambda self: self[0])
    std = property(lambda self: self[1])
    n = property(lambda self: self[2])

    def format(self, spec: str = "{:.4f}") -> str:
        return (
            f"{spec.format(self.mean)} ± {spec.format(self.std).lstrip('+')}" if self.n > 1 else spec.format(self.mean)
        )

    def exceeds(self, other: Spread) -> bool:
        """Whether the difference of the means is larger than the two spreads together (std + std):
        a difference inside that could be the seed's doing."""
        return abs(self.mean - other.mean) > self.std + other.std


def aggregate(rows: list[dict]) -> dict:
    """One row for several seeds of one configuration: numbers become Spreads, the run names one label."""
    if len(rows) == 1:
        return rows[0]
    out = {}
    for k, v in rows[0].items():
        if k == "run":
            out[k] = f"{v} (+{len(rows) - 1} seeds)"
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("params_M", "GFLOPs"):
            out[k] = Spread(r[k] for r in rows)
        else:
            out[k] = v
    return out


FORMATS = {
    "params_M": "{:.2f}",
    "GFLOPs": "{:.4f}",
    "train_loss": "{:.4f}",
    "val_acc": "{:.4f}",
    "best_val_acc": "{:.4f}",
    "gap": "{:+.4f}",
    "img_per_s": "{:.0f}",
    "time_s": "{:.0f}",
    "epochs": "{:.0f}",
}


def markdown_table(rows: list[dict], formats: dict | None = None) -> str:
    fmt = {**FORMATS, **(formats or {})}

    def column(k):
        f = fmt.get(k, "{}")
        return Column(k, fmt=lambda v: v.format(f) if isinstance(v, Spread) else f.format(v), left=k not in fmt)

    return markdown(rows, [column(k) for k in rows[0]])


def compare_table(runs: list[dict]) -> str:
    """`alexnet compare`'s table: one row per configuration, mean ± std where it has several seeds."""
    return markdown_table([aggregate([summarize(r) for r in g]) for g in group_runs(runs)])


def mean_curve(runs: list[dict], key: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and std over the runs of one metric, up to the shortest run's length."""
    n = min(len(r["metrics"]) for r in runs)
    spreads = [Spread(r["metrics"][i][key] for r in runs) for i in range(n)]
    return list(range(1, n + 1)), [s.mean for s in spreads], [s.std for s in spreads]


def plot_groups(
    groups: list[tuple[str, list[dict]]],
    path: Path,
    keys=("train_loss", "val_loss", "val_acc"),
    title: str = "",
    dpi: int = 100,
) -> None:
    """One panel per metric, one curve per labelled group of runs: the mean over its seeds, with a
    band of ± one std where there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runs import atomic_write

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for j, (label, runs) in enumerate(groups):
        colour = f"C{j % 10}"
        for ax, key in zip(axes[0], keys):
            ep, mean, std = mean_curve(runs, key)
            ax.plot(
                ep, mean, "-o", ms=2.5, color=colour, label=f"{label}" + (f" (n={len(runs)})" if len(runs) > 1 else "")
            )
            if len(runs) > 1:
                ax.fill_between(
                    ep,
                    [m - s for m, s in zip(mean, std)],
                    [m + s for m, s in zip(mean, std)],
                    color=colour,
                    alpha=0.2,
                    lw=0,
                )
            ax.set_title(key.replace("_", " "), fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))
    plt.close(fig)


def labelled_groups(runs: list[dict]) -> list[tuple[str, list[dict]]]:
    """The runs grouped by configuration, each group named by its first run and model."""
    groups = []
    for g in group_runs(runs):
        label = f"{g[0]['dir'].name} ({g[0]['config']['train']['model']})"
        groups.append((label + (f" +{len(g) - 1} seeds" if len(g) > 1 else ""), g))
    return groups


def plot_runs(runs: list[dict], path: Path) -> None:
    """`alexnet compare`'s curves: a curve per configuration, with its seeds' spread as a band, and
    the book's points when one of them is the chapter's recipe."""
    from .runs import atomic_write

    groups = labelled_groups(runs)
    fig = curves_figure(groups, book=any(is_d2l_recipe(g[0]["cfg"]) for _, g in groups))
    atomic_write(path, figure_png(fig, 120))


def plot_confusion(matrix, classes: list[str], path: Path, title: str) -> None:
    """The evaluate command's figure: row-normalised confusion matrix with counts."""
    from .runs import atomic_write

    atomic_write(path, figure_png(confusion_figure(matrix, classes, title), 120))


# =============================================================================================
# `alexnet report RUN [RUN ...]`: everything about a run on one page, self-contained HTML (every
# figure inlined, a print stylesheet) and a Markdown twin whose figures sit in a folder beside it.
#
# The page is built once as a list of blocks (heading, paragraph, table, figure); the two
# renderers turn the same blocks into HTML and Markdown, so the two files cannot disagree.
# Every number comes from the run's checkpoint or metrics, or is computed here from its weights;
# the only typed numbers are the book's published ones below, with their source.


@dataclass(frozen=True)
class BookPoint:
    """A point the book published for its AlexNet recipe (our `d2l` preset), to overlay on the curves."""

    source: str
    epoch: int
    key: str  # a metrics key: train_loss, train_acc or val_acc
    value: float
    approximate: bool = False


BOOK = (
    # d2l 0.17 (MXNet/PyTorch, one V100), §7.1's output after 10 epochs.
    BookPoint("d2l 0.17, V100", 10, "train_loss", 0.327),
    BookPoint("d2l 0.17, V100", 10, "train_acc", 0.880),
    BookPoint("d2l 0.17, V100", 10, "val_acc", 0.882),
    # d2l 1.0's notebooks: the loss sits at log(10) = 2.30 for about two epochs (its lazy layers are
    # never Xavier-initialised), and the run ends near 0.83.
    BookPoint("d2l 1.0 notebooks", 1, "train_loss", 2.30, True),
    BookPoint("d2l 1.0 notebooks", 2, "train_loss", 2.30, True),
    BookPoint("d2l 1.0 notebooks", 10, "val_acc", 0.83, True),
)

# Settings that do not change what the chapter's recipe computes: how long, the seed, and where
# and in which layout or precision it runs.
_NOT_THE_RECIPE = NOT_RECIPE | {"epochs", "amp", "channels_last"}


def is_d2l_recipe(cfg) -> bool:
    """Whether a run is the chapter's recipe (the `d2l` preset up to its length, seed and machine)."""
    from .config import PRESETS

    ref = PRESETS["d2l"].flat()
    return all(v == ref[k] for k, v in cfg.flat().items() if k not in _NOT_THE_RECIPE and k in ref)


@dataclass
class Block:
    """One piece of the page: kind is h (text, level), p (text), list (items), table (rows: dicts,
    formats), figure (name, png, text = caption) or pre (text)."""

    kind: str
    text: str = ""
    level: int = 2
    items: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    formats: dict = field(default_factory=dict)
    name: str = ""
    png: bytes = b""


def figure_png(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (then closed)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    return buf.getvalue()


def _cell(k: str, v, formats: dict) -> str:
    f = {**FORMATS, **formats}.get(k, "{}")
    if v is None:
        return "—"
    if isinstance(v, Spread):
        return v.format(f)
    if isinstance(v, float) and f == "{}":
        return f"{v:.4g}"
    return f.format(v)


# ---------------------------------------------------------------------------------------------
# What the page knows about one run


PLAN_KEYS = {"budget_s", "step_s", "eval_s", "startup_s", "steps", "steps_per_epoch", "schedule_steps"}


@dataclass
class RunFacts:
    dir: Path
    record: dict  # read_run's shape: dir, config, cfg, metrics, in_channels, num_classes, resolution
    ckpt: dict | None  # None: the run has no checkpoint; its metrics are all there is
    live: str | None  # the lock's holder while the run is being written
    missing: dict = field(default_factory=dict)  # section -> why it could not be computed

    @property
    def cfg(self):
        return self.record["cfg"]

    @property
    def metrics(self) -> list[dict]:
        return self.record["metrics"]

    @property
    def plan(self) -> dict | None:
        """A --time-budget run's plan (budget.Plan), as last recorded: config.json is rewritten after
        the final evaluation, the checkpoint before it."""
        try:
            plan = json.loads((self.dir / "config.json").read_text())["plan"]
        except (OSError, ValueError, TypeError, KeyError):
            plan = (self.ckpt or {}).get("plan")
        return plan if isinstance(plan, dict) and PLAN_KEYS <= plan.keys() else None

    def status(self) -> str:
        """Finished, running, or interrupted (and where): one sentence."""
        from .runs import epochs_planned

        # Epochs done, not metrics rows: a run that evaluates only at the end has one row for all.
        done = (
            int(self.ckpt["epoch"])
            if self.ckpt
            else (self.metrics[-1].get("epoch", len(self.metrics)) if self.metrics else 0)
        )
        total = epochs_planned(self.cfg.train.epochs, self.plan)
        step = int(self.ckpt["step"]) if self.ckpt else 0
        where = f"epoch {done} of {total} done" + (f", {step} steps into epoch {done + 1}" if step else "")
        if self.live:
            return f"running: {where}; the run continues (its lock is held by {self.live})"
        if done >= total and not step:
            return f"finished: {done} of {total} epochs"
        if self.ckpt is None:
            return f"stopped: {where} (no checkpoint left to say more)"
        if step:
            return f"interrupted at step {step} of epoch {done + 1}: {where}; continue it with alexnet train --resume"
        return f"stopped after epoch {done} of {total} (interrupted between epochs); continue it with alexnet train --resume"


def read_facts(run_dir: str | Path) -> RunFacts:
    """The run's settings, metrics and (if any) checkpoint, read once: the checkpoint is loaded whole
    into memory, so a live run replacing it meanwhile cannot mix two epochs into one page."""
    from .runs import RunError, live_holder, load_checkpoint, read_run

    run = Path(run_dir)
    if not run.is_dir():
        raise RunError(f"{run}: not a run directory ({'a file' if run.exists() else 'no such directory'})")
    live = live_holder(run)
    if not (run / "last.pt").exists():
        return RunFacts(run, read_run(run), None, live)
    ckpt = load_checkpoint(run / "last.pt")
    if not ckpt["metrics"]:
        raise RunError(f"{run}: the run has no finished epoch (its checkpoint is at step {ckpt['step']} of epoch 1)")
    record = {
        "dir": run,
        "config": ckpt["cfg"].to_dict(),
        "cfg": ckpt["cfg"],
        "metrics": list(ckpt["metrics"]),
        **{k: int(ckpt[k]) for k in ("in_channels", "num_classes", "resolution")},
    }
    return RunFacts(run, record, ckpt, live)


@dataclass
class Evaluation:
    """The checkpoint's weights on the run's own test split, with the run's precision and batches."""

    acc: float
    loss: float
    confusion: object  # (K, K) counts, rows = true class
    preds: object  # (N,) predicted class per test image
    prob: object  # (N,) the predicted class's softmax probability
    labels: object  # (N,)
    images: object  # (N, C, h, w) uint8, as stored
    classes: list[str]
    transform: object  # what turns those images into the network's input
    seconds: float
    agrees: bool  # the per-image predictions give evaluate's confusion matrix


def evaluate_facts(facts: RunFacts, model, device, data_dir: str | None = None) -> Evaluation:
    """Evaluate with train.evaluate (the numbers the run logged come from it too) while a hook keeps
    each image's logits, for the misclassified pictures."""
    import torch

    from . import data as D
    from .device import bf16_autocast, channels_last_on
    from .measure import timed
    from .train import evaluate

    cfg = facts.cfg
    if data_dir:
        cfg = cfg.replace(data_dir=data_dir)
    data = D.InMemory(cfg, device, cfg.train.batch_size, cfg.train.eval_batch_size)
    model = model.to(device)
    if channels_last_on(cfg.system.channels_last, device):
        model = model.to(memory_format=torch.channels_last)
    outs = []
    hook = model.register_forward_hook(lambda m, i, o: outs.append(o.detach().float().cpu()))
    try:
        ev, seconds = timed(
            lambda: evaluate(
                model,
                data.val(),
                device=device,
                amp=bf16_autocast(cfg.system.amp, device),
                num_classes=len(data.classes),
                confusion=True,
                flip_tta=cfg.data.flip_tta,
            ),
            device,
        )
    finally:
        hook.remove()
    if cfg.data.flip_tta:  # evaluate's two calls per batch, the image then its mirror, averaged
        outs = [(a + b) / 2 for a, b in zip(outs[0::2], outs[1::2])]
    probs = torch.cat(outs).softmax(1)
    prob, preds = probs.max(1)
    labels = data.test.labels.cpu()
    k = len(data.classes)
    mine = torch.bincount(labels * k + preds, minlength=k * k).view(k, k)
    return Evaluation(
        ev["acc"],
        ev["loss"],
        ev["confusion"],
        preds,
        prob,
        labels,
        data.test.images.cpu(),
        list(data.classes),
        data.transform,
        seconds,
        bool(torch.equal(mine, ev["confusion"])),
    )


# ---------------------------------------------------------------------------------------------
# The sections


def _settings_rows(facts: RunFacts) -> list[dict]:
    from .config import SECTIONS

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


def section_what_ran(facts: RunFacts, level: int) -> list[Block]:
    cfg, m, ck = facts.cfg, facts.metrics, facts.ckpt or {}
    mach = ck.get("machine") or {}
    load = mach.get("load_average_1m")
    described = ", ".join(
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
    res = facts.record["resolution"]
    wall = sum(r["epoch_time_s"] for r in m)
    facts_rows = [
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
        ("device", mach.get("device", "not recorded (the checkpoint predates the machine record)")),
        ("machine", described or "not recorded (the checkpoint predates the machine record)"),
        (
            "precision",
            "bf16 autocast (weights, gradients and optimiser state fp32)"
            if cfg.system.amp == "bf16"
            else "fp32"
            if cfg.system.amp == "off"
            else f"amp {cfg.system.amp}",
        ),
        ("torch", ck.get("torch", "not recorded")),
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
        facts_rows.append(("time budget", budget_line(plan)))
    for c in ck.get("changes", []):
        facts_rows.append(("changed on resume", f"from epoch {c['epoch']}: {c['setting']} {c['from']} -> {c['to']}"))
    blocks = [
        Block("h", "What ran", level),
        Block("table", rows=[{"": k, "value": v} for k, v in facts_rows]),
        Block("p", "Every setting, as the run recorded it:"),
        Block("table", rows=_settings_rows(facts)),
    ]
    rows = [
        {
            "epoch": r["epoch"],
            "train loss": r["train_loss"],
            "train acc": r["train_acc"],
            "test loss": r["val_loss"],
            "test acc": r["val_acc"],
            "lr": r["lr"],
            "img/s": r["train_images_per_s"],
            "train s": r["train_time_s"],
            "eval s": r["eval_time_s"],
            "epoch s": r["epoch_time_s"],
        }
        for r in m
    ]
    fmt = {
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
    blocks += [
        Block(
            "p",
            "Per epoch (test = the run's evaluation split; train loss and accuracy are the epoch's "
            "running means, with dropout and augmentation on):",
        ),
        Block("table", rows=rows, formats=fmt),
    ]
    if is_d2l_recipe(cfg):
        blocks += [
            Block("p", "The chapter's recipe: the book's published runs against this one at the same epoch."),
            Block("table", rows=book_rows(m), formats={"book": "{}", "this run": "{}"}),
        ]
    return blocks


def book_rows(metrics: list[dict]) -> list[dict]:
    """The book's points next to this run's value at the same epoch ('not reached' until it gets there)."""
    names = {"train_loss": "train loss", "train_acc": "train acc", "val_acc": "test acc"}
    rows = []
    for p in BOOK:
        mine = next((r[p.key] for r in metrics if r["epoch"] == p.epoch), None)
        rows.append(
            {
                "source": p.source,
                "epoch": p.epoch,
                "metric": names[p.key],
                "book": f"{'≈ ' if p.approximate else ''}{p.value:.3f}",
                "this run": f"{mine:.4f}" if mine is not None else f"not reached (epoch {len(metrics)})",
            }
        )
    return rows


def curves_figure(facts_or_groups, book: bool = False, title: str = ""):
    """Loss and accuracy per epoch, train and test; one colour per labelled group of runs (the mean
    over its seeds, a band of ± one std), and the book's points when ``book``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (al, aa) = plt.subplots(1, 2, figsize=(10, 3.8))
    for j, (label, runs) in enumerate(facts_or_groups):
        colour = f"C{j % 10}"
        for ax, key, style, name in (
            (al, "train_loss", "-o", "train"),
            (al, "val_loss", "--s", "test"),
            (aa, "train_acc", "-o", "train"),
            (aa, "val_acc", "--s", "test"),
        ):
            ep, mean, std = mean_curve(runs, key)
            ax.plot(
                ep,
                mean,
                style,
                ms=3,
                color=colour,
                label=f"{label}: {name}" + (f" (n={len(runs)})" if len(runs) > 1 else ""),
            )
            if len(runs) > 1:
                ax.fill_between(
                    ep,
                    [a - s for a, s in zip(mean, std)],
                    [a + s for a, s in zip(mean, std)],
                    color=colour,
                    alpha=0.2,
                    lw=0,
                )
    if book:
        for src, marker, colour in (("d2l 0.17, V100", "*", "k"), ("d2l 1.0 notebooks", "x", "0.45")):
            for ax, keys in ((al, ("train_loss",)), (aa, ("train_acc", "val_acc"))):
                pts = [p for p in BOOK if p.source == src and p.key in keys]
                if pts:
                    ax.plot(
                        [p.epoch for p in pts],
                        [p.value for p in pts],
                        marker,
                        ms=10,
                        color=colour,
                        ls="none",
                        label=f"book: {src}" + (" (approx.)" if pts[0].approximate else ""),
                    )
    al.set_ylabel("cross-entropy loss (nats per image)")
    aa.set_ylabel("accuracy (fraction correct)")
    from matplotlib.ticker import MaxNLocator

    last = max(len(runs[0]["metrics"]) for _, runs in facts_or_groups)
    for ax in (al, aa):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, max(last, 10 if book else 1) + 0.5)  # the book's points are at epoch 10
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def budget_series(groups: list[tuple[str, list[dict]]]) -> dict[str, list[tuple[float, Spread, str]]]:
    """Test accuracy against the --time-budget, per preset: (budget seconds, the final accuracy over
    the seeds, the network trained), from the groups of runs that were trained to a clock."""
    from .config import parse_duration

    series: dict[str, list[tuple[float, Spread, str]]] = {}
    for _, runs in groups:
        cfg = runs[0]["cfg"]
        if cfg.train.time_budget:
            accs = Spread(r["metrics"][-1]["val_acc"] for r in runs)
            series.setdefault(f"--preset {cfg.preset}", []).append(
                (parse_duration(cfg.train.time_budget), accs, cfg.train.model)
            )
    return {label: sorted(points) for label, points in series.items()}


def plot_budget_curve(ax, series: dict[str, list[tuple[float, Spread, str]]]) -> None:
    """The curve a reader chooses a budget from: accuracy (mean ± std over seeds) against minutes."""
    for label, points in series.items():
        networks = ", ".join(dict.fromkeys(model for *_, model in points))
        ax.errorbar(
            [b / 60 for b, *_ in points],
            [a.mean for _, a, _ in points],
            [a.std for _, a, _ in points],
            marker="o",
            capsize=3,
            label=f"{label} ({networks})",
        )
    ticks = sorted({b / 60 for points in series.values() for b, *_ in points})
    ax.set(xscale="log", xlabel="time budget (minutes)", ylabel="test accuracy (mean ± std over seeds)")
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def budget_blocks(groups: list[tuple[str, list[dict]]]) -> list[Block]:
    """Runs trained to clocks of two or more lengths: what each budget bought."""
    series = budget_series(groups)
    if len({b for points in series.values() for b, *_ in points}) < 2:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def section_classes(facts: RunFacts, ev: Evaluation | None, level: int, stem: str) -> list[Block]:
    """Per-class accuracy, the confusion matrix, the most confused pairs with their test images."""
    if ev is None:
        why = facts.missing.get("evaluation", "")
        return [
            b
            for t in ("Per-class accuracy", "Confusion matrix", "Most confused pairs")
            for b in (Block("h", t, level), Block("p", f"Not computed: {why}"))
        ]
    m = ev.confusion.double()
    ck = facts.ckpt
    which = (
        f"the weights of last.pt (epoch {ck['epoch']}"
        + (
            f", step {ck['step']} of epoch {ck['epoch'] + 1}: not the weights of any metrics row"
            if ck["step"]
            else ", the last metrics row"
        )
        + ")"
    )
    last = facts.metrics[-1]
    note = (
        f"Evaluated here from {which} on {int(m.sum())} test images in {ev.seconds:.1f} s: accuracy "
        f"{ev.acc:.4f}, loss {ev.loss:.4f}"
        + (f" (the run logged {last['val_acc']:.4f} for epoch {last['epoch']})" if not ck["step"] else "")
        + (
            "; the per-image predictions give the same matrix."
            if ev.agrees
            else "; WARNING: the per-image predictions do not give evaluate's matrix."
        )
    )
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
    blocks = [
        Block("h", "Per-class accuracy", level),
        Block("p", note),
        Block("table", rows=rows, formats={"accuracy": "{:.4f}"}),
    ]
    fig = confusion_figure(ev.confusion, ev.classes, f"{facts.dir.name} · accuracy {ev.acc:.4f}")
    blocks += [
        Block("h", "Confusion matrix", level),
        Block(
            "figure",
            "Rows: the true class; columns: the predicted one; colour: the share of the row, numbers: test images.",
            name=f"{stem}confusion.png",
            png=figure_png(fig, 110),
        ),
    ]
    pairs = most_confused(ev.confusion, 3)
    blocks += [
        Block("h", "Most confused pairs", level),
        Block(
            "table",
            rows=[
                {
                    "true": ev.classes[a],
                    "predicted": ev.classes[b],
                    "test images": n,
                    "share of the true class": n / max(1, int(m[a].sum())),
                }
                for a, b, n in pairs
            ],
            formats={"share of the true class": "{:.1%}"},
        ),
    ]
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


def most_confused(matrix, n: int) -> list[tuple[int, int, int]]:
    """The ``n`` largest off-diagonal counts as (true, predicted, count), largest first; ties by class order."""
    k = matrix.shape[0]
    cells = [(int(matrix[i, j]), i, j) for i in range(k) for j in range(k) if i != j and matrix[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(i, j, c) for c, i, j in cells[:n]]


def misclassified_figure(ev: Evaluation, pairs, per_pair: int = 6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pairs), per_pair, figsize=(1.5 * per_pair, 1.75 * len(pairs)), squeeze=False)
    for r, (a, b, _) in enumerate(pairs):
        idx = ((ev.labels == a) & (ev.preds == b)).nonzero().flatten()
        idx = idx[ev.prob[idx].argsort(descending=True)][:per_pair]  # the most confident mistakes first
        for c in range(per_pair):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(idx):
                img = ev.images[int(idx[c])]
                ax.imshow(
                    img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy(),
                    cmap="gray",
                    vmin=0,
                    vmax=255,
                    interpolation="nearest",
                )
                ax.set_title(f"#{int(idx[c])} p={float(ev.prob[idx[c]]):.2f}", fontsize=7)
            else:
                ax.set_axis_off()
        axes[r][0].set_ylabel(f"{ev.classes[a]}\n-> {ev.classes[b]}", fontsize=7)
    fig.tight_layout()
    return fig


def confusion_figure(matrix, classes: list[str], title: str):
    """Row-normalised confusion matrix with counts (the figure of `alexnet evaluate` too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = matrix.double()
    norm = m / m.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    int(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return fig


def initial_first_conv(cfg, in_channels: int, num_classes: int):
    """The run's first-layer weights before its first step: ``train`` builds the network with
    ``build_model(..., seed=cfg.train.seed)`` before anything else draws from it, so the same call
    rebuilds them exactly (tests/test_report.py checks this against a checkpoint taken at step 0).
    None for a first layer that is fitted to the data rather than drawn (a whitening conv)."""
    import torch

    from .models import WhiteningConv, build_model
    from .visualize import first_conv

    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream as it was
        conv = first_conv(build_model(cfg.train.model, in_channels, num_classes, seed=cfg.train.seed))
    return None if isinstance(conv, WhiteningConv) else conv.weight.detach().clone()


def section_filters(facts: RunFacts, model, level: int, stem: str) -> list[Block]:
    from .visualize import (
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
    ck = facts.ckpt
    at = f"epoch {ck['epoch']}" + (f", step {ck['step']}" if ck["step"] else "")
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
        moved = float((w - w0).norm() / w0.norm()) if w0.norm() > 0 else float("nan")
        text += (
            f" Training moved the kernels by {moved:.0%} of their initial norm (||W - W0|| / ||W0||); "
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

    from .visualize import class_activations_figure

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
    from .models import build_model
    from .tracing import trace

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
    from .data import DataError
    from .device import select_device
    from .runs import model_from_checkpoint

    facts = read_facts(run_dir)
    model = ev = None
    if facts.ckpt is None:
        facts.missing["weights"] = facts.missing["evaluation"] = "the run directory holds no checkpoint (last.pt)"
    else:
        model, _ = model_from_checkpoint(facts.ckpt)
        if facts.cfg.data.dataset in ("imagefolder", "imagelist"):
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
    runs = [read_facts(r).record for r in run_dirs]
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


# ---------------------------------------------------------------------------------------------
# The two renderers


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def _md(text: str) -> str:
    """Text for a Markdown page: a '<' would open raw HTML, which most renderers pass through (a run
    named like a tag could run a script in the reader's viewer), so it is written as an entity."""
    return str(text).replace("<", "&lt;")


def to_markdown(blocks: list[Block], figures: str = "report-figures") -> str:
    """Markdown; figures are links to ``figures/NAME`` (the caller writes the PNGs there)."""
    from .tables import grid

    out = []
    for b in blocks:
        if b.kind == "h":
            out += ["#" * b.level + " " + _md(b.text).replace("\n", " "), ""]
        elif b.kind == "p":
            out += [_md(b.text), ""]
        elif b.kind == "pre":
            out += ["```", b.text, "```", ""]
        elif b.kind == "list":
            out += [f"- {_md(item)}" for item in b.items] + [""]
        elif b.kind == "table" and b.rows:
            keys = list(b.rows[0])
            cells = [
                [_md(_cell(k, r[k], b.formats)).replace("|", "\\|").replace("\n", " ") for k in keys] for r in b.rows
            ]
            numeric = [
                isinstance(b.rows[0][k], (int, float, Spread)) and not isinstance(b.rows[0][k], bool) for k in keys
            ]
            out += [grid([_md(k) for k in keys], cells, left=[i for i, n in enumerate(numeric) if not n]), ""]
        elif b.kind == "figure":
            out += [f"![{_md(b.text)}]({figures}/{b.name})", "", f"*{_md(b.text)}*", ""]
    return "\n".join(out)


def to_html(blocks: list[Block]) -> str:
    """An HTML fragment: every figure inlined as a base64 PNG, so it holds no link to anything."""
    import base64

    out = []
    for b in blocks:
        if b.kind == "h":
            out.append(f'<h{b.level} id="{_slug(b.text)}">{escape(b.text)}</h{b.level}>')
        elif b.kind == "p":
            out.append(f"<p>{escape(b.text)}</p>")
        elif b.kind == "pre":
            out.append(f"<pre>{escape(b.text)}</pre>")
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{escape(str(i))}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table" and b.rows:
            keys = list(b.rows[0])
            head = "".join(f"<th>{escape(k)}</th>" for k in keys)
            body = "".join(
                "<tr>" + "".join(f"<td>{escape(_cell(k, r[k], b.formats))}</td>" for k in keys) + "</tr>"
                for r in b.rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "figure":
            data = base64.b64encode(b.png).decode()
            out.append(
                f'<figure><img alt="{escape(b.text)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{escape(b.text)}</figcaption></figure>"
            )
    return "\n".join(out)


STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #111; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 7px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td { font-variant-numeric: tabular-nums; }
figure { margin: 0.8em 0 1.4em; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: #444; }
footer { margin-top: 3em; font-size: 12px; color: #555; }
@media print {
  body { max-width: none; margin: 0; font-size: 10.5pt; }
  @page { size: A4; margin: 14mm; }
  h2, h3 { break-after: avoid; }
  figure, tr { break-inside: avoid; }
  thead { display: table-header-group; }
  figure img { max-height: 24cm; }
}
"""


def html_document(title: str, body: str) -> str:
    return (
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def render_html_body(run_dir: str | Path, device: str = "auto", data_dir: str | None = None, level: int = 2) -> str:
    """The report of one run as an HTML fragment, for a page that embeds it (`alexnet serve`).

    It holds every section `alexnet report` writes for the run (what ran, curves, per-class accuracy,
    confusion matrix, most confused pairs, first-layer filters, activations, layer table), headings
    from ``<h{level}>`` down, every figure inlined as a base64 PNG and no stylesheet of its own, and
    writes nothing to disk. It evaluates the checkpoint on the run's test set on ``device``, which
    takes seconds for a small network and minutes for AlexNet at 224x224 on a CPU: cache it against
    last.pt's modification time rather than calling it per request. A directory that is not a run
    raises runs.RunError with a one-line message; a run without a checkpoint gives its metrics alone.
    """
    return to_html(run_blocks(run_dir, level, device, data_dir))


# The first line of every page `alexnet report` writes, and the file it leaves in its figures folder:
# what it finds there it may replace; anything else in --out is the user's, and stays.
MARK = "<!-- written by alexnet report -->"
FIGURES_MARK = ".written-by-alexnet-report"
_FIGURE_NAME = re.compile(
    r"(run\d+-)?(curves|confusion|misclassified|filters|activations|comparison|accuracy-vs-budget)\.png"
)
_LEGACY_FOOTER = "Made by alexnet report from "


def _read_ends(path: Path, n: int = 65536) -> tuple[str, str] | None:
    """The first and last ``n`` bytes of a regular file (as text), or None for anything else: a
    symlink, a FIFO or a directory is never opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.pread(fd, n, 0)
        tail = os.pread(fd, n, max(0, size - n))
    except OSError:
        return None
    finally:
        os.close(fd)
    return head.decode(errors="replace"), tail.decode(errors="replace")


def _page_is_ours(path: Path) -> bool:
    """A report.html or report.md this command wrote: its first line is MARK, or (a page written before
    the mark) it ends with the footer alexnet report wrote then."""
    ends = _read_ends(path)
    if ends is None:
        return False
    head, tail = ends
    if head.split("\n", 1)[0] == MARK:
        return True
    lines = tail.rstrip("\n").split("\n")
    if path.suffix == ".html":
        return (
            head.startswith("<!doctype html>") and len(lines) >= 3 and lines[-3].startswith("<footer>" + _LEGACY_FOOTER)
        )
    return len(lines) >= 2 and lines[-2] == "---" and lines[-1].startswith(_LEGACY_FOOTER)


def _figures_are_ours(figs: Path) -> bool:
    """report-figures/ as this command leaves it: its mark inside, or (before the mark) nothing but
    regular files named as the report names its figures."""
    if not_regular(figs / FIGURES_MARK) is None and not (figs / FIGURES_MARK).is_symlink():
        return True
    return all(e.is_file(follow_symlinks=False) and _FIGURE_NAME.fullmatch(e.name) for e in os.scandir(figs))


def check_out(out: Path, overwrite: bool = False) -> None:
    """Refuse, in one line, an --out whose report.html, report.md or report-figures/ this command did
    not write (unless ``overwrite``), or that it could not replace whatever the flag says."""
    flag = "choose another --out, or pass --overwrite to replace it"
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out}: is a file, not a directory")
    for name in ("report.html", "report.md"):
        path = out / name
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_symlink() or not path.is_file():
            kind = "a symlink" if path.is_symlink() else "a directory" if path.is_dir() else "not a regular file"
            raise ReportError(f"{path}: {kind}, not a page alexnet report wrote; it is left as it is")
        if not overwrite and not _page_is_ours(path):
            raise ReportError(f"{path}: not written by alexnet report; {flag}")
    figs = out / "report-figures"
    if figs.is_symlink() or (figs.exists() and not figs.is_dir()):
        kind = "a symlink" if figs.is_symlink() else "a file"
        raise ReportError(f"{figs}: {kind}, not a directory; alexnet report keeps its figures there")
    if figs.is_dir() and not overwrite:
        try:
            ours = _figures_are_ours(figs)
        except OSError as e:
            raise ReportError(f"{figs}: cannot read it ({e.strerror})") from None
        if not ours:
            raise ReportError(f"{figs}: holds files alexnet report did not write; {flag}")


def _make_dir(path: Path, made: list[Path]) -> None:
    """mkdir -p that remembers what it made (to remove it again if the report cannot be written)."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            if not p.is_dir():
                raise ReportError(f"{p}: is a file, not a directory") from None
            continue
        except OSError as e:
            raise ReportError(f"cannot create {p}: {e.strerror}") from None
        made.append(p)


def write_report(
    run_dirs: list,
    out: str | Path | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Write report.html (self-contained) and report.md (figures in report-figures/ beside it) into
    ``out``, by default the run directory of a single run. Returns the paths, size and seconds.

    Only files this command wrote are replaced (check_out), each atomically: the figures first, the
    pages last, so a write that fails midway leaves every page whole and its figures beside it."""
    import time

    from .runs import RunError, atomic_write

    t0 = time.perf_counter()
    dirs = [Path(r) for r in run_dirs]
    if out is None:
        if len(dirs) > 1:
            raise ReportError("several runs: say where the report goes with --out DIR")
        out = dirs[0]
    out = Path(out)
    for d in dirs:
        read_facts(d)  # a directory that is not a run fails here, before anything is computed
    check_out(out, overwrite)  # and a page that is not ours, before minutes of evaluation
    if len(dirs) == 1:
        title = f"Run report: {dirs[0].name}"
        blocks = [Block("h", title, 1)] + run_blocks(dirs[0], 2, device, data_dir)
    else:
        title = "Runs report: " + ", ".join(d.name for d in dirs)
        blocks = [Block("h", title, 1)] + comparison_blocks(dirs)
        for i, d in enumerate(dirs, 1):
            blocks += [Block("h", f"Run {i}: {d.name}", 2)] + run_blocks(d, 3, device, data_dir, stem=f"run{i}-")
    seconds = time.perf_counter() - t0
    made = f"Made by alexnet report from {', '.join(str(d) for d in dirs)} in {seconds:.1f} s, {time.strftime('%Y-%m-%d %H:%M %Z')}."
    html = MARK + "\n" + html_document(title, to_html(blocks) + f"\n<footer>{escape(made)}</footer>")
    figs = out / "report-figures"
    created: list[Path] = []
    try:
        _make_dir(figs, created)
        atomic_write(figs / FIGURES_MARK, "Figures of report.html and report.md beside this folder.\n")
        for b in blocks:
            if b.kind == "figure":
                atomic_write(figs / b.name, b.png)
        atomic_write(out / "report.md", MARK + "\n" + to_markdown(blocks) + f"\n---\n{_md(made)}\n")
        atomic_write(out / "report.html", html)
    except (ReportError, RunError):
        for p in reversed(created):  # folders this call made, and the files it put there
            shutil.rmtree(p, ignore_errors=True)
        raise
    return {
        "html": out / "report.html",
        "markdown": out / "report.md",
        "figures": figs,
        "bytes": len(html.encode()),
        "seconds": seconds,
    }


def cmd_report(args) -> int:
    done = write_report(args.runs, args.out, args.device, args.data_dir, args.overwrite)
    print(
        f"report: {done['html']} ({done['bytes'] / 1e6:.2f} MB, self-contained) and {done['markdown']} "
        f"(figures in {done['figures']}), made in {done['seconds']:.1f} s"
    )
    return 0


def add_report_parser(sub) -> None:
    r = sub.add_parser("report", help="one self-contained HTML page (and a Markdown twin) about a run, or several")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR")
    r.add_argument(
        "--out",
        help="directory for report.html, report.md and report-figures/ (default: the run "
        "directory; required for several runs)",
    )
    r.add_argument("--device", default="auto", help="where the checkpoint is evaluated: auto, cpu, cuda, mps")
    r.add_argument("--data-dir", help="the run's dataset, if it has moved since the run")
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a report.html, report.md or report-figures/ in --out that alexnet report did not write",
    )
    r.set_defaults(func=cmd_report)
