"""torchvision's ImageNet weights: checked loading, the class names, torchvision's preprocessing, and a
forward that matches one written independently from the same tensors."""

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from alexnet import pretrained as P
from alexnet.cli import main
from alexnet.export import read_image

# torchvision's alexnet: (key, shape) in its state_dict order (torchvision/models/alexnet.py).
TORCHVISION_LAYOUT = [
    ("features.0.weight", (64, 3, 11, 11)),
    ("features.0.bias", (64,)),
    ("features.3.weight", (192, 64, 5, 5)),
    ("features.3.bias", (192,)),
    ("features.6.weight", (384, 192, 3, 3)),
    ("features.6.bias", (384,)),
    ("features.8.weight", (256, 384, 3, 3)),
    ("features.8.bias", (256,)),
    ("features.10.weight", (256, 256, 3, 3)),
    ("features.10.bias", (256,)),
    ("classifier.1.weight", (4096, 9216)),
    ("classifier.1.bias", (4096,)),
    ("classifier.4.weight", (4096, 4096)),
    ("classifier.4.bias", (4096,)),
    ("classifier.6.weight", (1000, 4096)),
    ("classifier.6.bias", (1000,)),
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A state dict in torchvision's layout with random values, saved under torchvision's naming
    (NAME-<sha256 prefix>.pth)."""
    g = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(s, generator=g) * (2.0 / np.prod(s[1:])) ** 0.5
        if len(s) > 1
        else torch.randn(s, generator=g) * 0.01
        for k, s in TORCHVISION_LAYOUT
    }
    tmp = tmp_path_factory.mktemp("tv") / "raw.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = tmp.with_name(f"alexnet-owt-{digest[:8]}.pth")
    tmp.rename(path)
    return path, state


def independent_forward(s: dict, x: torch.Tensor) -> torch.Tensor:
    """torchvision's AlexNet written out with functional ops (eval mode: dropout is the identity)."""
    x = F.max_pool2d(F.relu(F.conv2d(x, s["features.0.weight"], s["features.0.bias"], stride=4, padding=2)), 3, 2)
    x = F.max_pool2d(F.relu(F.conv2d(x, s["features.3.weight"], s["features.3.bias"], padding=2)), 3, 2)
    x = F.relu(F.conv2d(x, s["features.6.weight"], s["features.6.bias"], padding=1))
    x = F.relu(F.conv2d(x, s["features.8.weight"], s["features.8.bias"], padding=1))
    x = F.max_pool2d(F.relu(F.conv2d(x, s["features.10.weight"], s["features.10.bias"], padding=1)), 3, 2)
    x = F.adaptive_avg_pool2d(x, (6, 6)).flatten(1)
    x = F.relu(F.linear(x, s["classifier.1.weight"], s["classifier.1.bias"]))
    x = F.relu(F.linear(x, s["classifier.4.weight"], s["classifier.4.bias"]))
    return F.linear(x, s["classifier.6.weight"], s["classifier.6.bias"])


def test_class_names_ship_in_torchvision_order():
    names = P.imagenet_classes()
    assert len(names) == len(set(names)) == 1000
    # Indices every ImageNet user knows, and torchvision's two disambiguated duplicates.
    assert (names[0], names[1], names[281], names[409], names[954], names[999]) == (
        "tench",
        "goldfish",
        "tabby",
        "analog clock",
        "banana",
        "toilet tissue",
    )
    assert (names[134], names[517], names[638], names[639]) == ("crane bird", "crane", "maillot", "maillot tank suit")


def test_torchvision_weights_give_the_independent_forwards_logits(weights):
    path, state = weights
    model = P.load_torchvision(path)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(model(x), independent_forward(state, x), rtol=1e-4, atol=1e-4)


def test_preprocessing_is_torchvisions_shorter_side_256_centre_crop_224(tmp_path):
    rng = np.random.default_rng(0)
    photo = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)).save(photo)
    x = read_image(photo, P.describe_torchvision("alexnet-owt"))
    # By hand: 300x500 -> 256x427 (bilinear), crop rows 16..240 and columns 101..325.
    im = Image.open(photo).resize((427, 256), Image.BILINEAR).crop((101, 16, 325, 240))
    want = (
        torch.tensor(np.asarray(im), dtype=torch.float32).permute(2, 0, 1) / 255
        - torch.tensor(P.IMAGENET_MEAN)[:, None, None]
    ) / torch.tensor(P.IMAGENET_STD)[:, None, None]
    assert x.shape == (1, 3, 224, 224)
    torch.testing.assert_close(x[0], want, rtol=0, atol=1e-5)


def test_predict_with_weights_prints_imagenet_names_and_probabilities(weights, tmp_path, capsys):
    path, _ = weights
    photo = tmp_path / "p.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(photo)
    assert main(["predict", "--model", "alexnet-owt", "--weights", str(path), str(photo), "--top-k", "5"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{photo}: ")
    names = P.imagenet_classes()
    shown = line.split(": ", 1)[1].split("  ")
    assert len(shown) == 5
    for item in shown:
        name, prob = item.rsplit(" ", 1)
        assert name in names and 0 < float(prob) < 1


def _one_error(capsys, *argv):
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def test_a_truncated_or_wrong_file_is_one_line(weights, tmp_path, capsys):
    path, state = weights
    img = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(img)
    truncated = tmp_path / path.name  # the same name, so the hash in it is checked
    truncated.write_bytes(path.read_bytes()[:10_000_000])
    assert "sha256 starts" in _one_error(capsys, "predict", "--weights", truncated, img)
    renamed = tmp_path / "alexnet-owt.pth"  # no hash in the name: the load itself must fail cleanly
    renamed.write_bytes(path.read_bytes()[:10_000_000])
    assert "not a readable PyTorch weights file" in _one_error(capsys, "predict", "--weights", renamed, img)
    other = tmp_path / "chapter-alexnet.pth"  # another network's weights
    torch.save({"0.weight": torch.zeros(96, 1, 11, 11)}, other)
    assert "lacks features.0.weight" in _one_error(capsys, "predict", "--weights", other, img)
    ten = tmp_path / "ten-classes.pth"  # the right network, fine-tuned to 10 classes
    torch.save({**state, "classifier.6.weight": torch.zeros(10, 4096), "classifier.6.bias": torch.zeros(10)}, ten)
    assert "classifier.6.weight has shape (10, 4096)" in _one_error(capsys, "predict", "--weights", ten, img)
    assert "fit alexnet-owt" in _one_error(capsys, "predict", "--model", "alexnet", "--weights", path, img)
