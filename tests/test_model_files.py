"""Model files from elsewhere are data: no loader runs code from one, opens anything but a regular file
of bounded size, or trusts the description a file gives of itself; a mistake is one line."""

import io
import json
import os
import zipfile

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
    from alexnet.weights import MAX_CHECKPOINT_BYTES, MAX_MODEL_BYTES

    def big(name):
        path = tmp_path / "big" / name
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as f:  # sparse: nothing is written, and a loader must not read it
            f.truncate((MAX_CHECKPOINT_BYTES if name.endswith(".pt") else MAX_MODEL_BYTES) + 1)
        return path

    for what, argv in _every_loader(tmp_path, big):
        line = _one_error(capsys, *argv)
        if what != "predict .pt2":
            assert "GB, more than the" in line and "GB a model file may hold here" in line, (what, line)
