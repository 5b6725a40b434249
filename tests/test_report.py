"""`alexnet compare` and `alexnet report`: the comparison table and curves, one page per run, and a page that
holds only what it is given: strings from a run as text, only its own files replaced in --out."""

import base64
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from conftest import tiny_cfg

from alexnet import report as P
from alexnet import runs as R
from alexnet import train as T
from alexnet.cli import main
from alexnet.config import Config


def test_compare_tables_lenet_against_alexnet28(idx_dir, tmp_path, capsys):
    for model in ("lenet", "alexnet28"):
        cfg = Config(preset="test").replace(
            model=model, dataset="mnist", data_dir=str(idx_dir), epochs=1, batch_size=16
        )
        T.fit(cfg, tmp_path / model, progress=False, quiet=True)
    assert (
        main(["compare", str(tmp_path / "lenet"), str(tmp_path / "alexnet28"), "--out", str(tmp_path / "c.png")]) == 0
    )
    out = capsys.readouterr().out
    lenet_row = next(line for line in out.splitlines() if line.startswith("| lenet"))
    # LeNet-5 has 61,706 parameters and 0.85 MFLOPs per 28x28 image.
    assert "| 0.06 |" in lenet_row and "| 0.0008 |" in lenet_row
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "c.md").exists()


def test_compare_names_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a run directory (no last.pt or config.json)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# `alexnet report`: one page per run, or several runs compared


ROOT = Path(__file__).resolve().parent.parent
SECTIONS = [
    "What ran",
    "Curves",
    "Per-class accuracy",
    "Confusion matrix",
    "Most confused pairs",
    "First-layer filters",
    "Activations, one test image per class",
    "Layers",
]
FIGURES = ["curves", "confusion", "misclassified", "filters", "activations"]


class Page(HTMLParser):
    """What a browser would find in the page: headings, images, links, text."""

    def __init__(self, text: str):
        super().__init__()
        self.headings, self.images, self.links, self.text, self._in = [], [], [], [], None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("h1", "h2", "h3"):
            self._in = [tag, ""]
        if tag == "img":
            self.images.append(a["src"])
        if "href" in a or (tag in ("script", "link") and "src" in a):
            self.links.append(a.get("href") or a.get("src"))

    def handle_endtag(self, tag):
        if self._in and tag == self._in[0]:
            self.headings.append((tag, self._in[1]))
            self._in = None

    def handle_data(self, data):
        if self._in:
            self._in[1] += data
        self.text.append(data)


@pytest.fixture(scope="module")
def runs(two_runs):
    return two_runs


def _page(path):
    return Page(path.read_text())


def test_report_of_a_run_is_one_self_contained_page_with_every_section(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs / "s0", run)
    assert main(["report", str(run)]) == 0
    page = _page(run / "report.html")
    assert [h for t, h in page.headings if t == "h2"] == SECTIONS
    # Every picture inside the file; nothing it links to could be missing offline.
    assert len(page.images) == len(FIGURES) and not page.links
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # The Markdown twin has the same sections, its figures beside it.
    md = (run / "report.md").read_text()
    assert [line[3:] for line in md.splitlines() if line.startswith("## ")] == SECTIONS
    for name in FIGURES:
        assert f"](report-figures/{name}.png)" in md and (run / "report-figures" / f"{name}.png").stat().st_size > 1000
    assert "@media print" in (run / "report.html").read_text()
    assert "self-contained" in capsys.readouterr().out


def test_report_accuracy_is_the_line_of_metrics_jsonl_its_network_logged(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "s0", run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = rows[R.best_epoch_of(rows) - 1]
    text = P.to_markdown(P.run_blocks(run))
    # Evaluated again from best.pt with the run's own batches and precision: the number train logged
    # for that epoch, and the per-epoch table's row says it too.
    assert f"accuracy {best['val_acc']:.4f}, loss {best['val_loss']:.4f} (the run logged {best['val_acc']:.4f}" in text
    assert "the per-image predictions give the same matrix" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| {best['epoch']} | {best['train_loss']:.4f}"))
    assert f"| {best['val_acc']:.4f} |" in row
    assert "finished: 2 of 2 epochs" in text


# A run's network is best.pt's (status.network_checkpoint, as alexnet predict and serve take it), its
# history last.pt's.


@pytest.fixture(scope="module")
def went_on(runs, tmp_path_factory):
    """A run whose best epoch (1) is not its last (2): trained one epoch, resumed for a second, and
    best.pt left holding epoch 1, as train leaves it when epoch 2 does no better. Should epoch 2 have
    logged a higher accuracy, it is lowered to epoch 1's in last.pt and metrics.jsonl: a tie is no
    improvement, so the run's record names epoch 1 its best, as best.pt does."""
    run = tmp_path_factory.mktemp("went-on") / "run"
    T.fit(tiny_cfg(runs / "data", epochs=1), run, progress=False, quiet=True)
    epoch1 = (run / "last.pt").read_bytes()
    T.fit(tiny_cfg(runs / "data"), run, resume=True, overrides={"epochs": 2}, progress=False, quiet=True)
    (run / "best.pt").write_bytes(epoch1)
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    first, second = last["metrics"]
    if second["val_acc"] > first["val_acc"]:
        second["val_acc"] = first["val_acc"]
        R.save_checkpoint(last, run / "last.pt")
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in last["metrics"]))
    assert R.best_epoch_of(last["metrics"]) == 1 and last["epoch"] == 2
    return run


