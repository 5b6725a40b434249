"""The one table writer: rows of dicts to Markdown, aligned text or CSV.

How to use it:

    from alexnet.tables import Column, markdown, csv

    cols = [Column("batch"), Column("images_per_s", "images/s", "{:.1f}"), Column("note", left=True)]
    markdown(rows, cols)    # | batch | images/s | note |, numbers right-aligned
    text(rows, cols)        # the same, aligned in plain text for a terminal
    csv(rows, cols)         # keys as the header, raw values (floats to 6 significant digits)

A row may lack a column's key (or hold None): its cell is empty. ``present(cols, rows)`` keeps the
columns some row fills. A column's ``fmt`` is a format string or a function of the value. Without
columns, every key of the first row is a column, formatted with ``str``. ``grid(header, cells)``
is the low-level form for cells that are already strings.
"""

from __future__ import annotations

import csv as _csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    key: str
    header: str | None = None  # default: the key
    fmt: str | Callable[[object], str] = "{}"
    left: bool = False  # names left-aligned, numbers right-aligned

    @property
    def title(self) -> str:
        return self.key if self.header is None else self.header

    def cell(self, row: dict) -> str:
        v = row.get(self.key)
        if v is None:
            return ""
        return self.fmt(v) if callable(self.fmt) else self.fmt.format(v)


def _columns(rows: list[dict], columns: Iterable[Column | str] | None) -> list[Column]:
    if columns is None:
        columns = list(rows[0]) if rows else []
    return [c if isinstance(c, Column) else Column(c) for c in columns]


def present(columns: Iterable[Column], rows: list[dict]) -> list[Column]:
    """The columns that at least one row has a value for."""
    return [c for c in columns if any(r.get(c.key) is not None for r in rows)]


def grid(header: list[str], cells: list[list[str]], style: str = "markdown", left: Iterable[int] = (0,)) -> str:
    """Cells already formatted: a Markdown table, or plain text aligned in columns (``style='text'``)."""
    left = set(left)
    if style == "markdown":
        rule = "|" + "|".join("---" if i in left else "---:" for i in range(len(header))) + "|"
        return "\n".join(["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(r) + " |" for r in cells])
    if style != "text":
        raise ValueError(f"unknown table style {style!r}: markdown or text")
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(r):
        return "  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(header)] + [line(r) for r in cells])


def _render(rows: list[dict], columns, style: str) -> str:
    cols = _columns(rows, columns)
    cells = [[c.cell(r) for c in cols] for r in rows]
    return grid([c.title for c in cols], cells, style, [i for i, c in enumerate(cols) if c.left])


def markdown(rows: list[dict], columns: Iterable[Column | str] | None = None) -> str:
    return _render(rows, columns, "markdown")


def text(rows: list[dict], columns: Iterable[Column | str] | None = None) -> str:
    return _render(rows, columns, "text")


def csv(rows: list[dict], columns: Iterable[Column | str] | None = None) -> str:
    """Keys as the header and raw values, so a spreadsheet reads numbers, not formatted text."""
    cols = _columns(rows, columns)
    out = io.StringIO()
    w = _csv.writer(out, lineterminator="\n")
    w.writerow([c.key for c in cols])
    for r in rows:
        w.writerow(
            [
                "" if r.get(c.key) is None else f"{r[c.key]:.6g}" if isinstance(r[c.key], float) else r[c.key]
                for c in cols
            ]
        )
    return out.getvalue()
