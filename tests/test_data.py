"""Data: reading and verifying the files, finding them, and the batched device-side ops."""

import gzip
import pickle

import numpy as np
import pytest
import torch
from conftest import make_idx_dataset, resize_reference, write_cifar, write_idx
from PIL import Image

from alexnet import data as D
from alexnet.config import Config


def test_real_fashion_mnist_is_read_and_verified(fashion):
    assert fashion.train.images.shape == (60000, 1, 28, 28) and fashion.train.images.dtype == torch.uint8
    assert fashion.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(fashion.train.labels).tolist() == [6000] * 10
    assert fashion.classes[9] == "ankle boot"


def test_generated_idx_dataset_loads_as_mnist(idx_dir):
    ds = D.load_dataset("mnist", idx_dir)
    assert ds.train.images.shape == (64, 1, 28, 28) and ds.test.labels.shape == (32,)
    assert ds.train.labels.dtype == torch.int64 and ds.channels == 1 and ds.size == 28


def test_uncompressed_idx_files_are_read_too(tmp_path):
    write_idx(tmp_path / "x", np.arange(2 * 3 * 4).reshape(2, 3, 4), compress=False)
    parsed = D.parse_idx((tmp_path / "x").read_bytes(), "x", 3)
    assert parsed.shape == (2, 3, 4) and parsed[1, 2, 3] == 23


def _corrupt(idx_dir, stem, payload: bytes):
    (idx_dir / f"{stem}.gz").write_bytes(gzip.compress(payload))


def test_missing_file_is_named(idx_dir):
    (idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(D.DataError, match="no mnist IDX files"):
        D.load_dataset("mnist", idx_dir)
    with pytest.raises(D.DataError, match="missing t10k-labels-idx1-ubyte"):
        D.read_idx_split(idx_dir, "test", None)


def test_truncated_file_names_file_and_sizes(idx_dir):
    raw = gzip.decompress((idx_dir / "train-images-idx3-ubyte.gz").read_bytes())
    _corrupt(idx_dir, "train-images-idx3-ubyte", raw[:-100])
    with pytest.raises(D.DataError, match=r"train-images-idx3-ubyte.gz: truncated: header declares 64x28x28"):
        D.load_dataset("mnist", idx_dir)


def test_truncated_gzip_stream_is_a_clear_error(idx_dir):
    p = idx_dir / "train-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(D.DataError, match="train-labels-idx1-ubyte.gz: cannot be read or decompressed"):
        D.load_dataset("mnist", idx_dir)


def test_wrong_magic_is_named(idx_dir):
    raw = gzip.decompress((idx_dir / "train-labels-idx1-ubyte.gz").read_bytes())
    _corrupt(idx_dir, "train-labels-idx1-ubyte", b"\x00\x00\x08\x03" + raw[4:])
    with pytest.raises(
        D.DataError, match=r"train-labels-idx1-ubyte.gz: wrong magic number 0x00000803, expected 0x00000801"
    ):
        D.load_dataset("mnist", idx_dir)


def test_images_and_labels_of_different_counts(idx_dir):
    write_idx(idx_dir / "t10k-labels-idx1-ubyte.gz", np.zeros(31))
    with pytest.raises(D.DataError, match="32 test images but 31 labels"):
        D.load_dataset("mnist", idx_dir)


def test_wrong_checksum_is_named_for_fashion_mnist(idx_dir):
    # Well-formed IDX files that are not Fashion-MNIST are refused by its known shapes (before the
    # payload is read) or, of the right shape, by its sha256 (test_inputs checks that path).
    with pytest.raises(
        D.DataError,
        match=r"train-images-idx3-ubyte.gz: header declares 64x28x28, but this "
        r"dataset's file holds 60000x28x28",
    ):
        D.load_dataset("fashion-mnist", idx_dir)


def test_search_order_data_dir_then_env_then_cache_then_debian(tmp_path, monkeypatch):
    a, b, c = (make_idx_dataset(tmp_path / n / "fashion-mnist") for n in ("a", "b", "cache/alexnet"))
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "b"))
    assert D.find_idx_dir("fashion-mnist", tmp_path / "a") == a
    assert D.find_idx_dir("fashion-mnist", None) == b
    monkeypatch.delenv("ALEXNET_DATA")
    assert D.find_idx_dir("fashion-mnist", None) == c


