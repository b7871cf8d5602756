"""SIGTERM on a real ``clawgate serve`` process: stop accepting, let in-flight HTTP finish,
close WebSockets with 1001, exit 0 within the configured drain time."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp

from tests.security.helpers import bare_client
from tests.support.gate import GateProcess, base_config
from tests.support.upstream import Upstream, free_port

PUBLIC = {"allow_public_unauthenticated_access": True, "policy": None,
          "allow_websockets": True, "timeout": "30s"}


async def wait_exit(proc: GateProcess, limit: float) -> tuple[int | None, float]:
    assert proc.proc is not None
    started = time.monotonic()
    while proc.proc.poll() is None and time.monotonic() - started < limit:
        await asyncio.sleep(0.05)
    return proc.proc.poll(), time.monotonic() - started


async def test_sigterm_drains_and_exits_zero(upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    gate = GateProcess(base_config(port, upstream.url, idp=None, route=PUBLIC,
                                   shutdown_timeout="5s", log_level="info"), tmp_path)
    await asyncio.to_thread(gate.start)
    try:
        async with bare_client() as client:
            ws = await client.ws_connect(f"{gate.url}/ws", origin=gate.url)
            await ws.send_str("hi")
            assert await ws.receive_str(timeout=5) == "hi"
            slow = asyncio.create_task(client.get(f"{gate.url}/slow", params={"s": "1.5"}))
            await asyncio.sleep(0.3)  # the slow request is in flight at the upstream
            assert gate.proc is not None
            gate.proc.send_signal(signal.SIGTERM)
            closing = await ws.receive(timeout=5)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1001, closing
            resp = await slow
            assert resp.status == 200 and await resp.text() == "late"  # finished, not cut
            resp.release()
            await asyncio.sleep(0.1)
            try:  # the listener is closed: new connections are refused
                async with bare_client() as late, late.get(f"{gate.url}/late") as r:
                    refused = False
                    await r.read()
            except aiohttp.ClientError:
                refused = True
            assert refused
            code, elapsed = await wait_exit(gate, 10)
            assert code == 0, gate.log_text()[-2000:]
            assert elapsed < 6
        assert "/late" not in [r["path"] for r in upstream.seen.requests]
        assert "Traceback" not in gate.log_text()
    finally:
        gate.stop()


async def test_drain_is_bounded_by_shutdown_timeout(upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    gate = GateProcess(base_config(port, upstream.url, idp=None, route=PUBLIC,
                                   shutdown_timeout="1s", log_level="info"), tmp_path)
    await asyncio.to_thread(gate.start)
    try:
        async with bare_client() as client:
            stuck = asyncio.create_task(client.get(f"{gate.url}/slow", params={"s": "4"}))
            await asyncio.sleep(0.3)
            assert gate.proc is not None
            gate.proc.send_signal(signal.SIGTERM)
            code, elapsed = await wait_exit(gate, 10)
            assert code == 0, gate.log_text()[-2000:]
            assert elapsed < 4.0, elapsed  # 1 s drain, then in-flight requests are cut
            stuck.cancel()
    finally:
        gate.stop()
