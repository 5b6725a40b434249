"""docs/exercises.md: the page's head and one-table summary, each exercise's section (sections.py),
what each budget cost, and the rules for writing over a page already there: never over a file that
is not such a page, never over a larger budget's page, never with fewer measured rows; ``--overwrite``
lifts all three. Figures go to a folder of their budget's own, so no budget replaces another's."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from ..measure import machine
from ..runs import RunError, atomic_write
from ..tables import grid
from .plan import BUDGETS, PUBLISHED, Budget, plan
from .results import Ledger, collect
from .sections import SECTIONS

TITLE = "# The exercises of D2L §8.1, answered and measured"
PAGE_BYTES = 4 * 2**20  # far above any page this command writes: a larger file is not one of them
_BUDGET = re.compile(r"\bBudget `([^`\n]{1,40})`:")  # the head's "Budget `full`: 81 of 81 training runs"


def measured_rows(text: str) -> int:
    """Table rows holding a measurement: no header, no separator, no "—" cell, no "not measured"."""
    lines = text.splitlines()
    headers = {prev for prev, ln in zip(lines, lines[1:]) if ln.startswith("|---")}
    rows = [ln for ln in lines if ln.startswith("|") and not ln.startswith("|---") and ln not in headers]
    return sum(1 for r in rows if "—" not in r and "not measured" not in r)


def figures_folder(out: Path, b: Budget) -> Path:
    """Where budget ``b``'s figures go beside the page ``out``: ``figures/exercises`` for the budget
    docs/exercises.md publishes, ``figures/exercises-NAME`` for the others, so a smaller budget's
    figures never replace a larger one's, whatever --out says."""
    return out.parent / "figures" / ("exercises" if b.name == PUBLISHED else f"exercises-{b.name}")


def page_budget(text: str) -> str | None:
    """The budget a page was written at, from its head (None: the head names none)."""
    head = text.split("\n## ", 1)[0]
    found = _BUDGET.search(head)
    return found.group(1) if found else None


