"""Forged, damaged and misplaced session cookies against the running server.

Every attack must end anonymous (401 for an API client), clear the cookie, and never
reach the upstream. Chunked sessions get the most attention: each chunk alone is just
base64, so reordering chunks, dropping one or splicing chunks of two sessions together
must all fail authentication as a whole.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from proxy.session import Session, SessionCodec
from tests.security.helpers import (
    COOKIE,
    SESSION_NAMES,
    bare_client,
    cleared_cookies,
    cookie_header,
    gate_for,
    raw_exchange,
    session_cookies,
    sign_in,
    status_of,
)
from tests.support.gate import (
    COOKIE_SECRET,
    JSON,
    Gate,
    base_config,
    client_session,
    register_client,
    running_gate,
)
from tests.support.idp import ALICE, TestIdP, TestUser, login
from tests.support.upstream import Upstream, free_port

# Enough claims to need three cookie chunks.
BIG = TestUser(
    sub="big-claims",
    username="big@example.com",
    password="big-password",
    email="big@example.com",
    groups=tuple(f"team-{i:03d}-engineering-platform" for i in range(90)),
)


async def status_with(
    gate: Gate, cookies: dict[str, str], host: str | None = None, cleared: bool = True
) -> int:
    headers = {**JSON, "Cookie": cookie_header(cookies)}
    if host is not None:
        headers["Host"] = host
    async with (
        bare_client() as client,
        client.get(f"{gate.url}/private", headers=headers, allow_redirects=False) as r,
    ):
        if r.status == 401 and cleared:
            assert COOKIE in cleared_cookies(r), "a refused cookie must be cleared"
        return r.status


async def chunked_session(gate: Gate, idp: TestIdP) -> dict[str, str]:
    """A session big enough for three cookies, read from the callback's Set-Cookie (a
    client cookie jar would refuse to send a Cookie header this large)."""
    idp.add_user(BIG)
    async with client_session() as browser:
        resp = await login(
            browser,
            f"{gate.url}/",
            BIG.username,
            BIG.password,
            stop_at=f"{gate.url}/.clawgate/callback",
        )
        async with browser.get(resp.headers["Location"], allow_redirects=False) as r:
            assert r.status == 302
            cookies = {}
            for header in r.headers.getall("Set-Cookie"):
                name, _, rest = header.partition("=")
                if name in SESSION_NAMES:
                    cookies[name] = rest.split(";", 1)[0]
    assert 3 <= len(cookies) <= 8, sorted(cookies)
    assert cookies[COOKIE].startswith(f"{len(cookies)}.")
    return cookies


async def test_chunked_session_attacks(idp: TestIdP, upstream: Upstream, tmp_path: Path) -> None:
    async with gate_for(upstream, tmp_path, idp) as gate:
        one = await chunked_session(gate, idp)
        two = await chunked_session(gate, idp)
        assert await status_with(gate, one) == 200  # control: the real thing works
        upstream.seen.requests.clear()
        n = len(one)
        assert n == len(two) and n >= 3
        names = [COOKIE, *(f"{COOKIE}_{i}" for i in range(1, n))]
        c0, c1, c2 = names[:3]
        rest = {k: one[k] for k in names[3:]}
        last = names[-1]

        attacks = {
            "reordered": {c0: one[c0], c1: one[c2], c2: one[c1], **rest},
            "first chunk body moved": {c0: f"{n}." + one[c1], c1: one[c0][2:], c2: one[c2], **rest},
            "chunk from another session": {**one, c1: two[c1]},
            "tail from another session": {c0: one[c0], **{k: two[k] for k in names[1:]}},
            "chunk missing": {k: v for k, v in one.items() if k != last},
            "middle chunk missing": {k: v for k, v in one.items() if k != c1},
            "count lowered": {
                **{k: v for k, v in one.items() if k != last},
                c0: f"{n - 1}." + one[c0][2:],
            },
            "count raised": {**one, c0: f"{n + 1}." + one[c0][2:], f"{COOKIE}_{n}": one[c2]},
            "chunks joined into one": {c0: "".join([one[c0][2:], *(one[k] for k in names[1:])])},
            "chunk truncated": {**one, c1: one[c1][:-8]},
            "chunk byte flipped": {
                **one,
                c1: one[c1][:100] + ("A" if one[c1][100] != "A" else "B") + one[c1][101:],
            },
        }
        for name, cookies in attacks.items():
            assert await status_with(gate, cookies) == 401, name
        assert upstream.seen.requests == []


async def test_single_cookie_forgeries(idp: TestIdP, upstream: Upstream, tmp_path: Path) -> None:
    async with gate_for(upstream, tmp_path, idp) as gate, client_session() as browser:
        await sign_in(browser, gate, ALICE)
        good = session_cookies(browser)[COOKIE]
        host = f"127.0.0.1:{gate.port}"
        now = int(time.time())

        def forged(codec: SessionCodec, *, issued: int, lifetime: int) -> str:
            session = Session.create(
                sub=ALICE.sub,
                email=ALICE.email,
                email_verified=True,
                groups=["admins"],
                claims={},
                host=host,
                now=issued,
                lifetime=lifetime,
                refresh_at=now + 3600,
                refresh_token=None,
                id_token=None,
            )
            return codec.encode(session)[0][1]

        ours = SessionCodec([SessionCodec.parse_secret(COOKIE_SECRET)], COOKIE)
        other = SessionCodec([SessionCodec.parse_secret(SessionCodec.new_secret())], COOKIE)
        renamed = SessionCodec([SessionCodec.parse_secret(COOKIE_SECRET)], "_clawgate")
        assert await status_with(gate, {COOKIE: forged(ours, issued=now, lifetime=600)}) == 200
        upstream.seen.requests.clear()
        attacks = {
            "tampered": good[:40] + ("A" if good[40] != "A" else "B") + good[41:],
            "truncated": good[:-5],
            "extended": good + "AAAA",
            "not base64": "!!!!" + good[4:],
            "version byte changed": "Ag" + good[2:],
            "another cookie_secret": forged(other, issued=now, lifetime=600),
            "sealed under another cookie name": forged(renamed, issued=now, lifetime=600),
            "expired": forged(ours, issued=now - 7200, lifetime=3600),
            "just expired": forged(ours, issued=now - 600, lifetime=599),
            "pretend chunked": "2." + good,
        }
        for name, value in attacks.items():
            status = await status_with(gate, {COOKIE: value})
            assert status == 401, name
        assert await status_with(gate, {COOKIE: ""}, cleared=False) == 401
        assert upstream.seen.requests == []


async def test_session_does_not_travel_to_another_route_host(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    # Two route hosts on one listener and no cookie_domain: sessions are host-bound.
    port = free_port()
    register_client(idp, port, hosts=("127.0.0.1", "localhost"))
    config = base_config(port, upstream.url, idp=idp)
    config["routes"].append({**config["routes"][0], "from": f"https://localhost:{port}"})
    async with running_gate(config, tmp_path) as gate:
        async with client_session() as browser:
            await sign_in(browser, gate, ALICE)
            cookies = session_cookies(browser)
        assert await status_with(gate, cookies) == 200
        upstream.seen.requests.clear()
        assert await status_with(gate, cookies, host=f"localhost:{gate.port}") == 401
        assert await status_with(gate, cookies, host=f"LOCALHOST:{gate.port}") == 401
        assert upstream.seen.requests == []


@pytest.mark.parametrize("size", [40_000, 200_000])
async def test_oversized_cookie_header_gets_431_and_server_lives(
    upstream: Upstream, tmp_path: Path, size: int
) -> None:
    async with gate_for(
        upstream,
        tmp_path,
        None,
        route={"allow_public_unauthenticated_access": True, "policy": None},
    ) as gate:
        request = (
            (f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\nCookie: {COOKIE}=").encode()
            + b"A" * size
            + b"\r\n\r\n"
        )
        raw = await raw_exchange(gate.port, request)
        assert status_of(raw) == 431, raw[:200]
        assert b"AAAAAAAA" not in raw  # the offending bytes are not echoed back
        many = (
            (f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\n").encode()
            + b"".join(b"X-H%d: v\r\n" % i for i in range(300))
            + b"\r\n"
        )
        assert status_of(await raw_exchange(gate.port, many)) == 431
        long_target = b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert status_of(await raw_exchange(gate.port, long_target)) == 414
        async with bare_client() as client, client.get(f"{gate.url}/after") as r:
            assert r.status == 200
        assert [r["path"] for r in upstream.seen.requests] == ["/after"]
