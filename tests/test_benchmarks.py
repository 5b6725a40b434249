"""The pipeline benchmark runs end to end and produces every number it reports.

How fast anything is is the benchmark's business, not the tests': here only that each figure is
there and finite, on a tiny run (batch 4, 2 steps, no DataLoader workers, no compilation).
"""

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from alexnet import runs as R

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipeline():
    spec = importlib.util.spec_from_file_location("bench_pipeline", ROOT / "benchmarks" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_tiny_benchmark_reports_every_figure_finite(pipeline, fashion_dir, tmp_path):
    result = pipeline.main(
        [
            "--model",
            "alexnet-small",
            "--native-model",
            "lenet-relu",
            "--batch-size",
            "4",
            "--eval-batch-size",
            "8",
            "--steps",
            "2",
            "--block",
            "2",
            "--warmup",
            "1",
            "--profile-steps",
            "1",
            "--workers",
            "0",
            "--compile",
            "none",
            "--device",
            "cpu",
            "--data-dir",
            str(fashion_dir),
            "--out",
            str(tmp_path),
        ]
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert (tmp_path / "results.md").read_text().startswith("# Pipeline benchmark")

    for extra in saved["extras"].values():  # per model and dtype: the best GEMM, the dominant conv, their max
        assert set(extra["peaks"]) == {"fp32", "bf16 autocast"}
        for g in extra["peaks"].values():
            assert g["flops"] == max(g["gemm"], g["conv"]) and g["gemm"] > 0 and g["conv"] > 0
    assert {"device", "torch", "cpu_count", "load_average_1m_start"} <= set(saved["machine"])
    rows = saved["rows"]
    # Per model: reference, the shipped project pipeline (train and eval), the layout flipped, bf16 flipped.
    assert [(r["model"], r["pipeline"].split(" ")[0], r["mode"]) for r in rows] == [
        (m, p, mode)
        for m in ("alexnet-small", "lenet-relu")
        for p, mode in (
            ("reference", "train"),
            ("project", "train"),
            ("project", "eval"),
            ("project", "train"),
            ("project", "train"),
        )
    ]
    for r in rows:
        for key in ("images_per_s", "step_ms", "mfu", "gflops_per_image"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["pipeline"], r["mode"], key)
        # Peak memory is measured with each pipeline alone: the reference and the shipped project.
        alone = not r["pipeline"].startswith("project --")
        assert (r["peak_memory_mib"] is not None and r["peak_memory_mib"] > 0) == alone, r["pipeline"]
        assert r["params"] > 0 and r["batch_size"] in (4, 8)
    # The precision variant is the other dtype from the shipped pipeline's; the reference is fp32.
    assert rows[0]["dtype"] == "fp32" and {rows[1]["dtype"], rows[4]["dtype"]} == {"fp32", "bf16 autocast"}
    profiled = [r for r in rows if r["outside_network"] is not None]
    assert len(profiled) == 4 and all(0 <= r["outside_network"] < 1 for r in profiled)
    # A training step: forward, and the weight and input gradients (none for the image): under 3 forward passes.
    train, ev = rows[1], rows[2]
    assert 2 * ev["gflops_per_image"] < train["gflops_per_image"] < 3 * ev["gflops_per_image"]
    for extra in saved["extras"].values():
        assert extra["channels_last_speedup"] > 0 and extra["bf16_speedup"] > 0 and extra["project_outside_ms"]
    assert len(saved["summary"]) == 2 * 5


def test_compile_pays_only_when_the_run_is_long_enough(pipeline):
    v = pipeline.compile_verdict(compile_s=60.0, eager_step_s=1.0, compiled_step_s=0.75, run_steps=1000)
    assert v["break_even_steps"] == 240 and v["pays"] and v["net_saving_s"] == pytest.approx(190.0)
    assert not pipeline.compile_verdict(60.0, 1.0, 0.75, 200)["pays"]
    slower = pipeline.compile_verdict(60.0, 1.0, 1.1, 10**6)
    assert slower["break_even_steps"] is None and not slower["pays"]


def test_step_benchmark_times_the_trained_part_on_each_thread_count_with_mfu_under_one(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_steps", ROOT / "benchmarks" / "steps.py")
    steps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(steps)
    from alexnet.costs import training_flops
    from alexnet.models import build_model

    result = steps.main(
        [
            "--models",
            "speednet-white,speednet",
            "--batch-size",
            "4",
            "--threads",
            "1,2",
            "--block",
            "2",
            "--rounds",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    rows = result["rows"]
    assert [(r["model"], r["threads"]) for r in rows] == [
        (m, t) for m in ("speednet-white", "speednet") for t in (1, 2)
    ]
    for r in rows:
        for key in ("step_ms", "images_per_s", "gflop_per_s", "peak_gflop_per_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["model"], key)
        assert 0 < r["mfu"] < 1
    # After the frozen stem only the rest trains: its FLOPs, on the stem's 18 maps of 14x14.
    white = build_model("speednet-white")
    assert rows[0]["gflop_per_step"] * 1e9 == pytest.approx(training_flops(white[1:], (4, 18, 14, 14)), rel=1e-9)
    assert rows[2]["gflop_per_step"] * 1e9 == pytest.approx(
        training_flops(build_model("speednet"), (4, 1, 28, 28)), rel=1e-9
    )
    assert (tmp_path / "results.md").read_text().count("| speednet") == 4


def test_malloc_benchmark_measures_both_allocators_in_their_own_processes(tmp_path):
    """Keeping freed memory is process-wide and for good: each setting runs in a child of its own,
    and the children report the step, its CPU time and page faults, and whether the setting applied."""
    spec = importlib.util.spec_from_file_location("bench_malloc", ROOT / "benchmarks" / "malloc.py")
    malloc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(malloc)
    args = ["--networks", "alexnet28:8:cpu,speednet-white:8:speedrun", "--rounds", "1", "--steps", "2"]
    result = malloc.main([*args, "--warmup", "1", "--out", str(tmp_path)])
    assert [r["network"] for r in result["rows"]] == ["alexnet28", "speednet-white"]
    for r in result["rows"]:
        for key in ("system_ms", "keep_ms", "system_cpu_ms", "keep_cpu_ms", "speedup", "system_rss", "keep_rss"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["network"], key)
        assert r["system_faults"] >= 0 and r["keep_faults"] >= 0
        assert r["applied"] == (__import__("platform").libc_ver()[0] == "glibc")
    assert (tmp_path / "results.md").read_text().count("| alexnet28 | 8 | cpu |") == 1


# ---------------------------------------------------------------------------------------------
# benchmarks/chapter_224.py: the chapter's 224x224 runs written up in docs/report.md


def chapter_224_script():
    """benchmarks/chapter_224.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("chapter_224", ROOT / "benchmarks" / "chapter_224.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_chapter_224_writeup_reads_copies_and_publishes_no_checkpoint(two_runs, tmp_path):
    """benchmarks/chapter_224.py on two tiny runs standing in for the 224x224 ones."""
    script = chapter_224_script()
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "docs" / "report.md", docs / "report.md")
    before = sorted(p.name for p in (two_runs / "s0").iterdir())
    script.main(["--d2l", str(two_runs / "s0"), "--fast", str(two_runs / "s1"), "--docs", str(docs)])
    assert sorted(p.name for p in (two_runs / "s0").iterdir()) == before  # nothing written into a run
    page = (docs / "report.md").read_text()
    section = page[page.index(script.START) : page.index(script.END)]
    last = json.loads((two_runs / "s1" / "metrics.jsonl").read_text().splitlines()[-1])
    row = next(line for line in section.splitlines() if line.startswith("| 2 |"))
    assert f"| {last['train_loss']:.4f} | {last['val_acc']:.4f} |" in row
    assert "| 10 |" in section and "0.327 / 0.882" in section  # the book's row, not reached by these runs
    assert (docs / "figures" / "report" / "filters-224.png").stat().st_size > 1000
    for name in ("d2l-224", "fast-224"):
        published = {p.name for p in (docs / "runs" / name).iterdir()}
        assert {"config.json", "metrics.jsonl", "report.html", "report.md", "report-figures"} <= published
        assert not [p for p in (docs / "runs" / name).rglob("*.pt")]
    original = (ROOT / "docs" / "report.md").read_text()  # what comes after the section is kept as it was
    assert page.startswith("# `alexnet report`") and page.endswith(original[original.index(script.END) :])


def test_chapter_224_counts_a_resumed_epochs_training_that_old_rows_left_out_of_its_wall_time():
    script = chapter_224_script()
    rows = [
        {"epoch": 1, "train_time_s": 900.0, "eval_time_s": 50.0, "epoch_time_s": 960.0},  # whole: kept
        {"epoch": 2, "train_time_s": 1504.0, "eval_time_s": 31.1, "epoch_time_s": 31.1},
    ]  # resumed in evaluation
    fixed, repaired = script.epoch_times_repaired(rows)
    assert repaired == [2] and fixed[0] == rows[0] and fixed[1]["epoch_time_s"] == pytest.approx(1535.1)
    assert rows[1]["epoch_time_s"] == 31.1  # the run's own rows are not touched


def test_chapter_224_repairs_old_epoch_times_in_its_copy_and_the_copy_still_loads(two_runs, tmp_path):
    script = chapter_224_script()
    ckpt = R.load_checkpoint(two_runs / "s0" / "last.pt")
    ckpt["metrics"][0]["epoch_time_s"] = 0.0  # as a run resumed during its first evaluation recorded it
    (tmp_path / "old").mkdir()
    R.save_checkpoint({k: v for k, v in ckpt.items() if k not in ("path", "cfg")}, tmp_path / "old" / "last.pt")
    copy, repaired = script.snapshot(tmp_path / "old", tmp_path / "scratch")
    assert repaired == [1]
    row = R.load_checkpoint(copy / "last.pt")["metrics"][0]
    assert row["epoch_time_s"] == pytest.approx(row["train_time_s"] + row["eval_time_s"])


def test_chapter_224_publishes_over_its_own_folder_only(two_runs, tmp_path):
    script = chapter_224_script()
    to = tmp_path / "docs" / "runs" / "d2l-224"
    shutil.copytree(two_runs / "s0", tmp_path / "copy", ignore=shutil.ignore_patterns("*.pt"))
    script.publish(tmp_path / "copy", to)
    script.publish(tmp_path / "copy", to)  # its own: replaced
    (to / "notes.md").write_text("mine")
    with pytest.raises(SystemExit, match="notes.md, which publish did not write"):
        script.publish(tmp_path / "copy", to)
    assert (to / "notes.md").read_text() == "mine"
