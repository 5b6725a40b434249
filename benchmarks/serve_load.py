"""`alexnet serve` under load, on the loopback, and a training run beside it.

    load      N predict requests (multipart upload of one PNG) from C concurrent clients against
              `alexnet serve` started as a user starts it: p50/p90/p99/max latency, errors,
              requests/s and the server's peak resident memory (VmHWM).
    training  a small training run's images/s with the server idle and with clients keeping it
              busy, in alternating turns (idle, busy, idle, busy, ...), each turn a fresh 1-epoch run;
              the ratio of the turns' medians.
    memory    the server's peak resident memory in the three ways issue 30 grew it: a run whose
              metrics.jsonl links to /dev/zero, many concurrent 19.5 MB uploads, and the reports of
              many runs shown one after another. --package-root runs another checkout's alexnet
              (the code before the fix) for the "before" figures.

    python benchmarks/serve_load.py --part all --out runs/serve-load
    python benchmarks/serve_load.py --part memory --package-root /tmp/old --out runs/serve-memory

Every figure is taken on whatever machine runs it, beside whatever else runs there: the script
prints the CPU, its core count and the load average before and after (alexnet.measure.machine).
Timings go through the package's harness: each request's latency is ``measure.time_once`` and its
percentiles ``Timing.percentile``; the training turns alternate through ``measure.reported_turns``
(one warm-up turn of each kind first), each returning the run's own seconds per training image.
The tables (results.md) are alexnet.tables'. A smoke run: --requests 8 --clients 2 --turns 1
--limit-train 256 --warmup 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alexnet.measure import Timing, machine, reported_turns, time_once, timed
from alexnet.tables import Column, markdown

ROOT = Path(__file__).resolve().parents[1]


PACKAGE_ROOT = [ROOT]  # the alexnet the served process imports (--package-root)


def env(threads: int | None = None) -> dict:
    e = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT[0])}
    e.pop("OMP_NUM_THREADS", None)
    if threads:
        e["OMP_NUM_THREADS"] = str(threads)
    return e


def alexnet(*args, threads=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "alexnet", *map(str, args)],
        env=env(threads),
        check=True,
        capture_output=True,
        text=True,
        **kw,
    )


def make_run(runs: Path, name: str, epochs: int = 1, limit_train: int = 2000) -> Path:
    run = runs / name
    if not (run / "last.pt").exists():
        alexnet(
            "train",
            "--preset",
            "cpu",
            "--epochs",
            epochs,
            "--limit-train",
            limit_train,
            "--limit-test",
            500,
            "--run-dir",
            run,
            "--no-progress",
        )
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`alexnet serve` in its own process; its peak RSS from /proc when it stops."""

    def __init__(self, runs: Path, threads: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alexnet",
                "serve",
                "--runs",
                str(runs),
                "--port",
                str(self.port),
                "--threads",
                str(threads),
            ],
            env=env(),
            cwd=PACKAGE_ROOT[0],  # python -m imports from the working directory first
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(600):
            try:
                urllib.request.urlopen(self.url + "/api/runs", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"alexnet serve exited: {self.proc.stderr.read()}") from None
                time.sleep(0.1)
        raise SystemExit("alexnet serve did not answer in 60 s")

    def peak_rss_mib(self, field: str = "VmHWM") -> float:
        for ln in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if ln.startswith(field + ":"):
                return int(ln.split()[1]) / 1024
        return float("nan")

    def route(self, run: str, what: str) -> str:
        """A run's endpoint: after /-/ since issue 30, directly after the name before it."""
        new = f"{self.url}/api/runs/{run}/-/{what}"
        try:
            urllib.request.urlopen(f"{self.url}/api/runs/{run}/-/layers", timeout=120)
            return new
        except urllib.error.HTTPError as e:
            return new if e.code != 404 else f"{self.url}/api/runs/{run}/{what}"

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (user + system, every thread)."""
        f = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.radial_gradient("L").resize((300, 240)).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def multipart(data: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (
        (
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={b}"


def predict_once(url: str, body: bytes, ctype: str) -> tuple[float, str | None]:
    """One request's latency (seconds) and its error, if any."""
    errors = []

    def ask():
        try:
            req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
            with urllib.request.urlopen(req, timeout=120) as r:
                out = json.loads(r.read())
                if len(out.get("top", [])) != 5:
                    errors.append(f"answer without a top-5: {out}")
        except Exception as e:
            errors.append(f"{e.__class__.__name__}: {e}")

    return time_once(ask, "cpu"), (errors[0] if errors else None)


