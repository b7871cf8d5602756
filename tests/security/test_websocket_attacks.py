"""WebSocket attacks: cross-site WebSocket hijacking, upgrades where WebSockets are off,
anonymous upgrades, and oversized messages.

A browser attaches clawgate's cookie to a WebSocket handshake that any site starts, so
the Origin check is what stops another site's page from talking to OpenClaw as the
signed-in user. Every refused handshake must be refused before the upstream sees it.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from proxy import websocket
from tests.security.helpers import bare_client, gate_for, signed_in_browser
from tests.support.gate import JSON
from tests.support.idp import ALICE, TestIdP
from tests.support.upstream import Upstream


async def handshake_status(browser: aiohttp.ClientSession, url: str, origin: str | None) -> int:
    headers = {} if origin is None else {"Origin": origin}
    try:
        async with browser.ws_connect(url, headers=headers) as ws:
            await ws.send_str("ping")
            assert await ws.receive_str(timeout=5) == "ping"
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


async def test_cross_site_websocket_hijacking_is_refused(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    async with (
        gate_for(
            upstream, tmp_path, idp, route={"allowed_origins": ["https://app.example.com"]}
        ) as gate,
        signed_in_browser(gate, ALICE) as browser,
    ):
        ws_url = f"{gate.url}/ws"
        upstream.seen.requests.clear()
        refused = [
            "https://evil.example",
            "null",
            f"http://127.0.0.1:{gate.port}",
            f"https://127.0.0.1:{gate.port}.evil.example",
            f"https://127.0.0.1:{gate.port + 1}",
            f"https://127.0.0.1:{gate.port}/",
            f"https://127.0.0.1:{gate.port}@evil.example",
            "https://app.example.com.evil.example",
            "https://evil.app.example.com",
            "http://app.example.com",
            "",
            " ",
        ]
        for origin in refused:
            assert await handshake_status(browser, ws_url, origin) == 403, origin
        assert upstream.seen.requests == []
        assert await handshake_status(browser, ws_url, gate.url) == 101
        assert await handshake_status(browser, ws_url, "https://app.example.com") == 101
        # Browsers always send Origin on a WebSocket handshake; without one it is not a
        # browser, so not a page riding on someone's cookie.
        assert await handshake_status(browser, ws_url, None) == 101
        # Plain HTTP from another origin is unaffected (that is CORS's business).
        async with browser.get(f"{gate.url}/x", headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 200


async def test_upgrade_refused_without_allow_websockets_and_when_anonymous(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_for(upstream, tmp_path, idp, route={"allow_websockets": False}) as gate:
        async with signed_in_browser(gate, ALICE) as browser:
            upstream.seen.requests.clear()
            assert await handshake_status(browser, f"{gate.url}/ws", gate.url) == 403
            async with browser.get(
                f"{gate.url}/ws",
                headers={
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Origin": gate.url,
                },
            ) as r:
                assert r.status == 403
        assert upstream.seen.requests == []
    async with gate_for(upstream, tmp_path, idp) as gate, bare_client(headers=JSON) as anon:
        assert await handshake_status(anon, f"{gate.url}/ws", gate.url) == 401
        assert upstream.seen.requests == []


@pytest.mark.parametrize("direction", ["to upstream", "to client"])
async def test_oversized_messages_close_the_socket(
    idp: TestIdP,
    upstream: Upstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    direction: str,
) -> None:
    assert websocket.MAX_MESSAGE <= 64 * 1024 * 1024  # a limit exists in production too
    monkeypatch.setattr(websocket, "MAX_MESSAGE", 64 * 1024)
    async with gate_for(upstream, tmp_path, idp) as gate, signed_in_browser(gate, ALICE) as browser:
        # The echo upstream answers "headers" with the handshake headers as one message;
        # a dozen 7 kB headers make that message larger than the limit.
        bulky = {f"X-Bulk-{i}": "h" * 7000 for i in range(12)}
        async with browser.ws_connect(
            f"{gate.url}/ws",
            origin=gate.url,
            max_msg_size=0,
            headers=bulky if direction == "to client" else None,
        ) as ws:
            await ws.send_bytes(b"a" * 60_000)
            assert len(await ws.receive_bytes(timeout=5)) == 60_000  # under the limit: fine
            if direction == "to upstream":
                await ws.send_bytes(b"b" * 70_000)
                expected = {1009}  # message too big, from clawgate to the sender
            else:
                await ws.send_str("headers")
                expected = {1001, 1009}  # the upstream's side broke; the client is told
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE, msg
            assert msg.data in expected, msg
        # The gate is fine afterwards.
        async with browser.ws_connect(f"{gate.url}/ws", origin=gate.url) as ws:
            await ws.send_str("again")
            assert await ws.receive_str(timeout=5) == "again"
