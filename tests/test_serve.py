"""`alexnet serve`: the JSON API over a runs folder, what it withstands, and that it answers as
`alexnet predict` does. The pages themselves are driven in a real browser in test_browser.py."""

import io
import json
import os
import time
import warnings

import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its test client; httpx works the same here
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from conftest import make_idx_dataset

from alexnet import cli
from alexnet.config import PRESETS
from alexnet.runs import RunDir
from alexnet.serve import MAX_UPLOAD, create_app

BASE = "http://127.0.0.1:8000"  # create_app answers to the loopback names on port 8000 by default


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A runs folder with two tiny finished LeNet runs (2 and 1 epochs) on MNIST-like files."""
    from alexnet.train import fit

    root = tmp_path_factory.mktemp("serve")
    data = make_idx_dataset(root / "data", n_train=96, n_test=48)
    cfg = PRESETS["cpu"].replace(model="lenet-relu", dataset="mnist", data_dir=str(data), epochs=2, batch_size=16)
    threads = torch.get_num_threads()
    fit(cfg, root / "runs" / "two", progress=False, quiet=True)
    fit(cfg.replace(epochs=1, lr=0.01), root / "runs" / "one", progress=False, quiet=True)
    torch.set_num_threads(threads)
    return root / "runs"


@pytest.fixture
def client(runs):
    threads = torch.get_num_threads()
    with TestClient(create_app(runs), base_url=BASE) as c:
        yield c
    torch.set_num_threads(threads)  # create_app sets one inference thread for the process


def png(size=(40, 30), mode="RGB", colour=(180, 20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(buf, "PNG")
    return buf.getvalue()


def predict(client, data: bytes, name="two", **form):
    return client.post(f"/api/runs/{name}/-/predict", files={"file": ("x.png", data, "image/png")}, data=form)


def test_runs_api_lists_every_run_newest_first_with_its_status(client, runs):
    listed = client.get("/api/runs").json()["runs"]
    assert [r["name"] for r in listed] == ["one", "two"]  # "one" was written last
    two = listed[1]
    assert (two["status"], two["epochs"], two["epochs_planned"], two["model"], two["preset"]) == (
        "finished",
        2,
        2,
        "lenet-relu",
        "cpu",
    )
    metrics = [json.loads(line) for line in (runs / "two" / "metrics.jsonl").read_text().splitlines()]
    assert two["best_val_acc"] == max(m["val_acc"] for m in metrics)


def test_a_run_holding_its_lock_is_live_and_one_whose_holder_died_is_not(client, runs, tmp_path):
    live = RunDir.open(runs / "one")  # this process holds the lock, as a training run does
    try:
        assert client.get("/api/runs/one").json()["status"] == "live"
    finally:
        live.release()
    assert client.get("/api/runs/one").json()["status"] == "finished"
    # A killed run leaves its line in .lock; the pid it names is gone.
    (runs / "one" / ".lock").write_text(f"pid 999999999 on {os.uname().nodename}, since 2026-01-01 00:00:00")
    assert client.get("/api/runs/one").json()["status"] == "finished"


def test_run_api_gives_settings_and_every_metrics_row(client, runs):
    run = client.get("/api/runs/two").json()
    assert run["config"]["train"]["model"] == "lenet-relu"
    assert [m["epoch"] for m in run["metrics"]] == [1, 2]
    assert {"train_loss", "val_loss", "val_acc", "train_acc", "lr"} <= set(run["metrics"][0])


def test_predict_answers_what_alexnet_predict_prints(client, runs, tmp_path, capsys):
    image = tmp_path / "photo.png"
    image.write_bytes(png((57, 33)))
    for invert in (False, True):
        r = client.post(
            "/api/runs/two/-/predict",
            files={"file": ("photo.png", image.read_bytes(), "image/png")},
            data={"invert": "1" if invert else "0"},
        )
        assert r.status_code == 200, r.text
        top = r.json()["top"]
        assert len(top) == 5 and sum(t["p"] for t in top) <= 1 + 1e-6
        flags = ["--top-k", "5", *(["--invert"] if invert else [])]
        assert cli.main(["predict", str(runs / "two"), str(image), *flags]) == 0
        printed = capsys.readouterr().out.split(": ", 1)[1].split()
        assert [(t["class"], f"{t['p']:.3f}") for t in top] == list(zip(printed[::2], printed[1::2]))
    assert predict(client, png(), invert="1").json()["top"] != predict(client, png(), invert="0").json()["top"]


def test_predict_with_maps_gives_each_stage_under_the_layer_tables_shapes(client):
    r = client.post("/api/runs/two/-/predict?maps=4", files={"file": ("x.png", png(), "image/png")}).json()
    layers = client.get("/api/runs/two/-/layers").json()["layers"]
    shapes = {tuple(layer["shape"][1:]) for layer in layers}
    assert len(r["stages"]) == 2  # LeNet's two convolutions
    for stage in r["stages"]:
        assert tuple(stage["shape"]) in shapes
        assert len(stage["maps"]) == min(4, stage["shape"][0])
        assert all(m.startswith("data:image/png;base64,") for m in stage["maps"])


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height one-bit pixels and holds none: what a decompression bomb
    looks like before decoding (a real one compresses to a few MB)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "upload, status, says",
    [
        (b"just some text", 415, "not an image"),
        (b"", 400, "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 415, "not an image"),  # a PNG signature and then garbage
        (b"x" * (MAX_UPLOAD + 1), 413, "over 20 MB"),
        (png_header(30000, 30000), 413, "decompression bomb"),  # over Pillow's own hard limit
        (png_header(10000, 10000), 413, "megapixel"),  # 100 megapixels: under Pillow's limit, over the server's
    ],
)
def test_bad_uploads_get_a_json_4xx_and_the_server_serves_on(client, upload, status, says):
    r = predict(client, upload)
    assert r.status_code == status and says in r.json()["error"], r.text
    assert predict(client, png()).status_code == 200


def test_an_oversized_upload_without_a_length_is_cut_off_at_the_cap(client):
    def chunks():  # no Content-Length: the server counts as the bytes arrive
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        for _ in range(22):
            yield b"\0" * 2**20

    multipart = {"content-type": "multipart/form-data; boundary=b"}
    r = client.post("/api/runs/two/-/predict", content=chunks(), headers=multipart)
    assert r.status_code == 413 and "over 20 MB" in r.json()["error"]


def test_a_request_that_is_not_multipart_is_a_400(client):
    multipart = {"content-type": "multipart/form-data; boundary=q"}
    assert client.post("/api/runs/two/-/predict", content=b"x", headers=multipart).status_code == 400
    assert client.post("/api/runs/two/-/predict", data={"other": "1"}).status_code == 400


@pytest.mark.parametrize(
    "name",
    [
        "%2E%2E",
        "two/%2E%2E/%2E%2E",
        "%2Fetc",
        "%2Fetc%2Fpasswd",
        "outside",
        "inner/../../x",
        "nope",
        ".hidden",
        "two/%2E%2E",
        "two%2F%2E%2E%2F%2E%2E%2Fx",
    ],
)
def test_names_that_leave_the_runs_folder_or_do_not_exist_are_404(client, runs, tmp_path, name):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"data": {}, "train": {}, "system": {}}))
    (runs / "outside").unlink(missing_ok=True)
    (runs / "outside").symlink_to(outside)  # a run-looking directory outside the folder
    try:
        for url in (f"/api/runs/{name}", f"/api/runs/{name}/-/layers", f"/runs/{name}"):
            assert client.get(url).status_code == 404, url
        assert predict(client, png(), name=name).status_code == 404
        assert "outside" not in [r["name"] for r in client.get("/api/runs").json()["runs"]]
    finally:
        (runs / "outside").unlink()


def test_a_run_mid_write_or_corrupt_is_named_on_its_page_not_a_crash(client, runs, tmp_path):
    import shutil

    broken = runs / "broken"
    shutil.copytree(runs / "two", broken)
    try:
        lines = (broken / "metrics.jsonl").read_text()
        (broken / "metrics.jsonl").write_text(lines + '{"epoch": 3, "train_lo')  # a row being written
        run = client.get("/api/runs/broken").json()
        assert len(run["metrics"]) == 2 and "being written" in run["problems"][0]
        (broken / "metrics.jsonl").write_text("not json\n" + lines)
        assert "corrupt" in client.get("/api/runs/broken").json()["problems"][0]
        (broken / "config.json").write_text("{")
        assert "config.json is unreadable" in client.get("/api/runs/broken").json()["problems"][0]
        for ck in ("best.pt", "last.pt"):
            (broken / ck).write_bytes(b"PK\x03\x04 torn")  # a torn checkpoint
        r = predict(client, png(), name="broken")
        assert r.status_code == 409 and "checkpoint unreadable" in r.json()["error"]
        assert client.get("/runs/broken").status_code == 200
        assert client.get("/api/runs").status_code == 200
    finally:
        shutil.rmtree(broken)
    assert predict(client, png()).status_code == 200


def test_evaluation_and_test_images_by_class_and_misclassified(client):
    for _ in range(100):
        ev = client.get("/api/runs/two/-/evaluation").json()
        if not ev.get("pending"):
            break
        time.sleep(0.1)
    assert ev["images"] == 48 and len(ev["confusion"]) == 10
    assert sum(map(sum, ev["confusion"])) == 48
    wrong = client.get("/api/runs/two/-/test?misclassified=1").json()
    assert len(wrong["indices"]) == 48 - sum(ev["confusion"][i][i] for i in range(10))
    for i, label, guess in zip(wrong["indices"], wrong["labels"], wrong["predicted"]):
        r = client.get(f"/api/runs/two/-/test/{i}?maps=0").json()
        assert r["label"] == label != guess == r["top"][0]["class"]
    some = client.get("/api/runs/two/-/test?class=3").json()
    assert some["indices"] and set(some["labels"]) == {"3"}
    assert client.get(f"/api/runs/two/-/test/{some['indices'][0]}/png").headers["content-type"] == "image/png"
    assert client.get("/api/runs/two/-/test/100000").status_code == 404


def test_compare_table_matches_alexnet_compare(client, runs, tmp_path, capsys):
    r = client.get("/api/compare?run=two&run=one").json()
    assert [c["name"] for c in r["runs"]] == ["two", "one"]
    assert cli.main(["compare", str(runs / "two"), str(runs / "one"), "--out", str(tmp_path / "c.png")]) == 0
    printed = capsys.readouterr().out
    for row in r["table"]:
        assert "| " + " | ".join(row.values()) + " |" in printed


def test_pages_are_served_and_name_the_run_escaped(client):
    for url in ("/", "/runs/two", "/runs/two/-/explore", "/compare?run=two&run=one"):
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'data-run="two"' in client.get("/runs/two").text


def test_serve_refuses_a_missing_runs_folder_in_one_line(capsys, tmp_path):
    assert cli.main(["serve", "--runs", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip().endswith("no such directory")


def _settled(client, url):
    for _ in range(300):
        r = client.get(url).json()
        if not r.get("pending"):
            return r
        time.sleep(0.1)
    raise AssertionError(f"{url} still pending")


def test_run_report_is_alexnet_reports_body_rendered_again_for_a_newer_checkpoint_only_when_asked(client, runs):
    from alexnet.report import render_html_body

    r = _settled(client, "/api/runs/two/-/report")
    assert not r["stale"] and r["html"].count("<figure>") >= 3
    assert r["html"].split("<h2", 2)[1] == render_html_body(runs / "two", device="cpu").split("<h2", 2)[1]
    last = runs / "two" / "last.pt"
    os.utime(last, ns=(last.stat().st_atime_ns, last.stat().st_mtime_ns + 10**9))  # a live run's next epoch
    assert client.get("/api/runs/two/-/report").json()["stale"] is True  # kept until asked
    assert client.get("/api/runs/two/-/report?render=1").json() == {"pending": True}
    assert _settled(client, "/api/runs/two/-/report")["stale"] is False
    best = runs / "two" / "best.pt"  # the network the page shows, written after last.pt at an epoch's end
    os.utime(best, ns=(best.stat().st_atime_ns, best.stat().st_mtime_ns + 10**9))
    assert client.get("/api/runs/two/-/report").json()["stale"] is True
