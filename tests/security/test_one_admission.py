"""The holes a second request path opened, each tried on both paths (``fast_path`` on
and off) against a raw upstream that records every byte it receives.

- ``Connection`` naming a framing header: refused with 400, nothing reaches the upstream;
- a failed request's body is never sent ahead of the next request;
- a compressed body reaches the upstream as sent, with its own length;
- bytes an upstream sends past its response, or on an idle pooled link, reach nobody;
- identity look-alike headers never pass, configured or not;
- a time rule's bound ends a remembered decision, and an open WebSocket;
- more than one ``Origin`` on an upgrade is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.proxy.test_front import gate_with_metrics, insecure, mint_cookie
from tests.support.gate import Gate
from tests.support.rawupstream import RawUpstream
from tests.support.upstream import Upstream, free_port

pytestmark = pytest.mark.parametrize("fast", [True, False], ids=["front", "handler"])


async def _read_request(r: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request by its Content-Length (the upstream side of these tests)."""
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await r.readexactly(length) if length else b""
    return head, body


def _recorder(received: list[bytes], respond: Callable[[bytes], bytes]) -> Any:
    """Every request the upstream parses, head and body, in order (a smuggled request
    would be parsed, and so recorded, as one of them)."""

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head, body = await _read_request(r)
            received.append(head + body)
            w.write(respond(head))
            await w.drain()

    return script


