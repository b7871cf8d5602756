"""The front's upstream links (proxy/upstream_link.py) keep every rule of
proxy/forward.py.

A scripted raw upstream (asyncio server) answers exactly the bytes each test needs, so
framing cases aiohttp would never produce (no length, HEAD with a length, interim 1xx,
a connection that dies mid-body) are exercised for real, through a running clawgate
with a signed-in client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from proxy.framing import NO_BODY, FramingError, request_head
from proxy.upstream_link import UpstreamError
from tests.proxy.test_front import gate_with_metrics, mint_cookie
from tests.support.rawupstream import RawUpstream, Script


async def read_request(reader: asyncio.StreamReader, raw: RawUpstream) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    lower = head.lower()
    if b"content-length:" in lower:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    raw.requests.append(head + body)
    return head, body


@contextlib.asynccontextmanager
async def proxied(
    script: Script, *, timeout: float | None = 5.0, idle: float | None = None, **config: Any
) -> AsyncIterator[tuple[RawUpstream, aiohttp.ClientSession, str, str]]:
    """A real clawgate (in this loop) whose one route leads to the scripted upstream; the
    client is signed in (its cookie is the last item), so every request takes the
    front's upstream link."""
    route: dict[str, Any] = {"set_response_headers": {"X-Added": "yes"}}
    if timeout:
        route["timeout"] = f"{timeout}s"
    if idle:
        route["idle_timeout"] = f"{idle}s"
    with tempfile.TemporaryDirectory() as directory:
        async with (
            RawUpstream(script) as raw,
            gate_with_metrics(raw.url, Path(directory), route=route, **config) as (gate, _),
        ):
            cookie = mint_cookie(gate)
            connector = aiohttp.TCPConnector(ssl=False)
            async with aiohttp.ClientSession(
                connector=connector, auto_decompress=False, headers={"Cookie": cookie}
            ) as client:
                yield raw, client, gate.url, cookie


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def keep_serving(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       raw: RawUpstream, answer: Callable[[bytes, bytes], bytes]) -> None:
    while True:
        head, body = await read_request(reader, raw)
        writer.write(answer(head, body))
        await writer.drain()


async def test_keep_alive_reuse_and_response_header_hygiene() -> None:
    raw_ref: list[RawUpstream] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await keep_serving(r, w, raw_ref[0], lambda h, b: ok(
            b"hello", b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: t=5\r\n"
                      b"X-Kept: 2\r\n"))

    async with proxied(script) as (raw, client, base, _pool):
        raw_ref.append(raw)
        for _ in range(3):
            async with client.get(f"{base}/a?b=1") as resp:
                assert resp.status == 200
                assert await resp.read() == b"hello"
                assert "X-Secret" not in resp.headers and "Keep-Alive" not in resp.headers
                assert resp.headers["X-Kept"] == "2" and resp.headers["X-Added"] == "yes"
        assert raw.connections == 1
        assert raw.requests[0].startswith(b"GET /a?b=1 HTTP/1.1\r\n")


async def test_connection_close_is_not_reused() -> None:
    raw_ref: list[RawUpstream] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r, raw_ref[0])
        w.write(ok(b"bye", b"Connection: close\r\n"))
        await w.drain()

    async with proxied(script) as (raw, client, base, _):
        raw_ref.append(raw)
        for _ in range(2):
            async with client.get(f"{base}/") as resp:
                assert await resp.read() == b"bye"
        assert raw.connections == 2


async def test_chunked_and_until_close_bodies_arrive_whole() -> None:
    raw_ref: list[RawUpstream] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(r, raw_ref[0])
            if b"/chunked " in head:
                w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for part in (b"one ", b"two ", b"three"):
                    w.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await w.drain()
                    await asyncio.sleep(0.01)
                w.write(b"0\r\nX-Trailer: t\r\n\r\n")
            elif b"/again " in head:
                w.write(ok(b"again"))
            else:
                w.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
                await w.drain()
                return
            await w.drain()

    async with proxied(script) as (raw, client, base, _):
        raw_ref.append(raw)
        async with client.get(f"{base}/chunked") as resp:
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            assert await resp.read() == b"one two three"
        async with client.get(f"{base}/again") as resp:
            assert await resp.read() == b"again"  # same connection, after the trailer
        assert raw.connections == 1
        async with client.get(f"{base}/eof") as resp:
            assert await resp.read() == b"until the end"
        async with client.get(f"{base}/again") as resp:
            assert await resp.read() == b"again"
        assert raw.connections == 2  # the read-until-close connection was not reused


