"""serve's app: create_app wiring the routes to paths, what is refused before any route runs (a
foreign Host or Origin, a body past its cap, uploads past their budget), the connection's bounds
under uvicorn, and the `alexnet serve` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from .folder import BadRequest, NotFound, TooLarge
from .routes import (
    Evaluation,
    Figures,
    Pages,
    Reports,
    RunsApi,
    Server,
    TestImages,
    Uploads,
    _one_line,
    bad_request,
    http_error,
    not_found,
    unexpected,
)

STATIC = Path(__file__).parents[1] / "static"
MAX_UPLOAD = 20 * 2**20  # bytes of a request to /predict; more is answered 413
# Bytes of uploads being received or waiting for the worker at once, each counted by its
# Content-Length (MAX_UPLOAD without one): each is held whole, so 150 uploads of 19.5 MB took 3.1 GB.
# One past it is answered 503; small uploads (a photo, ~100 KB) still pass by the hundred.
UPLOAD_BUDGET = 100 * 2**20
# The connection itself: a request's headers must arrive within HEADER_TIMEOUT s of its connection
# (or of the previous answer), and at most MAX_CONNECTIONS are kept open, which also bounds the
# requests answered at once (uvicorn's limit_concurrency is not used: it counts open connections,
# so under a flood of idle ones it answered every real request 503).
HEADER_TIMEOUT = 10
MAX_CONNECTIONS = 256
MAX_HEADER_BYTES = 64 * 2**10
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def allowed_hosts(host: str = "127.0.0.1", port: int = 8000, extra=()) -> frozenset[str]:
    """The Host header values this server answers to: the address it is bound to with its port,
    every loopback name for a loopback bind, and this machine's names and addresses for a bind on
    every interface; ``extra`` (--allow-host) adds names. Any other Host is a DNS-rebinding page's
    (evil.example resolved to 127.0.0.1) or a mistake, and gets 421."""
    h = host.lower().strip("[]")
    names = {f"[{h}]" if ":" in h else h}
    if h in ("127.0.0.1", "localhost", "::1") or h.startswith("127."):
        names |= set(LOOPBACK)
    if h in ("", "0.0.0.0", "::"):
        names |= set(LOOPBACK)
        with contextlib.suppress(OSError):
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
            for info in socket.getaddrinfo(socket.gethostname(), None):
                a = info[4][0].lower()
                names.add(f"[{a}]" if ":" in a else a)
    names |= {n.lower() for n in extra}
    return frozenset({f"{n}:{port}" for n in names} | (names if port == 80 else set()))


class Guard:
    """What is refused before any route runs: a Host the server was not started for (421), a
    request that changes state (every method but GET and HEAD) from a foreign origin (403: an
    Origin header not the server's own, or Sec-Fetch-Site: cross-site), and an upload that would
    take the bytes being received or computed at once past UPLOAD_BUDGET (503: each is held whole)."""

    def __init__(self, app, hosts: frozenset[str]):
        self.app, self.hosts, self.inflight = app, hosts, 0
        self.origins = frozenset(f"http://{h}" for h in hosts) | frozenset(f"https://{h}" for h in hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            shown = " or ".join(sorted(self.hosts)[:4])
            return await send_json(send, 421, f"this server answers to {shown} only, not Host {host[:80]!r}")
        if scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        origin = headers.get("origin")
        if (origin is not None and origin.lower() not in self.origins) or headers.get("sec-fetch-site") == "cross-site":
            who = origin[:80] if origin is not None else "a cross-site page"
            return await send_json(send, 403, f"a request from another origin ({who!r}) is refused")
        length = headers.get("content-length", "")
        size = min(int(length), MAX_UPLOAD + 1) if length.isdigit() else MAX_UPLOAD
        if self.inflight + size > UPLOAD_BUDGET:
            busy = f"{self.inflight / 2**20:.0f} MiB of uploads are being answered; try again shortly"
            return await send_json(send, 503, busy, [(b"retry-after", b"1")])
        self.inflight += size
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= size


def create_app(
    runs_dir: str | os.PathLike = "runs", threads: int = 1, host: str = "127.0.0.1", port: int = 8000, allow=()
):
    """The web app over ``runs_dir``, answering to the names ``host:port`` is reached by (see
    ``allowed_hosts``): each path wired to its group's endpoint. A run's own pages and endpoints
    follow a ``/-/`` that no run name can hold (names have one or two parts), so none collides."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    server = Server(runs_dir, threads)
    pages, runs, evaluation, figures = Pages(server), RunsApi(server), Evaluation(server), Figures(server)
    tests, reports, uploads = TestImages(server, evaluation), Reports(server), Uploads(server)
    run = "/api/runs/{name:path}/-"
    app = Starlette(
        routes=[
            Route("/", pages.runs),
            Route("/compare", pages.compare),
            Route("/favicon.ico", pages.favicon),
            Route("/runs/{name:path}/-/explore", pages.explore),
            Route("/runs/{name:path}", pages.run),
            Route("/api/runs", runs.listing),
            Route("/api/compare", runs.compare),
            Route(f"{run}/predict", uploads.predict, methods=["GET", "POST"]),
            Route(run + "/test/{index:int}/png", tests.png),
            Route(run + "/test/{index:int}", tests.image),
            Route(f"{run}/test", tests.listing),
            Route(f"{run}/evaluation", evaluation.confusion),
            Route(f"{run}/filters", figures.filters),
            Route(f"{run}/report", reports.body),
            Route(f"{run}/layers", figures.layers),
            Route("/api/runs/{name:path}", runs.one),
            Mount("/static", StaticFiles(directory=STATIC)),
        ],
        exception_handlers={
            NotFound: not_found,
            404: not_found,
            HTTPException: http_error,
            BadRequest: bad_request,
            Exception: unexpected,
        },
    )
    app.add_middleware(BodyLimit, limit=MAX_UPLOAD)
    app.add_middleware(Guard, hosts=allowed_hosts(host, port, allow))
    app.state.worker, app.state.reporter = server.worker, server.reporter
    app.state.folder, app.state.reports = server.folder, reports
    return app


class BodyLimit:
    """413 for a request body over ``limit`` bytes, by its Content-Length before anything is read, or
    (chunked, or a lying length) as soon as the bytes received pass it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        too_large = f"the upload is over {self.limit // 2**20} MB"
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await send_json(send, 413, too_large)
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking_send)
        except TooLarge:
            if not started:
                await send_json(send, 413, too_large)


async def send_json(send, status: int, message: str, headers=()) -> None:
    body = json.dumps({"error": message}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------
# The connection: uvicorn's h11 protocol with a deadline for headers and a cap on connections


def protocol():
    """uvicorn's h11 protocol, bounded. Out of the box it waits forever for a request's headers
    (the keep-alive timer runs only between answers), so 1,100 connections that never finish their
    headers held every file descriptor and the server stopped accepting. Here the headers must be
    complete HEADER_TIMEOUT s after the connection (or the previous answer), and a connection past
    MAX_CONNECTIONS takes the place of the one that has waited longest for its headers (a client
    that sends its request at once is answered even while a flood of idle connections arrives)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Bounded(H11Protocol):
        header_timer = None
        waiting_since = None  # loop time since which it waits for a request's headers, else None

        def connection_made(self, transport):
            super().connection_made(transport)
            self.arm()
            if len(self.connections) > MAX_CONNECTIONS:
                waiting = [c for c in self.connections if c is not self and c.waiting_since is not None]
                oldest = min(waiting, key=lambda c: c.waiting_since, default=self)
                oldest.transport.abort()

        def arm(self):
            self.disarm()
            self.waiting_since = self.loop.time()
            self.header_timer = self.loop.call_later(HEADER_TIMEOUT, self.headers_late)

        def disarm(self):
            self.waiting_since = None
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def headers_late(self):
            self.header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.abort()  # never began, or is still sending, its request's headers

        def handle_events(self):
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self.disarm()  # the headers are in

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self.arm()

        def connection_lost(self, exc):
            self.disarm()
            super().connection_lost(exc)

    return Bounded


def quiet_exceptions(loop, context) -> None:
    """The event loop's errors (a connection reset mid-answer, accept() out of descriptors) as one
    line each, at most one a second, instead of a traceback per connection."""
    now = time.monotonic()
    if now - getattr(quiet_exceptions, "last", 0.0) < 1.0:
        return
    quiet_exceptions.last = now
    exc = context.get("exception")
    why = _one_line(exc) if exc is not None else ""
    print(f"alexnet serve: {context.get('message', 'error')} {why}".strip(), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The command


def add_parser(sub) -> None:
    s = sub.add_parser(
        "serve",
        help="web app over a runs folder: runs, live curves, explore a network, compare",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--runs", default="runs", help="the runs folder to serve")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface; there is no login)")
    s.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name the server answers to (with --port), e.g. the name a proxy forwards; repeatable",
    )
    s.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for inference (1 leaves the other cores to a training run)",
    )
    s.set_defaults(func=cmd_serve)


