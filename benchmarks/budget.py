"""Training to a clock: how close a `--time-budget` run lands to its budget, and the test accuracy
each budget buys (mean ± std over seeds), per preset.

    .venv/bin/python benchmarks/budget.py --presets speedrun --budgets 60s --seeds 0,1,2,3,4
    .venv/bin/python benchmarks/budget.py --presets speedrun,cpu --budgets 1min,2min,5min,10min,20min --seeds 0,1,2

Each (preset, budget, seed) is its own `alexnet train --preset P --time-budget B --seed S` process,
as a reader would run it. The budgeted part is the run's own clock (``plan.spent_s`` in its
config.json: from before the frozen stem and the measurement to the end of the final evaluation);
the whole command's wall time (Python start, imports, data load) is beside it. Finished runs are
kept in OUT/runs.jsonl and not run again, so the script can be stopped and restarted; the table
(OUT/results.md) and the figure (OUT/accuracy-vs-budget.png) are rewritten from all of them. The
machine's 1-minute load average before and after each run is recorded: on a shared machine the
step time, and so what a budget buys, moves with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from alexnet.config import parse_duration
from alexnet.measure import machine, timed
from alexnet.plotting import pyplot
from alexnet.report import Spread, plot_budget_curve
from alexnet.runs import atomic_write
from alexnet.tables import Column, markdown


def run_one(preset: str, budget: str, seed: int, run_dir: Path, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "alexnet",
        "train",
        "--preset",
        preset,
        "--time-budget",
        budget,
        "--seed",
        str(seed),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *extra,
    ]
    load0 = os.getloadavg()[0]
    proc, wall = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, check=False), "cpu")
    if proc.returncode == 2 and "--time-budget" in proc.stderr:  # the budget held no useful run: a result too
        return {
            "preset": preset,
            "budget": budget,
            "budget_s": parse_duration(budget),
            "seed": seed,
            "error": proc.stderr.strip().splitlines()[-1],
            "wall_s": wall,
            "load_start": load0,
            "load_end": os.getloadavg()[0],
            "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        }
    if proc.returncode:
        sys.exit(f"budget.py: {preset} {budget} seed {seed} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    config = json.loads((run_dir / "config.json").read_text())
    plan, final = config["plan"], json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return {
        "preset": preset,
        "budget": budget,
        "budget_s": plan["budget_s"],
        "seed": seed,
        "model": config["train"]["model"],
        "acc": final["val_acc"],
        "spent_s": plan["spent_s"],
        "wall_s": wall,
        "step_ms": plan["step_s"] * 1e3,
        "planned_steps": plan["schedule_steps"],
        "steps": plan["steps"],
        "epochs": plan["epochs"],
        "replans": len(plan["replans"]),
        "load_start": load0,
        "load_end": os.getloadavg()[0],
        "run_dir": str(run_dir),
        "chose": next((line for line in proc.stdout.splitlines() if line.startswith("network:")), None),
        "start_line": next((line for line in proc.stdout.splitlines() if "time budget" in line), None),
        "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def _groups(runs: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (preset, budget): accuracy mean ± std, and the budgeted part against the budget."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["preset"], r["budget_s"]), []).append(r)
    rows = []
    for (preset, budget_s), every in sorted(groups.items()):
        rs = [r for r in every if "error" not in r]
        if not rs:
            rows.append(
                {"preset": preset, "budget_s": budget_s, "seeds": 0, "refused": len(every), "error": every[-1]["error"]}
            )
            continue
        accs, spent = [r["acc"] for r in rs], [r["spent_s"] / budget_s for r in rs]
        rows.append(
            {
                "preset": preset,
                "budget_s": budget_s,
                "model": ", ".join(sorted({r["model"] for r in rs})),
                "seeds": len(rs),
                "acc_mean": statistics.mean(accs),
                "acc_std": statistics.stdev(accs) if len(rs) > 1 else 0.0,
                "acc_min": min(accs),
                "spent_mean": statistics.mean(spent),
                "spent_min": min(spent),
                "spent_max": max(spent),
                "epochs_mean": statistics.mean(r["epochs"] for r in rs),
                "step_ms": f"{min(r['step_ms'] for r in rs):.1f}-{max(r['step_ms'] for r in rs):.1f}",
                "load": f"{min(r['load_start'] for r in rs):.1f}-{max(r['load_end'] for r in rs):.1f}",
                "refused": len(every) - len(rs),
            }
        )
    return rows


def report(rows: list[dict], runs: list[dict], header: str) -> str:
    failed = [
        f"- {r['preset']} {r['budget']} seed {r['seed']} (load {r['load_start']:.1f}): {r['error']}"
        for r in runs
        if "error" in r
    ]
    rows = [
        {
            **r,
            "acc": (r["acc_mean"], r["acc_std"], r["acc_min"]),
            "spent": (r["spent_mean"], r["spent_min"], r["spent_max"]),
        }
        for r in rows
        if r["seeds"]
    ]
    runs = [r for r in runs if "error" not in r]
    table = markdown(
        rows,
        [
            Column("preset", left=True),
            Column("budget_s", "budget", "{:g} s"),
            Column("model", "network", left=True),
            Column("seeds"),
            Column("refused"),
            Column("acc", "test acc mean ± std (min)", lambda r: f"{r[0]:.4f} ± {r[1]:.4f} ({r[2]:.4f})"),
            Column("spent", "budgeted part / budget: mean (min-max)", lambda s: f"{s[0]:.3f} ({s[1]:.3f}-{s[2]:.3f})"),
            Column("epochs_mean", "epochs (mean)", "{:.2f}"),
            Column("step_ms", "measured step ms"),
            Column("load", "load average (1 min)"),
        ],
    )
    per_run = (
        markdown(
            runs,
            [
                Column("preset", left=True),
                Column("budget_s", "budget", "{:g} s"),
                Column("seed"),
                Column("model", "network", left=True),
                Column("acc", "test acc", "{:.4f}"),
                Column("spent_s", "budgeted part s", "{:.1f}"),
                Column("wall_s", "command s", "{:.1f}"),
                Column("step_ms", "measured step ms", "{:.1f}"),
                Column("planned_steps", "steps planned"),
                Column("steps", "steps taken"),
                Column("epochs", "epochs", "{:.2f}"),
                Column("replans", "re-plans"),
                Column("load_start", "load at start", "{:.1f}"),
                Column("load_end", "load at end", "{:.1f}"),
                Column("utc", "UTC", left=True),
            ],
        )
        if runs
        else ""
    )
    text = header + "\n\n" + (table if rows else "(no finished run)")
    if failed:
        text += "\n\nBudgets that held no useful run (the run's one-line refusal):\n\n" + "\n".join(failed)
    if per_run:
        text += f"\n\nPer run:\n\n{per_run}"
    return text + "\n"


def plot(rows: list[dict], runs: list[dict], path: Path, title: str) -> None:
    plt = pyplot()

    runs = [r for r in runs if "error" not in r]
    series: dict[str, list] = {}  # the report's curve (report.plot_budget_curve), from the ledger
    for (preset, budget_s, model), rs in sorted(_groups(runs, ("preset", "budget_s", "model")).items()):
        series.setdefault(f"--preset {preset}", []).append((budget_s, Spread(r["acc"] for r in rs), model))
    fig, (acc, clock) = plt.subplots(1, 2, figsize=(11, 4))
    plot_budget_curve(acc, series)
    for preset, mine in sorted(_groups(runs, ("preset",)).items()):
        clock.plot(
            [r["budget_s"] / 60 for r in mine],
            [r["spent_s"] / r["budget_s"] for r in mine],
            "o",
            alpha=0.6,
            label=preset[0],
        )
    clock.axhspan(0.95, 1.05, color="green", alpha=0.1, label="within 5 %")
    clock.axhline(1.0, color="grey", lw=0.8)
    clock.set(xscale="log", xlabel="time budget (minutes)", ylabel="budgeted part / budget (each run)")
    ticks = sorted({r["budget_s"] / 60 for r in runs})
    clock.set_xticks(ticks, [f"{t:g}" for t in ticks])
    clock.minorticks_off()
    clock.grid(alpha=0.3)
    clock.legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, 180), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="speedrun", help="comma-separated presets")
    p.add_argument("--budgets", default="60s", help="comma-separated budgets (90s, 5min, 1h30m)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    p.add_argument("--out", default="runs/budget-bench", help="directory for the runs, runs.jsonl, results.md")
    p.add_argument("--report-only", action="store_true", help="run nothing; rewrite the table and figure")
    p.add_argument("extra", nargs="*", help="more `alexnet train` flags, after --")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ledger = out / "runs.jsonl"
    runs = [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []
    header = f"`benchmarks/budget.py`; {machine().line()}; the load average per run says what else ran (about 2 is a run alone on 2 cores)"
    todo = (
        [
            (pr, b, int(s))
            for b in args.budgets.split(",")
            for pr in args.presets.split(",")
            for s in args.seeds.split(",")
        ]
        if not args.report_only
        else []
    )
    for preset, budget, seed in todo:
        if any(r["preset"] == preset and r["budget_s"] == parse_duration(budget) and r["seed"] == seed for r in runs):
            continue
        r = run_one(preset, budget, seed, out / f"{preset}-{budget}-seed{seed}-{int(time.time())}", args.extra)
        runs.append(r)
        with ledger.open("a") as f:
            f.write(json.dumps(r) + "\n")
        if "error" in r:
            print(f"{preset} {budget} seed {seed}: {r['error']}", flush=True)
            continue
        print(
            f"{preset} {budget} seed {seed}: test acc {r['acc']:.4f}, budgeted part {r['spent_s']:.1f} s "
            f"({r['spent_s'] / r['budget_s']:.3f} of the budget), {r['epochs']:.2f} epochs, {r['replans']} re-plans, "
            f"load {r['load_start']:.1f} -> {r['load_end']:.1f}",
            flush=True,
        )
    rows = summarise(runs)
    atomic_write(out / "results.md", report(rows, runs, header))
    atomic_write(
        out / "results.json", json.dumps({"rows": rows, "runs": runs, "machine": machine().asdict()}, indent=2) + "\n"
    )
    plot(rows, runs, out / "accuracy-vs-budget.png", header)
    print((out / "results.md").read_text(), end="")
    return rows


if __name__ == "__main__":
    main()