def test_no_data_and_no_network_names_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DEBIAN_FASHION_DIR", tmp_path / "nowhere")

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(D.urllib.request, "urlopen", offline)
    with pytest.raises(D.DataError) as e:
        D.load_dataset("fashion-mnist")
    msg = str(e.value)
    assert "download failed" in msg and "--data-dir" in msg and "$ALEXNET_DATA" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "\n" not in msg


def test_cifar10_python_batches_load(tmp_path):
    d = write_cifar(tmp_path)
    ds = D.load_dataset("cifar10", tmp_path)
    assert ds.train.images.shape == (100, 3, 32, 32) and ds.test.images.shape == (20, 3, 32, 32)
    with open(d / "data_batch_1", "rb") as f:
        first = pickle.load(f)[b"data"][0]
    # Rows are 1024 red, then 1024 green, then 1024 blue values, row-major.
    assert ds.train.images[0, 1, 0, 5] == first[1024 + 5]


def test_corrupt_cifar_batch_is_named(tmp_path):
    write_cifar(tmp_path, corrupt="data_batch_3")
    with pytest.raises(D.DataError, match="data_batch_3: not a CIFAR-10 python batch"):
        D.load_dataset("cifar10", tmp_path)


def test_cifar_pickle_with_code_is_refused(tmp_path):
    d = write_cifar(tmp_path)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": print, b"labels": []}, f)
    with pytest.raises(D.DataError, match="refusing to load builtins.print"):
        D.load_dataset("cifar10", tmp_path)


def _pixels(value, dtype, n=20):
    data = np.random.default_rng(1).integers(0, 256, (n, 3072)).astype(dtype)
    data[3, 100] = value
    return {b"data": data}


@pytest.mark.parametrize(
    "fields, message",
    [
        (_pixels(300, np.int64), r"data_batch_2: pixel value 300 \(image 3\) is outside 0..255"),  # would wrap to 44
        (_pixels(-1, np.int16), r"data_batch_2: pixel value -1 \(image 3\) is outside 0..255"),  # would wrap to 255
        (_pixels(0.5, np.float64), r"data_batch_2: pixel values are float64, expected integers 0..255"),
        ({b"labels": [1.7] * 20}, r"data_batch_2: labels are float64, expected integers 0..9"),  # would become 1
        ({b"labels": [3] * 19 + [10]}, r"data_batch_2: label 10 \(image 19\) is outside 0..9"),
        (
            {b"labels": [[3]] * 20},
            r"data_batch_2: expected N x 3072 pixel values and N labels, .* \(20, 3072\), \(20, 1\)",
        ),
        ({b"labels": [3] * 19}, r"data_batch_2: expected N x 3072 .* got \(20, 3072\), \(19,\)"),
        ({b"data": np.zeros((20, 3071), np.uint8)}, r"data_batch_2: expected N x 3072 .* got \(20, 3071\)"),
    ],
)
def test_cifar_batch_that_does_not_fit_bytes_and_ten_labels_is_refused_not_cast(fields, message, tmp_path):
    write_cifar(tmp_path, replace={"data_batch_2": fields})
    with pytest.raises(D.DataError, match=message) as e:
        D.load_dataset("cifar10", tmp_path)
    assert "\n" not in str(e.value)


def test_cifar_batch_of_wider_integers_within_a_byte_loads_unchanged(tmp_path):
    wide = np.random.default_rng(2).integers(0, 256, (20, 3072))  # int64, as a re-pickled batch may hold
    write_cifar(tmp_path, replace={"test_batch": {b"data": wide, b"labels": np.arange(20) % 10}})
    ds = D.load_dataset("cifar10", tmp_path)
    assert ds.test.images.dtype == torch.uint8 and torch.equal(
        ds.test.images.reshape(20, -1).long(), torch.from_numpy(wide)
    )
    assert ds.test.labels.tolist() == [i % 10 for i in range(20)]


