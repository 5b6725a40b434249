"""`alexnet serve` against a hostile folder and hostile requests (issue 30): what it refuses, per
route and per file, and that it serves on. Each test names the claim; the browser tests drive the
pages themselves (test_browser.py)."""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("starlette")
with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its test client; httpx works the same here
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from conftest import make_idx_dataset
from test_serve import png

from alexnet import serve
from alexnet.config import PRESETS
from alexnet.serve import create_app

BASE = "http://127.0.0.1:8000"
SECRET = "s3cr3t-do-not-serve"

# Every route, as a request on run "two" (and the listing pages), for the per-route refusals.
GETS = [
    "/",
    "/compare?run=two&run=one",
    "/runs/two",
    "/runs/two/-/explore",
    "/api/runs",
    "/api/runs/two",
    "/api/compare?run=two&run=one",
    "/api/runs/two/-/test?class=3",
    "/api/runs/two/-/test/0",
    "/api/runs/two/-/test/0/png",
    "/api/runs/two/-/evaluation",
    "/api/runs/two/-/filters",
    "/api/runs/two/-/report",
    "/api/runs/two/-/layers",
    "/static/app.js",
]
PREDICT = "/api/runs/two/-/predict"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A runs folder of two tiny finished LeNet runs ("two": 2 epochs, "one": 1), copied per test."""
    from alexnet.train import fit

    root = tmp_path_factory.mktemp("refusals")
    data = make_idx_dataset(root / "data", n_train=96, n_test=48)
    cfg = PRESETS["cpu"].replace(model="lenet-relu", dataset="mnist", data_dir=str(data), epochs=2, batch_size=16)
    threads = torch.get_num_threads()
    fit(cfg, root / "runs" / "two", progress=False, quiet=True)
    fit(cfg.replace(epochs=1, lr=0.01), root / "runs" / "one", progress=False, quiet=True)
    torch.set_num_threads(threads)
    return root / "runs"


@pytest.fixture
def runs(template, tmp_path):
    """This test's own copy of the runs folder, and beside it (outside) a folder of secrets."""
    shutil.copytree(template, tmp_path / "runs")
    (tmp_path / "outside").mkdir()
    return tmp_path / "runs"


@pytest.fixture
def app(runs):
    threads = torch.get_num_threads()
    yield create_app(runs)
    torch.set_num_threads(threads)  # create_app sets one inference thread for the process


@pytest.fixture
def client(app):
    with TestClient(app, base_url=BASE) as c:
        yield c


def post_png(client, url=PREDICT, **kw):
    return client.post(url, files={"file": ("x.png", png(), "image/png")}, **kw)


def settled(client, url):
    """The report once rendered: the report worker runs its jobs in order, so once a no-op queued
    after the render has run, the render is done."""
    r = client.get(url).json()
    if r.get("pending"):
        client.app.state.reporter.submit(lambda: None).result(timeout=120)
        r = client.get(url).json()
    assert not r.get("pending"), r
    return r


def strict_json(text: str):
    """JSON as the standard reads it: NaN and Infinity are not JSON (a browser's JSON.parse fails)."""

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------------------------------
# Hosts (DNS rebinding) and origins


@pytest.mark.parametrize("url", GETS + [PREDICT])
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1:8001", "127.0.0.1.evil.example"])
def test_serve_refuses_a_foreign_host_on_every_route(client, url, host):
    method = client.post if url == PREDICT else client.get
    r = method(
        url, headers={"host": host}, **({"files": {"file": ("x.png", png(), "image/png")}} if url == PREDICT else {})
    )
    assert r.status_code == 421, (url, r.status_code, r.text[:200])
    assert "answers to" in r.json()["error"] and "runs" not in r.text.split("answers to")[0]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST:8000"])
def test_serve_answers_to_every_loopback_name_with_its_port(client, host):
    assert client.get("/api/runs", headers={"host": host}).status_code == 200


def test_allowed_hosts_follow_the_bound_address_and_port():
    assert serve.allowed_hosts("127.0.0.1", 8080) == {"127.0.0.1:8080", "localhost:8080", "[::1]:8080"}
    assert serve.allowed_hosts("192.0.2.7", 80) == {"192.0.2.7:80", "192.0.2.7"}
    assert "localhost:9000" in serve.allowed_hosts("0.0.0.0", 9000)
    assert "box.lan:8000" in serve.allowed_hosts("127.0.0.1", 8000, ["box.lan"])


