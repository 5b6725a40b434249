"""`alexnet serve` in a real browser: headless Chromium (Debian's, driven by Playwright) against the
server started as a user starts it, on a tiny run made here. In CI (CI=true) a missing browser is a
failure, not a skip: .ci/run installs it."""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import make_idx_dataset
from PIL import Image, ImageStat

CHROMIUM = "/usr/bin/chromium"


def _need(what: str, ok: bool) -> None:
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is missing, and CI must run the browser tests (.ci/run installs it)")
        pytest.skip(f"{what} is missing")


try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`alexnet serve` on a free loopback port over a folder of two tiny LeNet runs; yields (url, runs)."""
    _need("playwright (pip install playwright)", sync_playwright is not None)
    _need(f"{CHROMIUM} (apt-get install chromium)", Path(CHROMIUM).exists())
    from alexnet.config import PRESETS
    from alexnet.train import fit

    root = tmp_path_factory.mktemp("browser")
    data = make_idx_dataset(root / "data", n_train=96, n_test=48)
    cfg = PRESETS["cpu"].replace(model="lenet-relu", dataset="mnist", data_dir=str(data), epochs=3, batch_size=16)
    fit(cfg, root / "runs" / "tiny", progress=False, quiet=True)
    fit(cfg.replace(epochs=2, lr=0.02), root / "runs" / "other", progress=False, quiet=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "alexnet", "serve", "--runs", str(root / "runs"), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/api/runs", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"alexnet serve exited: {proc.stdout.read()}")
                time.sleep(0.1)
        yield url, root / "runs"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def browser(server):
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def not_blank(png: bytes) -> bool:
    """Whether a screenshot shows something: many colours and real contrast, not one flat fill."""
    im = Image.open(io.BytesIO(png)).convert("RGB")
    return len(im.getcolors(1 << 20) or []) > 50 and max(ImageStat.Stat(im.convert("L")).stddev) > 10


def test_runs_page_lists_the_runs_and_opens_one_with_its_curves_drawn(server, page):
    url, _ = server
    page.goto(url + "/")
    page.wait_for_selector("#runs-table a.run-link")
    assert sorted(page.locator("a.run-link").all_inner_texts()) == ["other", "tiny"]
    page.click("a.run-link:text-is('tiny')")
    page.wait_for_url("**/runs/tiny")
    page.wait_for_selector("#curves svg polyline.series")
    # Two charts (loss, accuracy), two series each, one point per epoch.
    lines = page.locator("#curves svg polyline.series")
    assert lines.count() == 4
    assert all(len(lines.nth(i).get_attribute("points").split()) == 3 for i in range(4))
    # Below them, `alexnet report`'s body: its figures (curves, confusion, filters, ...) and tables.
    page.wait_for_selector("#report figure img", timeout=60_000)
    assert page.locator("#report figure img").count() >= 3 and page.locator("#report table").count() >= 2
    assert page.evaluate("[...document.querySelectorAll('#report img')].every(i => i.complete && i.naturalWidth > 0)")
    assert not_blank(page.screenshot(full_page=True))


def test_run_page_redraws_its_curves_as_a_live_run_writes_epochs(server, page):
    url, runs = server
    live = runs / "live"
    shutil.copytree(runs / "tiny", live)
    rows = (live / "metrics.jsonl").read_text().splitlines(keepends=True)
    (live / "metrics.jsonl").write_text(rows[0])
    try:
        page.goto(url + "/runs/live")
        page.wait_for_selector("#curves svg polyline.series", state="attached")  # one point: no area yet
        first = page.locator("#curves svg polyline.series").first
        assert len(first.get_attribute("points").split()) == 1
        (live / "metrics.jsonl").write_text("".join(rows))  # two more epochs land, no reload
        page.wait_for_function(
            "document.querySelector('#curves svg polyline.series').getAttribute('points')"
            ".trim().split(' ').length === 3",
            timeout=15_000,
        )
    finally:
        shutil.rmtree(live)


def test_explore_uploads_an_image_and_shows_top5_and_activation_maps(server, page, tmp_path):
    url, _ = server
    photo = tmp_path / "shoe.png"
    Image.radial_gradient("L").resize((90, 70)).convert("RGB").save(photo)
    page.goto(url + "/runs/tiny/-/explore")
    page.wait_for_selector(".thumbs img")  # the test images of the first class
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#top5")
    assert page.locator("#top5 tr").count() == 6  # a header and five classes
    maps = "[...document.querySelectorAll('img.act')]"
    page.wait_for_function(f"{maps}.length > 0 && {maps}.every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator(".stage").count() == 2  # LeNet's two convolutional stages
    shot = page.screenshot(full_page=True)
    assert not_blank(shot)
    # A test image by click: its true class is shown beside the prediction.
    page.locator(".thumbs img").first.click()
    page.wait_for_selector("text=true class:")


def test_explore_names_an_upload_that_is_not_an_image(server, page, tmp_path):
    url, _ = server
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page.goto(url + "/runs/tiny/-/explore")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#upload-error")
    assert "not an image" in page.inner_text("#upload-error")


def test_compare_page_overlays_the_runs_curves_and_table(server, page):
    url, _ = server
    page.goto(url + "/compare?run=tiny&run=other")
    page.wait_for_selector("#table table")
    assert page.locator("#curves svg polyline.series").count() == 8  # 2 runs x 2 series x 2 charts
    assert page.locator("#table table tr").count() == 3
