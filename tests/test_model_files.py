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