@pytest.mark.parametrize("url", GETS + [PREDICT])
@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"origin": "null"},  # a sandboxed frame, a file:// page
        {"origin": "http://127.0.0.1:8001"},  # another server on this machine
        {"sec-fetch-site": "cross-site"},
    ],
)
def test_serve_refuses_a_post_from_a_foreign_origin_on_every_route(client, url, headers):
    r = post_png(client, url, headers=headers)
    assert r.status_code == 403 and "another origin" in r.json()["error"], (url, r.status_code, r.text[:200])


@pytest.mark.parametrize("origin", [None, "http://127.0.0.1:8000", "http://localhost:8000"])
def test_serve_takes_a_post_from_its_own_origin(client, origin):
    r = post_png(client, headers={"origin": origin, "sec-fetch-site": "same-origin"} if origin else {})
    assert r.status_code == 200, r.text


def test_the_command_answers_only_to_the_names_it_was_started_for(runs):
    with served(runs) as server:
        port = server.port
        assert get(port, "/api/runs", host="evil.example")[0] == 421
        assert get(port, "/api/runs", host=f"localhost:{port}")[0] == 200
        assert get(port, "/api/runs", host=f"localhost:{port + 1}")[0] == 421


# ---------------------------------------------------------------------------------------------
# Files: symlinks out of the folder, files that are not regular, sizes


def leak(runs: Path, name: str) -> Path:
    """An outside file standing in for ~/creds.json (or a foreign checkpoint), linked as run two's ``name``."""
    outside = runs.parent / "outside" / name.lstrip(".")
    if name.endswith(".pt"):
        shutil.copy(runs / "one" / "last.pt", outside)  # another network's weights
    elif name == ".lock":
        outside.write_text(f"pid {os.getpid()} on {socket.gethostname()}, since {SECRET}")
    elif name == "config.json":
        outside.write_text(json.dumps({"data": {}, "train": {}, "system": {}, "token": SECRET}))
    else:
        outside.write_text(json.dumps({"epoch": 1, "val_acc": 0.5, "token": SECRET}) + "\n")
    target = runs / "two" / name
    target.unlink(missing_ok=True)
    target.symlink_to(outside)
    return outside


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl", ".lock"])
@pytest.mark.parametrize("url", ["/api/runs", "/api/runs/two"])
def test_a_symlink_out_of_the_folder_is_not_read_by_the_run_record(client, runs, name, url):
    leak(runs, name)
    r = client.get(url)
    assert r.status_code == 200 and SECRET not in r.text and f"{name} leads outside the runs folder" in r.text
    assert client.get("/api/runs/two").json()["status"] != "live"


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
@pytest.mark.parametrize(
    "url",
    ["/api/runs/two/-/test/0", "/api/runs/two/-/filters", "/api/runs/two/-/layers", "/api/runs/two/-/evaluation"],
)
def test_a_checkpoint_symlinked_out_of_the_folder_is_not_loaded(client, runs, name, url):
    if name == "last.pt":
        (runs / "two" / "best.pt").unlink()  # else best.pt is the one loaded
    leak(runs, name)
    r = client.get(url)
    assert r.status_code == 409 and f"{name} leads outside the runs folder" in r.json()["error"], r.text
    r = post_png(client)
    assert r.status_code == 409 and "outside the runs folder" in r.json()["error"]


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl", ".lock", "last.pt", "best.pt", "metrics.csv"])
def test_a_report_or_comparison_of_a_run_with_a_file_out_of_the_folder_is_refused(client, runs, name):
    leak(runs, name)
    r = settled(client, "/api/runs/two/-/report")
    assert r["html"] is None and f"{name} leads outside the runs folder" in r["error"]
    r = client.get("/api/compare?run=two&run=one")
    assert r.status_code == 409 and "outside the runs folder" in r.json()["error"] and SECRET not in r.text


