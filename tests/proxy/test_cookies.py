"""Session cookies against the running server: every doubtful cookie makes the request
anonymous, clears the cookie and never reaches the upstream; key rotation and chunking work
end to end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp

from proxy.session import SessionCodec
from tests.support.gate import (
    HTML,
    JSON,
    Gate,
    base_config,
    client_session,
    register_client,
    running_gate,
)
from tests.support.idp import ALICE, TestIdP, TestUser, login
from tests.support.upstream import Upstream, free_port

COOKIE = "__Host-_clawgate"


def session_cookies(browser: aiohttp.ClientSession) -> dict[str, str]:
    """clawgate's session cookie and its chunks (not the per-attempt login cookies)."""
    names = {COOKIE, *(f"{COOKIE}_{i}" for i in range(1, 8))}
    return {c.key: c.value for c in browser.cookie_jar if c.key in names}


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def set_cookies(resp: aiohttp.ClientResponse) -> tuple[dict[str, str], set[str]]:
    """(cookies set with a value, cookie names cleared) from the response's Set-Cookie."""
    values: dict[str, str] = {}
    cleared: set[str] = set()
    for header in resp.headers.getall("Set-Cookie", []):
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(header)
        for name, morsel in parsed.items():
            if morsel["max-age"] == "0" or "1970" in morsel["expires"]:
                cleared.add(name)
            else:
                values[name] = morsel.value
    return values, cleared