def _evaluated(checkpoint: Path) -> dict:
    """A checkpoint's accuracy and loss on its run's test split by train.evaluate, outside the report."""
    from alexnet import data as D
    from alexnet.device import bf16_autocast

    model, cfg = R.model_from_checkpoint(R.load_checkpoint(checkpoint))
    cpu = torch.device("cpu")
    data = D.InMemory(cfg, cpu, cfg.train.batch_size, cfg.train.eval_batch_size)
    return T.evaluate(model, data.val(), device=cpu, amp=bf16_autocast(cfg.system.amp, cpu), num_classes=10)


def test_report_shows_the_best_epochs_network_of_a_run_that_went_on_past_it(went_on):
    text = P.to_markdown(P.run_blocks(went_on, device="cpu"))
    best, last = _evaluated(went_on / "best.pt"), _evaluated(went_on / "last.pt")
    assert best["loss"] != last["loss"]  # two networks: a page could show either
    logged = json.loads((went_on / "metrics.jsonl").read_text().splitlines()[0])
    assert (
        "Evaluated here from the weights of best.pt (epoch 1, the best validation accuracy; the last metrics "
        "row is epoch 2) on 32 test images"
    ) in text
    assert (
        f"accuracy {best['acc']:.4f}, loss {best['loss']:.4f} (the run logged {logged['val_acc']:.4f} for epoch 1)"
    ) in text
    assert f"{best['acc']:.4f}" == f"{logged['val_acc']:.4f}"
    assert "| trained (epoch 1) |" in text and "| trained (epoch 2) |" not in text
    # Its history is last.pt's: both epochs, and where the run stands.
    assert "finished: 2 of 2 epochs" in text
    for row in map(json.loads, (went_on / "metrics.jsonl").read_text().splitlines()):
        assert f"| {row['epoch']} | {row['train_loss']:.4f} | {row['train_acc']:.4f} |" in text


def test_report_predict_and_serve_take_a_runs_network_from_one_file(went_on):
    from alexnet.export import open_model
    from alexnet.serve.folder import RunsFolder

    facts = P.read_facts(went_on)
    assert (facts.net_file, facts.net["epoch"], facts.ckpt["epoch"]) == ("best.pt", 1, 2)
    predicted = open_model(went_on).module.state_dict()  # what `alexnet predict RUN` runs
    assert predicted.keys() == facts.net["model"].keys()
    assert all(torch.equal(predicted[k], v) for k, v in facts.net["model"].items())
    assert not all(torch.equal(facts.ckpt["model"][k], v) for k, v in facts.net["model"].items())
    folder = RunsFolder(went_on.parent)  # serve's Explore page
    assert folder.checkpoint(folder.path(went_on.name)).samefile(facts.net["path"])


def test_report_of_a_run_without_best_pt_shows_last_pts_network(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "s0", run)
    (run / "best.pt").unlink()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    facts = P.read_facts(run)
    assert facts.net is facts.ckpt  # read once
    text = P.to_markdown(P.run_blocks(run, device="cpu"))
    assert "Evaluated here from the weights of last.pt (epoch 2, the last metrics row) on 32 test images" in text
    assert f"accuracy {last['val_acc']:.4f}, loss {last['val_loss']:.4f} (the run logged {last['val_acc']:.4f}" in text
    assert "| trained (epoch 2) |" in text


