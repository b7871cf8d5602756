"""With workers: 2, a sign-out in one process ends the session in every process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from tests.support.gate import JSON, GateProcess, base_config, client_session, register_client
from tests.support.idp import ALICE, TestIdP, login
from tests.support.upstream import Upstream, free_port


async def test_sign_out_reaches_every_worker(idp: TestIdP, upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp, workers=2, log_format="json",
                         log_level="info")
    gate = GateProcess(config, tmp_path)
    await asyncio.to_thread(gate.start)
    try:
        async with client_session() as browser:
            await login(browser, f"{gate.url}/", ALICE.username, ALICE.password)
            cookie = "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar
                               if c.key.startswith("__Host-_clawgate"))
            # Separate connections, so SO_REUSEPORT spreads them over both workers.
            sockets: list[tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]] = []
            for _ in range(24):
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False))
                ws = await session.ws_connect(f"{gate.url}/ws", origin=gate.url,
                                              headers={"Cookie": cookie})
                sockets.append((session, ws))
            async with browser.get(f"{gate.url}/.clawgate/user", headers=JSON) as r:
                csrf = (await r.json())["csrf"]
            async with browser.post(f"{gate.url}/.clawgate/sign_out", data={"csrf": csrf},
                                    allow_redirects=False) as r:
                assert r.status == 302
            codes = []
            for session, ws in sockets:
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.CLOSE
                codes.append(ws.close_code)
                await session.close()
            assert codes == [1008] * 24
            # A kept copy of the cookie is refused by every worker.
            for _ in range(12):
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=False, force_close=True)
                ) as fresh, fresh.get(f"{gate.url}/x", headers={"Cookie": cookie, **JSON}) as r:
                    assert r.status == 401
        # Both workers write to one file: every line must still be whole JSON.
        lines = [json.loads(raw) for raw in gate.log_text().splitlines() if raw.strip()]
        closing_workers = {x.get("worker") for x in lines
                           if x.get("event") == "websocket_closed_by_clawgate"}
        assert closing_workers == {0, 1}  # the sockets were spread, and both workers acted
    finally:
        await asyncio.to_thread(gate.stop)


async def test_parallel_requests_across_workers_refresh_once(
    idp_clean: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    """Rotating refresh tokens: two workers spending the same one would end the grant."""
    idp = idp_clean
    port = free_port()
    register_client(idp, port)
    idp.set_config(id_token_ttl_seconds=2, access_token_ttl_seconds=2)
    config = base_config(port, upstream.url, idp=idp, workers=2, idp_clock_leeway="0s")
    gate = GateProcess(config, tmp_path)
    await asyncio.to_thread(gate.start)
    try:
        async with client_session() as browser:
            await login(browser, f"{gate.url}/", ALICE.username, ALICE.password)
            cookie = "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar
                               if c.key.startswith("__Host-_clawgate"))
            await asyncio.sleep(3)
            before = idp.stats().get("token", 0)

            async def one(i: int) -> int:
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=False, force_close=True)
                ) as fresh, fresh.get(f"{gate.url}/p{i}", headers={"Cookie": cookie, **JSON}) as r:
                    return r.status

            statuses = await asyncio.gather(*(one(i) for i in range(10)))
            assert statuses == [200] * 10
            assert idp.stats().get("token", 0) - before == 1
    finally:
        await asyncio.to_thread(gate.stop)
        idp.set_config(id_token_ttl_seconds=3600, access_token_ttl_seconds=3600)
