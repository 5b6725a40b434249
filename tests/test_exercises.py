"""The exercises driver, the filter and feature-map pictures, and mean ± std in `alexnet compare`."""

import re

import pytest
import torch
from torch import nn

from alexnet import train as T
from alexnet.cli import main
from alexnet.config import PRESETS, Config
from alexnet.exercises import BUDGETS, plan, run_exercises
from alexnet.models import MODELS, build_model
from alexnet.report import Spread
from alexnet.visualize import contrast, filter_cells, first_conv, mosaic, stage_maps


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-epoch alexnet28 run on a synthetic MNIST-like set."""
    from conftest import make_idx_dataset

    root = tmp_path_factory.mktemp("tiny")
    data = make_idx_dataset(root / "data")
    cfg = Config(preset="test").replace(model="alexnet28", dataset="mnist", data_dir=str(data), epochs=1, batch_size=16)
    T.fit(cfg, root / "run", progress=False, quiet=True)
    return root / "run"


def test_filters_writes_one_cell_per_first_layer_kernel(tiny_run, tmp_path, capsys):
    out = tmp_path / "f.png"
    assert main(["filters", str(tiny_run), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    # alexnet28's first layer: 32 kernels of 3x3 on 1 channel, in a 6x6 grid.
    assert "32 first-layer kernels (3x3, 1 input channel) in a 6x6 grid" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_has_a_first_conv_shown_as_a_grid(name):
    w = first_conv(build_model(name, 3, 10)).weight.detach()
    image, rows, cols = mosaic(filter_cells(w))
    assert rows * cols >= w.shape[0] > (rows - 1) * cols
    assert image.shape[-1] == 3  # three input channels are drawn as colour
    assert 0 <= image.min() and image.max() <= 1


def test_a_constant_kernel_is_grey_not_a_division_by_zero():
    w = torch.zeros(4, 1, 5, 5)
    w[1] = torch.randn(1, 5, 5)
    cells = contrast(w)
    assert torch.isfinite(cells).all()
    assert (cells[0] == 0.5).all() and cells[1].min() == 0 and cells[1].max() == 1


def test_activations_writes_a_grid_per_conv_stage(tiny_run, tmp_path, capsys):
    assert main(["activations", str(tiny_run), "test:3", "--out", str(tmp_path), "--max-channels", "8"]) == 0
    out = capsys.readouterr().out
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["test3-input.png"] + [f"test3-stage{k}.png" for k in range(1, 6)]  # alexnet28: 5 convs
    assert len(re.findall(r"\s8 of", out)) == 5


def test_stages_are_taken_after_the_relu_in_forward_order():
    net = build_model("alexnet28", 1, 10)
    stages = stage_maps(net, torch.rand(1, 1, 28, 28))
    assert [s.shape for _, s in stages] == [(32, 28, 28), (64, 14, 14), (128, 7, 7), (128, 7, 7), (96, 7, 7)]
    assert all("+relu" in name for name, _ in stages) and all((s >= 0).all() for _, s in stages)


def test_a_network_without_convolution_is_refused(tiny_run, tmp_path):
    from alexnet.visualize import VisualizeError

    with pytest.raises(VisualizeError):
        first_conv(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_spread_is_mean_and_sample_std_and_says_when_a_difference_is_real():
    s = Spread([0.80, 0.82, 0.84])
    assert s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02) and s.format() == "0.8200 ± 0.0200"
    assert Spread([0.90, 0.91, 0.92]).exceeds(s)  # 0.09 apart, spreads 0.02 + 0.01
    assert not Spread([0.83, 0.84, 0.85]).exceeds(s)  # 0.02 apart: within 0.02 + 0.01


def test_compare_shows_mean_and_std_over_seeds_of_one_configuration(idx_dir, tmp_path, capsys):
    dirs = []
    for seed in (0, 1, 2):
        cfg = Config(preset="test").replace(
            model="lenet", dataset="mnist", data_dir=str(idx_dir), epochs=1, batch_size=16, seed=seed
        )
        T.fit(cfg, tmp_path / f"s{seed}", progress=False, quiet=True)
        dirs.append(str(tmp_path / f"s{seed}"))
    other = Config(preset="test").replace(
        model="lenet-relu", dataset="mnist", data_dir=str(idx_dir), epochs=1, batch_size=16
    )
    T.fit(other, tmp_path / "relu", progress=False, quiet=True)
    assert main(["compare", *dirs, str(tmp_path / "relu"), "--out", str(tmp_path / "c.png")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| s0", "| relu"))]
    assert len(rows) == 2  # three seeds make one row
    assert "s0 (+2 seeds)" in rows[0] and rows[0].count(" ± ") >= 4
    assert " ± " not in rows[1]
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_the_budgets_grow_and_smoke_is_tiny():
    smoke, small, full = (BUDGETS[k] for k in ("smoke", "small", "full"))
    assert len(small.seeds) >= 3 and len(full.seeds) >= 3
    assert smoke.train224 * smoke.epochs224 < small.train224 * small.epochs224 <= full.train224 * full.epochs224
    assert set(plan(full)) == {"4-224", "4-28", "4-whole", "5", "7", "8-overfit", "8-break"}
    # exercise 4 asks for alexnet28 on the full training set: every image, every test image, longer
    (aw, lw) = plan(full)["4-whole"]
    for spec in (aw, lw):
        cfg = spec.config(0, {})
        assert cfg.data.limit_train is None and cfg.data.limit_test is None
        assert cfg.train.epochs > PRESETS["cpu"].train.epochs
    assert plan(small)["4-whole"] == []  # small stays under half an hour


def test_smoke_budget_writes_every_table_and_figure(idx_dir, tmp_path, capsys):
    out = tmp_path / "docs" / "exercises.md"
    result = run_exercises("smoke", out, tmp_path / "runs", data_dir=str(idx_dir), dataset="mnist")
    text = out.read_text()
    for heading in (
        "In one table",
        "Exercises 1–3",
        "Exercise 4",
        "Exercise 5",
        "Exercise 6",
        "Exercise 7",
        "Exercise 8",
        "Figure 8.1.2",
    ):
        assert heading in text
    figs = tmp_path / "docs" / "figures" / "exercises-smoke"  # a budget's own folder: never the full page's
    for name in (
        "ex4-224.png",
        "ex4-28.png",
        "ex4-whole.png",
        "ex5.png",
        "ex7.png",
        "ex8-overfit.png",
        "ex8-gap.png",
        "ex8-break.png",
        "filters-alexnet28.png",
        "activations-alexnet28-stage1.png",
    ):
        assert (figs / name).stat().st_size > 1000, name
        assert f"figures/exercises-smoke/{name}" in text, name
    assert "—" not in text.split("## Exercise 6")[0].split("## Exercise 4")[1]  # every ex. 4/5 cell measured
    assert " ± " in text
    assert [r[0] for r in result["readme"]] == ["1–3", "4", "5", "6", "7", "8", "Fig. 8.1.2"]
    # A second call reuses the finished runs and only rewrites the report; it shows the 224x224 kernels
    # after the chapter's full runs (docs/report.md's figure) where that figure exists.
    assert "figures/report/filters-224.png" not in text
    chapter = tmp_path / "docs" / "figures" / "report" / "filters-224.png"
    chapter.parent.mkdir(parents=True)
    chapter.write_bytes((figs / "filters-alexnet28.png").read_bytes())
    capsys.readouterr()
    result = run_exercises("smoke", out, tmp_path / "runs", data_dir=str(idx_dir), dataset="mnist")
    assert "  ex" not in capsys.readouterr().out
    assert "![filters](figures/report/filters-224.png)" in out.read_text()
    assert result["readme"][-1][-1] == "[filters-224.png](figures/report/filters-224.png)"


def test_a_change_that_diverges_every_seed_breaks_training_and_some_seeds_is_unstable():
    from alexnet.exercises.results import Group
    from alexnet.exercises.sections import _break_outcome

    (spec,) = (s for s in plan(BUDGETS["smoke"])["8-break"] if s.name == "ex8-lr10")
    nan = "epoch 2: loss became nan by step 3; the last good checkpoint is kept"
    assert _break_outcome(Group(spec, [], [nan, nan], 0.0), None, 2).startswith("**breaks**: 2 of 2 seeds diverged")
    assert _break_outcome(Group(spec, [], [nan], 0.0), None, 2).startswith("**unstable**: 1 of 2 seeds diverged")
    epochs = spec.config(0, {}).train.epochs
    at = lambda acc: {"metrics": [{"epoch": e + 1, "val_acc": acc} for e in range(epochs)]}  # noqa: E731
    assert _break_outcome(Group(spec, [at(0.7)], [nan], 0.0), None, 2).startswith("**unstable**")
    assert _break_outcome(Group(spec, [at(0.1)], [nan], 0.0), None, 2).startswith("**breaks**")  # the rest at chance


def test_an_unknown_exercise_is_one_line_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "docs" / "exercises.md"
    assert main(["exercises", "--only", "99", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--only 99: no such training exercise" in err[0]
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_a_measured_page_is_not_replaced_by_one_with_fewer_measured_rows_unless_asked(tmp_path, capsys):
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "exercises.md").read_text()
    out = tmp_path / "docs" / "exercises.md"
    (tmp_path / "docs" / "figures" / "exercises").mkdir(parents=True)
    out.write_text(page)
    figure = tmp_path / "docs" / "figures" / "exercises" / "ex7.png"
    figure.write_bytes(b"measured")
    args = ["exercises", "--budget", "full", "--render-only", "--out", str(out), "--runs", str(tmp_path / "no-runs")]
    assert main(args) == 2  # the same budget, but no finished run under --runs: every table would say "—"
    assert out.read_text() == page and figure.read_bytes() == b"measured"
    from alexnet.exercises import measured_rows

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"not rewritten: it has {measured_rows(page)} measured rows" in err[0]
    assert not [p for p in out.parent.rglob("*") if p.name.startswith(".")]  # no figure drawn aside is left
    assert main([*args, "--overwrite"]) == 0
    assert measured_rows(out.read_text()) < measured_rows(page)


def test_the_budgets_durations_are_stated_once_and_the_help_reads_them(capsys):
    with pytest.raises(SystemExit):
        main(["exercises", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name, b in BUDGETS.items():
        assert f"{name}: ~{b.minutes} min" in help_text


def test_exercise_8s_learning_rates_are_the_cpu_recipes_taken_10x_and_3x_and_their_labels_say_so():
    recipe = PRESETS["cpu"].train.lr
    specs = {s.name: s for s in plan(BUDGETS["smoke"])["8-break"]}
    for name, k in (("ex8-lr10", 10), ("ex8-lr10-nowarm", 10), ("ex8-lr3", 3), ("ex8-lr3-nowarm", 3)):
        lr = specs[name].config(0, {}).train.lr
        assert lr == pytest.approx(k * recipe)
        assert specs[name].label.startswith(f"lr {k}x ({lr:g})")


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def full_page(tmp_path):
    """A `full` budget's page as the code writes it (rendered from no runs), and figures beside it."""
    out = tmp_path / "docs" / "exercises.md"
    run_exercises("full", out, tmp_path / "full-runs", render_only=True)
    figs = tmp_path / "docs" / "figures" / "exercises"
    for name in ("ex7.png", "ex8-gap.png"):  # ex8-gap.png: a figure a smoke render draws too
        (figs / name).write_bytes(b"the full budget's figure")
    return out