@pytest.mark.parametrize("kind", ["not a checkpoint", "a directory", "a FIFO"])
def test_report_of_a_run_whose_best_pt_cannot_be_read_keeps_its_history_and_says_why(runs, tmp_path, kind):
    from conftest import no_hang

    run = tmp_path / "run"
    shutil.copytree(runs / "s0", run)
    (run / "best.pt").unlink()
    if kind == "a directory":
        shutil.copytree(runs / "s1", run / "best.pt")  # a run inside: never taken for the network
    elif kind == "a FIFO":
        os.mkfifo(run / "best.pt")
    else:
        (run / "best.pt").write_bytes(b"not a checkpoint")
    with no_hang(120):
        text = P.to_markdown(P.run_blocks(run, device="cpu"))
    why = {
        "not a checkpoint": "best.pt: not a readable checkpoint (",
        "a directory": "best.pt: a directory, not a file",
        "a FIFO": "best.pt: not a regular file (a FIFO)",
    }[kind]
    assert f"Not computed: {why}" in text and f"Not shown: {why}" in text
    assert "Evaluated here" not in text and str(run) not in text  # never last.pt's network in its place
    assert "finished: 2 of 2 epochs" in text and "| 2 | " in text


def test_report_compares_two_runs_seeds_folded(runs, tmp_path, capsys):
    out = tmp_path / "both"
    assert main(["report", str(runs / "s0"), str(runs / "s1"), "--out", str(out)]) == 0
    page = _page(out / "report.html")
    h2 = [h for t, h in page.headings if t == "h2"]
    assert h2 == ["Comparison", "Run 1: s0", "Run 2: s1"]
    assert [h for t, h in page.headings if t == "h3"] == SECTIONS * 2
    assert len(page.images) == 1 + 2 * len(FIGURES)
    # The two seeds are one configuration: one row, mean ± std of the two final accuracies.
    accs = [json.loads((runs / s / "metrics.jsonl").read_text().splitlines()[-1])["val_acc"] for s in ("s0", "s1")]
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| s0 (+1 seeds)"))
    assert P.Spread(accs).format() in row
    assert not (runs / "s0" / "report.html").exists()  # written where --out says, not into a run


def test_report_of_several_runs_needs_out(runs, capsys):
    assert main(["report", str(runs / "s0"), str(runs / "s1")]) == 2
    assert capsys.readouterr().err.strip() == "alexnet: error: several runs: say where the report goes with --out DIR"


def test_report_says_an_interrupted_run_stopped_and_where(tmp_path, idx_dir, monkeypatch):
    from conftest import interrupt_at_batch

    interrupt_at_batch(monkeypatch, 7)  # 4 training + 2 evaluation batches, then the 2nd step of epoch 2
    assert T.fit(tiny_cfg(idx_dir), tmp_path / "run", progress=False, quiet=True).interrupted
    run = tmp_path / "run"
    text = P.to_markdown(P.run_blocks(run))
    assert "interrupted: epoch 1 of 2 done, 1 step into epoch 2; continue it with alexnet train --resume" in text
    assert "the weights of best.pt (epoch 1, the best validation accuracy and the last metrics row)" in text
    (run / "best.pt").unlink()  # last.pt's network, then: weights no metrics row describes
    text = P.to_markdown(P.run_blocks(run))
    assert "the weights of last.pt (epoch 1, step 1 of epoch 2: not the weights of any metrics row)" in text
    assert "the run logged" not in text and "| trained (epoch 1, step 1) |" in text


def test_report_of_a_run_without_checkpoint_still_has_its_metrics(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "s0", run)
    (run / "last.pt").unlink()
    (run / "best.pt").unlink()
    assert main(["report", str(run)]) == 0
    page = _page(run / "report.html")
    assert [h for t, h in page.headings if t == "h2"] == SECTIONS
    assert len(page.images) == 1  # the curves: nothing else can be drawn without weights
    text = "".join(page.text)
    assert "Not computed: the run directory holds no checkpoint (best.pt or last.pt)" in text
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"{last['val_acc']:.4f}" in text


def test_report_of_a_directory_that_is_not_a_run_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path, tmp_path / "notes.txt", tmp_path / "missing"):
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a run directory" in err
    assert not (tmp_path / "report.html").exists()


def test_report_body_for_embedding_writes_nothing(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "s0", run)
    before = sorted(p.name for p in run.iterdir())
    body = P.render_html_body(run, level=3)
    assert "<html" not in body and body.count("<h3") == len(SECTIONS) and body.count("<img") == len(FIGURES)
    assert sorted(p.name for p in run.iterdir()) == before


