"""Inputs that are broken, hostile or odd: each gives one line naming the file, never a traceback,
never unbounded memory, and never a silently wrong run."""

import gzip
import os
import re
import struct
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import alexnet, make_idx_dataset, no_hang, one_error_line, write_cifar, write_idx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from alexnet import data as D
from alexnet import imagenet as I
from alexnet import runs as R
from alexnet.config import Config

MB = 10**6


def idx_header(*dims: int) -> bytes:
    return struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def gzip_bomb(path: Path, header: bytes, zeros: int) -> None:
    """A gzip file of ``header`` and ``zeros`` zero bytes, written without holding them (~1000:1)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    block = bytes(MB)
    with open(path, "wb") as f:
        f.write(z.compress(header))
        for _ in range(zeros // MB):
            f.write(z.compress(block))
        f.write(z.flush())


# Folders and lists of a few tiny images: resized small, read in the main process, in small batches.
SMALL_IMAGES = ("--resize", 32, "--resolution", 28, "--workers", 0, "--batch-size", 4)


def train_one_epoch(cwd: Path, dataset: str, data_dir, *flags):
    """``alexnet train`` as a user types it: one epoch of LeNet-ReLU on the cpu preset into ``cwd/run``."""
    args = ["--preset", "cpu", "--model", "lenet-relu", "--dataset", dataset, "--data-dir", data_dir, "--epochs", 1]
    return alexnet("train", *args, *flags, "--run-dir", "run", "--no-progress", cwd=cwd)


def peak_memory(fn) -> tuple[int, BaseException | None]:
    """Peak bytes traced by tracemalloc while ``fn`` runs (numpy and torch CPU buffers are traced)."""
    tracemalloc.start()
    try:
        fn()
        err = None
    except Exception as e:
        err = e
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, err


# ---------------------------------------------------------------------------------------------
# IDX: decompression bombs, absurd headers, labels out of range


@pytest.mark.parametrize("declared", [(10, 28, 28), (60000, 28, 28)])
def test_gzip_bomb_is_refused_without_inflating_it(declared, tmp_path):
    # 200 MB of zeros behind a header: the old reader inflated all of it before looking.
    path = tmp_path / "train-images-idx3-ubyte.gz"
    gzip_bomb(path, idx_header(*declared), 200 * MB)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(declared[0]))
    assert path.stat().st_size < MB
    peak, err = peak_memory(lambda: D.read_idx_split(tmp_path, "train", None))
    assert isinstance(err, D.DataError) and "has trailing bytes" in str(err) and str(path) in str(err), err
    # Memory follows the declared size (at most the real dataset), not the 200 MB in the stream.
    assert peak < 1.5 * np.prod(declared) + 8 * MB, peak


def test_header_declaring_an_absurd_size_is_refused_before_allocating(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header(2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(1000)))
    peak, err = peak_memory(lambda: D.read_idx_split(tmp_path, "test", None))
    assert isinstance(err, D.DataError) and f"{path}: header declares 4294967295x4294967295x4294967295" in str(err)
    assert peak < 4 * MB


@pytest.mark.parametrize("dims", [(2**31, 2**31, 4), (2**32 - 1, 2**32 - 1, 2**32 - 1), (2**16, 2**16, 2**16)])
def test_header_whose_size_overflows_int64_names_the_file(dims, idx_dir):
    # 2^31 * 2^31 * 4 = 2^64 wraps to 0 in numpy's int64: the old check passed and reshape failed.
    (idx_dir / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_header(*dims)))
    with pytest.raises(D.DataError, match=r"train-images-idx3-ubyte.gz: header declares .* more than"):
        D.load_dataset("mnist", idx_dir)


def test_a_header_a_known_dataset_cannot_have_is_refused_before_a_byte_of_the_payload(tmp_path):
    # 65536x256x256 is under the 4 GiB cap: the old reader inflated all that the gzip held before
    # the checksum (Fashion-MNIST) or the end of the stream refused it.
    path = tmp_path / "train-images-idx3-ubyte.gz"
    gzip_bomb(path, idx_header(65536, 256, 256), 100 * MB)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(10))
    peak, err = peak_memory(lambda: D.read_idx_split(tmp_path, "train", None))
    assert isinstance(
        err, D.DataError
    ) and f"{path}: header declares 65536x256x256, but this dataset's file holds at most 60000x28x28" in str(err), err
    assert peak < 4 * MB, peak
    # Fashion-MNIST's files are checksummed: their counts are exact.
    write_idx(path, np.zeros((59999, 28, 28)))
    with pytest.raises(D.DataError, match="declares 59999x28x28, but this dataset's file holds 60000x28x28"):
        D.read_idx_split(tmp_path, "train", D.FASHION_SHA256)


def test_a_gzip_declaring_more_than_it_can_hold_is_refused_before_inflating(tmp_path):
    path = tmp_path / "any-idx.gz"
    path.write_bytes(gzip.compress(idx_header(100, 100, 100) + bytes(100)))  # ~150 bytes cannot hold 1 MB
    with pytest.raises(D.DataError, match=r"declares 100x100x100 \(1000000 bytes\), more than the file can hold"):
        D.read_idx(path, 3)


def test_truncated_payload_and_empty_arrays_are_named(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_header(100) + bytes(40))
    with pytest.raises(
        D.DataError, match=r"labels: truncated: header declares 100 \(108 bytes\) but the file holds 48"
    ):
        D.read_idx(path, 1)
    path.write_bytes(idx_header(0, 28, 28))
    with pytest.raises(D.DataError, match=r"labels: header declares an empty array \(0x28x28\)"):
        D.read_idx(path, 3)


def test_reading_verifies_fashion_checksum_of_what_was_read(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, np.arange(10))
    import hashlib

    digest = hashlib.sha256(idx_header(10) + bytes(range(10))).hexdigest()
    assert D.read_idx(path, 1, digest).tolist() == list(range(10))
    with pytest.raises(D.DataError, match="sha256 of the decompressed content does not match t10k-labels-idx1-ubyte"):
        D.read_idx(path, 1, "0" * 64)


@pytest.mark.parametrize("split", ["train", "test"])
def test_label_out_of_range_is_refused_at_load_time(split, idx_dir):
    stem = D.IDX_FILES[split][1]
    labels = D.read_idx(idx_dir / f"{stem}.gz", 1).copy()
    labels[5] = 200
    write_idx(idx_dir / f"{stem}.gz", labels)
    with pytest.raises(D.DataError, match=rf"{stem}.gz: label 200 at index 5 is outside 0..9"):
        D.load_dataset("mnist", idx_dir)


def test_label_out_of_range_stops_train_before_the_run_directory(idx_dir, tmp_path):
    write_idx(idx_dir / "train-labels-idx1-ubyte.gz", np.full(64, 10))
    r = train_one_epoch(tmp_path, "mnist", idx_dir)
    line = one_error_line(r)
    assert "train-labels-idx1-ubyte.gz: label 10 at index 0 is outside 0..9 (64 such labels)" in line, line
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# ---------------------------------------------------------------------------------------------
# Images: 16-bit, decompression bombs, empty class folders, nothing readable


def write_png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height (8-bit grey) and holds no pixels: Pillow's bomb
    check fires on the header, so a 20000 x 20000 "image" costs a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_sixteen_bit_grey_is_rescaled_not_clipped(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)
    with Image.open(path) as im:
        im.load()
        assert im.mode.startswith("I")  # Pillow keeps the 16 bits
        rgb = I.to_rgb(im)  # what `alexnet predict` and the image folders both use
    assert rgb.mode == "RGB" and np.asarray(rgb).min() == np.asarray(rgb).max() == 128  # not 255
    assert np.asarray(I.open_rgb(str(path))).max() == 128


def test_predict_rescales_16bit_names_each_oversized_image_once_and_goes_on(trained_run, tmp_path):
    run, _ = trained_run
    grey16, plain = tmp_path / "grey16.png", tmp_path / "plain.png"
    Image.fromarray(np.full((28, 28), 32768, dtype=np.uint16)).save(grey16)
    # Past twice the limit Pillow raises; between the limit and twice it, it only warns (a stray
    # stderr line) and decodes: both are refused, each in the same one line.
    bombs = {factor: tmp_path / f"bomb{factor}.png" for factor in (1.5, 2.1)}
    for factor, bomb in bombs.items():
        side = int((factor * Image.MAX_IMAGE_PIXELS) ** 0.5)
        write_png_header(bomb, side, side)
    Image.new("L", (28, 28), 200).save(plain)
    r = alexnet("predict", run, grey16, bombs[1.5], bombs[2.1], plain, "--top-k", 1, cwd=tmp_path)
    assert r.returncode == 1
    out = r.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in out] == [str(grey16), str(plain)], r.stdout
    lines = r.stderr.strip().splitlines()
    assert [ln.split(": cannot read image (")[0] for ln in lines] == [str(b) for b in bombs.values()], r.stderr
    assert all("(DecompressionBombError: Image size" in ln for ln in lines), r.stderr


def test_a_large_16bit_image_is_reduced_before_any_float_copy_in_predict_and_in_folders(tmp_path):
    side = 3000  # 9 M pixels: float64 copies of it were 72 MB each
    path = tmp_path / "big16.png"
    Image.fromarray(np.full((side, side), 51400, dtype=np.uint16)).save(path)
    peak, err = peak_memory(lambda: I.open_rgb(str(path), 28))
    assert err is None and peak < 12 * MB, peak  # numpy's buffers are traced; the 18 MB image is Pillow's
    small = I.open_rgb(str(path), 28)
    assert min(small.size) >= 56 and np.asarray(small).min() == np.asarray(small).max() == 200  # 51400 / 257
    images = I.ImageList([str(path)], [0], ["a"])
    peak, err = peak_memory(lambda: I.ImageDataset(images, 32, 28, "center")[(0, 0)])
    assert err is None and peak < 12 * MB, peak


def test_an_image_over_the_pixel_limit_is_one_skip_without_a_warning(tmp_path, monkeypatch, recwarn):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 40 x 40 image is then in Pillow's warning range
    for side in (30, 40, 50):
        Image.new("RGB", (side, side), (9, 99, 199)).save(tmp_path / f"{side}.png")
    images = I.ImageList([str(tmp_path / f"{side}.png") for side in (30, 40, 50)], [0, 0, 0], ["a"])
    errors = [I.ImageDataset(images, 28, 28, "center")[(i, 0)][3] for i in range(3)]
    assert errors[0] is None
    assert [e.split(" (")[0] for e in errors[1:]] == images.paths[1:], errors
    assert all("(DecompressionBombError: Image size" in e for e in errors[1:]), errors
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    assert I.channel_stats(images)["images"] == 1  # the colour statistics pass over both


def test_predict_top_k_zero_is_one_line(tmp_path):
    line = one_error_line(alexnet("predict", tmp_path / "nothing", tmp_path / "x.png", "--top-k", 0, cwd=tmp_path))
    assert "--top-k must be at least 1" in line


def _folder(root: Path, classes: dict[str, int], broken: bool = False) -> None:
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            p = root / name / f"{i}.png"
            if broken:
                p.write_bytes(b"\x89PNG\r\n\x1a\n not really")
            else:
                Image.new("RGB", (36, 36), (40 * i % 256, 200 if name == "a" else 0, 0)).save(p)


def test_empty_class_folder_is_refused_with_its_name(tmp_path):
    _folder(tmp_path / "data" / "train", {"a": 2, "b": 0, "c": 2})
    with pytest.raises(D.DataError, match=r"train/b: empty class folder"):
        I.scan_folder(tmp_path / "data" / "train")
    # Validation folders take the training classes: an empty one there shifts nothing.
    _folder(tmp_path / "val", {"a": 1, "c": 0})
    assert I.scan_folder(tmp_path / "val", ["a", "b", "c"]).labels == [0]


def test_empty_class_folder_stops_train_with_one_line(tmp_path):
    _folder(tmp_path / "data" / "train", {"a": 2, "b": 0})
    _folder(tmp_path / "data" / "val", {"a": 1})
    r = alexnet("train", "--dataset", "imagefolder", "--data-dir", tmp_path / "data", "--no-progress", cwd=tmp_path)
    assert "train/b: empty class folder" in one_error_line(r)


def test_a_constant_colour_channel_does_not_normalise_to_nan(tmp_path):
    _folder(tmp_path / "train", {"a": 3, "b": 3})  # blue is 0 in every image
    stats = I.channel_stats(I.scan_folder(tmp_path / "train"))
    assert stats["std"][2] > 0 and all(np.isfinite(stats["std"]))


def test_validation_set_with_no_readable_image_fails_the_run(tmp_path):
    _folder(tmp_path / "data" / "train", {"a": 4, "b": 4})
    _folder(tmp_path / "data" / "val", {"a": 2, "b": 2}, broken=True)
    r = train_one_epoch(tmp_path, "imagefolder", tmp_path / "data", *SMALL_IMAGES)
    assert r.returncode != 0 and "val_acc 0.0" not in r.stdout, r.stdout
    assert "no readable validation image" in [ln for ln in r.stderr.splitlines() if "skipping" not in ln][-1]
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# CIFAR-10 batches whose values do not fit a byte, image lists that are not lists


def test_cifar_pixels_outside_a_byte_stop_train_with_one_line(tmp_path):

    data = np.random.default_rng(0).integers(0, 256, (20, 3072))
    data[0, 0] = 300
    write_cifar(tmp_path / "data", replace={"data_batch_2": {b"data": data}})
    r = train_one_epoch(tmp_path, "cifar10", tmp_path / "data", "--batch-size", 16)
    line = one_error_line(r)
    assert "data_batch_2: pixel value 300 (image 0) is outside 0..255" in line, line
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def _image_list(root: Path, *entries: str, name: str = "train.txt") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("".join(f"{e}\n" for e in entries))
    return root / name


def test_list_paths_are_absolute_or_stay_inside_the_lists_folder(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "linked").symlink_to(outside)  # a symlinked folder inside is inside
    path = _image_list(tmp_path / "data", f"{outside / 'a.png'} 0", "sub/../b.png 1", "linked/c.png 0", "# note")
    listed = I.read_list(path)
    assert listed.paths == [
        str(outside / "a.png"),
        str(tmp_path / "data/sub/../b.png"),
        str(tmp_path / "data/linked/c.png"),
    ]
    assert listed.labels == [0, 1, 0] and listed.classes == ["0", "1"]
    # A relative path that climbs out is refused with its line: it would read what --data-dir
    # does not hold, and break when the folder moves. Written absolute, it is accepted.
    path = _image_list(tmp_path / "data", "x/a.png 0", "", "x/../../elsewhere/a.png 0")
    with pytest.raises(
        D.DataError,
        match=r"train.txt:3: 'x/../../elsewhere/a.png' climbs out of .*/data; "
        r"write it relative to that folder or as an absolute path",
    ):
        I.read_list(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"a.png 0\n" + b"x" * 9000 + b".png 1\n", r"train.txt:2: line longer than 8192 bytes"),
        (b"a.png 0\n\xff\xfe\x00b.png 1\n", r"train.txt:2: not UTF-8 text"),
        ("a.png \u00b2\n".encode(), r"train.txt:1: expected 'relative/path label' with an integer label >= 0"),
        (b"a.png 0\nb.png 100000\n", r"train.txt:2: label 100000 is not below 100000"),
    ],
)
def test_a_list_that_is_not_a_list_of_path_label_lines_is_one_line(content, message, tmp_path):
    (tmp_path / "train.txt").write_bytes(content)
    with pytest.raises(D.DataError, match=message) as e:
        I.read_list(tmp_path / "train.txt")
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_a_byte_order_mark_is_not_part_of_the_first_path(tmp_path):
    (tmp_path / "train.txt").write_bytes("a.png 0\nb.png 1\n".encode("utf-8-sig"))  # as Notepad saves it
    assert I.read_list(tmp_path / "train.txt").paths == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]


def test_a_list_of_missing_files_names_the_first_one(tmp_path):
    listed = I.read_list(_image_list(tmp_path / "data", "gone/a.png 0", "gone/b.png 1"))
    with pytest.raises(
        D.DataError,
        match=r"none of the 2 training images .* could be read; the first: "
        r".*/data/gone/[ab].png \(FileNotFoundError",
    ):
        I.channel_stats(listed)


def test_a_huge_list_file_is_refused_before_reading_and_a_long_line_without_holding_it(tmp_path, monkeypatch):
    path = tmp_path / "train.txt"
    with open(path, "wb") as f:  # 20 MB and not one newline: a binary file passed as the list
        for _ in range(20):
            f.write(b"y" * MB)
    peak, err = peak_memory(lambda: I.read_list(path))
    assert isinstance(err, D.DataError) and "train.txt:1: line longer than 8192 bytes" in str(err), err
    assert peak < MB
    monkeypatch.setattr(I, "MAX_LIST_BYTES", 10 * MB)
    with pytest.raises(D.DataError, match=r"train.txt: 0.02 GB, more than the 0.01 GB an image list needs"):
        I.read_list(path)


def test_a_list_entry_climbing_out_stops_train_with_one_line(tmp_path):
    _folder(tmp_path / "img", {"a": 2, "b": 2})
    entries = [f"../img/{c}/{i}.png {c == 'b':d}" for c in "ab" for i in range(2)]
    _image_list(tmp_path / "data", *entries)
    _image_list(tmp_path / "data", *entries, name="val.txt")
    r = train_one_epoch(tmp_path, "imagelist", tmp_path / "data", *SMALL_IMAGES)
    assert "train.txt:1: '../img/a/0.png' climbs out of" in one_error_line(r)


# ---------------------------------------------------------------------------------------------
# Fuzzing: any bytes give a result or the module's own one-line error, with bounded memory

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _read_any_idx(payload: bytes, compress: bool, ndim: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x-idx-ubyte"
        path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
        tracemalloc.start()
        try:
            array = D.read_idx(path, ndim)
        except D.DataError as e:
            assert "\n" not in str(e) and str(path) in str(e)
        else:
            assert array.ndim == ndim and array.size == len(payload) - 4 - 4 * ndim
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 2 * len(payload) + 8 * MB


@FUZZ
@given(st.binary(max_size=2000), st.booleans(), st.sampled_from([1, 3]))
def test_fuzz_any_bytes_as_idx_file(payload, compress, ndim):
    _read_any_idx(payload, compress, ndim)


@FUZZ
@given(
    st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 40), min_size=3, max_size=3),
    st.integers(-50, 50),
    st.booleans(),
)
def test_fuzz_valid_header_with_random_dims_and_payload_length(dims, extra, compress):
    size = int(np.prod(dims, dtype=object)) if all(d <= 40 for d in dims) else 100
    payload = idx_header(*dims) + bytes(max(0, size + extra))
    _read_any_idx(payload, compress, 3)


@FUZZ
@given(st.binary(min_size=1, max_size=300), st.integers(0, 200))
def test_fuzz_corrupted_gzip_stream(noise, at):
    good = bytearray(gzip.compress(idx_header(5, 4, 4) + bytes(range(80)), mtime=0))
    at = at % len(good)
    corrupted = bytes(good[:at]) + noise + bytes(good[at + len(noise) :])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.gz"
        path.write_bytes(corrupted)
        try:
            D.read_idx(path, 3)
        except D.DataError as e:
            assert "\n" not in str(e)


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    from alexnet import train as T

    root = tmp_path_factory.mktemp("ckpt")
    data = make_idx_dataset(root / "data", n_train=32, n_test=16)
    cfg = Config(preset="test").replace(
        model="lenet-relu", dataset="mnist", data_dir=str(data), epochs=1, batch_size=16, log_every=1
    )
    T.fit(cfg, root / "run", progress=False, quiet=True)
    return (root / "run" / "last.pt").read_bytes()


def _load_any_checkpoint(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "last.pt"
        path.write_bytes(content)
        try:
            ckpt = R.load_checkpoint(path)
        except R.RunError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            assert "weights_only" not in str(e)  # torch's advice to load it unsafely is never passed on
        else:
            assert isinstance(ckpt, dict) and isinstance(ckpt["cfg"], Config)


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_any_bytes_as_checkpoint(content):
    _load_any_checkpoint(content)


def test_real_checkpoint_loads(checkpoint_bytes):
    _load_any_checkpoint(checkpoint_bytes)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "last.pt").write_bytes(checkpoint_bytes)
        assert R.load_checkpoint(Path(d) / "last.pt")["cfg"].train.model == "lenet-relu"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.data())
def test_fuzz_flipped_or_truncated_checkpoint(checkpoint_bytes, data):
    content = bytearray(checkpoint_bytes)
    if data.draw(st.booleans(), label="truncate"):
        content = content[: data.draw(st.integers(0, len(content) - 1), label="length")]
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        if not content:
            break
        i = data.draw(st.integers(0, len(content) - 1), label="at")
        content[i] = data.draw(st.integers(0, 255), label="byte")
    _load_any_checkpoint(bytes(content))


def test_parse_idx_reads_in_memory_bytes_with_the_same_checks():
    # parse_idx is the same reader over an in-memory buffer.
    arr = D.parse_idx(idx_header(2, 3) + bytes(range(6)), "x", 2)
    assert arr.shape == (2, 3) and arr[1, 2] == 5
    with pytest.raises(D.DataError, match="x: has trailing bytes"):
        D.parse_idx(idx_header(2, 3) + bytes(7), "x", 2)
    assert torch.from_numpy(arr.copy()).sum() == 15


# ---------------------------------------------------------------------------------------------
# Anything but a regular file is refused (or skipped) before it is opened: a FIFO blocks open() forever


FIFO = "not a regular file (a FIFO)"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from alexnet import train as T

    root = tmp_path_factory.mktemp("tiny")
    cfg = Config(preset="test").replace(
        model="lenet-relu", dataset="mnist", data_dir=str(make_idx_dataset(root / "d")), epochs=1, batch_size=16
    )
    T.fit(cfg, root / "run", progress=False, quiet=True)
    return root / "run"


def test_a_fifo_named_like_an_idx_file_is_refused_in_one_line(idx_dir):
    fifo = idx_dir / "t10k-labels-idx1-ubyte.gz"
    fifo.unlink()
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(D.DataError, match=rf"{fifo}: {re.escape(FIFO)}"):
        D.load_dataset("mnist", idx_dir)


def test_a_fifo_given_to_predict_is_one_line_and_the_others_are_predicted(tiny_checkpoint, tmp_path, capsys):
    from alexnet.cli import main

    fifo, plain = tmp_path / "pipe.png", tmp_path / "plain.png"
    os.mkfifo(fifo)
    Image.new("L", (28, 28), 200).save(plain)
    with no_hang():
        assert main(["predict", str(tiny_checkpoint), str(fifo), str(plain)]) == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [f"{fifo}: cannot read image (OSError: {fifo}: {FIFO})"]
    assert out.startswith(f"{plain}: ")
    with no_hang():
        assert main(["activations", str(tiny_checkpoint), str(fifo), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"alexnet: error: {fifo}: cannot read image (OSError: {fifo}: {FIFO})"
    ]


def test_a_fifo_in_an_image_list_is_skipped_as_unreadable(tmp_path):
    Image.new("RGB", (40, 40), (9, 99, 199)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    (tmp_path / "train.txt").write_text("a.png 0\nb.png 0\n")
    images = I.read_list(tmp_path / "train.txt")
    with no_hang():
        errors = [I.ImageDataset(images, 32, 28, "center")[(i, 0)][3] for i in range(2)]
    assert errors[0] is None and errors[1].startswith(f"{tmp_path / 'b.png'} (OSError: ") and FIFO in errors[1]


def test_a_fifo_as_a_checkpoint_is_refused_before_it_is_opened(tmp_path):
    os.mkfifo(tmp_path / "last.pt")
    with no_hang(), pytest.raises(R.RunError, match=re.escape(f"{tmp_path / 'last.pt'}: {FIFO}")):
        R.load_checkpoint(tmp_path / "last.pt")
    with no_hang(), pytest.raises(R.RunError, match=re.escape(f"{tmp_path / 'last.pt'}: {FIFO}")):
        R.read_run(tmp_path)


def test_a_checkpoint_holding_code_says_so_and_never_suggests_the_unsafe_load(tmp_path, recwarn):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(
        R.RunError,
        match=r"evil.pt: not a readable checkpoint \(it holds Python code or objects "
        r"\(posix.system\), not only tensors; refused without running it\)$",
    ):
        R.load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(R.RunError) as e:
        R.load_checkpoint(tmp_path / "random.pt")
    assert "weights_only" not in str(e.value) and str(e.value).endswith(")")  # not cut mid-sentence
    assert not (tmp_path / "ran").exists() and not list(recwarn)
