"""The command line end to end, as a user runs it, in a temporary directory."""

import json

import numpy as np
import pytest
import torch
from conftest import alexnet, one_error_line
from PIL import Image

from alexnet import __version__


def test_train_reports_preset_device_accuracy_and_run_directory(trained_run):
    run, r = trained_run
    assert "preset cpu · model lenet-relu" in r.stdout and "device cpu" in r.stdout
    assert "test accuracy" in r.stdout and "run directory: run" in r.stdout
    assert {"config.json", "metrics.jsonl", "metrics.csv", "curves.png", "last.pt", "best.pt"} <= {
        p.name for p in run.iterdir()
    }
    versions = json.loads((run / "config.json").read_text())["versions"]  # what wrote the run, beside torch
    assert versions == {"alexnet": __version__, "torch": str(torch.__version__)}


def test_version_is_the_packages_one(tmp_path):
    r = alexnet("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith(f"alexnet {__version__} (torch {torch.__version__}")


def test_evaluate_prints_per_class_accuracy_and_writes_confusion_matrix(trained_run, idx_dir):
    run, _ = trained_run
    r = alexnet("evaluate", run, "--data-dir", idx_dir, cwd=run.parent)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and len([ln for ln in r.stdout.splitlines() if ln[:1].isdigit()]) == 10
    assert (run / "confusion.png").stat().st_size > 1000


def test_predict_reads_any_image_mode_and_names_unreadable_ones(trained_run, tmp_path):
    run, _ = trained_run
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    paths = []
    for mode, ext in (("RGB", "jpg"), ("RGBA", "png"), ("L", "png"), ("CMYK", "jpg"), ("I;16", "png"), ("P", "gif")):
        p = tmp_path / f"img_{mode.replace(';', '')}.{ext}"
        Image.fromarray(pixels).convert(mode).save(p)
        paths.append(p)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = alexnet("predict", run, *paths, broken, "--top-k", 2, cwd=tmp_path)
    assert r.returncode == 1
    assert len(r.stdout.strip().splitlines()) == len(paths)
    for line in r.stdout.strip().splitlines():
        probs = [float(tok) for tok in line.split()[-3::2]]
        assert len(probs) == 2 and probs[0] >= probs[1]
    assert one_error_line(r).startswith(f"{broken}: cannot read image")


def test_resume_continues_a_run(trained_run, idx_dir):
    run, _ = trained_run
    r = alexnet("train", "--resume", run, "--epochs", 3, "--no-progress", cwd=run.parent)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and "epoch   3/3" in r.stdout


def test_summary_prints_the_chapter_shapes(tmp_path):
    r = alexnet("summary", "--model", "alexnet", "--input", "1,1,224,224", cwd=tmp_path)
    assert r.returncode == 0
    for shape in ("1x96x54x54", "1x256x5x5", "1x6400", "1x10"):
        assert shape in r.stdout


def test_summary_takes_the_models_own_resolution_by_default(tmp_path):
    r = alexnet("summary", "--model", "speednet-white", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1x18x28x28" in r.stdout and "1x96x3x3" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["summary", "--model", "vgg"], "unknown model 'vgg'"),
        (["summary", "--input", "1,2,x"], "malformed input shape"),
        (["summary", "--input", "1,28,28"], "layer 5 (MaxPool2d)"),
        (["train", "--dataset", "mnist", "--data-dir", "/nonexistent"], "no mnist IDX files"),
        (["train", "--preset", "cpu", "--dataset", "imagenet21k"], "invalid choice: 'imagenet21k'"),
        (["evaluate", "/nonexistent/run"], "no such checkpoint"),
        (["train", "--resume", "/nonexistent/run"], "no last.pt to resume from"),
        (["train", "--device", "tpu9"], "unknown device"),
        (["train", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["train", "--limit-train", "0"], "--limit-train must be at least 1"),
        (["train", "--epochs", "0"], "--epochs must be at least 1"),
        (["train", "--momentum", "1.5"], "--momentum must be in [0, 1)"),
        (["train", "--lr", "-0.1"], "--lr must be positive"),
    ],
)
def test_bad_input_gives_one_clear_line(args, message, tmp_path):
    r = alexnet(*args, cwd=tmp_path)
    line = one_error_line(r)
    assert message in line, line
    assert not (tmp_path / "runs").exists()  # and leaves no run directory behind


def test_corrupt_checkpoint_is_named(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    line = one_error_line(alexnet("evaluate", tmp_path / "last.pt", cwd=tmp_path))
    assert "last.pt: not a readable checkpoint" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "run", "--batch-size", "0"], "argument --batch-size: 0 is outside 1..1048576"),
        (["evaluate", "run", "--batch-size", "-1"], "argument --batch-size: -1 is outside 1..1048576"),
        (["summary", "--num-classes", "1000000000"], "argument --num-classes: 1000000000 is outside 1..100000"),
        (["summary", "--num-classes", "0"], "argument --num-classes: 0 is outside 1..100000"),
        (["analyze", "--num-classes", "0"], "argument --num-classes: 0 is outside 1..100000"),
        (["activations", "run", "x.png", "--max-channels", "-5"], "argument --max-channels: -5 is outside 1..4096"),
    ],
)
def test_evaluation_and_visualisation_flags_are_bounded_as_the_configuration_is(args, message, capsys):
    from alexnet.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
