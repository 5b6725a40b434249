"""Model files from elsewhere are data: no loader runs code from one, opens anything but a regular file
of bounded size, or trusts the description a file gives of itself; a mistake is one line."""

import io
import json
import os
import zipfile

import pytest
import torch
from PIL import Image

from alexnet import export as E
from alexnet.cli import main


def _one_error(capsys, *argv):
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _image(tmp_path, channels=1, side=8):
    img = tmp_path / "x.png"
    Image.new("L" if channels == 1 else "RGB", (side, side)).save(img)
    return img


# ---------------------------------------------------------------------------------------------
# Item 1: a .pt2 is never unpickled


class _RunsACommand:
    """What torch.load(weights_only=False) turns into a call of os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _toy_meta(in_channels=1, classes=2, side=2):
    return {
        "format_version": 1,
        "model": "toy",
        "in_channels": in_channels,
        "num_classes": classes,
        "classes": [f"c{i}" for i in range(classes)],
        "resolution": side,
        "native": side,
        "resize": None,
        "mean": None,
        "std": None,
        "dataset": "toy",
        "epoch": 1,
    }


def test_predict_never_unpickles_a_pt2_that_marks_a_weight_as_pickled(tmp_path, capsys):
    # A .pt2 as `alexnet export` writes it, then edited: one weight marked use_pickle in
    # model_weights_config.json, and that weight's file replaced by a pickle that calls os.system.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    marker = tmp_path / "the-command-ran"
    payload = io.BytesIO()
    torch.save(_RunsACommand(marker), payload)
    src = zipfile.ZipFile(io.BytesIO(E.to_pt2(model, _toy_meta())))
    config_name = next(n for n in src.namelist() if n.endswith("weights/model_weights_config.json"))
    config = json.loads(src.read(config_name))
    entry = next(iter(config["config"].values()))
    entry["use_pickle"] = True
    weight_name = config_name.rsplit("/", 1)[0] + "/" + entry["path_name"]
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(evil, "w") as out:
        for info in src.infolist():
            data = {config_name: json.dumps(config).encode(), weight_name: payload.getvalue()}.get(info.filename)
            out.writestr(info, data if data is not None else src.read(info))
    line = _one_error(capsys, "predict", evil, _image(tmp_path))
    assert not marker.exists(), "the file's pickle ran a command"
    assert str(evil) in line and "does not read .pt2" in line and ".onnx or .safetensors" in line


# ---------------------------------------------------------------------------------------------
# Item 13: only regular files, of bounded size, for every loader

# Every way a model file is read: predict's exported files, checkpoint and torchvision weights, and
# train's --init-from (safetensors, checkpoint, torchvision .pth). NAME is the file's name.
PREDICT_LOADERS = {
    "predict .onnx": lambda f, img: ["predict", f("m.onnx"), img],
    "predict .safetensors": lambda f, img: ["predict", f("m.safetensors"), img],
    "predict .pt2": lambda f, img: ["predict", f("m.pt2"), img],
    "predict .pt": lambda f, img: ["predict", f("last.pt"), img],
    "predict --weights": lambda f, img: ["predict", "--weights", f("alexnet-owt.pth"), img],
}
INIT_FROM = ("w.safetensors", "w.pt", "owt.pth")


def _train_init_from(data, run_dir, weights, model="alexnet28"):
    return [
        "train",
        "--preset",
        "cpu",
        "--model",
        model,
        "--dataset",
        "mnist",
        "--data-dir",
        data,
        "--epochs",
        "1",
        "--init-from",
        weights,
        "--run-dir",
        run_dir,
        "--no-progress",
    ]


def _every_loader(tmp_path, make):
    """(what, argv) of every loader, each given the file ``make(name)`` returns."""
    from conftest import make_idx_dataset

    data = make_idx_dataset(tmp_path / "mnist-like")
    img = _image(tmp_path)
    cases = [(what, loader(make, img)) for what, loader in PREDICT_LOADERS.items()]
    for name in INIT_FROM:
        model = "alexnet-owt" if name.endswith(".pth") else "alexnet28"
        cases.append((f"--init-from {name}", _train_init_from(data, tmp_path / f"run-{name}", make(name), model)))
    return [(what, list(map(str, argv))) for what, argv in cases]


def test_no_loader_opens_a_fifo_and_each_returns_at_once_with_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    def fifo(name):
        path = tmp_path / "fifos" / name
        path.parent.mkdir(exist_ok=True)
        os.mkfifo(path)  # nobody writes: open() for reading would block forever
        return path

    cases = _every_loader(tmp_path, fifo)
    # One interpreter runs every command (main() as `alexnet` runs it), each line of stderr after a
    # marker; the timeout turns a hang into a failure instead of a stuck suite.
    script = (
        "import json, sys\n"
        "from alexnet.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    print('--- next', file=sys.stderr, flush=True)\n"
        "    print(main(argv), flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps([argv for _, argv in cases])],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split() == ["2"] * len(cases), result.stderr[-2000:]
    said = result.stderr.split("--- next\n")[1:]
    for (what, _), err in zip(cases, said, strict=True):
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (what, err)
        if what != "predict .pt2":  # refused unread, FIFO or not
            assert "not a regular file (a FIFO)" in lines[0], (what, lines[0])


def test_no_loader_reads_a_link_to_dev_zero(tmp_path, capsys):
    def link(name):
        path = tmp_path / "links" / name
        path.parent.mkdir(exist_ok=True)
        path.symlink_to("/dev/zero")  # read whole, it never ends
        return path

    for what, argv in _every_loader(tmp_path, link):
        line = _one_error(capsys, *argv)
        if what != "predict .pt2":
            assert "not a regular file (a device or socket)" in line, (what, line)


def test_no_loader_reads_a_file_larger_than_the_bound(tmp_path, capsys):
    from alexnet.runs import MAX_CHECKPOINT_BYTES
    from alexnet.weights import MAX_MODEL_BYTES

    def big(name):
        path = tmp_path / "big" / name
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as f:  # sparse: nothing is written, and a loader must not read it
            f.truncate((MAX_CHECKPOINT_BYTES if name.endswith(".pt") else MAX_MODEL_BYTES) + 1)
        return path

    for what, argv in _every_loader(tmp_path, big):
        line = _one_error(capsys, *argv)
        if what != "predict .pt2":
            assert "GB, more than the" in line, (what, line)
            kind = "a checkpoint" if what.endswith((".pt", "w.pt")) else "a model file"
            assert f"GB {kind} may hold here" in line, (what, line)


def test_no_loader_runs_a_pickle_that_calls_os_system(tmp_path, capsys):
    # torch.load(weights_only=True) for checkpoints, --weights and --init-from; .pt2 refused unread;
    # ONNX and safetensors are not pickles at all. The same hostile pickle under every loader's name.
    marker = tmp_path / "the-command-ran"
    payload = io.BytesIO()
    torch.save({"model": _RunsACommand(marker)}, payload)

    def pickle_file(name):
        path = tmp_path / "pickles" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(payload.getvalue())
        return path

    for what, argv in _every_loader(tmp_path, pickle_file):
        _one_error(capsys, *argv)
        assert not marker.exists(), f"{what} ran the file's pickle"


# ---------------------------------------------------------------------------------------------
# Item 14: a file's description is checked, and the graph against it, before the first image


def _description(**changes):
    meta = {
        "format_version": 1,
        "model": "alexnet28",
        "in_channels": 1,
        "num_classes": 10,
        "classes": [f"c{i}" for i in range(10)],
        "resolution": 28,
        "native": 28,
        "resize": None,
        "mean": [0.286],
        "std": [0.353],
        "dataset": "fashion-mnist",
        "epoch": 1,
    }
    return {**meta, **changes}


@pytest.fixture(scope="module")
def alexnet28():
    """alexnet28 (4.2 MB of weights) and its ONNX graph, exported once."""
    from alexnet.models import build_model

    model = build_model("alexnet28", 1, 10, seed=0).eval()
    return model, E.to_onnx(model, _description())


def _onnx_with(onnx_bytes: bytes, meta: dict) -> bytes:
    import onnx

    proto = onnx.load_model_from_string(onnx_bytes)
    entry = next(p for p in proto.metadata_props if p.key == "alexnet")
    entry.value = json.dumps(meta)
    return proto.SerializeToString()


# Descriptions that are wrong in type, size or agreement, and a word the one line must hold.
BAD_DESCRIPTIONS = {
    "too many classes": (dict(num_classes=300_000, classes=["x"] * 300_000), "num_classes 300000"),
    "negative class count": (dict(num_classes=-3), "num_classes -3 is not a whole number in 1..100000"),
    "fewer names than classes": (dict(classes=["a", "b"]), "2 class names for its 10 classes"),
    "names not strings": (dict(classes=list(range(10))), "class name"),
    "resolution 0": (dict(resolution=0), "resolution 0 is not a whole number in 1..1024"),
    "resolution a string": (dict(resolution="28"), "resolution '28' is not a whole number"),
    "mean of the wrong length": (dict(mean=[0.1, 0.2, 0.3], std=[0.3, 0.3, 0.3]), "not 1 finite numbers each"),
    "std of zero": (dict(std=[0.0]), "std [0.0] is not positive"),
    "mean without std": (dict(std=None), "a normalisation mean without a std"),
    "channels out of range": (dict(in_channels=7), "in_channels 7"),
    "a later format": (dict(format_version=2), "format_version 2 is not 1"),
}


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
@pytest.mark.parametrize("case", list(BAD_DESCRIPTIONS))
def test_every_field_of_a_description_is_checked_before_anything_is_built(alexnet28, fmt, case, tmp_path, capsys):
    model, onnx_bytes = alexnet28
    changes, said = BAD_DESCRIPTIONS[case]
    meta = _description(**changes)
    path = tmp_path / f"m.{fmt}"
    path.write_bytes(E.to_safetensors(model, meta) if fmt == "safetensors" else _onnx_with(onnx_bytes, meta))
    line = _one_error(capsys, "predict", path, _image(tmp_path, side=28))
    assert str(path) in line and "its description is not usable" in line and said in line, line


def test_an_onnx_graph_that_disagrees_with_its_description_is_refused_before_the_first_image(
    alexnet28, tmp_path, capsys
):
    _, onnx_bytes = alexnet28
    img = _image(tmp_path, side=28)
    five = tmp_path / "five.onnx"  # the graph gives 10 logits
    five.write_bytes(_onnx_with(onnx_bytes, _description(num_classes=5, classes=list("abcde"))))
    assert "its graph gives [" in _one_error(capsys, "predict", five, img)
    wider = tmp_path / "wider.onnx"  # the graph takes 28x28
    wider.write_bytes(_onnx_with(onnx_bytes, _description(resolution=32, native=32)))
    assert "its description one float (batch, 1, 32, 32) input" in _one_error(capsys, "predict", wider, img)
    rgb = tmp_path / "rgb.onnx"
    rgb.write_bytes(_onnx_with(onnx_bytes, _description(in_channels=3, mean=[0.3] * 3, std=[0.3] * 3)))
    assert "its description one float (batch, 3, 28, 28) input" in _one_error(capsys, "predict", rgb, img)


def test_safetensors_whose_tensors_or_input_disagree_with_the_description_are_refused(alexnet28, tmp_path, capsys):
    model, _ = alexnet28
    img = _image(tmp_path, side=28)
    five = tmp_path / "five.safetensors"  # its last layer has 10 rows
    five.write_bytes(E.to_safetensors(model, _description(num_classes=5, classes=list("abcde"))))
    assert "has shape [10, 512], its description's network needs [5, 512]" in _one_error(capsys, "predict", five, img)
    small = tmp_path / "small.safetensors"  # alexnet28's classifier takes what a 28x28 input gives
    small.write_bytes(E.to_safetensors(model, _description(resolution=8, native=8)))
    assert "does not take its description's 1x8x8 input" in _one_error(capsys, "predict", small, img)


def test_an_onnx_model_whose_weights_name_another_file_is_refused(alexnet28, tmp_path, capsys):
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    _, onnx_bytes = alexnet28
    proto = onnx.load_model_from_string(onnx_bytes)
    convert_model_to_external_data(proto, location="weights.bin", size_threshold=0)  # read from the cwd
    path = tmp_path / "outside.onnx"
    path.write_bytes(proto.SerializeToString())
    line = _one_error(capsys, "predict", path, _image(tmp_path, side=28))
    assert "is kept in a file outside the model; predict reads only self-contained files" in line


# ---------------------------------------------------------------------------------------------
# Item 15: the lines point at the real mistake


def test_init_from_a_missing_path_or_an_export_it_cannot_load_says_what_it_reads(tmp_path):
    from alexnet.finetune import InitError, init_from
    from alexnet.models import build_model

    model = build_model("alexnet28", 1, 10)
    onnx, pt2 = tmp_path / "m.onnx", tmp_path / "m.pt2"
    onnx.write_bytes(b"an ONNX graph")
    pt2.write_bytes(b"a torch.export program")
    cases = {
        tmp_path / "missing": "no such file or run directory",
        tmp_path / "missing.pt": "no such file or run directory",
        onnx: "a .onnx export holds a compiled graph, not weights --init-from can load",
        pt2: "a .pt2 export holds a compiled graph, not weights --init-from can load",
    }
    for path, said in cases.items():
        with pytest.raises(InitError) as e:
            init_from(model, str(path), "alexnet28", quiet=True)
        assert said in str(e.value) and ".pth" in str(e.value), str(e.value)
        assert "a .pth file is read as torchvision's" not in str(e.value)  # the old line, pointing elsewhere


def test_a_time_budget_too_long_for_the_data_says_so_not_that_epochs_are_too_many():
    from alexnet.budget import first_plan
    from alexnet.config import Config, ConfigError

    cfg = Config(preset="test").replace(time_budget="720h", epochs=10)
    plan = first_plan(cfg, step_s=0.01, eval_s=0.1, startup_s=1.0, steps_per_epoch=4)  # a small subset
    with pytest.raises(ConfigError) as e:
        plan.shape(cfg)  # where the plan becomes epochs
    assert "--time-budget 720h is too long for this data: it plans" in str(e.value)
    assert "give a shorter budget" in str(e.value) and "--epochs must be" not in str(e.value)


def test_a_time_budget_too_long_for_the_data_leaves_no_run_behind(idx_dir, tmp_path, capsys):
    # Refused when the plan is made, before the run directory: no empty run with a lock and a config.
    argv = ["train", "--preset", "cpu", "--model", "lenet-relu", "--dataset", "mnist", "--data-dir", idx_dir]
    line = _one_error(capsys, *argv, "--batch-size", 16, "--time-budget", "720h", "--run-dir", tmp_path / "run")
    assert "--time-budget 720h is too long for this data" in line
    assert not (tmp_path / "run").exists()
