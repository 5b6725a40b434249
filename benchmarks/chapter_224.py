"""The chapter's experiment at 224x224 (D2L §8.1), written up from the runs as they stand: the `d2l`
and `fast` runs' reports, the chapter's Figure 8.1.2 from both trained networks next to their
initial state, and the experiment section of docs/report.md (between its two markers).

    python benchmarks/chapter_224.py --d2l RUN_DIR --fast RUN_DIR [--d2l-log FILE --fast-log FILE]

The runs may still be training. Each is read from a copy of its files (last.pt is replaced
atomically, so the copy holds one whole epoch; its metrics are rewritten from that checkpoint, so
every file agrees with it), and nothing is written into the run directories. Written: DOCS/runs/
d2l-224/ and fast-224/ (config, metrics, curves, report .html/.md and its figures; never a
checkpoint), DOCS/figures/report/filters-224.png, and DOCS/report.md's experiment section. Every
number in that section is read from the runs or computed from their weights here; the book's are
report.BOOK's.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from alexnet import report as P
from alexnet import runs as R
from alexnet.measure import machine
from alexnet.seeds import initial_first_conv
from alexnet.tables import grid
from alexnet.visualize import (
    LOW_FREQUENCY,
    chance_share,
    filter_panels_figure,
    low_frequency_share,
    orientation_strength,
)

NATIVE = 28  # Fashion-MNIST's side
SMALL_FILES = ("config.json", "metrics.jsonl", "metrics.csv", "curves.png")
SHARED = (
    "shared: both runs at nice 19 on one thread each, beside the other jobs of a working session (helpers' tests "
    "and builds), so the times are upper bounds, not this CPU's speed."
)
START, END = "<!-- chapter-224:start (benchmarks/chapter_224.py writes this part) -->", "<!-- chapter-224:end -->"


def snapshot(src: Path, scratch: Path) -> tuple[Path, list[int]]:
    """A copy of the run's small files, lock and newest checkpoint, its metrics made to agree with that
    checkpoint; and the epochs whose wall time the copy repairs (see epoch_times_repaired)."""
    dst = scratch / src.name
    dst.mkdir(parents=True)
    for name in (*SMALL_FILES, ".lock", "last.pt"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    repaired = []
    if (dst / "last.pt").exists():
        ckpt = R.load_checkpoint(dst / "last.pt")
        cfg = ckpt["cfg"]
        ckpt["metrics"], repaired = epoch_times_repaired(ckpt["metrics"])
        if repaired:  # the checkpoint is what the report reads: the copy's, never the run's own
            R.save_checkpoint({k: v for k, v in ckpt.items() if k not in ("path", "cfg")}, dst / "last.pt")
        R.RunDir(dst, None).write_metrics(
            ckpt["metrics"], f"{cfg.train.model} · {ckpt['dataset']} · preset {cfg.preset}"
        )
    return dst, repaired


def epoch_times_repaired(metrics: list[dict]) -> tuple[list[dict], list[int]]:
    """Rows written before the resumed-epoch fix (train.Session.run) held, as a resumed epoch's wall time,
    only the last process's part: at least the epoch's training and evaluation, which they hold whole."""
    out, repaired = [], []
    for row in metrics:
        floor = row["train_time_s"] + row["eval_time_s"]
        if row["epoch_time_s"] < floor:
            row, _ = {**row, "epoch_time_s": floor}, repaired.append(row["epoch"])
        out.append(row)
    return out, repaired


def publish(run: Path, to: Path) -> None:
    """The run's small files and its report into the docs (never a checkpoint), in place of what an
    earlier publish put there; a folder holding anything else is not this script's, and is refused."""
    if to.exists():
        ours = {*SMALL_FILES, "report.html", "report.md", "report-figures"}
        figures = to / "report-figures"
        strays = [p.name for p in to.iterdir() if p.name not in ours or p.is_symlink()]
        if figures.is_dir() and not figures.is_symlink():
            strays += [f"report-figures/{p.name}" for p in figures.iterdir() if p.suffix != ".png" or p.is_symlink()]
        if strays or (figures.exists() and not figures.is_dir()):
            raise SystemExit(
                f"{to}: holds {', '.join(strays) or 'report-figures, not a folder'}, which publish did "
                "not write; not replacing it"
            )
        shutil.rmtree(to)
    (to / "report-figures").mkdir(parents=True)
    for name in (*SMALL_FILES, "report.html", "report.md"):
        if (run / name).exists():
            shutil.copy2(run / name, to / name)
    for fig in (run / "report-figures").glob("*.png"):
        shutil.copy2(fig, to / "report-figures" / fig.name)


