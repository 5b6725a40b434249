"""The 2012 network and the ImageNet-style pipeline: the paper's claims, on generated image folders."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FORMATS, make_image_folder, picture, save_image
from PIL import Image
from torch import nn

from alexnet import data as D
from alexnet import imagenet as I
from alexnet import runs as R
from alexnet import train as T
from alexnet.cli import main
from alexnet.config import PRESETS, Config
from alexnet.models import GroupedLRN, TwoTowers, build_model
from alexnet.tracing import summary

# ---------------------------------------------------------------------------------------------
# The networks


def test_alexnet2012_maps_match_figure_2_at_224_and_227():
    for side in (224, 227):
        shapes = {r.output_shape[1:] for r in summary("alexnet2012", (1, 3, side, side), num_classes=1000)}
        assert {(96, 55, 55), (256, 27, 27), (384, 13, 13), (256, 6, 6), (9216,), (1000,)} <= shapes
    net = build_model("alexnet2012", 3, 10, seed=0).eval()
    x = torch.rand(1, 3, 224, 224)
    # A 224 crop is the 227 network on that crop zero-padded by 1 pixel top/left and 2 bottom/right.
    torch.testing.assert_close(net(x), net(F.pad(x, (1, 2, 1, 2))))


def test_alexnet2012_parameter_count_by_hand_with_two_streams():
    conv = [(3, 96, 11, 1), (96, 256, 5, 2), (256, 384, 3, 1), (384, 384, 3, 2), (384, 256, 3, 2)]  # groups
    fc = [(9216, 4096), (4096, 4096), (4096, 1000)]
    expected = sum(i // g * o * k * k + o for i, o, k, g in conv) + sum(i * o + o for i, o in fc)
    assert sum(p.numel() for p in build_model("alexnet2012", 3, 1000).parameters()) == expected == 60_965_224


def test_lrn_is_the_papers_formula_within_each_stream():
    x = torch.randn(2, 8, 3, 3) * 30
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
    expected = torch.empty_like(x)
    for g in range(2):  # channels 0-3 on one GPU, 4-7 on the other
        part = x[:, 4 * g : 4 * g + 4]
        for i in range(4):
            lo, hi = max(0, i - n // 2), min(3, i + n // 2)
            expected[:, 4 * g + i] = part[:, i] / (k + alpha * part[:, lo : hi + 1].square().sum(1)) ** beta
    torch.testing.assert_close(GroupedLRN(groups=2)(x), expected)


def test_alexnet2012_has_the_papers_initialisation():
    net = build_model("alexnet2012", 3, 1000, seed=0)
    layers = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [m.bias.unique().tolist() for m in layers] == [[0.0], [1.0], [0.0], [1.0], [1.0], [1.0], [1.0], [0.0]]
    for m in layers:
        assert m.weight.mean().abs() < 2e-3 and m.weight.std().item() == pytest.approx(0.01, rel=0.05)


TORCHVISION_ALEXNET = {  # torchvision.models.alexnet().state_dict(): names and shapes, written out by hand
    "features.0.weight": (64, 3, 11, 11),
    "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5),
    "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3),
    "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3),
    "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3),
    "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216),
    "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096),
    "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}


def test_torchvision_alexnet_checkpoint_loads_into_alexnet_owt(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in TORCHVISION_ALEXNET.items()}
    torch.save(sd, tmp_path / "alexnet-owt.pth")
    net = build_model("alexnet-owt", 3, 1000).eval()
    net.load_state_dict(torch.load(tmp_path / "alexnet-owt.pth", weights_only=True), strict=True)
    x = torch.rand(2, 3, 224, 224, generator=g)

    def conv(x, i, **kw):
        return F.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], **kw))

    # torchvision's forward, written out with the functional ops on the same tensors.
    h = F.max_pool2d(conv(x, 0, stride=4, padding=2), 3, 2)
    h = F.max_pool2d(conv(h, 3, padding=2), 3, 2)
    h = F.max_pool2d(conv(conv(conv(h, 6, padding=1), 8, padding=1), 10, padding=1), 3, 2)
    h = F.adaptive_avg_pool2d(h, 6).flatten(1)
    h = F.relu(F.linear(h, sd["classifier.1.weight"], sd["classifier.1.bias"]))
    h = F.relu(F.linear(h, sd["classifier.4.weight"], sd["classifier.4.bias"]))
    torch.testing.assert_close(net(x), F.linear(h, sd["classifier.6.weight"], sd["classifier.6.bias"]))


def test_two_towers_on_two_devices_compute_the_grouped_network():
    grouped = build_model("alexnet2012", 3, 10, seed=0).eval()
    grouped[-1].bias.data.normal_()  # distinct logits, so a swapped half would show
    towers = TwoTowers(grouped, ["cpu", "cpu"]).eval()  # two CPU "devices" stand in for the two GPUs
    assert all(p.shape[0] in (48, 128, 192, 2048, 5) for p in towers.parameters())  # half of every layer
    x = torch.rand(3, 3, 227, 227)
    out_g, out_t = grouped(x), towers(x)
    torch.testing.assert_close(out_t, out_g, rtol=1e-4, atol=1e-5)
    # One SGD step on each: the updated tower weights are the updated grouped weights.
    target = torch.tensor([1, 4, 7])
    for net in (grouped, towers):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        F.cross_entropy(net(x), target).backward()
        opt.step()
    updated = towers.grouped_state_dict()
    assert updated.keys() == grouped.state_dict().keys()
    for name, w in grouped.state_dict().items():
        torch.testing.assert_close(updated[name], w, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Generated image folders: 3 classes, every image mode, sizes from 36 to 64 pixels, one corrupt file


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


def tiny_images(folder, **kw) -> Config:
    base = dict(
        model="lenet-relu",
        dataset="imagefolder",
        data_dir=str(folder),
        resize=32,
        resolution=28,
        epochs=2,
        batch_size=8,
        eval_batch_size=16,
        lr=0.02,
        momentum=0.9,
        workers=0,
        log_every=2,
        stats_images=50,
        flip=True,
        lighting=0.1,
        normalize=True,
    )
    return Config(preset="test").replace(**{**base, **kw})


def test_every_image_mode_becomes_8bit_rgb(tmp_path):
    a = picture(1, np.random.default_rng(0), 40, 30)
    for mode, ext in FORMATS:
        save_image(a, mode, tmp_path / f"x.{ext}")
        im = I.open_rgb(str(tmp_path / f"x.{ext}"))
        assert im.mode == "RGB" and im.size == (40, 30), mode
    grey = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert np.asarray(I.to_rgb(grey)).min() == 255  # 16-bit white stays white, not clipped garbage


def test_pipeline_batches_have_the_crop_shape_and_value_range(folder):
    cfg = tiny_images(folder, normalize=False, lighting=0.0)
    data = I.ImagePipeline(cfg, torch.device("cpu"), 28, 8, 16, channels_last=False)
    assert data.classes == ["blue", "green", "red"] and len(data) == 43  # 42 images + the corrupt one
    x, y = next(iter(data.train(0)))
    assert x.shape == (8, 3, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1 and x.std() > 0.05
    xv, yv = next(iter(data.val()))
    assert xv.shape == (15, 3, 28, 28) and yv.tolist() == [0] * 5 + [1] * 5 + [2] * 5


def test_augmentation_depends_only_on_seed_epoch_and_index(folder):
    images = I.find_images("imagefolder", str(folder))[0]
    ds = I.ImageDataset(images, 32, 28, "train", lighting=0.1, seed=3)
    a, b = ds[(5, 0)], ds[(5, 0)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert not torch.equal(ds[(5, 1)][2], a[2])  # a new epoch draws new noise


def test_lighting_noise_follows_the_pca_of_the_training_pixels(folder):
    images = I.find_images("imagefolder", str(folder))[0]
    stats = I.channel_stats(images, sample=50)
    vec, val = np.array(stats["eigvec"]), np.array(stats["eigval"])
    assert stats["images"] == 42  # the corrupt file is passed over
    # The eigen-decomposition reproduces the covariance of the pixels it was computed from.
    pixels = (
        np.concatenate(
            [
                np.asarray(I.resize_shorter(I.open_rgb(p, 64), 64), dtype=np.float64).reshape(-1, 3)
                for p in images.paths
                if "truncated" not in p
            ]
        )
        / 255
    )
    np.testing.assert_allclose(vec @ np.diag(val) @ vec.T, np.cov(pixels, rowvar=False), atol=1e-9)
    # Per-image alphas drawn in the workers have the paper's std 0.1 ...
    ds = I.ImageDataset(images, 32, 28, "train", lighting=0.1)
    alphas = torch.stack([ds[(i % 42, i // 42)][2] for i in range(420) if i % 42 != 41])
    assert alphas.mean().abs() < 0.02 and alphas.std().item() == pytest.approx(0.1, rel=0.1)
    # ... and shift every pixel of an image by V (alpha * lambda), along the principal axes.
    t = D.Transform(None, lighting=(tuple(val), tuple(map(tuple, vec))), channels_last=False)
    out = t(torch.zeros(len(alphas), 3, 2, 2, dtype=torch.uint8), train=True, alpha=alphas)
    shift = out[:, :, 0, 0].double().numpy()
    assert np.allclose(out[:, :, 1, 1].double().numpy(), shift)
    np.testing.assert_allclose(shift @ vec, alphas.double().numpy() * val, atol=1e-6)


def test_an_image_folder_batch_is_scaled_lit_and_normalised_not_resized(folder):
    """The pipeline's transform against its steps written out, per image: x / 255, plus
    V (alpha * lambda) in training only, then (x - mean) / std with the run's colour statistics;
    the ten crops of an evaluation batch (B, 10, C, H, W) alike. The workers cropped at the
    resolution, so nothing is resized."""
    g = torch.Generator().manual_seed(0)
    vec = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))[0]
    stats = {
        "mean": [0.48, 0.45, 0.40],
        "std": [0.23, 0.22, 0.21],
        "eigval": [0.2, 0.02, 0.005],
        "eigvec": vec.tolist(),
    }
    t = I.ImagePipeline(tiny_images(folder), torch.device("cpu"), 28, 8, 16, stats=stats).transform
    x = torch.randint(0, 256, (4, 3, 28, 28), generator=g, dtype=torch.uint8)
    alpha = 0.1 * torch.randn(4, 3, generator=g)
    mean, std = torch.tensor(stats["mean"]).view(3, 1, 1), torch.tensor(stats["std"]).view(3, 1, 1)
    shift = [
        (vec @ (alpha[i].double() * torch.tensor(stats["eigval"], dtype=torch.float64))).view(3, 1, 1) for i in range(4)
    ]
    lit = torch.stack([((x[i].double() / 255 + shift[i]) - mean) / std for i in range(4)]).float()
    out = t(x, train=True, alpha=alpha)
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, lit, atol=1e-5, rtol=0)
    plain = (x.double() / 255 - mean) / std
    torch.testing.assert_close(t(x, train=False, alpha=alpha), plain.float(), atol=1e-5, rtol=0)
    ten = torch.randint(0, 256, (2, 10, 3, 28, 28), generator=g, dtype=torch.uint8)
    torch.testing.assert_close(t(ten, train=False), ((ten.double() / 255 - mean) / std).float(), atol=1e-5, rtol=0)


def test_both_data_sources_answer_what_a_run_asks(folder, idx_dir, tmp_path):
    """train.Session asks its data only what data.Source declares, never which kind it is."""
    cpu = torch.device("cpu")
    memory = D.InMemory(Config(preset="test").replace(dataset="mnist", data_dir=str(idx_dir)), cpu, 8, 5)
    stats = {"mean": [0.5] * 3, "std": [0.25] * 3, "eigval": [0.1] * 3, "eigvec": np.eye(3).tolist()}
    images = I.ImagePipeline(tiny_images(folder), cpu, 28, 8, 4, stats=stats)
    for data, evaluations in ((memory, 7), (images, 4)):  # 32 test images in 5s; 15 validation images in 4s
        assert isinstance(data, D.Source)
        assert data.val_steps == evaluations == len(list(data.val())) and len(list(data.val(2))) == 2
    assert memory.resident and memory.precomputable and memory.uniform_batches
    assert not (images.resident or images.precomputable or images.uniform_batches)
    ev = {"acc": 0.75, "top5": 1.0, "skipped": 1}
    assert memory.epoch_metrics(ev) == {}
    assert images.epoch_metrics(ev) == {"val_top1_err": 0.25, "val_top5_err": 0.0, "skipped_images": 1}
    (tmp_path / "run").mkdir()
    memory.record(tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []
    images.record(tmp_path / "run")
    assert I.load_stats(tmp_path / "run" / I.STATS_FILE) == stats


def test_ten_crops_are_corners_centre_and_their_mirrors(folder):
    images = I.find_images("imagefolder", str(folder))[1]
    x, label, _, err = I.ImageDataset(images, 32, 28, "ten")[(0, 0)]
    assert err is None and x.shape == (10, 3, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(x[5:], x[:5].flip(-1))
    centre = I.ImageDataset(images, 32, 28, "center")[(0, 0)][0]
    assert torch.equal(x[4], centre)
    # evaluate() averages the ten softmaxes of an image.
    model = build_model("lenet-relu", 3, 3, seed=0).eval()
    batch = x[None].float() / 255
    ev = T.evaluate(model, [(batch, torch.tensor([label]))], device=torch.device("cpu"), amp=False, num_classes=3)
    probs = model(batch[0]).softmax(1).mean(0)
    assert ev["loss"] == pytest.approx(-probs[label].log().item(), rel=1e-5)
    assert ev["acc"] == float(probs.argmax() == label) and ev["top5"] == 1.0


def test_training_on_an_image_folder_learns_and_counts_the_corrupt_file(folder, tmp_path, capfd):
    # Cosine to zero: at a constant lr 0.02 with momentum the last of 4 epochs on 42 images swings
    # (0.33-1.0 over seeds 0-3); decayed, every seed and both seed styles ended at 1.0.
    cfg = tiny_images(folder, epochs=4, workers=2, schedule="cosine")
    result = T.fit(cfg, tmp_path / "run", progress=False, quiet=True)
    assert result.final["val_acc"] > 0.8  # chance is 1/3
    assert result.metrics[-1]["train_loss"] < result.metrics[0]["train_loss"]
    assert [m["skipped_images"] for m in result.metrics] == [1, 1, 1, 1]
    assert result.final["val_top1_err"] == pytest.approx(1 - result.final["val_acc"])
    assert result.final["val_top5_err"] == 0  # 3 classes: the true one is always among the top 5
    logged = [ln for ln in capfd.readouterr().err.splitlines() if "skipping unreadable image" in ln]
    assert len(logged) == 1 and "999-truncated.jpg" in logged[0]
    stats = json.loads((tmp_path / "run" / "lighting.json").read_text())
    assert len(stats["eigvec"]) == 3 and R.load_checkpoint(tmp_path / "run")["stats"] == stats
    # `alexnet evaluate` (best.pt) reproduces the run's best top-1 error, and takes 10 crops when asked.
    outputs = {}
    for flag in ("--no-ten-crop", "--ten-crop"):
        assert main(["evaluate", str(tmp_path / "run"), "--device", "cpu", "--batch-size", "7", flag]) == 0
        outputs[flag] = capfd.readouterr().out
    assert "centre crop, 0 unreadable skipped" in outputs["--no-ten-crop"] and "10 crops" in outputs["--ten-crop"]
    top1 = float(outputs["--no-ten-crop"].split("top-1 error ")[1].split()[0])
    assert top1 == pytest.approx(1 - max(m["val_acc"] for m in result.metrics), abs=1e-4)


def test_list_file_variant_reads_the_same_images(folder, tmp_path):
    train = I.find_images("imagefolder", str(folder))[0]
    lines = [f"{p} {y}" for p, y in zip(train.paths, train.labels)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(lines[:5]) + "\n")
    (tmp_path / "classes.txt").write_text("\n".join(train.classes) + "\n")
    listed, _ = I.find_images("imagelist", str(tmp_path))
    assert listed.paths == train.paths and listed.labels == train.labels and listed.classes == train.classes
    (tmp_path / "val.txt").write_text("a.jpg seven\n")
    with pytest.raises(I.DataError, match=r"val.txt:1: expected 'relative/path label'"):
        I.find_images("imagelist", str(tmp_path))


@pytest.mark.parametrize(
    "layout, message", [({"train": [], "val": []}, "train: no images found"), ({"train": ["a"]}, "val: no such folder")]
)
def test_empty_or_missing_folders_give_one_clear_line(layout, message, tmp_path):
    for split, classes in layout.items():
        (tmp_path / "data" / split).mkdir(parents=True)
        for c in classes:
            (tmp_path / "data" / split / c).mkdir()
            Image.new("RGB", (8, 8)).save(tmp_path / "data" / split / c / "x.png")
    args = ["train", "--dataset", "imagefolder", "--data-dir", tmp_path / "data", "--no-progress"]
    r = subprocess.run(
        [sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr


# ---------------------------------------------------------------------------------------------
# The paper's recipe


def test_paper_presets_hold_the_papers_recipe():
    p = PRESETS["paper"]
    assert (p.train.model, p.train.batch_size, p.train.lr, p.train.momentum, p.train.weight_decay, p.train.epochs) == (
        "alexnet2012",
        128,
        0.01,
        0.9,
        5e-4,
        90,
    )
    assert (p.data.resize, p.data.lighting, p.data.flip, p.train.schedule) == (256, 0.1, True, "plateau")
    step = PRESETS["paper-step"]
    assert [T.lr_at(e * 100, 9000, 100, step) for e in (0, 29, 30, 60, 89)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.0001, 0.0001]
    )
    fast = PRESETS["imagenet-fast"]
    assert fast.system.amp == "bf16" and fast.system.channels_last and fast.train.warmup_epochs > 0


def test_plateau_schedule_divides_by_ten_when_validation_error_stalls():
    errors = [0.9, 0.8, 0.7, 0.7, 0.71, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    assert [T.plateau_drops(errors[:n], patience=3) for n in (3, 5, 6, 7, 9, 10, 12)] == [0, 0, 1, 1, 1, 2, 2]
    assert T.lr_at(10, 100, 10, PRESETS["paper"], drops=2) == pytest.approx(1e-4)


def test_model_parallel_run_checkpoints_in_the_grouped_layout(idx_dir, tmp_path):
    cfg = Config(preset="test").replace(
        model="alexnet2012",
        dataset="mnist",
        data_dir=str(idx_dir),
        epochs=1,
        batch_size=4,
        limit_train=8,
        limit_test=4,
        model_parallel="cpu,cpu",
        channels_last=False,
    )
    T.fit(cfg, tmp_path / "run", progress=False, quiet=True)
    model, _ = R.model_from_checkpoint(R.load_checkpoint(tmp_path / "run"))  # loads into the grouped network
    assert isinstance(model, nn.Sequential) and model[5].groups == 2
    with pytest.raises(T.TrainingError, match="model-parallel .*this network has none"):
        T.fit(cfg.replace(model="lenet"), tmp_path / "bad", progress=False, quiet=True)


def test_plateau_run_lowers_the_rate_after_the_epochs_that_stalled(idx_dir, tmp_path):
    cfg = Config(preset="test").replace(
        model="lenet",
        dataset="mnist",
        data_dir=str(idx_dir),
        epochs=4,
        batch_size=16,
        lr=0.5,
        schedule="plateau",
        lr_patience=1,
    )
    m = T.fit(cfg, tmp_path / "run", progress=False, quiet=True).metrics
    errors = [1 - r["val_acc"] for r in m]
    assert [r["lr"] for r in m] == pytest.approx([0.5 * 0.1 ** T.plateau_drops(errors[:i], 1) for i in range(4)])
    assert m[-1]["lr"] < 0.5  # LeNet's sigmoids at this rate stall, so the rule fires
