"""Sign-in through clawgate against the real test IdP, and what the upstream then sees."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import jwt
import pytest

from proxy.assertion import verify_assertion
from tests.support.gate import HTML, JSON, base_config, client_session, register_client, running_gate
from tests.support.idp import ALICE, BOB, MALLORY, TestIdP, login
from tests.support.upstream import Upstream, free_port


async def test_full_login_http_and_websocket(idp: TestIdP, upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        resp = await login(browser, f"{gate.url}/app/page?x=1", ALICE.username, ALICE.password)
        assert resp.status == 200
        assert str(resp.url) == f"{gate.url}/app/page?x=1"  # landed where the user first asked
        seen = upstream.seen.last()
        assert seen["path"] == "/app/page?x=1"
        headers = {k.lower(): v for k, v in seen["headers"].items()}
        assert headers["x-pomerium-claim-email"] == "alice@example.com"
        assert headers["x-clawgate-groups"] == "admins,staff"
        assert "_clawgate" not in headers.get("cookie", "")  # clawgate's cookie stays with clawgate
        async with browser.get(f"{gate.url}/.well-known/clawgate/jwks.json") as r:
            jwks = await r.json()
        claims = verify_assertion(headers["x-pomerium-jwt-assertion"], jwks, f"127.0.0.1:{port}")
        assert claims["email"] == "alice@example.com"
        assert claims["sub"] == ALICE.sub
        assert set(claims["groups"]) == {"admins", "staff"}
        assert claims["exp"] - claims["iat"] == 300
        with pytest.raises(jwt.InvalidTokenError):
            verify_assertion(headers["x-pomerium-jwt-assertion"], jwks, "other.example.com")

        # WebSocket through clawgate, with subprotocol, text, binary and close code.
        async with browser.ws_connect(f"{gate.url}/ws", protocols=("chat.v1",),
                                      origin=gate.url) as ws:
            assert ws.protocol == "chat.v1"
            await ws.send_str("hello")
            assert (await ws.receive_str(timeout=5)) == "hello"
            await ws.send_bytes(b"\x00\x01binary")
            assert (await ws.receive_bytes(timeout=5)) == b"\x00\x01binary"
            await ws.send_str("headers")
            ws_headers = {k.lower(): v for k, v in (await ws.receive_json(timeout=5)).items()}
            assert ws_headers["x-pomerium-claim-email"] == "alice@example.com"
            verify_assertion(ws_headers["x-pomerium-jwt-assertion"], jwks, f"127.0.0.1:{port}")
            assert ws_headers["origin"] == gate.url  # passed through unchanged
            await ws.send_str("close:4001")
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 4001

        # Who am I, HTML and JSON.
        async with browser.get(f"{gate.url}/.clawgate/user") as r:
            assert r.status == 200
            info = await r.json()
        assert info["email"] == "alice@example.com"
        assert info["groups"] == ["admins", "staff"]
        assert info["session_expires_at"] > time.time() + 13 * 3600
        async with browser.get(f"{gate.url}/.clawgate/", headers=HTML) as r:
            page = await r.text()
        assert r.status == 200 and "alice@example.com" in page and "Sign out" in page
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]


async def test_denied_user_gets_403_and_never_reaches_upstream(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        resp = await login(browser, f"{gate.url}/secret", MALLORY.username, MALLORY.password)
        assert resp.status == 403
        page = await resp.text()
        assert "mallory@evil.test" in page and "Sign out" in page
        assert upstream.seen.requests == []
        assert "Decision: <code>deny: no allow rule matched</code>" in page
        async with browser.get(f"{gate.url}/secret", headers=JSON) as r:
            assert r.status == 403
            body = await r.json()
            assert body["error"] == "forbidden"
            assert body["reason"] == "deny: no allow rule matched"
        # A WebSocket upgrade is checked as well.
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await browser.ws_connect(f"{gate.url}/ws", origin=gate.url)
        assert info.value.status == 403
        assert upstream.seen.requests == []


async def test_unauthenticated_browser_redirects_and_api_gets_401(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as client:
        async with client.get(f"{gate.url}/x", headers=HTML, allow_redirects=False) as r:
            assert r.status == 302
            location = r.headers["Location"]
        assert location.startswith(idp.issuer)
        assert "code_challenge_method=S256" in location and "nonce=" in location
        assert "state=" in location
        async with client.get(f"{gate.url}/x", headers=JSON, allow_redirects=False) as r:
            assert r.status == 401
            assert (await r.json())["error"] == "unauthenticated"
        async with client.get(f"{gate.url}/ping") as r:
            assert r.status == 200
        assert upstream.seen.requests == []


async def test_client_identity_and_forwarded_headers_never_reach_upstream(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp)
    async with running_gate(config, tmp_path) as gate, client_session() as browser:
        await login(browser, f"{gate.url}/", BOB.username, BOB.password)
        forged = {
            "X-Forwarded-For": "10.9.9.9",
            "X-Forwarded-Proto": "gopher",
            "X-Forwarded-Host": "evil.example",
            "Forwarded": "for=10.9.9.9",
            "X-Real-IP": "10.9.9.9",
            "X-Pomerium-Jwt-Assertion": "forged",
            "x-pomerium-claim-email": "alice@example.com",
            "X-Clawgate-Groups": "admins",
        }
        async with browser.get(f"{gate.url}/echo", headers=forged) as r:
            assert r.status == 200
            seen = await r.json()
        pairs = [(k.lower(), v) for k, v in seen["header_list"]]
        values = dict(pairs)
        assert values["x-forwarded-for"] == "127.0.0.1"
        assert values["x-forwarded-proto"] == "https"
        assert values["x-forwarded-host"] == f"127.0.0.1:{port}"
        assert "forwarded" not in values and "x-real-ip" not in values
        assert values["x-pomerium-claim-email"] == "bob@example.com"
        assert values["x-clawgate-groups"] == "staff"
        assert values["x-pomerium-jwt-assertion"] != "forged"
        for name in ("x-forwarded-for", "x-pomerium-claim-email", "x-pomerium-jwt-assertion"):
            assert [k for k, _ in pairs].count(name) == 1
        assert values["host"] == upstream.url.removeprefix("http://")


async def test_identity_headers_stripped_even_without_pass_identity(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp, route={"pass_identity_headers": False})
    async with running_gate(config, tmp_path) as gate, client_session() as browser:
        await login(browser, f"{gate.url}/", BOB.username, BOB.password)
        async with browser.get(f"{gate.url}/echo", headers={
            "X-Pomerium-Jwt-Assertion": "forged", "X-Pomerium-Claim-Email": "alice@example.com",
        }) as r:
            seen = await r.json()
        lowered = {k.lower() for k in seen["headers"]}
        assert "x-pomerium-jwt-assertion" not in lowered
        assert "x-pomerium-claim-email" not in lowered