async def test_head_204_304_and_interim_responses_have_no_body() -> None:
    raw_ref: list[RawUpstream] = []

    def answer(head: bytes, body: bytes) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
        if b"/204" in head:
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if b"/304" in head:
            return b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"
        return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(
            b"final")

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await keep_serving(r, w, raw_ref[0], answer)

    async with proxied(script) as (raw, client, base, _):
        raw_ref.append(raw)
        async with client.head(f"{base}/h") as resp:
            assert resp.status == 200 and resp.headers["Content-Length"] == "1234"
            assert await resp.read() == b""
        async with client.get(f"{base}/204") as resp:
            assert resp.status == 204 and await resp.read() == b""
        async with client.get(f"{base}/304") as resp:
            assert resp.status == 304 and resp.headers["ETag"] == '"x"'
        async with client.get(f"{base}/interim") as resp:
            assert resp.status == 200 and await resp.read() == b"final"
        # HEAD's connection is never reused (its parser cannot be told there is no body);
        # 204 and 304 leave the connection usable.
        assert raw.connections == 2


async def test_request_bodies_stream_with_length_and_chunked() -> None:
    raw_ref: list[RawUpstream] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await keep_serving(r, w, raw_ref[0], lambda h, b: ok(b"%d" % len(b)))

    async def parts() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"z" * 65536

    async with proxied(script) as (raw, client, base, _):
        raw_ref.append(raw)
        async with client.post(f"{base}/len", data=b"a" * 300_000) as resp:
            assert await resp.read() == b"300000"
        async with client.post(f"{base}/chunked", data=parts()) as resp:
            assert await resp.read() == b"%d" % (40 * 65536)
        assert b"transfer-encoding: chunked" in raw.requests[-1].lower()
        assert b"content-length: 300000" in raw.requests[0].lower()