def with_timeout(fn, seconds=30):
    """``fn()`` in a thread, or AssertionError when it has not returned in ``seconds`` (a read that
    blocks on a FIFO would otherwise hang the test run, as it hung the server)."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the request never returned: the server blocked"
    return out["r"]


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl", ".lock", "last.pt", "best.pt"])
def test_a_fifo_in_a_run_is_never_opened_and_the_server_serves_on(client, runs, name):
    (runs / "two" / name).unlink(missing_ok=True)
    os.mkfifo(runs / "two" / name)
    for url in ("/api/runs", "/api/runs/two", "/api/runs/two/-/filters", "/api/runs/two/-/report"):
        r = with_timeout(lambda url=url: client.get(url))
        assert r.status_code in (200, 409), (url, r.text)
    assert "not a regular file" in client.get("/api/runs/two").text + client.get("/api/runs/two/-/filters").text
    assert with_timeout(lambda: client.get("/api/runs/one")).status_code == 200


def test_metrics_linked_to_dev_zero_are_refused_not_read(client, runs):
    (runs / "two" / "metrics.jsonl").unlink()
    (runs / "two" / "metrics.jsonl").symlink_to("/dev/zero")
    r = with_timeout(lambda: client.get("/api/runs/two"))
    assert r.status_code == 200 and r.json()["metrics"] == [] and "outside the runs folder" in r.text


def test_a_large_metrics_file_is_read_from_its_end_only(client, runs):
    rows = [
        {"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "val_acc": 0.5, "padding": "x" * 200} for e in range(1, 30_001)
    ]
    (runs / "two" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # ~7 MB
    run = client.get("/api/runs/two").json()
    assert 0 < len(run["metrics"]) < len(rows) and run["metrics"][-1]["epoch"] == 30_000
    assert run["metrics"][0]["epoch"] == 30_001 - len(run["metrics"])  # whole rows, the cut one left out
    assert run["epochs"] == 30_000 and "showing its last" in " ".join(run["problems"])


def test_a_config_over_its_cap_is_not_read(client, runs):
    (runs / "two" / "config.json").write_text(json.dumps({"data": {}, "pad": "x" * serve.folder.MAX_CONFIG}))
    run = client.get("/api/runs/two").json()
    assert run["config"] == {} and "config.json is over" in run["problems"][0]


# ---------------------------------------------------------------------------------------------
# Odd runs: listed as unreadable or with their problems, never a 500, never NaN


ODD_CONFIGS = {
    "plan of the wrong type": {
        "data": {},
        "train": {"epochs": 3},
        "system": {},
        "plan": {"steps": 9, "steps_per_epoch": "3"},  # 9 // "3" was a TypeError: a 500 for every run
    },
    "plan steps as text": {
        "data": {},
        "train": {"epochs": 3},
        "system": {},
        "plan": {"steps": "9", "steps_per_epoch": 3},
    },
    "plan dividing by zero": {
        "data": {},
        "train": {"epochs": 3},
        "system": {},
        "plan": {"steps": 9, "steps_per_epoch": 0},
    },
    "train a list": {"data": "mnist", "train": [1, 2], "system": {}, "preset": 7},
    "epochs a string": {"data": {"dataset": ["x"]}, "train": {"epochs": "ten", "model": {"a": 1}}, "system": {}},
    "a NaN setting": {"data": {}, "train": {"epochs": 2, "lr": float("nan")}, "system": {}},
    "a list": [1, 2, 3],
}


@pytest.mark.parametrize("what", ODD_CONFIGS)
def test_one_odd_config_never_breaks_the_listing_of_the_others(client, runs, what):
    (runs / "two" / "config.json").write_text(json.dumps(ODD_CONFIGS[what]))  # json writes NaN as NaN
    r = client.get("/api/runs")
    listed = {run["name"]: run for run in strict_json(r.text)["runs"]}
    assert r.status_code == 200 and set(listed) == {"one", "two"}
    assert listed["one"]["status"] == "finished"
    assert strict_json(client.get("/api/runs/two").text)["name"] == "two"


ODD_ROWS = {
    "a NaN accuracy": '{"epoch": 1, "val_acc": NaN, "train_loss": Infinity}',
    "an epoch as text": '{"epoch": "1", "val_acc": "0.9"}',
    "a huge number": '{"epoch": 1e400, "val_acc": -1e400}',
    "a list": "[1, 2]",
}


@pytest.mark.parametrize("what", ODD_ROWS)
def test_an_odd_metrics_row_is_data_and_every_answer_is_strict_json(client, runs, what):
    (runs / "two" / "metrics.jsonl").write_text(ODD_ROWS[what] + "\n")
    for url in ("/api/runs", "/api/runs/two"):
        r = client.get(url)
        assert r.status_code == 200, r.text
        strict_json(r.text)


def test_a_run_whose_name_is_not_utf8_is_listed_as_unreadable(client, runs):
    bad = os.fsencode(runs) + b"/caf\xe9"
    shutil.copytree(runs / "one", os.fsdecode(bad))
    listed = strict_json(client.get("/api/runs").text)["runs"]
    odd = [r for r in listed if r["status"] == "unreadable"]
    assert len(listed) == 3 and len(odd) == 1 and "not UTF-8" in odd[0]["problems"][0]


@pytest.mark.parametrize(
    "method, url, status",
    [
        ("get", "/api/runs/nope", 404),
        ("get", "/api/runs/two/-/test/abc", 404),
        ("get", "/api/runs/two/-/nothing", 404),
        ("get", "/api/runs/two/-/test?class=zebra", 400),
        ("get", "/api/runs/two/-/test/0?maps=many", 400),
        ("get", "/api/compare", 400),
        ("get", "/api/compare?run=nope", 404),
        ("put", "/api/runs", 405),
        ("delete", "/api/runs/two", 405),
        ("get", "/api/runs/two/-/predict", 405),
    ],
)
def test_lookup_and_route_errors_are_4xx_with_a_plain_message(client, method, url, status):
    r = getattr(client, method)(url)
    assert r.status_code == status and r.json()["error"], (url, r.status_code, r.text)
    assert "Error" not in r.json()["error"] and "Exception" not in r.json()["error"]


def test_an_unexpected_failure_is_a_500_that_names_no_python_exception(app, monkeypatch, capsys):
    def broken(*args):
        raise KeyError("internal detail")

    monkeypatch.setattr(serve.routes, "listing", broken)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as client:
        r = client.get("/api/runs")
        assert r.status_code == 500 and "KeyError" not in r.text and "internal detail" not in r.text
        assert "KeyError" in capsys.readouterr().err  # the server's log says why
        assert client.get("/api/runs/two").status_code == 200


# ---------------------------------------------------------------------------------------------
# Names that look like routes


@pytest.mark.parametrize("name", ["grp/report", "grp/explore", "grp/test", "grp/-", "-/report", "report/-"])
def test_a_run_named_like_a_route_is_reachable_with_all_its_pages(client, runs, name):
    shutil.copytree(runs / "two", runs / name)
    enc = name
    assert name in [r["name"] for r in client.get("/api/runs").json()["runs"]]
    assert client.get(f"/api/runs/{enc}").json()["name"] == name
    assert f'data-run="{name}"' in client.get(f"/runs/{enc}").text
    assert "Explore" in client.get(f"/runs/{enc}/-/explore").text
    assert client.get(f"/api/runs/{enc}/-/layers").json()["layers"]
    assert client.get(f"/api/runs/{enc}/-/test?class=3").json()["indices"]
    assert post_png(client, f"/api/runs/{enc}/-/predict").json()["run"] == name
    assert "html" in settled(client, f"/api/runs/{enc}/-/report")


# ---------------------------------------------------------------------------------------------
# Slow or large work, and memory


def test_an_upload_never_waits_behind_a_report_render(client, runs, monkeypatch):
    import alexnet.report

    started, release = threading.Event(), threading.Event()

    def slow_render(*args, **kw):  # a full test-set evaluation at 224x224 takes minutes
        started.set()
        release.wait(60)
        return "<p>done</p>"

    monkeypatch.setattr(alexnet.report, "render_html_body", slow_render)
    try:
        assert client.get("/api/runs/two/-/report").json() == {"pending": True}
        assert started.wait(30)
        assert with_timeout(lambda: post_png(client), 30).status_code == 200
    finally:
        release.set()


def test_a_slow_file_read_never_holds_the_other_requests(client, runs, monkeypatch):
    release, entered = threading.Event(), threading.Event()
    real = serve.folder.read_bounded

    def slow(path, *args):
        if "one" in path.parts:  # a slow disk under run "one"
            entered.set()
            release.wait(60)
        return real(path, *args)

    monkeypatch.setattr(serve.folder, "read_bounded", slow)
    blocked = threading.Thread(target=lambda: client.get("/api/runs/one"), daemon=True)
    blocked.start()
    try:
        assert entered.wait(30)
        assert with_timeout(lambda: client.get("/api/runs/two"), 30).status_code == 200
    finally:
        release.set()
        blocked.join(30)


@pytest.mark.parametrize("held", [1, 3])
def test_uploads_past_the_byte_budget_get_a_503_and_the_held_ones_finish(client, app, monkeypatch, held):
    size = int(post_png(client).request.headers["content-length"])  # every post_png is this long
    monkeypatch.setattr(serve.app, "UPLOAD_BUDGET", held * size)
    worker = app.state.worker
    release, waiting = threading.Event(), threading.Event()
    worker.submit(release.wait, 60)  # the worker busy: uploads queue behind it, held whole
    real, queued = worker.submit, []

    def counting(fn, *args):
        future = real(fn, *args)
        queued.append(fn)
        if len(queued) == held:
            waiting.set()
        return future

    monkeypatch.setattr(worker, "submit", counting)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(post_png(client)), daemon=True) for _ in range(held)]
    for t in threads:
        t.start()
    try:
        assert waiting.wait(30)  # each held upload has reached the worker's queue
        r = post_png(client)
        assert r.status_code == 503 and "try again" in r.json()["error"] and r.headers["retry-after"] == "1"
    finally:
        release.set()
    for t in threads:
        t.join(60)
    assert [a.status_code for a in answers] == [200] * held
    assert post_png(client).status_code == 200


def test_rendered_reports_are_kept_for_the_last_few_runs_only(client, runs, monkeypatch):
    import alexnet.report

    monkeypatch.setattr(serve.routes, "MAX_REPORTS", 2)
    monkeypatch.setattr(alexnet.report, "render_html_body", lambda path, **kw: f"<p>{Path(path).name}</p>" * 1000)
    for n in range(4):
        shutil.copytree(runs / "one", runs / f"r{n}")
        assert settled(client, f"/api/runs/r{n}/-/report")["html"].startswith(f"<p>r{n}</p>")
    assert len(client.app.state.reports.rendered) == 2


# ---------------------------------------------------------------------------------------------
# The connection: headers that never finish, too many connections, signals


class served:
    """`alexnet serve` as a user starts it, on a free loopback port; ``port`` answers once its
    "serving" line is printed (the socket listens before it)."""

    def __init__(self, runs: Path):
        self.runs = runs

    def __enter__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "alexnet", "serve", "--runs", str(self.runs), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("serving"), line + self.proc.stderr.read()
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.proc.stdout.close()
        self.proc.stderr.close()


def get(port: int, path: str, host: str | None = None) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_command_though_a_run_holds_a_fifo(runs, sig):
    for name in ("metrics.jsonl", "config.json", ".lock"):
        (runs / "two" / name).unlink(missing_ok=True)
        os.mkfifo(runs / "two" / name)
    with served(runs) as server:
        status, body = get(server.port, "/api/runs")
        assert status == 200 and "metrics.jsonl is not a regular file" in body
        server.proc.send_signal(sig)
        assert server.proc.wait(30) in (0, 130, -sig)  # uvicorn re-raises the signal it stopped on


class uvicorn_thread:
    """The app under uvicorn with serve's settings, in a thread, on a socket that listens before
    the server starts (connections wait in the kernel's queue: no polling for readiness)."""

    def __init__(self, runs: Path):
        import uvicorn

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        app = create_app(runs, host="127.0.0.1", port=self.port)
        self.server = uvicorn.Server(serve.uvicorn_config(app, "127.0.0.1", self.port))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        return self.port

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_connection_that_never_finishes_its_headers_is_closed(runs, monkeypatch):
    monkeypatch.setattr(serve.app, "HEADER_TIMEOUT", 0.5)
    with uvicorn_thread(runs) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET /api/runs HTTP/1.1\r\nHost: 127")  # and nothing more (slowloris)
            assert closed_by_server(s)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # a second request, after an answer
            s.sendall(f"GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 204")
            s.sendall(b"GET /api/runs HTTP/1.1\r\n")
            assert closed_by_server(s)
        assert get(port, "/api/runs")[0] == 200


def test_a_connection_past_the_cap_takes_the_place_of_the_longest_waiting(runs, monkeypatch):
    monkeypatch.setattr(serve.app, "MAX_CONNECTIONS", 3)
    with uvicorn_thread(runs) as port:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as new:
                assert closed_by_server(idle[0])  # the oldest of the connections that never sent headers
                new.sendall(f"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
                assert new.recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            for s in idle:
                s.close()
        assert get(port, "/api/runs")[0] == 200


def test_a_run_name_holding_markup_is_escaped_on_its_pages(client, runs):
    name = "a<b\"c'&d"
    shutil.copytree(runs / "one", runs / name)
    for url in (f"/runs/{name}", f"/runs/{name}/-/explore"):
        page = client.get(url).text
        assert "a<b" not in page and 'data-run="a&lt;b&#34;c&#39;&amp;d"' in page


def test_an_upload_whose_body_stalls_is_answered_408(runs, monkeypatch):
    monkeypatch.setattr(serve.routes, "BODY_TIMEOUT", 0.5)
    with uvicorn_thread(runs) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            head = f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 1000\r\n"
            s.sendall((head + "Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n").encode())
            answer = b""  # the rest of the body never comes; the answer may come in several segments
            while b"did not arrive" not in answer and (chunk := s.recv(4096)):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer
        assert get(port, "/api/runs")[0] == 200
