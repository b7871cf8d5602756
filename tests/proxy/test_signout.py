"""Sign-out: only a POST with the session's CSRF token acts; it ends the clawgate session,
the IdP session and the session's open WebSockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import aiohttp

from tests.support.gate import (
    HTML,
    JSON,
    base_config,
    client_session,
    register_client,
    running_gate,
)
from tests.support.idp import TestIdP, TestUser, login, logout_confirm
from tests.support.upstream import Upstream, free_port

COOKIE = "__Host-_clawgate"
DAVE = TestUser(sub="dave", username="dave@example.com", password="dave-password",
                email="dave@example.com", groups=("staff",))


def cleared(resp: aiohttp.ClientResponse) -> bool:
    return any(h.startswith(f'{COOKIE}="";') and "Max-Age=0" in h
               for h in resp.headers.getall("Set-Cookie", []))


async def test_sign_out_ends_everything(idp: TestIdP, upstream: Upstream, tmp_path: Path) -> None:
    idp.add_user(DAVE)
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        await login(browser, f"{gate.url}/", DAVE.username, DAVE.password)
        assert idp.sessions().get(DAVE.sub) == 1
        cookie = next(c.value for c in browser.cookie_jar if c.key == COOKIE)
        ws = await browser.ws_connect(f"{gate.url}/ws", origin=gate.url)
        await ws.send_str("ping")
        assert await ws.receive_str(timeout=5) == "ping"
        # Like a browser, keep reading so a close frame is answered as it arrives.
        closing = asyncio.create_task(ws.receive(timeout=30))
        sign_out = f"{gate.url}/.clawgate/sign_out"

        # GET only asks. A link on another site must not sign anyone out.
        async with browser.get(sign_out, allow_redirects=False) as r:
            assert r.status == 200
            page = await r.text()
            assert "Sign out?" in page and 'method=post' in page and 'name=csrf' in page
            assert not cleared(r)
        async with browser.get(f"{gate.url}/still-in", headers=JSON) as r:
            assert r.status == 200

        # POST without the token, with a wrong one, or from another origin: refused.
        async with browser.get(f"{gate.url}/.clawgate/user", headers=JSON) as r:
            csrf = (await r.json())["csrf"]
        assert len(csrf) >= 16
        for data, headers in (({}, {}), ({"csrf": "wrong-" + csrf}, {}),
                              ({"csrf": csrf}, {"Origin": "https://evil.example"})):
            async with browser.post(sign_out, data=data, headers={**HTML, **headers},
                                    allow_redirects=False) as r:
                assert r.status == 403, (data, headers)
                assert not cleared(r)
        async with browser.get(f"{gate.url}/still-in", headers=JSON) as r:
            assert r.status == 200
        assert not closing.done() and not ws.closed

        # The real thing.
        async with browser.post(sign_out, data={"csrf": csrf}, allow_redirects=False) as r:
            assert r.status == 302
            location = r.headers["Location"]
            assert cleared(r)
        target = urlsplit(location)
        assert f"{target.scheme}://{target.netloc}{target.path}" == idp.end_session_endpoint
        query = dict(parse_qsl(target.query))
        assert query["post_logout_redirect_uri"] == f"https://127.0.0.1:{port}/.clawgate/signed_out"
        assert query["id_token_hint"].count(".") == 2  # the session's ID token (a JWT)

        # The session's WebSocket is closed with "policy violation".
        msg = await asyncio.wait_for(closing, 5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 1008 and msg.extra == "signed out"
        assert ws.close_code == 1008
        await ws.close()

        landed = await logout_confirm(browser, location)
        assert landed.status == 200
        assert str(landed.url) == f"{gate.url}/.clawgate/signed_out"
        assert "You are signed out" in await landed.text()
        assert DAVE.sub not in idp.sessions()
        assert not any(c.key == COOKIE for c in browser.cookie_jar)

        # A copy of the old cookie is dead too (same process: the session id is revoked).
        upstream.seen.requests.clear()
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False), cookie_jar=aiohttp.DummyCookieJar()
        ) as thief:
            async with thief.get(f"{gate.url}/x", headers={**JSON, "Cookie": f"{COOKIE}={cookie}"},
                                 allow_redirects=False) as r:
                assert r.status == 401
                assert cleared(r)
            async with thief.get(f"{gate.url}/x", headers={**HTML, "Cookie": f"{COOKIE}={cookie}"},
                                 allow_redirects=False) as r:
                assert r.status == 302
                assert r.headers["Location"].startswith(idp.issuer)
        assert upstream.seen.requests == []


async def test_sign_out_without_a_session(idp: TestIdP, upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        async with browser.get(f"{gate.url}/.clawgate/sign_out", allow_redirects=False) as r:
            assert r.status == 200
            assert "You are signed out" in await r.text()
        async with browser.post(f"{gate.url}/.clawgate/sign_out", allow_redirects=False) as r:
            assert r.status == 302
            assert r.headers["Location"] == "/.clawgate/signed_out"


async def test_oversized_sign_out_form_is_refused_unread(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        await login(browser, f"{gate.url}/", DAVE.username, DAVE.password)
        async with browser.get(f"{gate.url}/.clawgate/user", headers=JSON) as r:
            csrf = (await r.json())["csrf"]
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        big = f"csrf={csrf}&pad=".encode() + b"x" * (8 * 1024 * 1024)

        async def chunked() -> AsyncIterator[bytes]:
            yield f"csrf={csrf}".encode()

        for body in (big, chunked()):
            async with browser.post(f"{gate.url}/.clawgate/sign_out", data=body,
                                    headers={**HTML, **form}, allow_redirects=False) as r:
                assert r.status == 413
                assert not cleared(r)
        async with browser.get(f"{gate.url}/still-in", headers=JSON) as r:
            assert r.status == 200
