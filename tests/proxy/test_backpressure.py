"""Backpressure: a client that does not read must throttle the upstream, not fill clawgate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.support.gate import GateProcess, base_config
from tests.support.upstream import Upstream, free_port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


PUBLIC = {"policy": None, "allow_public_unauthenticated_access": True}


async def test_slow_websocket_reader_does_not_grow_clawgate(upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    gate = GateProcess(base_config(port, upstream.url, idp=None, route=PUBLIC), tmp_path)
    await asyncio.to_thread(gate.start)
    try:
        assert gate.proc is not None
        frames = 3200  # 200 MiB offered by the upstream
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
            ws = await client.ws_connect(f"{gate.url}/ws", max_msg_size=0)
            # Warm up so the baseline includes the connection's fixed cost.
            await ws.send_str("warm")
            assert await ws.receive_str(timeout=5) == "warm"
            before = rss_mib(gate.proc.pid)
            await ws.send_str(f"flood:{frames}")
            await asyncio.sleep(3)  # not reading: TCP windows fill, the relay must stop reading
            paused = rss_mib(gate.proc.pid)
            got = 0
            while True:
                msg = await ws.receive(timeout=60)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    got += 1
                    continue
                assert msg.type == aiohttp.WSMsgType.TEXT and msg.data == "flood-done"
                break
            assert got == frames
            await ws.close()
        print(f"clawgate RSS: before {before:.1f} MiB, while the reader paused {paused:.1f} MiB")
        assert paused - before < 40, (before, paused)
    finally:
        await asyncio.to_thread(gate.stop)


async def test_slow_http_reader_does_not_grow_clawgate(upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    gate = GateProcess(base_config(port, upstream.url, idp=None, route=PUBLIC), tmp_path)
    await asyncio.to_thread(gate.start)
    try:
        assert gate.proc is not None
        size = 200 * 1024 * 1024
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                         read_bufsize=2**16) as client:
            async with client.get(f"{gate.url}/ping") as r:
                assert r.status == 200
            before = rss_mib(gate.proc.pid)
            async with client.get(f"{gate.url}/download/{size}") as r:
                first = await r.content.read(65536)
                await asyncio.sleep(3)  # a stalled reader
                paused = rss_mib(gate.proc.pid)
                total = len(first)
                async for chunk in r.content.iter_chunked(1 << 20):
                    total += len(chunk)
        assert total == size
        print(f"clawgate RSS: before {before:.1f} MiB, while the reader paused {paused:.1f} MiB")
        assert paused - before < 40, (before, paused)
    finally:
        await asyncio.to_thread(gate.stop)


async def test_ping_and_pong_frames_are_relayed(upstream: Upstream, tmp_path: Path) -> None:
    from tests.support.gate import running_gate

    port = free_port()
    async with running_gate(base_config(port, upstream.url, idp=None, route=PUBLIC), tmp_path) as gate, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
        ws = await client.ws_connect(f"{gate.url}/ws", autoping=False)
        await ws.ping(b"are-you-there")
        msg = await ws.receive(timeout=5)
        # The upstream (aiohttp, autoping) answered; clawgate relayed its pong with the payload.
        assert msg.type == aiohttp.WSMsgType.PONG
        assert msg.data == b"are-you-there"
        await ws.close()


async def test_upstream_close_code_reaches_a_client_that_reads_late(
    upstream: Upstream, tmp_path: Path
) -> None:
    from tests.support.gate import running_gate

    port = free_port()
    async with running_gate(base_config(port, upstream.url, idp=None, route=PUBLIC), tmp_path) as gate, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
        ws = await client.ws_connect(f"{gate.url}/ws")
        await ws.send_str("close:4321")
        await asyncio.sleep(1.0)  # the client is busy elsewhere while the close arrives
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4321
        assert msg.extra == "bye"
