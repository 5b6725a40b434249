"""Fine-tuning: --init-from loads all but the last layer, --freeze features leaves the convolutions
exactly as loaded, --pretrained-lr-scale steps the pretrained layers slower, and resume works."""

import pytest
import torch
from conftest import make_idx_dataset

from alexnet.cli import main
from alexnet.finetune import init_from, last_layer
from alexnet.models import build_model


def _train(*extra):
    return main(
        [
            "train",
            "--preset",
            "cpu",
            "--model",
            "alexnet28",
            "--dataset",
            "mnist",
            "--batch-size",
            "16",
            "--no-progress",
            *map(str, extra),
        ]
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    data = make_idx_dataset(root / "mnist-like")
    assert _train("--data-dir", data, "--epochs", 1, "--run-dir", root / "source") == 0
    return root, data


def _weights(run):
    return torch.load(run / "last.pt", weights_only=True)


def test_freeze_features_trains_only_the_classifier_and_replaces_the_head(source, tmp_path):
    root, data = source
    assert (
        _train(
            "--data-dir",
            data,
            "--epochs",
            1,
            "--init-from",
            root / "source",
            "--freeze",
            "features",
            "--run-dir",
            tmp_path / "ft",
        )
        == 0
    )
    before, after = _weights(root / "source")["model"], _weights(tmp_path / "ft")["model"]
    convs = [k for k in before if int(k.split(".")[0]) < 13]  # alexnet28: layers 0-12 are the features
    assert convs and all(torch.equal(before[k], after[k]) for k in convs)
    assert not torch.equal(before["14.weight"], after["14.weight"])  # the hidden FC layers trained


def test_init_from_loads_every_tensor_but_the_last_layers(source):
    root, _ = source
    model = build_model("alexnet28", 1, 10, seed=5)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    init_from(model, str(root / "source"), "alexnet28", quiet=True)
    src, now = _weights(root / "source")["model"], model.state_dict()
    head = last_layer(model) + "."  # "20.": the classifier's output layer
    for k in now:
        assert torch.equal(now[k], fresh[k] if k.startswith(head) else src[k]), k
    assert not torch.equal(fresh[head + "weight"], src[head + "weight"])  # so the check above can tell them apart


def test_pretrained_layers_step_at_the_scaled_rate_and_the_run_resumes(source, tmp_path):
    root, data = source
    run = tmp_path / "ft"
    assert (
        _train(
            "--data-dir",
            data,
            "--epochs",
            1,
            "--init-from",
            root / "source",
            "--pretrained-lr-scale",
            0.1,
            "--run-dir",
            run,
        )
        == 0
    )
    groups = _weights(run)["optimizer"]["param_groups"]
    head_lr = {g["lr"] for g in groups if g["lr_scale"] == 1.0}
    pre_lr = {g["lr"] for g in groups if g["lr_scale"] == 0.1}
    assert len(head_lr) == len(pre_lr) == 1 and pre_lr.pop() == pytest.approx(0.1 * head_lr.pop())
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert _weights(run)["epoch"] == 2


def test_torchvision_rgb_weights_fit_a_grey_dataset_exactly(tmp_path):
    rgb = build_model("alexnet-owt", 3, 1000, seed=0).eval()
    torch.save(rgb.state_dict(), tmp_path / "alexnet-owt.pth")  # torchvision's layout, no hash in the name
    grey = build_model("alexnet-owt", 1, 10, seed=1).eval()
    init_from(grey, str(tmp_path / "alexnet-owt.pth"), "alexnet-owt", quiet=True)
    x = torch.rand(2, 1, 95, 95)
    with torch.inference_mode():  # a grey image is an RGB image with R = G = B
        torch.testing.assert_close(grey.features(x), rgb.features(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grey.classifier[1].weight, rgb.classifier[1].weight)


def test_fine_tuning_mistakes_are_one_line(source, tmp_path, capsys):
    root, data = source
    assert _train("--data-dir", data, "--freeze", "features", "--run-dir", tmp_path / "a") == 2
    assert "give --init-from" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--preset",
                "cpu",
                "--model",
                "lenet",
                "--dataset",
                "mnist",
                "--data-dir",
                str(data),
                "--init-from",
                str(root / "source"),
                "--run-dir",
                str(tmp_path / "b"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds alexnet28, not --model lenet" in err[0]
    assert not (tmp_path / "b").exists()  # checked before the run directory is made


def test_an_image_folder_without_dataset_imagefolder_is_one_line_that_says_so(tmp_path, capsys):
    for split in ("train", "val"):
        (tmp_path / "photos" / split / "cat").mkdir(parents=True)
    assert (
        main(
            [
                "train",
                "--model",
                "alexnet-owt",
                "--init-from",
                str(tmp_path / "w.pth"),
                "--data-dir",
                str(tmp_path / "photos"),
                "--run-dir",
                str(tmp_path / "run"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --dataset imagefolder" in err[0]