async def test_large_response_streams_with_bounded_buffer() -> None:
    size = 32 * 1024 * 1024

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"b" * 65536
        for _ in range(size // len(block)):
            w.write(block)
            await w.drain()

    async with proxied(script) as (_, client, base, _pool), client.get(f"{base}/big") as resp:
        total = 0
        async for chunk in resp.content.iter_any():
            total += len(chunk)
            await asyncio.sleep(0)  # a reader slower than the upstream
        assert total == size


async def test_errors_before_the_head_are_502_and_504() -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with (
        proxied(silent, timeout=0.3) as (_, client, base, _pool),
        client.get(f"{base}/") as resp,
    ):
        assert resp.status == 504 and (await resp.json())["error"] == "upstream_timeout"

    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"NOT HTTP AT ALL\r\n\r\n")
        await w.drain()

    async with proxied(garbage) as (_, client, base, _pool), client.get(f"{base}/") as resp:
        assert resp.status == 502

    async def hang_up(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")

    async with proxied(hang_up) as (_, client, base, _pool), client.get(f"{base}/") as resp:
        assert resp.status == 502
    # An upstream that is not there at all: tests/proxy/test_front.py.


async def test_upstream_dying_mid_body_cuts_the_client_connection() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"p" * 1000)
        await w.drain()
        await asyncio.sleep(0.05)
        w.transport.abort()

    async with proxied(script) as (_, client, base, _pool), client.get(f"{base}/") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_idle_timeout_mid_body_cuts_the_client_connection() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await w.drain()
        await asyncio.sleep(3)

    async with (
        proxied(script, idle=0.3) as (_, client, base, _pool),
        client.get(f"{base}/") as resp,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_stale_keep_alive_connection_is_retried_for_get() -> None:
    raw_ref: list[RawUpstream] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        # Answer one request, then close without saying so (a keep-alive timeout).
        await read_request(r, raw_ref[0])
        w.write(ok(b"once"))
        await w.drain()
        await r.read(1)  # the next request's first byte, then hang up unanswered

    async with proxied(script) as (raw, client, base, _pool):
        raw_ref.append(raw)
        async with client.get(f"{base}/") as resp:
            assert await resp.read() == b"once"
        # The pooled connection takes the request and dies unanswered (the race a
        # keep-alive timeout opens): a GET goes again on a new connection.
        async with client.get(f"{base}/") as resp:
            assert resp.status == 200 and await resp.read() == b"once"
        assert raw.connections == 2


async def test_response_heads_split_anywhere_and_each_heads_own_headers() -> None:
    """Heads are read from their raw bytes and remembered by them: a head cut at every
    byte, interim heads in front, and heads that differ only in one value must each
    arrive as sent, never as a remembered neighbour."""
    raw_ref: list[RawUpstream] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        n = 0
        while True:
            head, _ = await read_request(r, raw_ref[0])
            n += 1
            answer = ok(b"body%d" % n, b"X-N: %d\r\nX-Same: s\r\n" % n)
            if b"/early " in head:
                answer = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + answer
            if b"/split " in head:
                cut = answer.index(b"\r\n\r\n") + 6
                for i in range(cut):  # one byte per segment up to just into the body
                    w.write(answer[i : i + 1])
                    await w.drain()
                    await asyncio.sleep(0.001)
                w.write(answer[cut:])
            else:
                w.write(answer)
            await w.drain()

    async with proxied(script) as (raw, client, base, _):
        raw_ref.append(raw)
        for i, path in enumerate(["/a", "/b", "/split", "/early", "/split", "/a"], start=1):
            async with client.get(f"{base}{path}") as resp:
                assert resp.status == 200, path
                assert resp.headers["X-N"] == str(i), path
                assert resp.headers["X-Same"] == "s" and resp.headers["X-Added"] == "yes"
                assert "Link" not in resp.headers  # interim heads are not relayed
                assert await resp.read() == b"body%d" % i, path
        assert raw.connections == 1


async def test_an_endless_response_head_is_refused_with_502() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(2000):
            w.write(b"X-Filler-%d: %s\r\n" % (i, b"f" * 60))
            await w.drain()
        await asyncio.sleep(5)

    async with proxied(script) as (_, client, base, _pool), client.get(f"{base}/") as resp:
        assert resp.status == 502
        assert (await resp.json())["error"] == "upstream_unavailable"


@pytest.mark.parametrize("fast_path", [True, False], ids=["front", "handler"])
async def test_expect_100_continue_is_answered_by_clawgate_once_allowed(fast_path: bool) -> None:
    """curl and many SDKs send ``Expect: 100-continue`` with uploads. clawgate answers it
    itself once the request is allowed, and does not pass it on: an upstream that never
    sends its own 100 (allowed: it may just read the body) must not stall the upload."""
    raw_ref: list[RawUpstream] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await keep_serving(r, w, raw_ref[0], lambda h, b: ok(b"got %d" % len(b)))

    async with proxied(script, fast_path=fast_path) as (raw, _client, base, cookie):
        raw_ref.append(raw)
        port = int(base.rsplit(":", 1)[1])
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE

        async def exchange(head: str, body: bytes | None) -> tuple[bytes, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
            try:
                writer.write(head.encode())
                first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                if body is not None and first.startswith(b"HTTP/1.1 100 "):
                    writer.write(body)
                    final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                    length = int(final.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    return first + final, await reader.readexactly(length)
                return first, b""
            finally:
                writer.close()

        upload = (f"PUT /up HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
                  "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        heads, body = await exchange(upload, b"12345")
        assert heads.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "), heads
        assert body == b"got 5"
        assert b"expect" not in raw.requests[-1].lower()
        # Not signed in: the refusal comes at once, without inviting the body first.
        heads, _ = await exchange(upload.replace(f"Cookie: {cookie}\r\n", ""), b"12345")
        assert heads.startswith(b"HTTP/1.1 401 "), heads
        # An expectation clawgate does not know is refused.
        heads, _ = await exchange(upload.replace("100-continue", "teapot"), None)
        assert heads.startswith(b"HTTP/1.1 417 "), heads
        assert len(raw.requests) == 1


def test_header_values_cannot_split_the_request() -> None:
    for name, value in (("X-A", "v\r\nX-Injected: 1"), ("X-A", "v\nX"), ("X-B\r\nX-C", "1"),
                        ("X-A", "v\x00"), ("X A", "1"), ("X-A:", "1")):
        with pytest.raises(FramingError):
            request_head("GET", "/", CIMultiDict({name: value}), NO_BODY, None)
    serialized = request_head("GET", "/p?q=1", CIMultiDict(Host="u"), NO_BODY, "r1")
    assert serialized == b"GET /p?q=1 HTTP/1.1\r\nHost: u\r\nX-Request-Id: r1\r\n\r\n"