def bare_client() -> aiohttp.ClientSession:
    """A client without a cookie jar: it sends exactly the Cookie header it is given."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                 cookie_jar=aiohttp.DummyCookieJar())


async def assert_rejected(url: str, cookie: str, upstream: Upstream, idp: TestIdP,
                          host: str | None = None) -> None:
    """The cookie is refused: anonymous (302 to the IdP / 401), cleared, upstream untouched."""
    upstream.seen.requests.clear()
    extra = {"Host": host} if host else {}
    async with bare_client() as client:
        async with client.get(f"{url}/private", allow_redirects=False,
                              headers={**HTML, "Cookie": cookie, **extra}) as r:
            assert r.status == 302, await r.text()
            assert r.headers["Location"].startswith(f"{idp.issuer}/")
            _, cleared = set_cookies(r)
            assert COOKIE in cleared
        async with client.get(f"{url}/private", allow_redirects=False,
                              headers={**JSON, "Cookie": cookie, **extra}) as r:
            assert r.status == 401
            assert (await r.json())["error"] == "unauthenticated"
            values, cleared = set_cookies(r)
            assert COOKIE in cleared and COOKIE not in values
    assert upstream.seen.requests == []


async def assert_accepted(url: str, cookie: str, upstream: Upstream,
                          host: str | None = None) -> aiohttp.ClientResponse:
    upstream.seen.requests.clear()
    extra = {"Host": host} if host else {}
    async with bare_client() as client, client.get(f"{url}/private", allow_redirects=False,
                          headers={**JSON, "Cookie": cookie, **extra}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert body["headers"]["x-pomerium-claim-email"] == ALICE.email
    assert len(upstream.seen.requests) == 1
    return r


@contextlib.asynccontextmanager
async def signed_in(idp: TestIdP, upstream: Upstream, tmp_path: Path, port: int,
                    **overrides: Any) -> AsyncIterator[tuple[Gate, dict[str, str]]]:
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp, **overrides),
                            tmp_path) as gate, client_session() as browser:
        resp = await login(browser, f"{gate.url}/", ALICE.username, ALICE.password)
        assert resp.status == 200
        cookies = session_cookies(browser)
        assert COOKIE in cookies
        yield gate, cookies


def flip(value: str, index: int) -> str:
    ch = value[index]
    return value[:index] + ("B" if ch != "B" else "C") + value[index + 1:]


async def test_tampered_and_truncated_cookies_are_refused(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    async with signed_in(idp, upstream, tmp_path, port) as (gate, cookies):
        value = cookies[COOKIE]
        await assert_accepted(gate.url, f"{COOKIE}={value}", upstream)
        for bad in (
            flip(value, len(value) // 2),  # ciphertext
            flip(value, 2),  # key id
            flip(value, len(value) - 1),  # tag
            value[:-10],
            value[: len(value) // 2],
            value + "A",
            "",
        ):
            if bad:
                await assert_rejected(gate.url, f"{COOKIE}={bad}", upstream, idp)


async def test_cookie_from_another_secret_is_refused(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    async with signed_in(idp, upstream, tmp_path, port) as (_, cookies):
        pass
    other = base_config(port, upstream.url, idp=idp, cookie_secret=SessionCodec.new_secret())
    async with running_gate(other, tmp_path) as gate:
        await assert_rejected(gate.url, cookie_header(cookies), upstream, idp)


async def test_expired_session_is_refused(idp: TestIdP, upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    async with signed_in(idp, upstream, tmp_path, port, cookie_expire="2s") as (gate, cookies):
        await assert_accepted(gate.url, cookie_header(cookies), upstream)
        await asyncio.sleep(2.2)
        await assert_rejected(gate.url, cookie_header(cookies), upstream, idp)


async def test_session_of_one_route_host_is_refused_on_another(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    config = base_config(port, upstream.url, idp=idp)
    second = dict(config["routes"][0], **{"from": f"https://localhost:{port}"})
    config["routes"].append(second)
    register_client(idp, port, hosts=("127.0.0.1", "localhost"))
    async with running_gate(config, tmp_path) as gate, client_session() as browser:
        await login(browser, f"{gate.url}/", ALICE.username, ALICE.password)
        cookie = cookie_header(session_cookies(browser))
        await assert_accepted(gate.url, cookie, upstream, host=f"127.0.0.1:{port}")
        # Same listener, same secret, same policy: only the host the session was issued for
        # differs. A browser would not even send it; a copied cookie must not work either.
        await assert_rejected(gate.url, cookie, upstream, idp, host=f"localhost:{port}")


async def test_key_rotation_keeps_sessions_and_reissues_with_new_key(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    old, new = SessionCodec.new_secret(), SessionCodec.new_secret()
    async with signed_in(idp, upstream, tmp_path, port, cookie_secret=old) as (_, cookies):
        pass
    old_cookie = cookie_header(cookies)
    rotated = base_config(port, upstream.url, idp=idp, cookie_secret=[new, old])
    async with running_gate(rotated, tmp_path) as gate:
        resp = await assert_accepted(gate.url, old_cookie, upstream)
        values, _ = set_cookies(resp)
        assert COOKIE in values, "a session under an old key is re-issued under the new one"
        assert values[COOKIE] != cookies[COOKIE]
        reissued = cookie_header(values)
    only_new = base_config(port, upstream.url, idp=idp, cookie_secret=[new])
    async with running_gate(only_new, tmp_path) as gate:
        await assert_accepted(gate.url, reissued, upstream)
        await assert_rejected(gate.url, old_cookie, upstream, idp)


async def test_large_session_is_chunked_and_works(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    # Big enough for two cookies, small enough that the whole Cookie header stays under the
    # 8 KiB that clients and front proxies commonly allow (aiohttp's jar drops the rest).
    groups = tuple(f"team-{i:03d}-engineering-platform" for i in range(30))
    user = TestUser(sub="many-groups", username="many@example.com", password="many-pw",
                    email="many@example.com", groups=groups)
    idp.add_user(user)
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        resp = await login(browser, f"{gate.url}/big", user.username, user.password)
        assert resp.status == 200
        cookies = session_cookies(browser)
        assert len(cookies) >= 2, sorted(cookies)
        assert cookies[COOKIE].startswith(f"{len(cookies)}.")
        assert all(len(v) <= 4000 for v in cookies.values())
        assert len(cookie_header(cookies)) < 8190
        seen = upstream.seen.last()
        assert seen["headers"]["x-clawgate-groups"].split(",") == list(groups)
        async with browser.get(f"{gate.url}/.clawgate/user") as r:
            assert (await r.json())["groups"] == list(groups)
        # Every chunk matters: without the last one the session is refused.
        last = max(cookies, key=lambda n: (len(n), n))
        partial = {k: v for k, v in cookies.items() if k != last}
        await assert_rejected(gate.url, cookie_header(partial), upstream, idp)
