"""Bodies stream through clawgate with flat memory; events arrive as sent; upstream
failures become deliberate 502/504 pages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.support.gate import (
    HTML,
    JSON,
    GateProcess,
    base_config,
    client_session,
    register_client,
    running_gate,
)
from tests.support.idp import ALICE, TestIdP, login
from tests.support.upstream import Upstream, free_port

SIZE = 200 * 1024 * 1024
CHUNK = 64 * 1024


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start) of a process, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    return out


async def upload_body(size: int) -> AsyncIterator[bytes]:
    block = b"u" * CHUNK
    left = size
    while left > 0:
        n = min(left, CHUNK)
        yield block[:n]
        left -= n


async def test_200mb_down_and_up_with_flat_memory(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    gate = GateProcess(base_config(port, upstream.url, idp=idp, log_level="info",
                                   log_format="json"), tmp_path)
    await asyncio.to_thread(gate.start)
    try:
        assert gate.proc is not None
        pid = gate.proc.pid
        async with client_session() as browser:
            resp = await login(browser, f"{gate.url}/warm", ALICE.username, ALICE.password)
            assert resp.status == 200
            # Warm the pools, the TLS session and the code paths before the baseline.
            async with browser.get(f"{gate.url}/download/{4 * 1024 * 1024}") as r:
                assert len(await r.read()) == 4 * 1024 * 1024
            before = memory_kib(pid)

            started = time.monotonic()
            received = 0
            async with browser.get(f"{gate.url}/download/{SIZE}") as r:
                assert r.status == 200
                assert int(r.headers["Content-Length"]) == SIZE
                async for chunk in r.content.iter_chunked(CHUNK):
                    received += len(chunk)
            down_s = time.monotonic() - started
            assert received == SIZE
            after_down = memory_kib(pid)

            started = time.monotonic()
            async with browser.post(f"{gate.url}/upload", data=upload_body(SIZE),
                                    headers={**JSON, "Content-Type": "application/octet-stream"},
                                    timeout=aiohttp.ClientTimeout(total=120)) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["received"] == SIZE
            up_s = time.monotonic() - started
            after_up = memory_kib(pid)
    finally:
        await asyncio.to_thread(gate.stop)

    growth_mib = (after_up["VmHWM"] - before["VmRSS"]) / 1024
    print(
        f"\nclawgate memory: RSS before {before['VmRSS'] / 1024:.1f} MiB, "
        f"after 200 MiB down {after_down['VmRSS'] / 1024:.1f} MiB ({down_s:.1f} s), "
        f"after 200 MiB up {after_up['VmRSS'] / 1024:.1f} MiB ({up_s:.1f} s), "
        f"peak {after_up['VmHWM'] / 1024:.1f} MiB, peak growth {growth_mib:.1f} MiB"
    )
    assert growth_mib < 50


async def test_server_sent_events_are_not_buffered(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        await login(browser, f"{gate.url}/", ALICE.username, ALICE.password)
        async with browser.get(f"{gate.url}/sse",
                               headers={"Accept": "text/event-stream"}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            opened = time.monotonic()
            arrivals: list[tuple[float, bytes]] = []
            while True:
                line = await r.content.readline()
                if not line:
                    break
                if line.startswith(b"data:"):
                    arrivals.append((time.monotonic() - opened, line.strip()))
            ended = time.monotonic() - opened
    assert [data for _, data in arrivals] == [b"data: 0", b"data: 1", b"data: 2"]
    # The upstream waits 0.3 s after each event: each one must arrive on its own, the first
    # long before the stream ends (a buffering proxy delivers all three at the end).
    assert ended >= 0.8
    assert arrivals[0][0] < ended - 0.45, (arrivals, ended)
    assert arrivals[1][0] - arrivals[0][0] > 0.15 and arrivals[2][0] - arrivals[1][0] > 0.15


def public_route(to: str, **extra: object) -> dict[str, object]:
    return {"to": to, "policy": None, "allow_public_unauthenticated_access": True, **extra}


async def test_upstream_down_is_a_502_page(upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = base_config(port, dead, idp=None, route=public_route(dead))
    async with running_gate(config, tmp_path) as gate, client_session() as client:
        async with client.get(f"{gate.url}/x", headers=HTML) as r:
            assert r.status == 502
            page = await r.text()
            assert "Upstream unavailable" in page and "Traceback" not in page
            assert r.headers["Content-Type"].startswith("text/html")
        async with client.get(f"{gate.url}/x", headers=JSON) as r:
            assert r.status == 502
            assert (await r.json())["error"] == "upstream_unavailable"


async def test_slow_upstream_is_a_504_after_the_route_timeout(
    upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    config = base_config(port, upstream.url, idp=None,
                         route=public_route(upstream.url, timeout="1s"))
    async with running_gate(config, tmp_path) as gate, client_session() as client:
        started = time.monotonic()
        async with client.get(f"{gate.url}/slow?s=2", headers=JSON) as r:
            assert r.status == 504
            assert (await r.json())["error"] == "upstream_timeout"
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 2.5
        # Quick answers on the same route are unaffected.
        async with client.get(f"{gate.url}/slow?s=0.1", headers=JSON) as r:
            assert r.status == 200
            assert await r.text() == "late"
