"""Back-channel logout with the real provider (oidc-provider, backchannelLogout on): the
user signs out at the provider, which POSTs a logout token to clawgate; the session's
WebSocket closes with 1008 and its cookie is refused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from tests.support.gate import (
    CLIENT_ID,
    CLIENT_SECRET,
    JSON,
    base_config,
    client_session,
    running_gate,
)
from tests.support.idp import ALICE, TestIdP, login, logout_confirm
from tests.support.upstream import Upstream, free_port


async def test_sign_out_at_the_provider_ends_the_session(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    origin = f"https://127.0.0.1:{port}"
    idp.add_client(
        CLIENT_ID, CLIENT_SECRET, [f"{origin}/.clawgate/callback"], [f"{origin}/.clawgate/signed_out"],
        backchannel_logout_uri=f"{origin}/.clawgate/backchannel_logout",
        backchannel_logout_session_required=True,
    )
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        await login(browser, f"{gate.url}/", ALICE.username, ALICE.password)
        cookie = "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar
                           if c.key.startswith("__Host-_clawgate"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as other:
            ws = await other.ws_connect(f"{gate.url}/ws", origin=gate.url,
                                        headers={"Cookie": cookie})
            await ws.send_str("hi")
            assert (await ws.receive(timeout=5)).data == "hi"
            # Signed out at the provider (its own page, its own confirmation).
            await logout_confirm(browser, idp.end_session_endpoint,
                                 stop_at=f"{idp.issuer}/session/end/success")
            started = time.monotonic()
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008, msg
            assert time.monotonic() - started < 5
            async with other.get(f"{gate.url}/x", headers={"Cookie": cookie, **JSON}) as r:
                assert r.status == 401
        # A second sign-in is a new provider session: it works.
        await asyncio.sleep(0)
        page = await login(browser, f"{gate.url}/again", ALICE.username, ALICE.password)
        assert page.status == 200
