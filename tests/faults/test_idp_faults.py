"""The identity provider down, slow or without keys: signed-in users carry on until their
session needs the IdP, new sign-ins get a clear page, and everything recovers without a
restart once the IdP is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.security.helpers import bare_client, gate_for, signed_in_browser
from tests.support.gate import HTML, JSON, client_session
from tests.support.idp import ALICE, BOB, TestIdP, login
from tests.support.upstream import Upstream

ALL = ("discovery", "jwks", "token", "userinfo", "authorization", "end_session")


def assert_clean(status: int, text: str, expected: int, phrase: str) -> None:
    assert status == expected, (status, text[:300])
    assert phrase in text, text[:300]
    assert "Traceback" not in text


async def test_idp_down_at_start_then_back(
    idp_clean: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    idp_clean.set_failure("down", endpoints=("discovery",))
    async with gate_for(upstream, tmp_path, idp_clean) as gate, bare_client() as client:
        async with client.get(f"{gate.url}/app", headers=HTML, allow_redirects=False) as r:
            assert_clean(r.status, await r.text(), 503, "Sign-in is unavailable")
            assert r.headers["Retry-After"]
        async with client.get(f"{gate.url}/ping") as r:
            assert r.status == 200
        idp_clean.set_failure("ok")
        async with client_session() as browser:
            resp = await login(browser, f"{gate.url}/back", ALICE.username, ALICE.password)
            assert resp.status == 200  # no restart needed


async def test_signed_in_users_carry_on_while_idp_is_down(
    idp_clean: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_for(upstream, tmp_path, idp_clean) as gate, \
            signed_in_browser(gate, ALICE) as alice:
        idp_clean.set_failure("down", endpoints=ALL)
        for _ in range(3):
            async with alice.get(f"{gate.url}/work", headers=JSON) as r:
                assert r.status == 200
        async with alice.ws_connect(f"{gate.url}/ws", origin=gate.url) as ws:
            await ws.send_str("still")
            assert await ws.receive_str(timeout=5) == "still"
        # A new sign-in meanwhile: the IdP's own error, or clawgate's clear page.
        async with client_session() as bob, bob.get(f"{gate.url}/x", headers=HTML,
                                                    allow_redirects=True) as r:
            assert r.status in (502, 503), r.status
            assert "Traceback" not in await r.text()
        idp_clean.set_failure("ok")
        async with client_session() as bob:
            assert (await login(bob, f"{gate.url}/x", BOB.username, BOB.password)).status == 200


async def test_token_endpoint_down_or_slow_gives_a_clear_page(
    idp_clean: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_for(upstream, tmp_path, idp_clean, idp_timeout="1s") as gate:
        idp_clean.set_failure("down", endpoints=("token",))
        async with client_session() as browser:
            resp = await login(browser, f"{gate.url}/x", ALICE.username, ALICE.password)
            # The IdP failing (503) is "unavailable", not the user being refused.
            assert_clean(resp.status, await resp.text(), 502, "Sign-in failed")
        idp_clean.set_failure("slow", delay_ms=3000, endpoints=("token",))
        async with client_session() as browser:
            started = time.monotonic()
            resp = await login(browser, f"{gate.url}/x", ALICE.username, ALICE.password)
            assert time.monotonic() - started < 2.8  # idp_timeout, not the IdP's 3 s
            assert_clean(resp.status, await resp.text(), 502, "Sign-in failed")
        idp_clean.set_failure("ok")
        async with client_session() as browser:
            assert (await login(browser, f"{gate.url}/x", ALICE.username,
                                ALICE.password)).status == 200
        assert [r["path"] for r in upstream.seen.requests] == ["/x"]


async def test_jwks_failure_does_not_crash_and_recovers(
    idp_clean: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    idp_clean.set_failure("down", endpoints=("jwks",))
    async with gate_for(upstream, tmp_path, idp_clean) as gate:
        async with client_session() as browser:
            resp = await login(browser, f"{gate.url}/x", ALICE.username, ALICE.password)
            assert resp.status in (401, 502) and "Traceback" not in await resp.text()
        async with bare_client() as client, client.get(f"{gate.url}/ping") as r:
            assert r.status == 200
        idp_clean.set_failure("ok")
        async with client_session() as browser:
            assert (await login(browser, f"{gate.url}/x", ALICE.username,
                                ALICE.password)).status == 200


async def test_session_that_needs_a_refresh_fails_closed_while_idp_is_down(
    idp_clean: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    idp_clean.set_config(id_token_ttl_seconds=2, access_token_ttl_seconds=2)
    async with gate_for(upstream, tmp_path, idp_clean) as gate, \
            signed_in_browser(gate, ALICE) as alice:
        idp_clean.set_failure("down", endpoints=("token",))
        async with alice.get(f"{gate.url}/a", headers=JSON) as r:
            assert r.status == 200  # tokens still fresh: no IdP needed
        await asyncio.sleep(2.5)
        async with alice.get(f"{gate.url}/b", headers=JSON) as r:
            assert r.status == 401  # refresh impossible: the session ends, nothing is granted
        idp_clean.set_failure("ok")
        idp_clean.set_config(id_token_ttl_seconds=3600, access_token_ttl_seconds=3600)
        assert (await login(alice, f"{gate.url}/c", ALICE.username, ALICE.password)).status == 200
        assert [r["path"] for r in upstream.seen.requests if r["path"] != "/"] == ["/a", "/c"]