def existing_page(out: Path) -> str | None:
    """The text of the file at ``out`` (None: there is none), read without blocking and bounded: a
    FIFO or a directory is refused with one line, a file over PAGE_BYTES reads as "" (not a page)."""
    try:
        fd = os.open(out, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RunError(f"{out}: cannot be read ({e.strerror}); give another --out") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise RunError(f"{out}: {kind}, not a file; give another --out")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(PAGE_BYTES + 1)
    finally:
        os.close(fd)
    return "" if len(data) > PAGE_BYTES else data.decode(errors="replace")


def check_page(out: Path, b: Budget, overwrite: bool = False) -> str | None:
    """The page at ``out`` that budget ``b`` may replace (None: there is none). Refused, in one line
    naming --overwrite: a file that is not a page of `alexnet exercises`, and a larger budget's page
    (or one whose budget this version does not know). A path that is not a file is refused always."""
    text = existing_page(out)
    if text is None or overwrite:
        return text
    why = None
    if not text.startswith(TITLE):
        why = "it is not a page `alexnet exercises` wrote"
    elif (theirs := page_budget(text)) not in BUDGETS:
        why = f"its budget ({theirs or 'none named'}) is not one of {', '.join(BUDGETS)}"
    elif list(BUDGETS).index(theirs) > list(BUDGETS).index(b.name):
        why = f"it is the larger `{theirs}` budget's page, and this is `{b.name}`"
    if why:
        raise RunError(f"{out}: not rewritten: {why}; --overwrite replaces it anyway")
    return text


def render(
    b: Budget, p: dict, root: Path, ledger: Ledger, out: Path, data: dict, sweep_s: float, overwrite: bool = False
) -> dict:
    """Write the report and its figures; check_page's refusals, and a page with fewer measured rows
    than the one it would replace (runs missing from ``root``, a narrower --only), unless ``overwrite``."""
    check_page(out, b, overwrite)  # before anything is drawn
    final = figures_folder(out, b)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The figures are drawn aside and moved in only once the page is known to keep what it had.
    figs = Path(tempfile.mkdtemp(prefix=".exercises.", dir=final.parent))
    try:
        result = _render(b, p, root, ledger, out, data, sweep_s, overwrite, figs, final)
    finally:
        shutil.rmtree(figs, ignore_errors=True)
    return result


def _render(b, p, root, ledger, out, data, sweep_s, overwrite, figs, final) -> dict:
    g = {key: collect(specs, b, root, ledger) for key, specs in p.items()}
    rel = os.path.relpath(final, out.parent)
    cmd = f"alexnet exercises --budget {b.name}"
    sections, readme = [], []
    for write in SECTIONS:
        text, row = write(b, g, figs, rel, cmd, root)
        sections.append(text)
        readme.extend(row)
    names = {f"{s.name}-s{seed}" for specs in p.values() for s in specs for seed in b.seeds}
    locked = sum(e.get("wall_s", 0.0) for n, e in ledger.entries.items() if n in names)
    done = sum(1 for n in names if ledger.entries.get(n, {}).get("status") in ("done", "failed"))
    sections.append(_costs_section(b, root))
    head = _head(b, cmd, root, data, readme, done, len(names), locked, sweep_s)
    text = "\n".join(head + sections) + "\n"
    old = check_page(out, b, overwrite)  # again: the page may have changed while the runs trained
    had = measured_rows(old) if old else 0
    if measured_rows(text) < had and not overwrite:
        raise RunError(
            f"{out}: not rewritten: it has {had} measured rows, this report {measured_rows(text)} "
            f"(are runs missing from {root}?); --overwrite replaces it anyway"
        )
    final.mkdir(parents=True, exist_ok=True)
    for f in figs.iterdir():
        os.replace(f, final / f.name)
    atomic_write(out, text)
    return {"figures": final, "readme": readme, "groups": g}


def _costs_section(b: Budget, root: Path) -> str:
    """The last section: each budget's images × epochs per run, and what its runs cost here."""
    costs = []
    for name, other in BUDGETS.items():
        path = (root if name == b.name else root.parent / f"exercises-{name}") / "ledger.json"
        entries = Ledger(path.parent).entries if path.exists() else {}
        want = {f"{s.name}-s{seed}" for specs in plan(other).values() for s in specs for seed in other.seeds}
        got = [e for n, e in entries.items() if n in want and e.get("status") in ("done", "failed")]
        whole = "—" if not other.whole_epochs else f"{other.whole_train or 'all'}×{other.whole_epochs}"
        costs.append(
            [
                f"`{name}`",
                str(len(other.seeds)),
                f"{other.train224}×{other.epochs224}",
                f"{other.train28}×{other.epochs28}",
                whole,
                f"{other.train28}×{other.epochs7}",
                " and ".join(f"{n}×{e}" for n, e in zip(other.sizes8, other.epochs8)),
                f"{len(got)} of {len(want)} runs, {sum(e.get('wall_s', 0.0) for e in got) / 60:.1f} min"
                if got
                else "not run on this machine",
            ]
        )
    return "\n".join(
        [
            "## What the budgets cost",
            "",
            "Images × epochs per run (224: exercises 4 and 5 at 224×224; 28: exercise 4 at 28×28; 28 whole: "
            "exercise 4 on the whole training set; 7: the LeNet family; 8: the two training-set sizes of "
            "exercise 8), and the training wall time measured here, each run timed alone (under the team's CPU "
            "lock) and summed:",
            "",
            grid(
                ["budget", "seeds", "224", "28", "28 whole", "7", "8", "measured here"],
                costs,
                left=(0, 2, 3, 4, 5, 6, 7),
            ),
            "",
        ]
    )


def _head(
    b: Budget, cmd: str, root: Path, data: dict, readme: list, done: int, planned: int, locked: float, sweep_s: float
) -> list[str]:
    """The page's title, what wrote it and on what, how to read it, and the summary table."""
    return [
        "# The exercises of D2L §8.1, answered and measured",
        "",
        f"Written by `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}) on {machine().line()}. "
        f"Budget `{b.name}`: {done} of {planned} training runs finished, seeds {', '.join(map(str, b.seeds))}, "
        f"{locked / 60:.1f} minutes of training wall time in all (each run timed alone"
        + (f"; this invocation {sweep_s / 60:.1f} min" if sweep_s >= 1 else "")
        + "). Fashion-MNIST"
        + (f" ({data['dataset']})" if data.get("dataset") else "")
        + ", bf16 autocast where the CPU has it.",
        "",
        *(
            [
                f"This report is the `{b.name}` budget; `--budget full` trains on larger subsets for more epochs "
                "(see the last section for both and what each cost here).",
                "",
            ]
            if b.name != "full"
            else []
        ),
        "In the figures, *val* is the test set (its first N images, as each section says): Fashion-MNIST "
        "has no separate validation split, and nothing here is tuned on it.",
        "",
        "Every comparison is the mean ± sample standard deviation over the seeds. A difference is called "
        "real only when it is larger than the two configurations' standard deviations added together; "
        "otherwise it is *within the spread*. Runs: `" + str(root) + "/NAME-sSEED` (`alexnet compare` "
        "on any of them gives the same rows).",
        "",
        "## In one table",
        "",
        grid(
            ["exercise", "command", "answer (measured)", "figure"],
            [[e, f"`{c}`", a, f] for e, c, a, f in readme],
            left=range(4),
        ),
        "",
    ]
