"""The screenshots in docs/serve.md: each page of `alexnet serve` in headless Chromium (Debian's,
driven by Playwright) over a runs folder, one of whose runs may be training while they are taken.

    python benchmarks/serve_screenshots.py --runs RUNS --run NAME --compare NAME2 --out docs/figures/serve
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True)
    p.add_argument("--run", required=True, help="the run shown on the run and explore pages")
    p.add_argument("--compare", nargs="+", required=True, help="runs compared with --run")
    p.add_argument("--upload", help="an image file uploaded on the explore page")
    p.add_argument("--invert", action="store_true", help="tick invert before the upload (a dark item on white)")
    p.add_argument("--out", default="docs/figures/serve")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "alexnet", "serve", "--runs", args.runs, "--port", str(port)], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/api/runs", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
            page = b.new_page(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
            page.goto(url + "/")
            page.wait_for_selector("#runs-table")
            page.screenshot(path=out / "runs.png")
            page.goto(f"{url}/runs/{args.run}")
            page.wait_for_selector("#curves svg polyline.series")
            page.wait_for_selector("#report figure img", timeout=600_000)
            page.screenshot(path=out / "run.png")
            page.screenshot(path=out / "run-full.png", full_page=True)
            page.goto(f"{url}/runs/{args.run}/-/explore")
            page.wait_for_selector(".thumbs img")
            page.click("#wrong")
            wrong = "document.querySelectorAll('.thumbs img[title*=\"→\"]').length > 0"  # true → predicted
            page.wait_for_function(wrong, timeout=600_000)
            page.locator(".thumbs img").first.click()
            page.wait_for_selector("text=true class:")
            page.wait_for_function("[...document.querySelectorAll('img.act')].every(i => i.complete)")
            page.screenshot(path=out / "explore-test.png", full_page=True)
            if args.upload:
                if args.invert:
                    page.check("#invert")
                page.set_input_files("#file", args.upload)
                page.wait_for_selector("text=your image")
                page.wait_for_function("[...document.querySelectorAll('img.act')].every(i => i.complete)")
                page.screenshot(path=out / "explore-upload.png", full_page=True)
            page.goto(f"{url}/compare?run={args.run}" + "".join(f"&run={n}" for n in args.compare))
            page.wait_for_selector("#table table")
            page.screenshot(path=out / "compare.png", full_page=True)
            b.close()
    finally:
        server.terminate()
        server.wait(10)
    print(f"screenshots: {sorted(str(f) for f in out.glob('*.png'))}")


if __name__ == "__main__":
    main()
