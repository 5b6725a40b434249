"""`alexnet exercises`: the training exercises of D2L §8.1 (4, 5, 7, 8) rerun over seeds at a chosen
budget, and docs/exercises.md written from the finished runs, with exercises 1–3 and 6 beside them.

Every configuration runs once per seed; a table row is mean ± std over the seeds (sample std), and
a difference is called real only when it is larger than the two spreads together. Runs go to
``runs/exercises-BUDGET/NAME-sSEED``, and the page of every budget but ``full`` beside them (only
``full`` writes docs/exercises.md by default); a finished run is reused, so an interrupted sweep continues
where it stopped and ``--render-only`` rewrites the report without training.

The rooms, each importing only those above it:
    plan.py      the budgets and the configurations each exercise compares
    results.py   the ledger of runs; a configuration's seeds as a Group, found by name; "within the spread"
    common.py    what every writer uses: the networks counted, Groups as a table (columns by name) and a figure
    pictures.py  the last section: Figure 8.1.2's kernels from the sweep's runs, one image's feature maps
    sections.py  one writer per exercise: its tables, figures and prose, every number read, none typed
    page.py      the page: head, summary table, the budgets' cost; a larger budget's page never written over
    run.py       the sweep: train what the plan lacks (under the team's CPU lock), then write the page
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ConfigError
from .page import measured_rows, page_budget
from .plan import BUDGETS, EXERCISE_OF, PUBLISHED, plan
from .run import run_exercises

__all__ = ["BUDGETS", "EXERCISE_OF", "add_parser", "measured_rows", "page_budget", "plan", "run_exercises"]


def cmd_exercises(args) -> int:
    only = {s.strip() for s in args.only.split(",")} if args.only else None
    unknown = sorted((only or set()) - set(EXERCISE_OF.values()))
    if unknown:
        raise ConfigError(
            f"--only {','.join(unknown)}: no such training exercise "
            f"(these train: {', '.join(sorted(set(EXERCISE_OF.values())))})"
        )
    run_exercises(
        args.budget,
        Path(args.out) if args.out else None,
        Path(args.runs) if args.runs else None,
        only=only,
        data_dir=args.data_dir,
        render_only=args.render_only,
        overwrite=args.overwrite,
    )
    return 0


def add_parser(sub) -> None:
    x = sub.add_parser(
        "exercises",
        help="rerun the training exercises at a budget; write their page (docs/exercises.md for --budget full)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    x.add_argument(
        "--budget",
        choices=list(BUDGETS),
        default="small",
        help="about how long each takes on 2 CPU cores: "
        + ", ".join(f"{name}: ~{b.minutes} min" for name, b in BUDGETS.items())
        + " (smoke is the CI check; docs/exercises.md gives the measured times)",
    )
    x.add_argument(
        "--out",
        help=f"the report (none: docs/exercises.md for --budget {PUBLISHED}, RUNS/exercises.md for the others); "
        "figures go to a folder beside it, one per budget",
    )
    x.add_argument("--runs", help="where the runs go (none: runs/exercises-BUDGET); finished runs are reused")
    x.add_argument("--only", help="comma-separated exercises to train, e.g. 7,8 (none: all)")
    x.add_argument("--data-dir", help="directory of Fashion-MNIST (none: found automatically)")
    x.add_argument("--render-only", action="store_true", help="train nothing; write the report from finished runs")
    x.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the report even when the file there is a larger budget's page, not a page of this "
        "command, or has more measured rows",
    )
    x.set_defaults(func=cmd_exercises)
