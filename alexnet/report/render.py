"""The page of `alexnet report` in its two forms, from one list of ``Block``s (heading, paragraph,
list, table, figure), so the two files cannot disagree: self-contained HTML from the Jinja2
templates alexnet/templates/report*.html (every figure inlined, a print stylesheet; autoescaped, so
a run named like a tag is shown as text), and a Markdown twin whose figures sit in a folder beside it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from ..tables import grid
from .compare import Spread, cell


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


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def markdown_text(text: str) -> str:
    """Text for a Markdown page: a '<' would open raw HTML, which most renderers pass through (a run
    named like a tag could run a script in the reader's viewer), so it is written as an entity."""
    return str(text).replace("<", "&lt;")


def to_markdown(blocks: list[Block], figures: str = "report-figures") -> str:
    """Markdown; figures are links to ``figures/NAME`` (the caller writes the PNGs there)."""
    out = []
    for b in blocks:
        if b.kind == "h":
            out += ["#" * b.level + " " + markdown_text(b.text).replace("\n", " "), ""]
        elif b.kind == "p":
            out += [markdown_text(b.text), ""]
        elif b.kind == "pre":
            out += ["```", b.text, "```", ""]
        elif b.kind == "list":
            out += [f"- {markdown_text(item)}" for item in b.items] + [""]
        elif b.kind == "table" and b.rows:
            keys = list(b.rows[0])
            cells = [
                [markdown_text(cell(k, r[k], b.formats)).replace("|", "\\|").replace("\n", " ") for k in keys]
                for r in b.rows
            ]
            numeric = [
                isinstance(b.rows[0][k], (int, float, Spread)) and not isinstance(b.rows[0][k], bool) for k in keys
            ]
            out += [grid([markdown_text(k) for k in keys], cells, left=[i for i, n in enumerate(numeric) if not n]), ""]
        elif b.kind == "figure":
            out += [f"![{markdown_text(b.text)}]({figures}/{b.name})", "", f"*{markdown_text(b.text)}*", ""]
    return "\n".join(out)


def to_html(blocks: list[Block]) -> str:
    """An HTML fragment, a line per block: every figure inlined as a base64 PNG, so it holds no link
    to anything."""
    return _templates().get_template("report_blocks.html").render(blocks=_shown(blocks))


def html_document(title: str, blocks: list[Block], made: str) -> str:
    """report.html: the blocks, ``made`` as the footer, a print stylesheet; its first line is the
    mark by which `alexnet report` knows the page as its own (write.MARK)."""
    return _templates().get_template("report.html").render(title=title, blocks=_shown(blocks), made=made)


def _shown(blocks: list[Block]) -> list[Block]:
    """The blocks a page shows: a table without rows is no table."""
    return [b for b in blocks if b.kind in ("h", "p", "pre", "list", "figure") or (b.kind == "table" and b.rows)]


@functools.cache
def _templates():
    """The report's Jinja2 templates, autoescaped: every value from a run is text unless marked safe,
    and nothing here marks one."""
    import base64

    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["slug"] = _slug
    env.filters["b64"] = lambda png: base64.b64encode(png).decode()
    env.globals["cell"] = cell
    return env