def load(runs: Path, run: str, requests: int, clients: int, maps: int) -> dict:
    server = Server(runs)
    try:
        url = f"{server.url}/api/runs/{run}/-/predict" + (f"?maps={maps}" if maps else "")
        body, ctype = multipart(png_bytes())
        for _ in range(3):  # warm-up: the checkpoint is loaded on the first request
            predict_once(url, body, ctype)
        results = []

        def burst():
            with ThreadPoolExecutor(clients) as pool:
                results.extend(pool.map(lambda _: predict_once(url, body, ctype), range(requests)))

        wall = time_once(burst, "cpu")
        lat = Timing("predict", [r[0] for r in results])
        errors = [r[1] for r in results if r[1]]
        return {
            "requests": requests,
            "clients": clients,
            "maps": maps,
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "p50_ms": 1000 * lat.percentile(50),
            "p90_ms": 1000 * lat.percentile(90),
            "p99_ms": 1000 * lat.percentile(99),
            "max_ms": 1000 * lat.percentile(100),
            "best_ms": 1000 * lat.best,
            "requests_per_s": requests / wall,
            "wall_s": wall,
            "server_peak_rss_mib": server.peak_rss_mib(),
        }
    finally:
        server.stop()


def training(
    runs: Path,
    run: str,
    turns: int,
    clients: int,
    interval: float,
    limit_train: int,
    work: Path,
    threads: int,
    busy_with: str = "predict",
    warmup: int = 1,
) -> dict:
    """Alternating turns of a 1-epoch training run on ``threads`` torch threads, the server idle or busy
    (``clients`` each sending a request, waiting ``interval`` s after each answer), through
    measure.reported_turns: each turn returns the run's own seconds per training image (metrics.jsonl)."""
    server = Server(runs)
    stop = threading.Event()
    served = [0]

    def hammer():
        url = f"{server.url}/api/runs/{run}/-/predict"
        body, ctype = multipart(png_bytes())
        while not stop.is_set():
            if busy_with == "predict":
                predict_once(url, body, ctype)
            else:  # the run's JSON: HTTP and file reads, no network
                urllib.request.urlopen(f"{server.url}/api/runs/{run}", timeout=120).read()
            served[0] += 1
            stop.wait(interval)

    import shutil

    shutil.rmtree(work, ignore_errors=True)
    rows = []

    def turn(busy: bool):
        def run_turn() -> float:
            senders = [threading.Thread(target=hammer, daemon=True) for _ in range(clients if busy else 0)]
            for t in senders:
                t.start()
            before, cpu0, own0, k = served[0], server.cpu_s(), time.process_time(), len(rows)
            out = work / f"turn{k}"
            cmd = (
                "train",
                "--preset",
                "cpu",
                "--epochs",
                1,
                "--limit-train",
                limit_train,
                "--limit-test",
                500,
                "--run-dir",
                out,
                "--no-progress",
            )
            trained, wall = timed(lambda: alexnet(*cmd, threads=threads), "cpu")
            server_cores, client_cores = (server.cpu_s() - cpu0) / wall, (time.process_time() - own0) / wall
            stop.set()
            for t in senders:
                t.join()
            stop.clear()
            m = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
            rows.append(
                {
                    "turn": k,
                    "warm_up": k < 2 * warmup,
                    "server": "busy" if busy else "idle",
                    "images_per_s": m["train_images_per_s"],
                    "train_s": m["train_time_s"],
                    "requests_served": served[0] - before,
                    "server_cores": server_cores,
                    "client_cores": client_cores,
                    "threads": trained.stdout.split("(", 1)[1].split(" threads", 1)[0],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            return 1 / m["train_images_per_s"]

        return run_turn

    try:
        by_kind = reported_turns({"idle": turn(False), "busy": turn(True)}, rounds=turns, warmup=warmup)
    finally:
        server.stop()
    idle, busy = by_kind["idle"], by_kind["busy"]  # seconds per training image
    return {
        "turns": rows,
        "idle_median": idle.per_second(),
        "busy_median": busy.per_second(),
        "idle_best": 1 / idle.best,
        "busy_best": 1 / busy.best,
        "busy_over_idle": idle.median / busy.median,
        "pairwise_ratios": [i / b for i, b in zip(idle.seconds, busy.seconds)],
        "clients": clients,
        "interval_s": interval,
        "limit_train": limit_train,
        "train_threads": threads,
        "busy_with": busy_with,
        "warmup_turns": warmup,
    }


LOAD_COLUMNS = [
    Column("maps", "maps per stage"),
    Column("requests"),
    Column("clients"),
    Column("errors"),
    Column("p50_ms", "p50 ms", "{:,.0f}"),
    Column("p90_ms", "p90 ms", "{:,.0f}"),
    Column("p99_ms", "p99 ms", "{:,.0f}"),
    Column("max_ms", "max ms", "{:,.0f}"),
    Column("requests_per_s", "requests/s", "{:.1f}"),
    Column("server_peak_rss_mib", "server peak RSS (MiB)", "{:.0f}"),
]
TURN_COLUMNS = [
    Column("turn"),
    Column("server", left=True),
    Column("warm_up", "warm-up", lambda w: "yes" if w else "", left=True),
    Column("images_per_s", "training images/s", "{:.0f}"),
    Column("requests_served", "requests answered"),
    Column("server_cores", "server cores", "{:.3f}"),
    Column("client_cores", "client cores", "{:.3f}"),
]


def watch(server: Server, work, limit_mib: float, seconds: float) -> dict:
    """``work()`` in a thread while the server's resident memory is sampled; the server is killed
    when it passes ``limit_mib`` (the issue's /dev/zero read grows until the machine runs out)."""
    done = threading.Event()

    def run():
        with contextlib.suppress(Exception):  # a killed server's broken connections: the figure is the memory
            work()
        done.set()

    base = server.peak_rss_mib("VmRSS")
    threading.Thread(target=run, daemon=True).start()
    t0, killed = time.perf_counter(), False
    while not done.wait(0.05) and time.perf_counter() - t0 < seconds:
        if server.peak_rss_mib("VmRSS") > limit_mib:
            killed = True
            break
    peak, after = server.peak_rss_mib(), server.peak_rss_mib("VmRSS")
    seconds = time.perf_counter() - t0
    return {
        "rss_before_mib": base,
        "peak_rss_mib": peak,
        "rss_after_mib": after,
        "killed_at_limit": killed,
        "seconds": seconds,
    }


def memory(out: Path, uploads: int, reports: int, limit_mib: float, cases=("zero", "uploads", "reports")) -> list[dict]:
    """Peak RSS of a fresh server for each of the three ways issue 30 grew it."""
    runs = out / "runs"
    make_run(runs, "served", limit_train=500)
    rows = []
    if "zero" in cases:
        rows += memory_zero(out, limit_mib)
    if "uploads" in cases:
        rows += memory_uploads(runs, uploads, limit_mib)
    if "reports" in cases:
        rows += memory_reports(runs, reports, limit_mib)
    return rows


def memory_zero(out: Path, limit_mib: float) -> list[dict]:
    rows = []
    zero = out / "zero"
    (zero / "z").mkdir(parents=True, exist_ok=True)
    (zero / "z" / "config.json").write_text(json.dumps({"data": {}, "train": {}, "system": {}}))
    server = Server(zero)
    try:
        (zero / "z" / "metrics.jsonl").unlink(missing_ok=True)
        (zero / "z" / "metrics.jsonl").symlink_to("/dev/zero")  # after the server answers
        r = watch(server, lambda: urllib.request.urlopen(server.url + "/api/runs/z", timeout=60).read(), limit_mib, 60)
        rows.append({"case": "GET a run whose metrics.jsonl links to /dev/zero", **r})
    finally:
        server.proc.kill()
        server.proc.wait()
        (zero / "z" / "metrics.jsonl").unlink(missing_ok=True)
    return rows


def memory_uploads(runs: Path, uploads: int, limit_mib: float) -> list[dict]:
    rows = []
    server = Server(runs)
    try:
        url = server.route("served", "predict")
        boundary = uuid.uuid4().hex
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'.encode()
            + os.urandom(19_500_000)
            + f"\r\n--{boundary}--\r\n".encode()
        )
        statuses = []

        def one():
            req = urllib.request.Request(
                url, data=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
            )
            try:
                statuses.append(urllib.request.urlopen(req, timeout=600).status)
            except urllib.error.HTTPError as e:
                statuses.append(e.code)
            except OSError:  # answered (503) and closed before the whole body was sent
                statuses.append("closed")

        def all_uploads():
            with ThreadPoolExecutor(uploads) as pool:
                for _ in range(uploads):
                    pool.submit(one)

        r = watch(server, all_uploads, limit_mib, 600)
        counts = {str(c): statuses.count(c) for c in sorted(set(statuses), key=str)}
        rows.append({"case": f"{uploads} concurrent 19.5 MB uploads (answers {counts})", **r})
    finally:
        server.stop()
    return rows


def memory_reports(runs: Path, reports: int, limit_mib: float) -> list[dict]:
    """The reports of many runs shown one after another: the resident memory after each (a cache
    that keeps every report grows by each one's size; a bounded one stops growing)."""
    rows = []
    for n in range(reports):
        if not (runs / f"r{n}").exists():
            shutil.copytree(runs / "served", runs / f"r{n}")
    server = Server(runs)
    after = []
    try:

        def all_reports():
            for n in range(reports):
                u = server.route(f"r{n}", "report")
                while json.loads(urllib.request.urlopen(u, timeout=600).read()).get("pending"):
                    time.sleep(0.2)
                after.append(server.peak_rss_mib("VmRSS"))

        r = watch(server, all_reports, limit_mib, 1800)
        rows.append({"case": f"the reports of {reports} runs, one after another", **r, "rss_after_each_mib": after})
    finally:
        server.stop()
    return rows


def report(results: dict) -> str:
    """results.md: the machine, then a table per part (alexnet.tables)."""
    parts = [f"Machine before: {results['machine_before']}", f"Machine after: {results['machine_after']}"]
    if "load" in results:
        parts.append(markdown(results["load"], LOAD_COLUMNS))
    if "training" in results:
        t = results["training"]
        parts.append(markdown(t["turns"], TURN_COLUMNS))
        parts.append(
            f"Training images/s, median of {len(t['pairwise_ratios'])} turns: idle {t['idle_median']:.0f}, "
            f"busy {t['busy_median']:.0f}; busy / idle {t['busy_over_idle']:.2f} (per pair: "
            + ", ".join(f"{r:.2f}" for r in t["pairwise_ratios"])
            + ")"
        )
    return "\n\n".join(parts) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["load", "training", "memory", "all"], default="all")
    p.add_argument("--package-root", default=str(ROOT), help="the checkout whose alexnet is served")
    p.add_argument("--uploads", type=int, default=150, help="concurrent 19.5 MB uploads (--part memory)")
    p.add_argument("--reports", type=int, default=24, help="runs whose reports are shown (--part memory)")
    p.add_argument("--memory-cases", default="zero,uploads,reports", help="which of --part memory's cases run")
    p.add_argument("--limit-mib", type=float, default=2048, help="memory at which the server is killed (--part memory)")
    p.add_argument(
        "--out", default="runs/serve-load", help="folder for the served run, the turns, results.json and results.md"
    )
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--turns", type=int, default=3, help="training turns of each kind (idle, busy)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up training turns of each kind, not counted")
    p.add_argument("--busy-clients", type=int, default=4, help="clients keeping the server busy in a busy turn")
    p.add_argument(
        "--busy-interval",
        type=float,
        default=0.0,
        help="seconds each busy client waits after an answer (0: flat out; 1: a person clicking)",
    )
    p.add_argument(
        "--train-threads",
        type=int,
        default=1,
        help="torch threads of the training run (1: on a CPU shared with other jobs, 2 threads on 2 "
        "busy cores lose most of their time in OpenMP barriers)",
    )
    p.add_argument(
        "--busy-with",
        choices=["predict", "json"],
        default="predict",
        help="what busy clients ask: predict (an upload through the network) or json (GET /api/runs/NAME)",
    )
    p.add_argument("--limit-train", type=int, default=6000, help="training images of each turn's epoch")
    args = p.parse_args()
    PACKAGE_ROOT[0] = Path(args.package_root).resolve()
    out = Path(args.out).resolve()
    if args.part == "memory":
        rows = memory(out, args.uploads, args.reports, args.limit_mib, args.memory_cases.split(","))
        for row in rows:
            print(json.dumps(row), flush=True)
        (out / "memory.json").write_text(
            json.dumps({"package_root": str(PACKAGE_ROOT[0]), "rows": rows}, indent=2) + "\n"
        )
        return
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    make_run(runs, "served")
    results = {"machine_before": machine("cpu").line(), "torch_threads_server": 1}
    print(results["machine_before"], flush=True)
    if args.part in ("load", "all"):
        for maps in (0, 8):
            r = load(runs, "served", args.requests, args.clients, maps)
            results.setdefault("load", []).append(r)
            print(json.dumps(r), flush=True)
    if args.part in ("training", "all"):
        results["training"] = training(
            runs,
            "served",
            args.turns,
            args.busy_clients,
            args.busy_interval,
            args.limit_train,
            out / "turns",
            args.train_threads,
            args.busy_with,
            args.warmup,
        )
        print(json.dumps({k: v for k, v in results["training"].items() if k != "turns"}), flush=True)
    results["machine_after"] = machine("cpu").line()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(report(results))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")


if __name__ == "__main__":
    main()