def test_shards_of_an_epoch_partition_the_permutation():
    full = D.epoch_indices(103, epoch=4, seed=1)
    shards = [D.epoch_indices(103, epoch=4, seed=1, rank=r, world_size=4) for r in range(4)]
    assert all(len(s) == 25 for s in shards)
    merged = torch.stack(shards, 1).reshape(-1)
    assert torch.equal(merged, full[:100])
    assert not torch.equal(full, D.epoch_indices(103, epoch=5, seed=1))


def test_random_crop_cuts_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = D.random_crop(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(2):
        windows = [padded[i, :, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_random_flip_mirrors_about_half():
    x = torch.arange(28).view(1, 1, 1, 28).expand(1000, 1, 1, 28).contiguous()
    out = D.random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 27).sum().item()
    assert 400 < flipped < 600
    assert torch.equal(out[out[:, 0, 0, 0] == 27][0], x[0].flip(-1))


def test_batched_resize_matches_pillow_bilinear():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    ours = D.Transform(224, channels_last=False)(torch.from_numpy(img)[None, None], train=False)[0, 0]
    pil = np.asarray(Image.fromarray(img).resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255
    assert ours.shape == (224, 224) and 0 <= ours.min() and ours.max() <= 1
    assert np.abs(ours.numpy() - pil).mean() < 0.01


@pytest.mark.parametrize(
    "dataset, channels, side, resolution",
    [("fashion-mnist", 1, 28, 64), ("cifar10", 3, 32, 20)],
    ids=["upsampled", "shrunk"],
)
def test_a_runs_transform_is_crop_flip_scale_resize_normalise(dataset, channels, side, resolution):
    """A run's transform (data.make_transform) against its steps written out one image at a time:
    the crop offsets, then the flips, drawn from the batch's generator in that order (a resumed
    run redraws them); bilinear without antialiasing even when shrinking, as runs have always been
    trained (d2l's loaders antialias); then (x - mean) / std; channels last."""
    cfg = Config(preset="test").replace(
        dataset=dataset, resolution=resolution, normalize=True, crop_padding=3, flip=True
    )
    t = D.make_transform(cfg, dataset, torch.device("cpu"))
    b, pad = 6, 3
    x = torch.randint(0, 256, (b, channels, side, side), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = t(x, train=True, generator=torch.Generator().manual_seed(1))

    g = torch.Generator().manual_seed(1)
    oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=g)[:, 0].tolist()
    ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=g)[:, 0].tolist()
    flips = (torch.rand(b, generator=g) < 0.5).tolist()
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    crops = [padded[i, :, oy[i] : oy[i] + side, ox[i] : ox[i] + side] for i in range(b)]
    crops = np.stack([c[..., ::-1] if f else c for c, f in zip(crops, flips)]).astype(np.float32) / 255
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in D.STATS[dataset])
    reference = (resize_reference(torch.from_numpy(crops), (resolution, resolution), antialias=False) - mean) / std
    assert 0 < sum(flips) < b and len(set(oy)) > 1
    assert out.shape == (b, channels, resolution, resolution) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last) or channels == 1  # 1 channel: both layouts
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=0)
    # Evaluation: no crop, no flip.
    plain = (resize_reference(x.float() / 255, (resolution, resolution), antialias=False) - mean) / std
    torch.testing.assert_close(t(x, train=False), plain, atol=2e-5, rtol=0)


def test_transform_normalises_and_lays_out_channels_last():
    x = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    t = D.Transform(64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_padding=4, flip=True)
    out = t(x, train=False)
    assert out.shape == (4, 3, 64, 64) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.5) / 0.25), atol=1e-6)


def test_loader_yields_resized_batches_without_touching_the_stored_split(idx_dir):
    ds = D.load_dataset("mnist", idx_dir)
    before = ds.train.images.clone()
    t = D.Transform(224, crop_padding=2, flip=True)
    got = list(D.loader(ds.train, t, 16, train=True, epoch=0))
    assert len(got) == 4 and got[0][0].shape == (16, 1, 224, 224) and got[0][0].dtype == torch.float32
    assert torch.equal(ds.train.images, before) and ds.train.images.shape[-1] == 28