def test_book_points_are_shown_for_the_d2l_recipe_only():
    from alexnet.config import PRESETS

    assert P.is_d2l_recipe(PRESETS["d2l"].replace(epochs=4, seed=3, amp="off"))
    assert not P.is_d2l_recipe(PRESETS["fast"]) and not P.is_d2l_recipe(PRESETS["d2l"].replace(lr=0.02))
    rows = P.book_rows([{"epoch": 1, "train_loss": 2.0, "train_acc": 0.3, "val_acc": 0.5}])
    assert rows[0]["this run"] == "not reached (epoch 1)" and rows[3]["this run"] == "2.0000"


# ---------------------------------------------------------------------------------------------
# The filters' smoothness, and the initial weights it is compared against


# ---------------------------------------------------------------------------------------------
# What a run holds is data: every string from it is escaped where it enters the page (issue 30, 4)

# One payload per place a string from outside enters the page, each of which would run a script in
# a browser if written as markup (a run folder can be named like this: the name holds no '/').
PAYLOADS = {
    "run name": "<img src=x onerror=alert(1)>",
    "config value": "<svg onload=alert(2)>",
    "machine": "<img src=y onerror=alert(3)>",
    "torch version": "<b onmouseover=alert(4)>",
    "lock holder": "<i onclick=alert(5)>",
    "resume change": "<u onfocus=alert(6)>",
}


