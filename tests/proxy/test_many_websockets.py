"""Many concurrent WebSockets: the upstream connection pool must not cap them at 100."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.support.gate import base_config, running_gate
from tests.support.upstream import Upstream, free_port

COUNT = 1000


async def test_a_thousand_concurrent_websockets(upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    config = base_config(port, upstream.url, idp=None, max_connections_per_ip=COUNT + 50,
                         log_level="warning",
                         route={"policy": None, "allow_public_unauthenticated_access": True})
    async with running_gate(config, tmp_path) as gate, aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=False, limit=0)
    ) as client:
        sockets = await asyncio.wait_for(
            asyncio.gather(*(client.ws_connect(f"{gate.url}/ws/{i}") for i in range(COUNT))), 120
        )
        try:
            async def echo(i: int, ws: aiohttp.ClientWebSocketResponse) -> str:
                await ws.send_str(f"m{i}")
                return await ws.receive_str(timeout=30)

            replies = await asyncio.wait_for(
                asyncio.gather(*(echo(i, ws) for i, ws in enumerate(sockets))), 120
            )
            assert replies == [f"m{i}" for i in range(COUNT)]
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
