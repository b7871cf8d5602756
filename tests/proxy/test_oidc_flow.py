"""The sign-in callback under attack and mishap, JWKS rotation and token refresh, against
the running server and the real test IdP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from tests.support.gate import (
    HTML,
    JSON,
    base_config,
    client_session,
    register_client,
    running_gate,
)
from tests.support.idp import ALICE, TestIdP, TestUser, login
from tests.support.upstream import Upstream, free_port

COOKIE = "__Host-_clawgate"
CAROL = TestUser(sub="carol", username="carol@example.com", password="carol-password",
                 email="carol@example.com", groups=("staff",))


def session_cookie(browser: aiohttp.ClientSession) -> str | None:
    return next((c.value for c in browser.cookie_jar if c.key == COOKIE), None)


def login_cookies(browser: aiohttp.ClientSession) -> dict[str, str]:
    return {c.key: c.value for c in browser.cookie_jar if c.key.startswith(f"{COOKIE}_login_")}


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def sets_session(resp: aiohttp.ClientResponse) -> bool:
    return any(h.startswith(f"{COOKIE}=") and not h.startswith(f'{COOKIE}="";')
               for h in resp.headers.getall("Set-Cookie", []))


async def callback_url(browser: aiohttp.ClientSession, gate_url: str, path: str = "/") -> str:
    """Sign in at the IdP and return the callback URL it redirects to, unfollowed."""
    resp = await login(browser, f"{gate_url}{path}", ALICE.username, ALICE.password,
                       stop_at=f"{gate_url}/.clawgate/callback")
    assert resp.status in (302, 303)
    location = resp.headers["Location"]
    assert location.startswith(f"{gate_url}/.clawgate/callback?")
    return location


async def get(browser: aiohttp.ClientSession, url: str,
              headers: dict[str, str] = HTML) -> tuple[int, str, aiohttp.ClientResponse]:
    async with browser.get(url, allow_redirects=False, headers=headers) as r:
        return r.status, await r.text(), r


def assert_clean_error(status: int, text: str, expected_status: int, phrase: str) -> None:
    assert status == expected_status, text
    assert phrase in text
    assert "Traceback" not in text and "File \"" not in text


async def test_tampered_state_is_refused(idp: TestIdP, upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        url = await callback_url(browser, gate.url)
        state = dict(parse_qsl(urlsplit(url).query))["state"]
        # Same first 12 characters (so the login cookie is found) but a different state.
        forged = state[:12] + ("A" if state[12] != "A" else "B") + state[13:]
        status, text, resp = await get(browser, with_query(url, state=forged))
        assert_clean_error(status, text, 400, "does not belong to this sign-in attempt")
        assert not sets_session(resp)
        # A wholly different state finds no sign-in at all.
        status, text, resp = await get(browser, with_query(url, state="Z" * 43))
        assert_clean_error(status, text, 400, "No sign-in in progress")
        assert not sets_session(resp)
        assert session_cookie(browser) is None
        assert upstream.seen.requests == []


async def test_code_of_one_attempt_with_login_state_of_another_is_refused(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        first = await callback_url(browser, gate.url)
        second = await callback_url(browser, gate.url)
        assert len(login_cookies(browser)) == 2  # two attempts in flight, one cookie each
        code_a = dict(parse_qsl(urlsplit(first).query))["code"]
        # Attempt B's state (so its nonce and PKCE verifier) with attempt A's code.
        status, text, resp = await get(browser, with_query(second, code=code_a))
        assert_clean_error(status, text, 401, "Sign-in failed")
        assert not sets_session(resp)
        assert session_cookie(browser) is None


async def test_replayed_callback_is_refused(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        url = await callback_url(browser, gate.url, "/after?x=1")
        stolen = login_cookies(browser)
        status, _, resp = await get(browser, url)
        assert status == 302 and resp.headers["Location"] == "/after?x=1"
        assert sets_session(resp)
        # The same URL again in the same browser: the attempt is finished.
        status, text, resp = await get(browser, url)
        assert_clean_error(status, text, 400, "No sign-in in progress")
        assert not sets_session(resp)
        # Someone who copied the URL and the login cookie: clawgate knows the state was used
        # (400), or at the least the IdP refuses the used code (401). Never a session.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False), cookie_jar=aiohttp.DummyCookieJar()
        ) as thief:
            cookie = "; ".join(f"{k}={v}" for k, v in stolen.items())
            status, text, resp = await get(thief, url, headers={**HTML, "Cookie": cookie})
            phrase = {400: "No sign-in in progress", 401: "Sign-in failed"}.get(status, "?")
            assert_clean_error(status, text, status if status in (400, 401) else 400, phrase)
            assert not sets_session(resp)


async def test_idp_error_and_unsolicited_callbacks(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        cb = f"{gate.url}/.clawgate/callback"
        status, text, resp = await get(browser, cb + "?" + urlencode({
            "error": "access_denied", "error_description": "<b>user said no</b>",
            "state": "Q" * 43}))
        assert_clean_error(status, text, 401, "Sign-in was not completed")
        assert "access_denied" in text and "&lt;b&gt;user said no&lt;/b&gt;" in text
        assert "<b>user said no" not in text
        assert not sets_session(resp)
        status, text, _ = await get(browser, f"{cb}?code=abc&state={'Q' * 43}")
        assert_clean_error(status, text, 400, "No sign-in in progress")
        status, text, _ = await get(browser, f"{cb}?code=abc")
        assert_clean_error(status, text, 400, "missing its state")
        status, text, _ = await get(browser, f"{cb}?code=abc&state={'Q' * 43}", headers=JSON)
        assert status == 400
        assert json.loads(text)["error"] == "no_login_in_progress"
        assert upstream.seen.requests == []


async def test_new_login_works_after_idp_key_rotation(
    fresh_idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(fresh_idp, port)
    async with running_gate(base_config(port, upstream.url, idp=fresh_idp), tmp_path) as gate:
        async with client_session() as browser:
            resp = await login(browser, f"{gate.url}/one", ALICE.username, ALICE.password)
            assert resp.status == 200
        new_kid = fresh_idp.rotate_keys()
        async with aiohttp.ClientSession() as plain, plain.get(fresh_idp.jwks_uri) as r:
            kids = [k["kid"] for k in (await r.json())["keys"]]
        assert new_kid in kids
        jwks_before = fresh_idp.stats().get("jwks", 0)
        async with client_session() as browser:
            resp = await login(browser, f"{gate.url}/two", ALICE.username, ALICE.password)
            assert resp.status == 200, await resp.text()
            assert str(resp.url).endswith("/two")
        assert fresh_idp.stats().get("jwks", 0) == jwks_before + 1  # exactly one refetch


async def test_expired_tokens_are_refreshed_transparently(
    idp_clean: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    idp = idp_clean
    idp.add_user(CAROL)
    idp.set_config(id_token_ttl_seconds=2, access_token_ttl_seconds=2)
    port = free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp, idp_clock_leeway="0s")
    async with running_gate(config, tmp_path) as gate, client_session() as browser:
        await login(browser, f"{gate.url}/", CAROL.username, CAROL.password)
        before = session_cookie(browser)
        assert before is not None
        tokens_before = idp.stats().get("token", 0)
        await asyncio.sleep(2.5)
        upstream.seen.requests.clear()
        async with browser.get(f"{gate.url}/after", allow_redirects=False) as r:
            assert r.status == 200
            assert sets_session(r)
        assert upstream.seen.last()["headers"]["x-pomerium-claim-email"] == CAROL.email
        after = session_cookie(browser)
        assert after is not None and after != before
        assert idp.stats().get("token", 0) == tokens_before + 1
        # The refreshed session is good for the next request without another refresh.
        async with browser.get(f"{gate.url}/again", allow_redirects=False) as r:
            assert r.status == 200
            assert not sets_session(r)
        assert idp.stats().get("token", 0) == tokens_before + 1


async def test_failed_refresh_signs_the_user_out(
    idp_clean: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    idp = idp_clean
    idp.add_user(CAROL)
    idp.set_config(id_token_ttl_seconds=2, access_token_ttl_seconds=2)
    port = free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp, idp_clock_leeway="0s")
    async with running_gate(config, tmp_path) as gate, client_session() as browser:
        await login(browser, f"{gate.url}/", CAROL.username, CAROL.password)
        cookie = f"{COOKIE}={session_cookie(browser)}"
        assert idp.revoke_user(CAROL.sub) >= 1
        await asyncio.sleep(2.5)
        upstream.seen.requests.clear()
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False), cookie_jar=aiohttp.DummyCookieJar()
        ) as client:
            async with client.get(f"{gate.url}/x", allow_redirects=False,
                                  headers={**HTML, "Cookie": cookie}) as r:
                assert r.status == 302
                assert r.headers["Location"].startswith(f"{idp.issuer}/auth")
                assert any(h.startswith(f'{COOKIE}="";') or h.startswith(f"{COOKIE}=;")
                           for h in r.headers.getall("Set-Cookie", []))
            async with client.get(f"{gate.url}/x", allow_redirects=False,
                                  headers={**JSON, "Cookie": cookie}) as r:
                assert r.status == 401
        assert upstream.seen.requests == []


async def test_request_with_the_pre_refresh_cookie_does_not_burn_the_grant(
    idp_clean: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    """A page fires several requests at once when the tokens have just expired: the ones
    still carrying the old cookie must not spend the (rotated) refresh token again, which
    makes the IdP revoke the whole grant and signs the user out."""
    idp = idp_clean
    idp.add_user(CAROL)
    idp.set_config(id_token_ttl_seconds=2, access_token_ttl_seconds=2)
    port = free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp, idp_clock_leeway="0s")
    async with running_gate(config, tmp_path) as gate, client_session() as browser:
        await login(browser, f"{gate.url}/", CAROL.username, CAROL.password)
        old = f"{COOKIE}={session_cookie(browser)}"
        tokens_before = idp.stats().get("token", 0)
        await asyncio.sleep(2.5)
        async with browser.get(f"{gate.url}/first", headers=JSON) as r:
            assert r.status == 200 and sets_session(r)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False), cookie_jar=aiohttp.DummyCookieJar()
        ) as late, late.get(f"{gate.url}/late", headers={**JSON, "Cookie": old}) as r:
            assert r.status == 200
        assert idp.stats().get("token", 0) == tokens_before + 1
        # The grant is alive: the next expiry refreshes again with the new refresh token.
        await asyncio.sleep(2.5)
        async with browser.get(f"{gate.url}/later", headers=JSON,
                               allow_redirects=False) as r:
            assert r.status == 200
            assert sets_session(r)
        assert idp.stats().get("token", 0) == tokens_before + 2


async def test_refresh_that_no_longer_fits_in_cookies_signs_out_cleanly(
    idp_clean: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    idp = idp_clean
    grown = TestUser(sub="grower", username="grower@example.com", password="grower-pw",
                     email="grower@example.com", groups=("staff",))
    idp.add_user(grown)
    idp.set_config(id_token_ttl_seconds=2, access_token_ttl_seconds=2)
    port = free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp, idp_clock_leeway="0s")
    async with running_gate(config, tmp_path) as gate, client_session() as browser:
        await login(browser, f"{gate.url}/", grown.username, grown.password)
        # Meanwhile the user joined so many groups that the session needs > 8 cookies.
        idp.add_user(TestUser(sub="grower", username="grower@example.com",
                              password="grower-pw", email="grower@example.com",
                              groups=tuple(f"group-{i:04d}-of-many-many" for i in range(700))))
        await asyncio.sleep(2.5)
        upstream.seen.requests.clear()
        async with browser.get(f"{gate.url}/x", headers=JSON, allow_redirects=False) as r:
            assert r.status == 401, await r.text()
            assert (await r.json())["error"] == "unauthenticated"
            assert any(h.startswith(f'{COOKIE}="";') for h in r.headers.getall("Set-Cookie", []))
        assert upstream.seen.requests == []
