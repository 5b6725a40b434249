"""Export to ONNX, safetensors and .pt2: each file matches its checkpoint on real test images, carries
what predict needs, and a file that does not match is never left behind."""

import json
import sys

import numpy as np
import pytest
import torch
from conftest import make_idx_dataset
from PIL import Image

from alexnet import export as E
from alexnet.cli import main
from alexnet.models import build_model


@pytest.fixture(scope="module")
def run28(tmp_path_factory):
    """A one-epoch alexnet28 run on the tiny MNIST-format files, made in-process (fast)."""
    root = tmp_path_factory.mktemp("export")
    data = make_idx_dataset(root / "mnist-like")
    code = main(
        [
            "train",
            "--preset",
            "cpu",
            "--model",
            "alexnet28",
            "--dataset",
            "mnist",
            "--data-dir",
            str(data),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--run-dir",
            str(root / "run"),
            "--no-progress",
        ]
    )
    assert code == 0
    img = root / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(img)
    return root / "run", data, img


def _predict_lines(capsys, *args):
    capsys.readouterr()
    assert main(["predict", *map(str, args), "--top-k", "3"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("fmt", list(E.FORMATS))
def test_export_matches_checkpoint_and_predicts_from_the_file_alone(run28, fmt, capsys, tmp_path):
    run, data, img = run28
    out = tmp_path / f"net{E.FORMATS[fmt]}"
    assert main(["export", str(run), "--format", fmt, "-o", str(out), "--data-dir", str(data)]) == 0
    said = capsys.readouterr().out
    assert "parity on 32 test images" in said and "top-1 agreement 1.0000" in said, said
    diff = float(said.split("max |logit diff| ")[1].split()[0])
    assert diff <= 1e-5  # the same fp32 arithmetic, at most reordered
    if fmt == "pt2":  # written and checked, but not read back from a file (it may unpickle code)
        assert main(["predict", str(out), str(img)]) == 2
        assert "does not read .pt2 files" in capsys.readouterr().err
        return
    # The file alone (the run is not consulted): same classes, same probabilities as from the run.
    from_file = _predict_lines(capsys, out, img).split(": ", 1)[1].split()
    from_run = _predict_lines(capsys, run, img).split(": ", 1)[1].split()
    assert from_file[::2] == from_run[::2]
    assert np.allclose([float(p) for p in from_file[1::2]], [float(p) for p in from_run[1::2]], atol=2e-3)


def test_onnx_has_current_opset_dynamic_batch_and_metadata(run28, tmp_path):
    import onnx

    run, data, _ = run28
    out = tmp_path / "m.onnx"
    E.export(run, "onnx", out, data_dir=str(data), say=lambda s: None)
    proto = onnx.load(out)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # symbolic: any batch
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model_name"] == "alexnet28" and meta["input_size"] == "1x28x28"
    assert json.loads(meta["class_names"]) == torch.load(run / "last.pt", weights_only=True)["classes"]
    assert json.loads(meta["normalization_mean"]) is not None  # the cpu preset normalises
    sess = E.onnx_session(str(out))
    for b in (1, 5):
        assert sess.run(None, {"image": np.zeros((b, 1, 28, 28), np.float32)})[0].shape == (b, 10)


def test_a_mismatching_export_is_an_error_and_leaves_no_file(run28, tmp_path, monkeypatch, capsys):
    run, data, _ = run28

    def wrong(model, meta):  # a writer that gets one bias wrong
        model = build_model(meta["model"], meta["in_channels"], meta["num_classes"])
        model.load_state_dict(torch.load(run / "last.pt", weights_only=True)["model"])
        model[-1].bias.data += 0.5
        return E.to_safetensors(model, meta)

    monkeypatch.setitem(E._WRITERS, "safetensors", wrong)
    out = tmp_path / "bad.safetensors"
    assert main(["export", str(run), "--format", "safetensors", "-o", str(out), "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not written" in err[0] and "max |logit diff| 5.00e-01" in err[0]
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def test_int8_check_counts_only_clear_decisions():
    ref = torch.tensor([[5.0, 4.9, 0.0], [5.0, 1.0, 0.0]])
    near_tie_flipped = torch.tensor([[4.9, 5.0, 0.0], [5.0, 1.1, 0.0]])  # margin 0.1 < 2 x 5 % of 5
    assert E.parity(ref, near_tie_flipped, E.INT8_RELATIVE_TOLERANCE).disagree_clear == 0
    clear_flipped = torch.tensor([[5.0, 4.9, 0.0], [1.0, 5.0, 0.0]])
    assert E.parity(ref, clear_flipped, E.INT8_RELATIVE_TOLERANCE).disagree_clear == 1


def test_parity_allows_reordering_noise_and_near_ties_but_not_a_real_difference():
    ref = torch.tensor([[5.0, 1.0, 0.0], [2.0, 2.0 + 1e-6, 0.0]])
    noisy = ref + 1e-6 * torch.tensor([[1.0, -1.0, 1.0], [1.0, -1.0, 0.0]])  # flips the near-tie's top-1
    p = E.parity(ref, noisy)
    assert p.ok and p.top1_agree == 0.5 and p.disagree_clear == 0
    assert not E.parity(ref, ref + torch.tensor([[0.0, 0.01, 0.0], [0.0, 0.0, 0.0]])).ok  # 0.01 > 5e-3
    swapped = ref.clone()
    swapped[0, :2] = swapped[0, :2].flip(0)
    assert not E.parity(ref, swapped).ok


def test_exported_file_without_a_description_is_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    f = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, f)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    for path in (f, junk):
        assert main(["predict", str(path), str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0]


# The layers of the registered networks that are unusual for an exporter, at toy sizes (the full
# networks take minutes here; docs/export.md exports every one): alexnet2012's padding, grouped convs
# and LRN; alexnet-owt's named blocks and adaptive pooling; speednet-white's frozen whitening stem,
# hand-written max-pool, residual block and batch norm.
def _unusual_layers() -> torch.nn.Module:
    from collections import OrderedDict

    from alexnet import models as M

    torch.manual_seed(0)
    stem = M.Frozen(M.WhiteningConv(2), M.MaxPool2x2(), torch.nn.ReLU())  # (B, 36, 16, 16)
    stem[0].fit(torch.randn(8, 2, 16, 16))
    features = torch.nn.Sequential(
        M.PadTo(34),
        stem,
        M.Residual(36),
        torch.nn.Conv2d(36, 8, 3, padding=1, groups=2),
        M.GroupedLRN(groups=2),
        torch.nn.AdaptiveAvgPool2d((3, 3)),
    )
    return M.Blocks(
        OrderedDict(features=features, flatten=torch.nn.Flatten(), classifier=torch.nn.Linear(72, 5))
    ).eval()


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_the_registered_networks_unusual_layers_export_with_parity(fmt):
    model = _unusual_layers()
    meta = {
        "model": "toy",
        "in_channels": 2,
        "num_classes": 5,
        "classes": list("abcde"),
        "resolution": 32,
        "native": 32,
        "dataset": "toy",
    }
    x = torch.randn(3, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x)
    loaded = E._OPENERS[fmt](E._WRITERS[fmt](model, meta), "toy")
    p = E.parity(ref, loaded(x))
    assert p.ok and p.max_abs_diff < 1e-5, p.line()
    assert loaded(x[:1]).shape == (1, 5)  # a batch other than the traced one


def test_int8_onnx_is_checked_on_decisions_and_predicts_from_the_file(run28, tmp_path, capsys):
    import onnx

    run, data, img = run28
    out = tmp_path / "net.int8.onnx"
    assert main(["export", str(run), "--format", "onnx", "--int8", "-o", str(out), "--data-dir", str(data)]) == 0
    said = capsys.readouterr().out
    assert "int8: parity on 32 test images" in said and "; 0 changed decisions with a top-2 margin above" in said
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantised, not the fp32 graph renamed
    assert json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["alexnet"])["precision"] == "int8"
    assert main(["predict", str(out), str(img)]) == 0
    assert main(["export", str(run), "--format", "pt2", "--int8"]) == 2
    assert "--int8 quantises ONNX models" in capsys.readouterr().err


def test_export_without_the_extra_names_the_install_command_before_any_work(run28, tmp_path, monkeypatch, capsys):
    run, data, _ = run28
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if `pip install alexnet` alone
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--format", "onnx", "-o", str(out), "--data-dir", str(data)]) == 2
    said = capsys.readouterr()
    err = said.err.strip().splitlines()
    assert len(err) == 1 and "pip install 'alexnet[export]'" in err[0] and "'onnxscript'" in err[0], err
    assert "does not export" not in err[0] and "parity" not in said.out  # the network is not blamed
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["predict", str(tmp_path / "any.onnx"), str(tmp_path / "x.png")]) == 2
    assert "pip install 'alexnet[export]'" in capsys.readouterr().err


def test_export_into_a_missing_folder_is_refused_before_the_export_and_its_check(run28, tmp_path, capsys):
    run, data, _ = run28
    out = tmp_path / "no-such-folder" / "m.safetensors"
    assert main(["export", str(run), "--format", "safetensors", "-o", str(out), "--data-dir", str(data)]) == 2
    said = capsys.readouterr()
    err = said.err.strip().splitlines()
    assert len(err) == 1 and f"no folder {out.parent} to write it in" in err[0], err
    assert "parity" not in said.out  # refused before the export ran
    folder = tmp_path / "a-folder.onnx"  # something that is not a file is never replaced
    folder.mkdir()
    assert main(["export", str(run), "--format", "onnx", "-o", str(folder), "--data-dir", str(data)]) == 2
    assert "a directory, not a file; not replaced" in capsys.readouterr().err
