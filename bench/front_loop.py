"""clawgate's own Python work per proxied request, without sockets, TLS or load generator.

Run: ``.venv/bin/python bench/front_loop.py`` (from the repository root).

Drives the front (proxy/front.py) of a real configuration (bench/run.py's: three routes,
a few hundred emails, domains and groups, identity assertion and a claim header on, JSON
info logs) with a real sealed session, through stand-in transports: each round feeds
one keep-alive request head as wrk sends it, then an nginx-like 1 KB response on the
pooled upstream link. What it times is everything clawgate adds over a byte pipe:
admission, the upstream head, response parsing and head, pool, timers, log lines,
metrics. ``--profile`` prints cProfile's top functions for the same loop.
``--opcodes`` counts the Python bytecode instructions clawgate runs per request: a
figure that does not move with the machine's load, for comparing two versions of the
code on a shared machine (C work such as TLS, llhttp or orjson is not in it).

The end-to-end figure (bench/run.py, CPU µs per request) is this plus the event loop,
TLS and the system calls that any proxy pays.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import clawgate_config, mint_cookie  # noqa: E402
from proxy import logging as clawlog  # noqa: E402
from proxy.connlimit import Guard  # noqa: E402
from proxy.front import Front  # noqa: E402
from proxy.runtime import Runtime  # noqa: E402
from proxy.server import connection_limits  # noqa: E402
from proxy.settings import load_settings  # noqa: E402
from proxy.snapshot import build_snapshot  # noqa: E402
from proxy.throttle import Throttle  # noqa: E402
from proxy.tls import generate_self_signed  # noqa: E402
from proxy.upstream_link import UpstreamLink  # noqa: E402

PORT, UPSTREAM, WS_UPSTREAM = 8443, 18080, 18081
BODY = b"x" * 1024
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 14:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b'Last-Modified: Thu, 03 Dec 2026 13:00:00 GMT\r\nConnection: keep-alive\r\n'
    b'ETag: "6930a1d0-400"\r\nAccept-Ranges: bytes\r\n\r\n' + BODY
)


class _Client:
    """The client side of one connection: collects what clawgate writes."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class _Upstream(_Client):
    """The upstream side of a pooled link: answers every request head at once."""

    def __init__(self) -> None:
        super().__init__()
        self.link: UpstreamLink | None = None
        self.pending = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.pending += 1


async def _main(rounds: int, profile: bool, keep: bool, opcodes: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="clawgate-front-loop-") as directory:
        await _measure(Path(directory), rounds, profile, opcodes)
        if keep:
            print((Path(directory) / "clawgate.log").read_text()[-1200:])


async def _measure(tmp: Path, rounds: int, profile: bool, opcodes: bool = False) -> None:
    config = clawgate_config(tmp, PORT, UPSTREAM, WS_UPSTREAM, 1, False, True)
    made = generate_self_signed(["127.0.0.1"])
    (tmp / "cert.pem").write_bytes(made.cert_pem)
    (tmp / "key.pem").write_bytes(made.key_pem)
    path = tmp / "clawgate.yaml"
    path.write_text(yaml.safe_dump(config))
    cookie = mint_cookie(path, PORT)
    settings, located = load_settings(path)
    log_file = (tmp / "clawgate.log").open("w")
    sys.stderr, real_stderr = log_file, sys.stderr  # the JSON lines go to a file
    clawlog.configure(settings.log_level, settings.log_format)
    sys.stderr = real_stderr
    snapshot = build_snapshot(settings, located, str(path))
    runtime = Runtime(snapshot=snapshot, oidc=None)
    front = Front(
        runtime,
        Throttle(),
        Guard(lambda: connection_limits(runtime)),
        lambda: (_ for _ in ()).throw(AssertionError("handed off")),
        scheme="https",
    )
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nCookie: {cookie}\r\n\r\n"
    ).encode()
    client = _Client()
    conn = front.protocol()
    conn.connection_made(client)  # type: ignore[arg-type]
    upstream = _Upstream()
    link = UpstreamLink(front.pool, ("127.0.0.1", UPSTREAM, False, True))
    link.connection_made(upstream)  # type: ignore[arg-type]
    front.pool.release(_completed(link))

    def one() -> None:
        conn.data_received(request)
        if upstream.pending != 1:
            raise AssertionError("the request did not reach the upstream")
        upstream.pending = 0
        link.data_received(RESPONSE)

    for _ in range(200):  # warm: templates, caches, the assertion
        one()
        await asyncio.sleep(0)
    sizes = client.written // 200
    if opcodes:
        await _count_opcodes(one)
    profiler = cProfile.Profile() if profile else None
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        for i in range(rounds):
            one()
            if i % 64 == 63:
                await asyncio.sleep(0)  # a loop turn: gathered log lines are written
        if profiler:
            profiler.disable()
        best = min(best, time.perf_counter() - start)
    if client.closed:
        raise AssertionError("the client connection was closed")
    print(f"front, one keep-alive request + 1 KB response: {best / rounds * 1e6:.1f} us "
          f"(best of 5 x {rounds}; {sizes} B to the client per request)")
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())
    conn.connection_lost(None)
    runtime.links.close()
    log_file.close()


async def _count_opcodes(one: Any, requests: int = 64) -> None:
    """Bytecode instructions per request, by function, over ``requests`` requests and
    the loop turn after them (where gathered log lines and metrics are written)."""
    per: dict[tuple[str, str], int] = {}

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            key = (code.co_filename.rpartition("/")[2], code.co_name)
            per[key] = per.get(key, 0) + 1
        return tracer

    sys.settrace(tracer)
    try:
        for _ in range(requests):
            one()
        await asyncio.sleep(0)
    finally:
        sys.settrace(None)
    total = sum(count for (name, _), count in per.items() if name != Path(__file__).name)
    print(f"Python bytecode instructions per request: {total / requests:.0f} "
          f"(clawgate's own and the libraries' Python, not C)")
    for (filename, function), count in sorted(per.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {count / requests:7.1f}  {filename}:{function}")


def _completed(link: UpstreamLink) -> UpstreamLink:
    link.complete = link.keep_alive = True
    return link


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--show-log", action="store_true", help="print the last log lines")
    parser.add_argument("--opcodes", action="store_true",
                        help="also count bytecode instructions per request (load-independent)")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(_main(args.rounds, args.profile, args.show_log, args.opcodes))
    except ImportError:
        asyncio.run(_main(args.rounds, args.profile, args.show_log, args.opcodes))


if __name__ == "__main__":
    main()