class Markup(HTMLParser):
    """Every element of the page with its attributes, and the text each element holds."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.text, self._open = [], [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("img", "meta", "br"):
            self._open.append(tag)

    def handle_endtag(self, tag):
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag) :]

    def handle_data(self, data):
        self.text.append((tuple(self._open), data))

    def inside(self, tag: str) -> str:
        return "".join(d for path, d in self.text if tag in path)


@pytest.fixture(scope="module")
def hostile(runs, tmp_path_factory):
    """A report of two runs (one of them named, configured and stamped with the payloads) and the
    run alone as `alexnet serve` embeds it."""
    import socket

    root = tmp_path_factory.mktemp("hostile")
    data = shutil.copytree(runs / "data", root / PAYLOADS["config value"])
    run = root / PAYLOADS["run name"]
    shutil.copytree(runs / "s0", run)
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    ckpt["config"]["data"]["data_dir"] = str(data)
    ckpt["machine"] = {**ckpt.get("machine", {}), "cpu": PAYLOADS["machine"]}
    ckpt["torch"] = PAYLOADS["torch version"]
    ckpt["changes"] = [{"epoch": 2, "setting": "lr", "from": 0.05, "to": PAYLOADS["resume change"]}]
    R.save_checkpoint(ckpt, run / "last.pt")
    (run / ".lock").write_text(f"pid {os.getpid()} on {socket.gethostname()}, since {PAYLOADS['lock holder']}")
    out = root / "out"
    assert main(["report", str(run), str(runs / "s1"), "--out", str(out)]) == 0
    return {
        "html": (out / "report.html").read_text(),
        "md": (out / "report.md").read_text(),
        "body": P.render_html_body(run),
    }


def _no_script_can_run(page: Markup):
    for tag, attrs in page.tags:
        assert tag not in ("script", "svg", "iframe", "object", "b", "i", "u")
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("place", ["title", "h1", "h2", "footer"])
def test_report_page_shows_a_run_named_like_a_tag_as_text_in_its(hostile, place):
    page = Markup(hostile["html"])
    _no_script_can_run(page)
    assert PAYLOADS["run name"] in page.inside(place)


@pytest.mark.parametrize("what", list(PAYLOADS))
def test_report_tables_show_strings_from_the_run_as_text(hostile, what):
    page = Markup(hostile["html"])
    _no_script_can_run(page)
    assert PAYLOADS[what] in page.inside("td")


@pytest.mark.parametrize("what", [w for w in PAYLOADS if w != "run name"])  # the body names no run
def test_report_body_for_serve_shows_strings_from_the_run_as_text(hostile, what):
    page = Markup(hostile["body"])
    _no_script_can_run(page)
    assert PAYLOADS[what] in "".join(d for _, d in page.text)


def test_report_markdown_holds_no_raw_html_from_the_run(hostile):
    md = hostile["md"]
    assert md.startswith(P.MARK + "\n") and md.count("<") == 1  # the mark's comment, nothing else
    for payload in PAYLOADS.values():
        assert payload.replace("<", "&lt;") in md


@pytest.mark.parametrize("kind", ["h", "p", "pre", "list", "table", "figure"])
def test_every_block_kind_escapes_its_text_in_html(kind):
    bad = '<script>alert("x")</script>'
    block = {
        "h": P.Block("h", bad),
        "p": P.Block("p", bad),
        "pre": P.Block("pre", bad),
        "list": P.Block("list", items=[bad]),
        "table": P.Block("table", rows=[{bad: bad}]),
        "figure": P.Block("figure", bad, name="x.png", png=b"\x89PNG"),
    }[kind]
    for html in (P.to_html([block]), P.html_document(bad, [block], bad)):  # the body, and the page around it
        assert "<script" not in html and "&lt;script&gt;" in html


# ---------------------------------------------------------------------------------------------
# --out: only what alexnet report wrote is replaced (issue 30, 7), and a place that cannot be
# written is one line with nothing half-written (issue 30, 18)


@pytest.mark.parametrize("name", ["report.md", "report.html", "report-figures"])
def test_report_refuses_to_replace_what_it_did_not_write(runs, tmp_path, capsys, name):
    out = tmp_path / "docs"
    out.mkdir()
    if name == "report-figures":
        (out / name).mkdir()
        (out / name / "diagram.svg").write_text("<svg/>")
    else:
        (out / name).write_text("# The project's own page\n")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert main(["report", str(runs / "s0"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out / name) in err and "--overwrite" in err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_report_replaces_its_own_pages_and_those_it_wrote_before_its_mark(runs, tmp_path):
    out = tmp_path / "out"
    assert main(["report", str(runs / "s0"), "--out", str(out)]) == 0
    assert (out / "report.html").read_text().startswith(P.MARK + "\n<!doctype html>")
    assert main(["report", str(runs / "s0"), "--out", str(out)]) == 0  # its own: replaced
    # A report written before the mark existed: known by its footer, its figures by their names.
    for name in ("report.html", "report.md"):
        (out / name).write_text((out / name).read_text().removeprefix(P.MARK + "\n"))
    (out / "report-figures" / P.FIGURES_MARK).unlink()
    assert main(["report", str(runs / "s0"), "--out", str(out)]) == 0
    assert (out / "report.md").read_text().startswith(P.MARK + "\n")


def test_report_overwrite_replaces_a_foreign_page_and_keeps_other_files(runs, tmp_path):
    out = tmp_path / "docs"
    (out / "report-figures").mkdir(parents=True)
    (out / "report.md").write_text("# The project's own page\n")
    (out / "report-figures" / "diagram.svg").write_text("<svg/>")
    assert main(["report", str(runs / "s0"), "--out", str(out), "--overwrite"]) == 0
    assert (out / "report.md").read_text().startswith(P.MARK + "\n")
    assert (out / "report-figures" / "diagram.svg").read_text() == "<svg/>"


def test_report_with_a_file_where_its_figures_go_is_one_line(runs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report-figures").write_text("not a folder")
    assert main(["report", str(runs / "s0"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out / "report-figures") in err
    assert sorted(p.name for p in out.iterdir()) == ["report-figures"]


def _read_only_below(monkeypatch, root: Path, fail_on: str = ""):
    """A disk that refuses every new file and folder under ``root`` (os.mkdir and the atomic
    writer's temporary), or with ``fail_on``, only the file of that name: EROFS, as a read-only
    mount answers (chmod would not stop root, who runs these tests in some places)."""
    import errno
    import tempfile

    mkdir, mkstemp = os.mkdir, tempfile.mkstemp

    def refused(path):
        return str(path).startswith(str(root)) and (not fail_on or f".{fail_on}." in str(path))

    def no_mkdir(path, *a, **kw):
        if refused(path) and not fail_on:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return mkdir(path, *a, **kw)

    def no_mkstemp(*a, dir=None, prefix=None, **kw):
        if refused(Path(dir) / (prefix or "")):
            raise OSError(errno.EROFS, "Read-only file system")
        return mkstemp(*a, dir=dir, prefix=prefix, **kw)

    monkeypatch.setattr(os, "mkdir", no_mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", no_mkstemp)


@pytest.mark.parametrize("state", ["empty", "an earlier report"])
def test_report_on_a_read_only_disk_is_one_line_and_keeps_what_was_there(runs, tmp_path, capsys, monkeypatch, state):
    out = tmp_path / "out"
    out.mkdir()
    if state == "an earlier report":
        assert main(["report", str(runs / "s0"), "--out", str(out)]) == 0
    before = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    _read_only_below(monkeypatch, out)
    assert main(["report", str(runs / "s0"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Read-only file system" in err and str(out) in err
    assert {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_report_that_fails_midway_leaves_no_half_written_output(runs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "new" / "out"
    _read_only_below(monkeypatch, tmp_path, fail_on="report.md")  # the figures go in, then the page fails
    assert main(["report", str(runs / "s0"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write in {out}: Read-only file system" in err
    assert not (tmp_path / "new").exists()  # the folders it made are gone with their figures


# ---------------------------------------------------------------------------------------------
# A run's files are data from outside: an odd one is a line or 'not recorded', never a traceback or a hang


def _edited_copy(runs, tmp_path, edit) -> Path:
    """A copy of run s0 whose last.pt dict ``edit`` has changed (saved as alexnet train saves it)."""
    run = tmp_path / "run"
    shutil.copytree(runs / "s0", run)
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    edit(ckpt)
    R.save_checkpoint(ckpt, run / "last.pt")
    return run


def test_report_opens_no_fifo_named_like_a_runs_config_or_lock(runs, tmp_path, capsys):
    from conftest import no_hang

    run = tmp_path / "run"
    shutil.copytree(runs / "s0", run)
    for name in ("config.json", ".lock"):
        (run / name).unlink(missing_ok=True)
        os.mkfifo(run / name)
    with no_hang(120):
        assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    assert "finished: 2 of 2 epochs" in (tmp_path / "out" / "report.md").read_text()


def test_report_says_not_recorded_for_machine_fields_of_another_shape(runs, tmp_path):
    def edit(ckpt):
        ckpt["machine"] = "a string, not the record"
        ckpt["torch"] = 5
        ckpt["changes"] = [{"epoch": 2}, "lr"]

    facts = P.read_facts(_edited_copy(runs, tmp_path, edit))
    rows = dict((r[""], r["value"]) for r in P.section_what_ran(facts, 2)[1].rows)
    assert rows["machine"].startswith("not recorded") and rows["device"].startswith("not recorded")
    assert rows["torch"] == "not recorded" and "changed on resume" not in rows


def test_report_of_a_metrics_row_without_a_number_is_one_line(runs, tmp_path, capsys):
    def edit(ckpt):
        del ckpt["metrics"][1]["lr"]

    run = _edited_copy(runs, tmp_path, edit)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"alexnet: error: {run / 'last.pt'}: metrics row 2 has no number 'lr'; not a row alexnet train writes\n"
    )
    assert not (run / "report.html").exists()


# ---------------------------------------------------------------------------------------------
# `alexnet compare --out NAME.png`: the same rule, for its curves and the table beside them


@pytest.mark.parametrize("mine", ["table.md", "table.png"])
def test_compare_refuses_to_replace_what_it_did_not_write(runs, tmp_path, capsys, mine):
    (tmp_path / mine).write_bytes(b"\x89PNG\r\n\x1a\n a picture of mine" if mine.endswith("png") else b"# notes\n")
    args = ["compare", str(runs / "s0"), str(runs / "s1"), "--out", str(tmp_path / "table.png")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / mine) in err and "--overwrite" in err
    assert [p.name for p in tmp_path.iterdir()] == [mine]
    assert main([*args, "--overwrite"]) == 0
    assert (tmp_path / "table.md").read_text().startswith(P.COMPARE_MARK + "\n| run |")


def test_compare_out_must_name_a_png_so_its_table_lands_beside_it(runs, tmp_path, capsys):
    (tmp_path / "report.md").write_text("# The project's own page\n")
    assert main(["compare", str(runs / "s0"), "--out", str(tmp_path / "report.md")]) == 2
    assert "name it NAME.png" in capsys.readouterr().err
    assert (tmp_path / "report.md").read_text() == "# The project's own page\n"


def test_compare_replaces_its_own_files_and_those_it_wrote_before_its_mark(runs, tmp_path):
    args = ["compare", str(runs / "s0"), str(runs / "s1"), "--out", str(tmp_path / "c.png")]
    assert main(args) == 0
    assert main(args) == 0  # its own: replaced
    md = tmp_path / "c.md"
    md.write_text(md.read_text().removeprefix(P.COMPARE_MARK + "\n"))  # as compare wrote it before the mark
    shutil.copy(runs / "s0" / "curves.png", tmp_path / "c.png")  # a PNG without the mark
    assert main(args) == 0
    assert (
        md.read_text().startswith(P.COMPARE_MARK) and b"written by alexnet compare" in (tmp_path / "c.png").read_bytes()
    )