def _ok(head: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@contextlib.asynccontextmanager
async def _gate(
    upstream_url: str, tmp_path: Path, fast: bool, **overrides: Any
) -> AsyncIterator[Gate]:
    directory = tmp_path / f"fast-{fast}"
    directory.mkdir(exist_ok=True)
    async with gate_with_metrics(upstream_url, directory, fast_path=fast, **overrides) as (
        gate,
        _,
    ):
        yield gate


async def _exchange(gate: Gate, data: bytes, wait: float = 1.0) -> bytes:
    """Send ``data`` on one TLS connection; what came back until it closed or went
    quiet for ``wait`` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
    writer.write(data)
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        while True:
            piece = await asyncio.wait_for(reader.read(65536), wait)
            if not piece:
                break
            out += piece
    writer.close()
    return out


def _head(gate: Gate, method: str, path: str, cookie: str, extra: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\n"
        f"Accept: application/json\r\nCookie: {cookie}\r\n{extra}\r\n"
    ).encode()


SMUGGLED = (
    b"GET /smuggled HTTP/1.1\r\nHost: up\r\nX-Pomerium-Jwt-Assertion: forged\r\n"
    b"X-Pomerium-Claim-Email: attacker@evil\r\n\r\n"
)


async def test_connection_naming_a_framing_header_is_refused(fast: bool, tmp_path: Path) -> None:
    received: list[bytes] = []
    async with RawUpstream(_recorder(received, _ok)) as raw, _gate(raw.url, tmp_path, fast) as gate:
        cookie = mint_cookie(gate)
        for named in (
            "content-length",
            "Content-Length",
            "transfer-encoding",
            "close, content_length",
        ):
            extra = f"Connection: {named}\r\nContent-Length: {len(SMUGGLED)}\r\n"
            got = await _exchange(gate, _head(gate, "POST", "/x", cookie, extra) + SMUGGLED)
            assert got.startswith(b"HTTP/1.1 400 "), (named, got[:200])
            assert b"bad_framing" in got
        assert received == []
        assert raw.connections == 0


async def test_connection_cannot_remove_what_clawgate_sets(fast: bool, tmp_path: Path) -> None:
    received: list[bytes] = []
    async with RawUpstream(_recorder(received, _ok)) as raw, _gate(raw.url, tmp_path, fast) as gate:
        cookie = mint_cookie(gate)
        named = "host, x-forwarded-for, x-pomerium-jwt-assertion, x-request-id, x-hop"
        extra = f"Connection: {named}\r\nX-Hop: gone\r\nX-Kept: here\r\n"
        got = await _exchange(gate, _head(gate, "GET", "/x", cookie, extra))
        assert got.startswith(b"HTTP/1.1 200 "), got[:200]
    [request] = received
    lower = request.lower()
    for header in (
        b"\r\nhost: ",
        b"\r\nx-forwarded-for: ",
        b"\r\nx-pomerium-jwt-assertion: ey",
        b"\r\nx-request-id: ",
        b"\r\nx-kept: here",
    ):
        assert lower.count(header) == 1, (header, request)
    assert b"x-hop" not in lower


async def test_a_failed_requests_body_never_reaches_the_next_request(
    fast: bool, tmp_path: Path
) -> None:
    received: list[bytes] = []
    async with RawUpstream(_recorder(received, _ok)) as raw:
        refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        routes = [
            {
                "from": "https://127.0.0.1:{port}",
                "prefix": "/down/",
                "to": refused,
                "pass_identity_headers": True,
                "allow_any_authenticated_user": True,
            },
        ]
        async with _gate(raw.url, tmp_path, fast) as gate:
            config = dict(gate.config)
            live = dict(config["routes"][0])
            down = {**routes[0], "from": live["from"]}
            config["routes"] = [down, live]
            gate.write(config)
            await asyncio.sleep(1.5)  # the reload
            cookie = mint_cookie(gate)
            for expect in ("", "Expect: 100-continue\r\n"):
                post = _head(
                    gate, "POST", "/down/x", cookie, f"{expect}Content-Length: {len(SMUGGLED)}\r\n"
                )
                data = post + SMUGGLED + _head(gate, "GET", "/live", cookie)
                got = await _exchange(gate, data)
                assert got.startswith(
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 502 " if expect else b"HTTP/1.1 502 "
                ), got[:300]
    joined = b"".join(received)
    assert b"/smuggled" not in joined and b"attacker@evil" not in joined, joined
    for request in received:
        assert request.startswith(b"GET /live HTTP/1.1\r\n"), request


async def test_a_compressed_body_is_forwarded_as_sent(fast: bool, tmp_path: Path) -> None:
    received: list[bytes] = []
    async with RawUpstream(_recorder(received, _ok)) as raw, _gate(raw.url, tmp_path, fast) as gate:
        cookie = mint_cookie(gate)
        body = gzip.compress(b"A" * 5000 + SMUGGLED)
        for method in ("POST", "PROPFIND"):  # the second is the handler's on either path
            extra = f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n"
            got = await _exchange(gate, _head(gate, method, "/up", cookie, extra) + body)
            assert got.startswith(b"HTTP/1.1 200 "), got[:200]
    assert len(received) == 2
    for request in received:
        head, _, sent = request.partition(b"\r\n\r\n")
        assert sent == body
        assert f"content-length: {len(body)}".encode() in head.lower()
        assert b"content-encoding: gzip" in head.lower()


async def test_bytes_past_a_response_reach_nobody(fast: bool, tmp_path: Path) -> None:
    received: list[bytes] = []

    def extra(head: bytes) -> bytes:
        return _ok(head) + b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\nSMUGGLED-RESPONSE"

    async with (
        RawUpstream(_recorder(received, extra)) as raw,
        _gate(raw.url, tmp_path, fast) as gate,
    ):
        cookie = mint_cookie(gate)
        got = await _exchange(
            gate, _head(gate, "GET", "/a", cookie) + _head(gate, "GET", "/b", cookie)
        )
        assert b"SMUGGLED-RESPONSE" not in got
        assert got.count(b"HTTP/1.1 200 ") == 2, got
        # The link that carried the stray bytes was not used again.
        assert raw.connections == 2


async def test_an_unsolicited_response_on_an_idle_link_reaches_nobody(
    fast: bool, tmp_path: Path
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_request(r)
        w.write(_ok(b""))
        await w.drain()
        await asyncio.sleep(0.2)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nUNSOLICITED")
        await w.drain()
        with contextlib.suppress(Exception):
            while True:
                await _read_request(r)
                w.write(_ok(b""))
                await w.drain()

    async with RawUpstream(script) as raw, _gate(raw.url, tmp_path, fast) as gate:
        cookie = mint_cookie(gate)
        first = await _exchange(gate, _head(gate, "GET", "/a", cookie), wait=0.5)
        assert first.startswith(b"HTTP/1.1 200 ")
        for _ in range(3):
            got = await _exchange(gate, _head(gate, "GET", "/b", cookie), wait=0.5)
            assert b"UNSOLICITED" not in got and got.startswith(b"HTTP/1.1 200 "), got


LOOKALIKES = (
    "X-Pomerium-Claim-Email",
    "x-pomerium-claim-groups",
    "X-Pomerium-Jwt-Assertion-For",
    "X-Forwarded-User",
    "X_Forwarded_Email",
    "x-forwarded-preferred-username",
    "X-Forwarded-Groups",
    "X-Auth-Request-Email",
    "X-AUTH-REQUEST-USER",
    "Remote-User",
    "Remote_User",
    "X-Remote-User",
    "X-Remote-Email",
    "X-Webauth-User",
    "x-clawgate-groups",
)


async def test_identity_lookalikes_never_pass(
    fast: bool, upstream: Upstream, tmp_path: Path
) -> None:
    extra = "".join(f"{name}: attacker@evil\r\n" for name in LOOKALIKES)
    async with _gate(upstream.url, tmp_path, fast, jwt_claims_headers={}) as gate:
        cookie = mint_cookie(gate)
        got = await _exchange(gate, _head(gate, "GET", "/x", cookie, extra))
        assert got.startswith(b"HTTP/1.1 200 "), got[:200]
    sent = upstream.seen.last()["header_list"]
    assert not [(k, v) for k, v in sent if "attacker@evil" in v], sent


async def test_more_than_one_origin_is_refused(
    fast: bool, upstream: Upstream, tmp_path: Path
) -> None:
    async with _gate(upstream.url, tmp_path, fast) as gate:
        cookie = mint_cookie(gate)
        own = f"https://127.0.0.1:{gate.port}"
        upgrade = (
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        )
        for origins in ((own,), ("https://evil.example", own), (own, "https://evil.example")):
            extra = upgrade + "".join(f"Origin: {o}\r\n" for o in origins)
            got = await _exchange(gate, _head(gate, "GET", "/ws", cookie, extra), wait=0.5)
            expected = b"HTTP/1.1 101 " if len(origins) == 1 else b"HTTP/1.1 403 "
            assert got.startswith(expected), (origins, got[:200])


class _Clock:
    """time.time() moved forward by ``offset`` seconds, for every module at once."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.real = time.time

    def __call__(self) -> float:
        return self.real() + self.offset


async def test_a_time_bound_ends_remembered_decisions_and_open_websockets(
    fast: bool, upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(time, "time", clock)
    bound = datetime.fromtimestamp(int(clock()) + 600, UTC).isoformat()
    policy = [
        {"allow": {"and": [{"email": {"is": "alice@example.com"}}, {"date": {"before": bound}}]}}
    ]
    async with _gate(upstream.url, tmp_path, fast, route={"policy": policy}) as gate:
        cookie = mint_cookie(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        same = _head(gate, "GET", "/same", cookie)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
            ws = await client.ws_connect(
                f"{gate.url}/ws", headers={"Cookie": cookie, "Origin": gate.url}
            )
            for _ in range(3):  # remembered after the first (the front's templates)
                writer.write(same)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200 "), head
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            clock.offset = 600.5  # just past the bound
            writer.write(same)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 403 "), head
            msg = await ws.receive(timeout=5)  # the sweep runs every second
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008, msg
        writer.close()


async def test_a_body_that_breaks_midway_ends_the_exchange_at_once(
    fast: bool, tmp_path: Path
) -> None:
    """A chunked upload whose chunks turn malformed after its head went upstream: the
    client gets a 400 now (not after the upstream timeout), the upstream link is cut, and
    the upstream never parses a whole request."""
    heads: list[bytes] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        heads.append(await r.readuntil(b"\r\n\r\n"))
        rest = await r.read()  # until clawgate cuts the link
        heads.append(b"REST:" + rest)

    async with RawUpstream(script) as raw, _gate(raw.url, tmp_path, fast) as gate:
        cookie = mint_cookie(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        writer.write(_head(gate, "POST", "/up", cookie, "Transfer-Encoding: chunked\r\n"))
        writer.write(b"5\r\nhello\r\n")
        await writer.drain()
        for _ in range(100):  # the head and first chunk have gone upstream
            if heads:
                break
            await asyncio.sleep(0.02)
        started = time.monotonic()
        writer.write(b"zz-not-a-size\r\n" + SMUGGLED)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(65536), 10)
        assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
        assert time.monotonic() - started < 10
        writer.close()
        for _ in range(100):
            if len(heads) == 2:
                break
            await asyncio.sleep(0.02)
    assert heads[0].startswith(b"POST /up HTTP/1.1\r\n")
    assert b"transfer-encoding: chunked" in heads[0].lower()
    # The link was cut inside the body: the terminating chunk never came.
    assert heads[1].startswith(b"REST:") and b"0\r\n\r\n" not in heads[1], heads
    assert b"/smuggled" not in heads[1]


async def test_websocket_handshakes_pass_the_upstreams_choices(
    fast: bool, upstream: Upstream, tmp_path: Path
) -> None:
    """Both paths end in the one raw relay: the client's extension offer reaches the
    upstream, whose 101 (its permessage-deflate answer included) comes back as it is,
    and compressed messages flow."""
    async with _gate(upstream.url, tmp_path, fast) as gate:
        cookie = mint_cookie(gate)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
            ws = await client.ws_connect(
                f"{gate.url}/ws", headers={"Cookie": cookie, "Origin": gate.url}, compress=15
            )
            assert ws.compress == 15  # negotiated end to end
            await ws.send_str("headers")
            sent = json.loads((await ws.receive(timeout=5)).data)
            assert "permessage-deflate" in sent.get("Sec-WebSocket-Extensions", "")
            await ws.close()
