"""Slow and greedy clients: slowloris headers, slow bodies, stalled TLS handshakes, and
too many connections from one address. Each must cost clawgate a bounded amount of time
and connections, while everyone else keeps being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from pathlib import Path

import aiohttp

from tests.security.helpers import bare_client, gate_for, insecure_tls, status_of
from tests.support.gate import Gate
from tests.support.upstream import Upstream

PUBLIC = {
    "route": {"allow_public_unauthenticated_access": True, "policy": None, "allow_websockets": True}
}


async def open_tls(gate: Gate) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure_tls())


async def closed_after(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it said before that."""
    start = time.monotonic()
    data = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        async with asyncio.timeout(limit):
            while chunk := await reader.read(4096):
                data += chunk
    return time.monotonic() - start, data


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every)


async def test_slowloris_headers_are_cut_and_others_are_served(
    upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_for(upstream, tmp_path, None, timeout_header="1s", **PUBLIC) as gate:
        head = f"GET /slow HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\nX-Padding: ".encode()
        conns = [await open_tls(gate) for _ in range(6)]
        tricklers = [asyncio.create_task(trickle(w, head + b"a" * 100, 0.2)) for _, w in conns]
        # A client that connects and sends nothing at all is cut the same way.
        idle_reader, idle_writer = await open_tls(gate)
        async with bare_client() as client, client.get(f"{gate.url}/meanwhile") as r:
            assert r.status == 200
        results = await asyncio.gather(
            *(closed_after(r, 5) for r, _ in conns), closed_after(idle_reader, 5)
        )
        for task in tricklers:
            task.cancel()
        for elapsed, data in results:
            assert elapsed < 3.0, elapsed  # 1 s from the first byte, plus scheduling slack
            assert data == b"" or status_of(data) == 408, data[:100]
        for _, w in [*conns, (None, idle_writer)]:
            w.close()
        assert [r["path"] for r in upstream.seen.requests] == ["/meanwhile"]


async def test_slowloris_on_a_keep_alive_connection(upstream: Upstream, tmp_path: Path) -> None:
    async with gate_for(upstream, tmp_path, None, timeout_header="1s", **PUBLIC) as gate:
        reader, writer = await open_tls(gate)
        writer.write(f"GET /first HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert status_of(head) == 200
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        await reader.readexactly(length)
        await asyncio.sleep(1.5)  # idle between requests is governed by timeout_idle, not this
        task = asyncio.create_task(trickle(writer, b"GET /second HTTP/1.1\r\nX: " + b"a" * 50, 0.2))
        elapsed, data = await closed_after(reader, 5)
        task.cancel()
        writer.close()
        assert elapsed < 3.0 and (data == b"" or status_of(data) == 408)
        assert [r["path"] for r in upstream.seen.requests] == ["/first"]


async def test_slow_body_is_cut_by_timeout_read(upstream: Upstream, tmp_path: Path) -> None:
    async with gate_for(upstream, tmp_path, None, timeout_read="1500ms", **PUBLIC) as gate:
        reader, writer = await open_tls(gate)
        writer.write(
            f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\n"
            "Content-Length: 1000\r\n\r\n".encode()
        )
        task = asyncio.create_task(trickle(writer, b"x" * 1000, 0.1))
        elapsed, data = await closed_after(reader, 6)
        task.cancel()
        writer.close()
        assert elapsed < 3.5, elapsed
        assert data == b"" or status_of(data) == 408, data[:200]
        # Quick bodies, slow responses and long WebSockets are not reads: all unaffected.
        async with bare_client() as client:
            async with client.post(f"{gate.url}/upload", data=b"y" * 200_000) as r:
                assert (await r.json())["received"] == 200_000
            async with client.get(f"{gate.url}/slow", params={"s": "2"}) as r:
                assert await r.text() == "late"
            async with client.ws_connect(f"{gate.url}/ws", origin=gate.url) as ws:
                await asyncio.sleep(2)
                await ws.send_str("still here")
                assert await ws.receive_str(timeout=5) == "still here"


async def test_stalled_tls_handshake_is_cut(upstream: Upstream, tmp_path: Path) -> None:
    async with gate_for(upstream, tmp_path, None, timeout_header="1s", **PUBLIC) as gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
        elapsed, _ = await closed_after(reader, 5)  # no ClientHello, ever
        writer.close()
        assert elapsed < 3.0, elapsed


async def test_connections_per_ip_are_capped(upstream: Upstream, tmp_path: Path) -> None:
    async with gate_for(
        upstream, tmp_path, None, max_connections_per_ip=4, timeout_header="30s", **PUBLIC
    ) as gate:
        held = [await open_tls(gate) for _ in range(4)]
        await asyncio.sleep(0.1)
        reader, writer = await open_tls(gate)
        _, data = await closed_after(reader, 3)
        writer.close()
        assert status_of(data) == 503 and b"Retry-After" in data, data[:200]
        # Capped means capped for everyone on that address, the client library included.
        async with bare_client() as client:
            try:
                async with client.get(f"{gate.url}/x") as r:
                    assert r.status == 503
            except aiohttp.ClientError:
                pass
        held[0][1].close()
        await asyncio.sleep(0.2)
        async with bare_client() as client, client.get(f"{gate.url}/after") as r:
            assert r.status == 200
        for _, w in held[1:]:
            w.close()
        assert [r["path"] for r in upstream.seen.requests] == ["/after"]