def uvicorn_config(app, host: str, port: int):
    """uvicorn's settings for the app: the bounded protocol, idle connections closed after 5 s,
    headers capped at MAX_HEADER_BYTES."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=protocol(),
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=3,  # a report rendering for minutes never holds Ctrl-C
    )


def cmd_serve(args) -> int:
    from ..config import ConfigError

    try:
        import uvicorn
    except ImportError:
        raise ConfigError("alexnet serve needs the serve extra: pip install 'alexnet[serve]'") from None
    if not Path(args.runs).is_dir():
        raise ConfigError(f"--runs {args.runs}: no such directory")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, not {args.port}")
    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, not {args.threads}")
    bad = next((h for h in args.allow_host if not h or any(c in h for c in "/:@ \t")), None)
    if bad is not None:
        raise ConfigError(f"--allow-host {bad!r}: give a host name alone, without scheme, port or path")
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:  # bound here, not by uvicorn: its failure is a log line and exit status 3, and once this
        # line is printed the port already answers
        sock = socket.create_server((args.host, args.port), family=family)
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    app = create_app(args.runs, args.threads, args.host, args.port, args.allow_host)
    server = uvicorn.Server(uvicorn_config(app, args.host, args.port))
    print(f"serving {Path(args.runs).resolve()} on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)

    async def serve():
        asyncio.get_running_loop().set_exception_handler(quiet_exceptions)
        await server.serve(sockets=[sock])

    asyncio.run(serve())
    return 0