def first_line(log: str | None) -> str | None:
    if not log or not Path(log).exists():
        return None
    return Path(log).read_text(errors="replace").splitlines()[0].strip()


def fmt(v, spec="{:.4f}"):
    return "—" if v is None else spec.format(v)


def epoch_table(facts: dict[str, P.RunFacts]) -> str:
    """Epoch by epoch, each run's train loss and test accuracy, its epoch's wall time and images/s,
    and the book's published points at their epochs."""
    names = list(facts)
    book = {(p.source, p.epoch, p.key): p for p in P.BOOK}
    head = ["epoch"] + [f"`{n}` {c}" for n in names for c in ("train loss", "test acc", "epoch s", "img/s")]
    head += ["d2l 0.17 (V100): train loss / test acc", "d2l 1.0 notebooks (approx.)"]
    rows = []
    for e in range(1, 11):
        row = [str(e)]
        for n in names:
            m = next((r for r in facts[n].metrics if r["epoch"] == e), None)
            row += [
                fmt(m and m["train_loss"]),
                fmt(m and m["val_acc"]),
                fmt(m and m["epoch_time_s"], "{:.0f}"),
                fmt(m and m["train_images_per_s"], "{:.1f}"),
            ]
        old = [book.get(("d2l 0.17, V100", e, k)) for k in ("train_loss", "val_acc")]
        new = [book.get(("d2l 1.0 notebooks", e, k)) for k in ("train_loss", "val_acc")]
        row.append(" / ".join(f"{p.value:.3f}" for p in old) if all(old) else "")
        row.append(", ".join(f"{'loss' if p.key == 'train_loss' else 'test acc'} ≈ {p.value:.2f}" for p in new if p))
        rows.append(row)
    return grid(head, rows, left=(0, len(head) - 2, len(head) - 1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d2l", required=True, help="the `alexnet train --preset d2l` run directory")
    ap.add_argument("--fast", required=True, help="the `alexnet train --preset fast --epochs 10` run directory")
    ap.add_argument("--d2l-log", help="its console log (its first line names the device and threads)")
    ap.add_argument("--fast-log")
    ap.add_argument("--docs", default="docs", help="the docs folder to write into")
    ap.add_argument("--conditions", default=SHARED, help="what else ran beside the runs, said after the machine line")
    args = ap.parse_args(argv)
    docs = Path(args.docs)
    logs = {"d2l": first_line(args.d2l_log), "fast": first_line(args.fast_log)}
    with tempfile.TemporaryDirectory(prefix="chapter224-") as tmp:
        facts, made, weights, repaired = {}, {}, {}, {}
        for name, src in (("d2l", Path(args.d2l)), ("fast", Path(args.fast))):
            copy, repaired[name] = snapshot(src, Path(tmp) / name)
            done = P.write_report([copy], copy, device="cpu")
            made[name] = done
            facts[name] = P.read_facts(copy)
            publish(copy, docs / "runs" / f"{name}-224")
            ck = facts[name].ckpt
            w = ck["model"][next(k for k in ck["model"] if k.endswith("weight"))].float()
            w0 = initial_first_conv(ck["cfg"], int(ck["in_channels"]), int(ck["num_classes"]))
            weights[name] = (w0, w, ck)
        figure = docs / "figures" / "report" / "filters-224.png"
        figure.parent.mkdir(parents=True, exist_ok=True)
        seeds = {ck["cfg"].train.seed for _, _, ck in weights.values()}
        same_start = len(seeds) == 1 and all(torch.equal(weights["d2l"][0], w0) for w0, _, _ in weights.values())
        trained = {
            n: (f"{n} trained, epoch {ck['epoch']} of {ck['cfg'].train.epochs}", w) for n, (_, w, ck) in weights.items()
        }
        change = {n: (f"{n}: the change W - W0", w - w0) for n, (w0, w, _) in weights.items()}
        if same_start:
            panels = [
                (f"at initialisation (seed {seeds.pop()}: both runs start here)", weights["d2l"][0]),
                *trained.values(),
                None,
                *change.values(),
            ]
        else:
            panels = [
                q for n, (w0, _, _) in weights.items() for q in ((f"{n} at initialisation", w0), trained[n], change[n])
            ]
        R.atomic_write(figure, P.figure_png(filter_panels_figure(panels, cols=3), 100))
        rebuilt = {n: init_is_rebuilt(ck["cfg"], Path(tmp) / f"init-{n}") for n, (_, _, ck) in weights.items()}
        section = write_section(
            docs, facts, made, weights, logs, figure, same_start, rebuilt, args.conditions, repaired
        )
    page = docs / "report.md"
    text = page.read_text()
    a, b = text.index(START), text.index(END)
    R.atomic_write(page, text[: a + len(START)] + "\n" + section + "\n" + text[b:])
    print(f"written: {page}, {figure}, {docs / 'runs'}/d2l-224 and fast-224")


def init_is_rebuilt(cfg, scratch: Path) -> bool:
    """Whether the network `train` builds for this configuration (its Session, before any step)
    equals seeds.initial_first_conv's rebuild and build_model(seed), every tensor bit for bit."""
    from alexnet import train as T
    from alexnet.models import build_model

    cfg = cfg.replace(limit_train=cfg.train.batch_size, limit_test=1)  # the data do not enter the network's start
    with T.Session(cfg, torch.device("cpu"), 0, 1, quiet=True, progress=False) as s:
        s.prepare(scratch, None, [])
        start = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
    ref = build_model(cfg.train.model, s.data.channels, len(s.data.classes), seed=cfg.train.seed).state_dict()
    first = initial_first_conv(cfg, s.data.channels, len(s.data.classes))
    return all(torch.equal(ref[k], v) for k, v in start.items()) and torch.equal(first, next(iter(start.values())))


def write_section(
    docs, facts, made, weights, logs, figure, same_start, rebuilt, conditions: str = "", repaired: dict | None = None
) -> str:
    mach = machine(torch.device("cpu"))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = [f"*Written {when} by `python benchmarks/chapter_224.py` from the runs as they stood then.*", ""]
    for n, f in facts.items():
        ck = f.ckpt
        out.append(
            f"- **`{n}`** (`alexnet train --preset {n}" + (" --epochs 10" if n == "fast" else "") + " --seed 0`): "
            f"epoch {ck['epoch']} of {f.cfg.train.epochs}"
            + (", run continuing" if f.live else "")
            + (
                ", stopped there (`alexnet train --resume` continues it exactly)"
                if not f.live and ck["epoch"] < f.cfg.train.epochs
                else ""
            )
            + "; "
            f"{sum(r['epoch_time_s'] for r in f.metrics) / 60:.0f} min of wall time"
            + (" so far " if ck["epoch"] < f.cfg.train.epochs else " ")
            + f"({sum(r['epoch_time_s'] for r in f.metrics) / len(f.metrics) / 60:.1f} min per epoch, "
            f"{sum(r['train_images_per_s'] for r in f.metrics) / len(f.metrics):.1f} training images/s). "
            + (f"Its log's first line: `{logs[n]}`. " if logs.get(n) else "")
            + f"Report: [html](runs/{n}-224/report.html), [md](runs/{n}-224/report.md)."
        )
    out += ["", f"Machine: {mach.line()}" + (f"; {conditions}" if conditions else "."), ""]
    fixed = {n: e for n, e in (repaired or {}).items() if e}
    if fixed:
        out += [
            "Epoch wall times repaired here: "
            + "; ".join(f"`{n}` epoch{'s' * (len(e) > 1)} {', '.join(map(str, e))}" for n, e in fixed.items())
            + ". Each was resumed mid-epoch by code that recorded only the last process's part of the epoch's wall "
            "time (fixed since); the table shows its training plus evaluation seconds, which the rows hold whole, "
            "so the interruptions' start-up is not counted.",
            "",
        ]
    out += [
        "### Epoch by epoch, against the book",
        "",
        epoch_table(facts),
        "",
        f"Test accuracy is on {test_set(facts['d2l'].cfg)}; train loss is the epoch's running mean (with dropout, and "
        "for `fast` with augmentation and label smoothing 0.1, so its loss does not go as low). `fast` decays its "
        "learning rate on a cosine over the 10 epochs: before epoch 10 it has not finished annealing.",
        "",
    ]
    # Figure 8.1.2
    w0 = weights["d2l"][0]
    o, c, kh, kw = w0.shape
    rows = [
        "| weights | median low-frequency share | IQR | kernels above their initial share | median orientation | "
        "‖W − W₀‖ / ‖W₀‖ | the change W − W₀: median low-frequency share | the change: median orientation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    starts = [
        ("at initialisation (seed 0)" if same_start else f"`{n}` at initialisation", weights[n][0])
        for n in (["d2l"] if same_start else list(weights))
    ]
    for label, w in starts:
        s = low_frequency_share(w)
        rows.append(
            f"| {label} | {s.median():.3f} | {s.quantile(0.25):.3f}–{s.quantile(0.75):.3f} | — | "
            f"{orientation_strength(w).median():.3f} | — | — | — |"
        )
    summary, decayed = {}, {}
    for n, (w0n, w, ck) in weights.items():
        s, s0, ds = low_frequency_share(w), low_frequency_share(w0n), low_frequency_share(w - w0n)
        ori, dori = orientation_strength(w).median(), orientation_strength(w - w0n).median()
        moved = float((w - w0n).norm() / w0n.norm())
        still = int(((w - w0n).flatten(1).abs().amax(1) == 0).sum())  # never moved: no gradient reached them
        decayed[n] = ck["cfg"].train.weight_decay > 0
        summary[n] = (
            s.median(),
            s0.median(),
            ds.median(),
            moved,
            int((s > s0).sum()),
            dori,
            orientation_strength(w0n).median(),
            still,
        )
        rows.append(
            f"| `{n}`, epoch {ck['epoch']} | {s.median():.3f} | {s.quantile(0.25):.3f}–{s.quantile(0.75):.3f} | "
            f"{int((s > s0).sum())} of {o} | {ori:.3f} | {moved:.0%} | {ds.median():.3f} | {dori:.3f} |"
        )
    rel = figure.relative_to(docs)
    out += [
        "### Figure 8.1.2: the first layer, trained and at initialisation",
        "",
        f"![first-layer kernels at initialisation and trained]({rel})",
        "",
        f"{o} kernels of {kh}×{kw} on {c} channel, each scaled to its own range. "
        + (
            "Both runs start from the same network: the seed fixes the initialisation, and `train` builds it with "
            "`build_model(..., seed)` before anything else draws a random number, so `seeds.initial_first_conv` "
            "rebuilds it (tests/test_report.py checks this against a checkpoint taken before the first step). "
            if same_start
            else ""
        )
        + (
            "Here, for both runs' settings, the network `train` builds before its first step equals the rebuilt "
            "one in every tensor, bit for bit. "
            if all(rebuilt.values())
            else f"WARNING: the rebuilt initialisation differs from what `train` builds for {[n for n, ok in rebuilt.items() if not ok]}. "
        )
        + f"The low-frequency share of a kernel is the part of its energy at spatial frequencies of at most "
        f"{LOW_FREQUENCY:g} cycles per pixel (periods of {1 / LOW_FREQUENCY:g} pixels or longer): 1 for a "
        f"constant kernel, 0 for a checkerboard, {chance_share(kh, kw):.3f} expected for white noise on "
        f"{kh}×{kw} (the share of its DFT bins that are low). The orientation of a kernel is how much of its "
        "energy away from frequency 0 lies along one direction (from the energy-weighted second moments of the "
        "frequency vector): 1 for stripes, 0 for a round blob, a little above 0 for white noise by chance.",
        "",
        *rows,
        "",
    ]
    lines = []
    for n, (s, s0, ds, moved, up, _, _, still) in summary.items():
        lines.append(
            f"`{n}`: median share {s0:.3f} → {s:.3f} ({up} of {o} kernels smoother than they started); "
            f"the kernels moved {moved:.0%} of their initial norm, and that change is itself "
            f"{ds:.3f} low-frequency. {still} of its {o} kernels have not moved at all (W = W₀ exactly, "
            "flat grey in the change): no gradient has reached them, their ReLU has never passed one"
            + (
                " (with weight decay even such a kernel shrinks, so this count cannot show them)."
                if decayed[n]
                else "."
            )
        )
    out += [" ".join(lines), "", *verdict(summary, chance_share(kh, kw), facts["d2l"].record["resolution"]), ""]
    out += ["### Activations, one test image per class", ""]
    for n, f in facts.items():
        out += [
            f"`{n}`, epoch {f.ckpt['epoch']}:",
            "",
            f"![activations of {n}](runs/{n}-224/report-figures/activations.png)",
            "",
        ]
    out += ["### The reports themselves", ""]
    live = sum(bool(f.live) for f in facts.values())
    beside = {0: "with neither run training", 1: "beside one run training"}.get(live, "beside both runs training")
    for n, d in made.items():
        out.append(
            f"- `{n}`: report.html {d['bytes'] / 1e6:.2f} MB (every figure inlined), made in {d['seconds']:.0f} s "
            f"on the machine above, {beside} (most of it evaluating the checkpoint on "
            f"{test_set(facts[n].cfg)} at {facts[n].record['resolution']}×{facts[n].record['resolution']})."
        )
    return "\n".join(out)


def test_set(cfg) -> str:
    return f"the first {cfg.data.limit_test:,} test images" if cfg.data.limit_test else "the whole test set"


def verdict(summary: dict, chance: float, resolution: int) -> list[str]:
    """Says, from the numbers, which way the kernels went; no sentence here is typed for a result."""
    out = []
    for n, (s, s0, ds, _moved, _up, dori, ori0, _) in summary.items():
        if ds > 2 * chance and s > s0:
            out.append(
                f"`{n}`: what training added to the kernels is smooth ({ds:.2f} of the change's energy is "
                f"low-frequency, against {chance:.2f} for noise) and "
                + (
                    f"oriented (its median orientation {dori:.2f}, the initial noise's {ori0:.2f})"
                    if dori > 2 * ori0
                    else f"has no preferred orientation (its median orientation {dori:.2f}, the initial noise's "
                    f"{ori0:.2f})"
                )
                + "; it sits on an initialisation it has not erased, so the kernels as a whole are "
                + (
                    f"only a little smoother ({s0:.2f} → {s:.2f}), still close to noise's {chance:.2f}."
                    if s < 2 * chance
                    else f"clearly smoother ({s0:.2f} → {s:.2f})."
                )
            )
        elif s > s0:
            out.append(
                f"`{n}`'s kernels became a little smoother ({s0:.3f} → {s:.3f}), but the change is not "
                f"concentrated at low frequencies ({ds:.2f}, noise {chance:.2f})."
            )
        else:
            out.append(f"`{n}`'s kernels did not become smoother ({s0:.3f} → {s:.3f}).")
    if out:
        up = resolution / NATIVE
        out = [
            " ".join(out) + f" Fashion-MNIST's {NATIVE}×{NATIVE} images upsampled {up:g}× have no detail finer than "
            f"about {up:g} pixels, so "
            "a gradient can only move a kernel along the smooth patterns the images hold; the random high-"
            "frequency part of the initialisation gets almost no gradient and stays (decayed only by weight decay, which "
            "`fast` has and `d2l` has not)."
        ]
    return out


if __name__ == "__main__":
    main()
