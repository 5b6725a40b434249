"""`alexnet report RUN [RUN ...]`: the pages written into --out (by default the run's directory), and
only over what this command wrote there; `alexnet serve`'s body of a run's report.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..runs import atomic_write, not_regular
from .compare import ReportError, compare_table
from .facts import read_facts, read_regular
from .figures import COMPARE_PNG_MARK, plot_runs
from .render import Block, html_document, markdown_text, to_html, to_markdown
from .sections import comparison_blocks, run_blocks


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


MARK = "<!-- written by alexnet report -->"
FIGURES_MARK = ".written-by-alexnet-report"
_FIGURE_NAME = re.compile(
    r"(run\d+-)?(curves|confusion|misclassified|filters|activations|comparison|accuracy-vs-budget)\.png"
)
_LEGACY_FOOTER = "Made by alexnet report from "


def _page_is_ours(path: Path) -> bool:
    """A report.html or report.md this command wrote: its first line is MARK, or (a page written before
    the mark) it ends with the footer alexnet report wrote then."""
    ends = read_regular(path, 65536)
    if ends is None:
        return False
    head, tail, _ = ends
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


# ---------------------------------------------------------------------------------------------
# `alexnet compare RUN ... --out NAME.png`: the curves, and the table beside them as NAME.md


COMPARE_MARK = "<!-- written by alexnet compare -->"


def _compare_table_is_ours(path: Path) -> bool:
    """NAME.md as compare writes it: its mark first, or (before the mark) compare's table header."""
    ends = read_regular(path, 4096)
    first = ends[0].split("\n", 1)[0] if ends else ""
    return first == COMPARE_MARK or first.startswith("| run | model | preset | input | params_M |")


def _png_is_ours(path: Path) -> bool:
    ends = read_regular(path, 4096)  # matplotlib writes its text chunks before the image data
    return bool(ends) and ends[0].startswith("\ufffdPNG") and f"Description\x00{COMPARE_PNG_MARK}" in ends[0]


def write_compare(run_dirs: list, out: str | Path, overwrite: bool = False) -> tuple[str, Path, Path]:
    """`alexnet compare`'s curves into ``out`` (a .png) and its table beside it (.md), each only over
    a file compare wrote (or with ``overwrite``); returns the table and the two paths."""
    from ..runs import read_run

    png = Path(out)
    if png.suffix.lower() != ".png":
        raise ReportError(f"--out {png}: the curves are a PNG; name it NAME.png (the table goes beside it as NAME.md)")
    md = png.with_suffix(".md")
    runs = [read_run(r) for r in run_dirs]
    legacy_pair = _compare_table_is_ours(md)  # a table of compare's beside it: the PNG is its curves
    for path, ours in ((png, lambda p: _png_is_ours(p) or legacy_pair), (md, _compare_table_is_ours)):
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_symlink() or not path.is_file():
            kind = "a symlink" if path.is_symlink() else "a directory" if path.is_dir() else "not a regular file"
            raise ReportError(f"{path}: {kind}, not a file alexnet compare wrote; it is left as it is")
        if not overwrite and not ours(path):
            raise ReportError(
                f"{path}: not written by alexnet compare; choose another --out, or pass --overwrite to replace it"
            )
    table = compare_table(runs)
    plot_runs(runs, png)
    atomic_write(md, COMPARE_MARK + "\n" + table + "\n")
    return table, png, md


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

    from ..runs import RunError

    t0 = time.perf_counter()
    dirs = [Path(r) for r in run_dirs]
    if out is None:
        if len(dirs) > 1:
            raise ReportError("several runs: say where the report goes with --out DIR")
        out = dirs[0]
    out = Path(out)
    for d in dirs:
        read_facts(d, network=False)  # a directory that is not a run fails here, before anything is computed
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
    html = html_document(title, blocks, made)  # templates/report.html's first line is MARK
    figs = out / "report-figures"
    created: list[Path] = []
    try:
        _make_dir(figs, created)
        atomic_write(figs / FIGURES_MARK, "Figures of report.html and report.md beside this folder.\n")
        for b in blocks:
            if b.kind == "figure":
                atomic_write(figs / b.name, b.png)
        atomic_write(out / "report.md", MARK + "\n" + to_markdown(blocks) + f"\n---\n{markdown_text(made)}\n")
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
