"""A small WebSocket load client (uvloop, bare protocol, one process).

    python bench/wsload.py echo --url wss://127.0.0.1:8443/ws [--cookie C] \
        [--conns 50] [--seconds 5] [--size 100] [--watch NAME=PID ...]
        N connections, each sending a message and waiting for its echo, in a loop.
        Prints JSON: round trips per second and p50/p99 round-trip time (microseconds),
        and the CPU time per round trip of this client and of each watched process tree
        (user + system, over exactly the timed window).

    python bench/wsload.py idle --url ... --count 10000
        Opens COUNT connections and keeps them idle; prints "READY <opened>" and waits
        for a line on stdin, then closes them and exits.

Frames are masked with a zero key (valid, and makes masking free), so the client's
own cost per round trip stays small beside what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.proc import cpu_seconds


def _client_ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class WsClient(asyncio.Protocol):
    def __init__(self, request: bytes, message: bytes | None, deadline: float,
                 samples: list[float] | None) -> None:
        self.request = request
        self.frame = (
            bytes((0x81, 0x80 | len(message))) + b"\0\0\0\0" + message
            if message is not None else b""
        )
        self.want = 2 + len(message) if message is not None else 0
        self.deadline = deadline
        self.samples = samples
        self.open: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.upgraded = False
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)

    def start(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.frame)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            ok = self.buf.startswith(b"HTTP/1.1 101")
            self.buf = self.buf[end + 4:]
            self.upgraded = ok
            if not self.open.done():
                self.open.set_result(ok)
            return
        if not self.want:
            self.buf = b""
            return
        while len(self.buf) >= self.want:
            self.buf = self.buf[self.want:]
            now = time.perf_counter()
            assert self.samples is not None
            self.samples.append(now - self.sent_at)
            if now >= self.deadline:
                if not self.done.done():
                    self.done.set_result(None)
                return
            self.sent_at = now
            assert self.transport is not None
            self.transport.write(self.frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_result(False)
        if not self.done.done():
            self.done.set_result(None)


def _handshake(url: str, cookie: str | None) -> tuple[str, int, ssl.SSLContext | None, bytes]:
    parts = urlsplit(url)
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {parts.path or '/'} HTTP/1.1",
        f"Host: {parts.hostname}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Origin: {'https' if tls else 'http'}://{parts.hostname}:{port}",
    ]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return parts.hostname or "127.0.0.1", port, _client_ssl() if tls else None, request


async def echo(
    url: str, cookie: str | None, conns: int, seconds: float, size: int,
    watch: dict[str, int] | None = None,
) -> dict[str, float]:
    host, port, ctx, request = _handshake(url, cookie)
    loop = asyncio.get_running_loop()
    samples: list[float] = []
    message = b"m" * size
    clients: list[WsClient] = []
    for _ in range(conns):
        _, proto = await loop.create_connection(
            lambda: WsClient(request, message, float("inf"), samples), host, port, ssl=ctx
        )
        if not await asyncio.wait_for(proto.open, 10):
            raise SystemExit("WebSocket handshake refused")
        clients.append(proto)
    # Warm-up, then measure.
    warm = time.perf_counter() + min(1.0, seconds / 5)
    for c in clients:
        c.deadline = warm
        c.start()
    await asyncio.gather(*(c.done for c in clients))
    samples.clear()
    for c in clients:
        c.done = loop.create_future()
    watch = watch or {}
    cpu_before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    own_before = time.process_time()
    start = time.perf_counter()
    for c in clients:
        c.deadline = start + seconds
        c.start()
    await asyncio.gather(*(c.done for c in clients))
    elapsed = time.perf_counter() - start
    own_cpu = time.process_time() - own_before
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in watch.items()}
    for c in clients:
        assert c.transport is not None
        c.transport.close()
    samples.sort()
    n = len(samples)
    # The clock ticks are 10 ms: over a few seconds and 10^5 round trips that is well
    # under 1% of a figure.
    per_rt = {"client": own_cpu, **cpu}
    return {
        "round_trips_per_s": n / elapsed,
        "p50_us": samples[n // 2] * 1e6 if n else 0.0,
        "p99_us": samples[min(n - 1, int(n * 0.99))] * 1e6 if n else 0.0,
        "messages": n,
        "cpu_us_per_round_trip": {
            name: round(seconds_used / n * 1e6, 2) if n else 0.0
            for name, seconds_used in per_rt.items()
        },
    }


async def idle(url: str, cookie: str | None, count: int, concurrency: int) -> None:
    host, port, ctx, request = _handshake(url, cookie)
    loop = asyncio.get_running_loop()
    clients: list[WsClient] = []
    gate = asyncio.Semaphore(concurrency)
    failures = 0

    async def one() -> None:
        nonlocal failures
        async with gate:
            try:
                _, proto = await loop.create_connection(
                    lambda: WsClient(request, None, 0.0, None), host, port, ssl=ctx
                )
                if await asyncio.wait_for(proto.open, 30):
                    clients.append(proto)
                else:
                    failures += 1
            except (OSError, TimeoutError):
                failures += 1

    await asyncio.gather(*(one() for _ in range(count)))
    print(f"READY {len(clients)} {failures}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("echo", "idle"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--cookie")
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--watch", action="append", default=[], metavar="NAME=PID",
                        help="echo: report this process tree's CPU per round trip")
    args = parser.parse_args()
    watch = {name: int(pid) for name, _, pid in (w.partition("=") for w in args.watch)}
    import uvloop

    if args.mode == "echo":
        if args.size >= 126:
            raise SystemExit("--size must be below 126 bytes")
        result = uvloop.run(echo(args.url, args.cookie, args.conns, args.seconds, args.size, watch))
        print(json.dumps(result))
    else:
        uvloop.run(idle(args.url, args.cookie, args.count, args.concurrency))


if __name__ == "__main__":
    main()
