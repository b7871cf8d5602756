"""The upstream down, refusing, resetting mid-response, hanging or talking nonsense:
clean 502/504 pages, no connections left behind, and recovery when it comes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.faults.fault_upstream import FaultUpstream
from tests.security.helpers import bare_client
from tests.support.gate import HTML, JSON, Gate, base_config, running_gate
from tests.support.upstream import free_port

PUBLIC = {"allow_public_unauthenticated_access": True, "policy": None, "timeout": "1s"}


@pytest.fixture
async def fault() -> AsyncIterator[FaultUpstream]:
    server = FaultUpstream()
    yield server
    await server.stop()


@pytest.fixture
async def gate(fault: FaultUpstream, tmp_path: Path) -> AsyncIterator[Gate]:
    config = base_config(free_port(), fault.url, idp=None, route=PUBLIC)
    async with running_gate(config, tmp_path) as running:
        yield running


async def get(url: str, headers: dict[str, str] = JSON) -> tuple[int, str]:
    async with bare_client() as client, client.get(url, headers=headers) as r:
        return r.status, await r.text()


async def test_down_then_back(fault: FaultUpstream, gate: Gate) -> None:
    status, body = await get(f"{gate.url}/x")  # nothing listens on the port yet
    assert status == 502 and '"error":"upstream_unavailable"' in body
    status, body = await get(f"{gate.url}/x", HTML)
    assert status == 502 and "cannot be reached" in body and "Traceback" not in body
    await fault.start()
    assert await get(f"{gate.url}/x") == (200, "ok")  # recovery without a restart
    await fault.stop()
    assert (await get(f"{gate.url}/x"))[0] == 502
    await fault.start()
    assert (await get(f"{gate.url}/x"))[0] == 200


async def test_hanging_upstream_is_a_504_and_its_connection_is_closed(
    fault: FaultUpstream, gate: Gate
) -> None:
    await fault.start()
    fault.mode = "hang"
    started = asyncio.get_running_loop().time()
    results = await asyncio.gather(*(get(f"{gate.url}/h{i}") for i in range(5)))
    elapsed = asyncio.get_running_loop().time() - started
    assert all(status == 504 for status, _ in results), results
    assert '"error":"upstream_timeout"' in results[0][1]
    assert elapsed < 4, elapsed  # timeout 1s per route, concurrently
    assert await fault.wait_open(0) == 0, "the timed-out upstream connections must be closed"
    fault.mode = "ok"
    assert await get(f"{gate.url}/x") == (200, "ok")


@pytest.mark.parametrize("mode", ["reset", "close_early"])
async def test_upstream_dying_mid_response(fault: FaultUpstream, gate: Gate, mode: str) -> None:
    await fault.start()
    fault.mode = mode
    async with bare_client() as client:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(f"{gate.url}/big") as r:
                assert r.status == 200  # the head was already on its way
                await r.read()  # ... but the body is cut, not silently short
    assert await fault.wait_open(0) == 0
    fault.mode = "ok"
    assert await get(f"{gate.url}/x") == (200, "ok")


async def test_garbage_from_upstream_is_a_502(fault: FaultUpstream, gate: Gate) -> None:
    await fault.start()
    fault.mode = "garbage"
    status, body = await get(f"{gate.url}/x")
    assert status == 502 and "Traceback" not in body
    fault.mode = "ok"
    assert await get(f"{gate.url}/x") == (200, "ok")


async def test_client_leaving_does_not_leak_upstream_connections(
    fault: FaultUpstream, gate: Gate
) -> None:
    await fault.start()
    fault.mode = "hang"
    for _ in range(5):
        async with bare_client() as client:
            task = asyncio.create_task(client.get(f"{gate.url}/h"))
            await asyncio.sleep(0.2)
            task.cancel()  # the client walks away while clawgate waits for the upstream
    assert await fault.wait_open(0, timeout=5) == 0
    fault.mode = "ok"
    assert await get(f"{gate.url}/x") == (200, "ok")