def test_a_smoke_run_never_replaces_the_full_budgets_page_or_figures(full_page, idx_dir, tmp_path, capsys):
    from alexnet.exercises import page_budget

    docs = full_page.parent
    assert page_budget(full_page.read_text()) == "full"
    before = _snapshot(docs)
    capsys.readouterr()
    runs = tmp_path / "runs"
    args = ["exercises", "--budget", "smoke", "--out", str(full_page), "--runs", str(runs), "--data-dir", str(idx_dir)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "larger `full` budget's page" in err[0] and "--overwrite" in err[0], err
    assert _snapshot(docs) == before  # the page and every figure byte for byte
    assert not runs.exists()  # refused before anything trained


def test_a_smaller_budgets_figures_never_replace_a_larger_budgets(full_page, capsys):
    docs = full_page.parent
    full_figures = _snapshot(docs / "figures" / "exercises")
    other = docs / "smoke.md"  # another page in the same folder: its figures must not land on the full page's
    assert main(["exercises", "--budget", "smoke", "--render-only", "--out", str(other)]) == 0
    assert _snapshot(docs / "figures" / "exercises") == full_figures
    assert (docs / "figures" / "exercises-smoke" / "ex8-gap.png").read_bytes() != b"the full budget's figure"
    assert "figures/exercises-smoke/ex8-gap.png" in other.read_text()


def test_smoke_and_small_write_beside_their_runs_by_default_and_touch_no_docs(tmp_path, monkeypatch, capsys):
    from alexnet.exercises.plan import default_page

    monkeypatch.chdir(tmp_path)
    assert main(["exercises", "--budget", "smoke", "--render-only"]) == 0
    page = tmp_path / "runs" / "exercises-smoke" / "exercises.md"
    assert page.read_text().startswith("# The exercises of D2L")
    assert (page.parent / "figures" / "exercises-smoke").is_dir()
    assert not (tmp_path / "docs").exists()
    assert default_page("small", tmp_path / "r") == tmp_path / "r" / "exercises.md"
    assert str(default_page("full", tmp_path / "r")) == "docs/exercises.md"


@pytest.mark.parametrize("what", ["notes", "fifo", "directory"])
def test_a_file_that_is_not_an_exercises_page_is_left_alone_in_one_line(what, tmp_path, capsys):
    import os

    out = tmp_path / "exercises.md"
    if what == "notes":
        out.write_text("my own notes\n")
    elif what == "fifo":
        os.mkfifo(out)  # opened without blocking: no writer needed, no hang
    else:
        out.mkdir()
    args = ["exercises", "--budget", "smoke", "--render-only", "--out", str(out), "--runs", str(tmp_path / "runs")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"alexnet: error: {out}: "), err
    if what == "notes":
        assert "not a page `alexnet exercises` wrote; --overwrite replaces it anyway" in err[0]
        assert out.read_text() == "my own notes\n"
        assert main([*args, "--overwrite"]) == 0 and out.read_text().startswith("# The exercises")
    else:
        assert ("a FIFO" if what == "fifo" else "a directory") in err[0]
        assert not out.is_file()


def test_the_plans_comments_hold_no_measured_figure():
    """A measured number typed into a comment goes stale on the next run: the page measures, the plan plans."""
    import importlib
    import io
    import re
    import tokenize
    from pathlib import Path

    source = Path(importlib.import_module("alexnet.exercises.plan").__file__).read_text()
    comments = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT]
    measured = re.compile(r"\d[\d.,]*\s*(images/s|img/s|%|min\b|minutes|seconds)|acc(uracy)?\s+[01]\.\d|\bhalf of it")
    assert comments and not [c for c in comments if measured.search(c)]
