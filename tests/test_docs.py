"""The README and docs/ point only at things that exist: every relative link and image, and every
#anchor into a Markdown page, resolves."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<img[^>]*\ssrc=\"([^\"]+)\"")


def _prose(text: str) -> str:
    """The page without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(page.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            out.add(s if n == 0 else f"{s}-{n}")
            seen[s] = n + 1
    return out


def links(page: Path) -> list[str]:
    return [a or b for a, b in LINK.findall(_prose(page.read_text()))]


def test_the_link_checker_sees_links_images_and_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        '# The 224×224 recipes\n[a](x.md#top) ![b](fig.png) <img src="y.png">\n'
        "```\n[not](a-link.md)\n```\n`[nor](this.md)` [web](https://example.com)\n"
    )
    assert links(page) == ["x.md#top", "fig.png", "y.png", "https://example.com"]
    assert anchors(page) == {"the-224224-recipes"}


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_and_image_exists(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def code_map() -> list[list[str]]:
    """The README code map's rows, top room first: each row's modules (`train.py` → train, `exercises/` → exercises)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Code map") :].split("\n## ")[0]
    rows = []
    for line in table.splitlines():
        cells = line.split("|")
        if len(cells) > 2 and "`" in cells[1]:
            rows.append([m.rstrip("/").removesuffix(".py") for m in re.findall(r"`([\w/.]+)`", cells[1])])
    return [r for r in rows if r not in (["d2l"], ["benchmarks"])]


def upward_imports(package: Path, rows: list[list[str]]) -> tuple[list[str], set[str]]:
    """Every relative import in the package (top level or inside functions) that reaches a room above its own,
    and the modules the map does not place. Imports within a row, or within a sub-package, are allowed."""
    import ast

    row = {m: i for i, r in enumerate(rows) for m in r}
    upward, unplaced = [], set()
    for f in sorted(package.rglob("*.py")):
        parts = f.relative_to(package).with_suffix("").parts
        me = parts[0]
        if me in ("__init__", "__main__", "d2l"):  # the package's front and the book's facade sit above every room
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level) or node.level < len(parts):
                continue  # absolute, or a sibling inside the same sub-package
            for target in [node.module.split(".")[0]] if node.module else [a.name for a in node.names]:
                if target == "__version__":  # the package's front, which imports nothing
                    continue
                if me not in row or target not in row:
                    unplaced.add(me if me not in row else target)
                elif row[target] < row[me]:
                    upward.append(f"{f.relative_to(package)}:{node.lineno}: {me} imports {target}, a room above it")
    return upward, unplaced


def test_every_import_points_down_the_readme_code_map():
    rows = code_map()
    assert rows[0] == ["cli"] and len(rows) > 5
    upward, unplaced = upward_imports(ROOT / "alexnet", rows)
    assert not unplaced, f"modules missing from the README's code map: {sorted(unplaced)}"
    assert not upward, "\n".join(upward)
    for f in (ROOT / "alexnet").iterdir():  # every module and sub-package has its place, imported or not
        if f.suffix == ".py" and f.stem not in ("__init__", "__main__", "d2l") or (f / "__init__.py").exists():
            assert any(f.stem in r for r in rows), f"{f.name} is not on the README's code map"


def test_the_import_check_sees_an_upward_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "low.py").write_text("def f():\n    from .high import g\n")  # inside a function still counts
    (pkg / "high.py").write_text("from .low import f\n")
    (pkg / "sub" / "__init__.py").write_text("from .part import x\nfrom ..low import f\n")
    (pkg / "sub" / "part.py").write_text("from . import other\nfrom ..stray import y\n")
    upward, unplaced = upward_imports(pkg, [["sub"], ["high"], ["low"]])
    assert upward == ["low.py:2: low imports high, a room above it"]
    assert unplaced == {"stray"}
