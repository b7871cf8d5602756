"""The front (proxy/front.py): ordinary proxied requests served from the connection,
everything else handed to the full handler on the same connection, same rules both ways.

Requests go over raw TLS sockets where the bytes on the wire matter (pipelining, a
hand-over in the middle of a keep-alive connection), and a scripted raw upstream
produces framings aiohttp would not (no length, a connection closed under a pooled
request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from proxy.session import Session
from proxy.settings import load_settings
from proxy.snapshot import build_snapshot
from tests.perf.test_operations import scrape
from tests.support.gate import Gate, base_config, running_gate
from tests.support.rawupstream import RawUpstream
from tests.support.upstream import Upstream, free_port


def mint_cookie(gate: Gate, email: str = "alice@example.com") -> str:
    """A signed-in session sealed with the gate's own cookie_secret."""
    settings, located = load_settings(gate.path)
    snap = build_snapshot(settings, located, str(gate.path))
    now = int(time.time())
    session = Session.create(
        sub="sub-" + email, email=email, email_verified=True, groups=["staff"],
        claims={"name": "Test"}, host=f"127.0.0.1:{gate.port}", now=now, lifetime=3600,
        refresh_at=now + 1800, refresh_token=None, id_token=None,
    )
    return "; ".join(f"{n}={v}" for n, v in snap.keys.codec.encode(session))


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def fast_path_counts(metrics_port: int) -> dict[str, float]:
    """Requests served and handed off by the front, and connections given back to it."""
    text = await scrape(metrics_port)
    found = re.findall(r'clawgate_fast_path_requests_total\{outcome="(\w+)"\} ([0-9.e+]+)', text)
    returned = re.search(r"^clawgate_fast_path_connections_returned_total ([0-9.e+]+)$", text, re.M)
    return {k: float(v) for k, v in found} | {"returned": float(returned[1]) if returned else 0}


Response = tuple[int, dict[str, str], bytes]


async def read_responses(reader: asyncio.StreamReader, count: int) -> list[Response]:
    """``count`` HTTP/1.1 responses (Content-Length or chunked) from ``reader``."""
    out = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        out.append((status, headers, body))
    return out


def get(path: str, port: int, cookie: str | None, extra: str = "") -> bytes:
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n"
    if cookie:
        head += f"Cookie: other=1; {cookie}\r\n"
    return (head + extra + "\r\n").encode()


@contextlib.asynccontextmanager
async def gate_with_metrics(
    upstream_url: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[Gate, int]]:
    metrics_port = free_port()
    # Sessions are minted here, so the identity provider is never called: a closed port.
    config = base_config(free_port(), upstream_url, idp=None,
                         metrics_address=f"127.0.0.1:{metrics_port}",
                         idp_provider_url=f"http://127.0.0.1:{free_port()}",
                         idp_client_id="clawgate", idp_client_secret="unused", **overrides)
    async with running_gate(config, tmp_path) as gate:
        yield gate, metrics_port


async def test_signed_in_requests_take_the_fast_path_with_every_header_rule(
    upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_with_metrics(upstream.url, tmp_path) as (gate, metrics_port):
        before = await fast_path_counts(metrics_port)
        cookie = mint_cookie(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        writer.write(get("/a/b?x=1", gate.port, cookie,
                         "X-Forwarded-For: 6.6.6.6\r\nX-Pomerium-Jwt-Assertion: forged\r\n"))
        [(status, headers, body)] = await read_responses(reader, 1)
        writer.close()
        assert status == 200
        seen = json.loads(body)
        sent = {k.lower(): v for k, v in seen["headers"].items()}
        assert seen["path"] == "/a/b?x=1"
        assert sent["x-forwarded-for"] == "127.0.0.1"
        assert sent["x-forwarded-proto"] == "https"
        assert sent["x-forwarded-host"] == f"127.0.0.1:{gate.port}"
        assert sent["x-pomerium-jwt-assertion"].count(".") == 2  # ours, not the forged one
        assert sent["x-pomerium-claim-email"] == "alice@example.com"
        assert sent["cookie"] == "other=1"  # clawgate's cookie never reaches the upstream
        assert re.fullmatch(r"[0-9a-f]{16}", sent["x-request-id"])
        assert headers["x-request-id"] == sent["x-request-id"]
        assert "max-age" in headers["strict-transport-security"]
        assert headers["x-content-type-options"] == "nosniff"
        after = await fast_path_counts(metrics_port)
        assert after.get("served", 0) - before.get("served", 0) == 1
        assert after.get("handed_off", 0) == before.get("handed_off", 0)


@contextlib.asynccontextmanager
async def allowed_and_denied(
    upstream: Upstream, tmp_path: Path
) -> AsyncIterator[tuple[Gate, int, str, str]]:
    """A gate with metrics, and session cookies for a user its policy allows and one it
    denies (the handler's 403)."""
    async with gate_with_metrics(upstream.url, tmp_path) as (gate, metrics_port):
        yield gate, metrics_port, mint_cookie(gate), mint_cookie(gate, "mallory@evil.test")


async def test_pipelined_requests_are_answered_in_order(upstream: Upstream, tmp_path: Path) -> None:
    async with gate_with_metrics(upstream.url, tmp_path) as (gate, _):
        cookie = mint_cookie(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        writer.write(b"".join(get(f"/p{i}", gate.port, cookie) for i in range(5)))
        responses = await read_responses(reader, 5)
        writer.close()
        assert [json.loads(b)["path"] for _, _, b in responses] == [f"/p{i}" for i in range(5)]


async def test_a_request_the_front_cannot_decide_goes_to_the_handler_on_the_same_connection(
    upstream: Upstream, tmp_path: Path
) -> None:
    async with allowed_and_denied(upstream, tmp_path) as (gate, metrics_port, cookie, outsider):
        before = await fast_path_counts(metrics_port)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        writer.write(get("/one", gate.port, cookie))  # fast
        # Denied (the handler's 403), with the next request in the same write: aiohttp
        # reads both, so it answers the third too.
        writer.write(get("/two", gate.port, outsider) + get("/three", gate.port, cookie))
        (s1, _, b1), (s2, h2, b2), (s3, _, b3) = await read_responses(reader, 3)
        writer.close()
        assert (s1, json.loads(b1)["path"]) == (200, "/one")
        assert s2 == 403 and json.loads(b2)["error"] == "forbidden" and "x-request-id" in h2
        assert (s3, json.loads(b3)["path"]) == (200, "/three")
        after = await fast_path_counts(metrics_port)
        assert after["served"] - before.get("served", 0) == 1
        assert after["handed_off"] - before.get("handed_off", 0) == 1
        assert [r["path"] for r in upstream.seen.requests] == ["/one", "/three"]


async def test_a_connection_goes_back_to_the_front_after_the_handler_answered(
    upstream: Upstream, tmp_path: Path
) -> None:
    await handed_back(upstream, tmp_path)


async def handed_back(upstream: Upstream, tmp_path: Path) -> None:
    """A denied request goes to the handler; the next ones on that connection come back
    to the front (also run on uvloop, in test_front_uvloop.py)."""
    async with allowed_and_denied(upstream, tmp_path) as (gate, metrics_port, cookie, outsider):
        before = await fast_path_counts(metrics_port)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        got = []
        for path, who in (("/one", cookie), ("/two", outsider), ("/three", cookie), ("/4", cookie)):
            writer.write(get(path, gate.port, who))  # one at a time: nothing pipelined
            got += await read_responses(reader, 1)
        writer.close()
        assert [s for s, _, _ in got] == [200, 403, 200, 200]
        assert [json.loads(b)["path"] for s, _, b in got if s == 200] == ["/one", "/three", "/4"]
        after = await fast_path_counts(metrics_port)
        # The denied request went to the handler; the next ones came back to the front.
        assert after["handed_off"] - before.get("handed_off", 0) == 1
        assert after["served"] - before.get("served", 0) == 3
        assert after["returned"] - before["returned"] == 1
        assert [r["path"] for r in upstream.seen.requests] == ["/one", "/three", "/4"]


async def test_what_aiohttp_holds_of_the_next_request_keeps_the_connection_there(
    upstream: Upstream, tmp_path: Path
) -> None:
    async with allowed_and_denied(upstream, tmp_path) as (gate, metrics_port, cookie, outsider):
        before = await fast_path_counts(metrics_port)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        third = get("/three", gate.port, cookie)
        # The denied request and half of the next head in one write: aiohttp's parser
        # holds that half when the 403 is answered.
        writer.write(get("/two", gate.port, outsider) + third[:30])
        (s2, _, _), = await read_responses(reader, 1)
        await asyncio.sleep(0.2)
        writer.write(third[30:])
        (s3, _, b3), = await read_responses(reader, 1)
        # A body the handler read (a denied upload) keeps it there for one request more.
        body = b"x" * 100
        writer.write(
            f"POST /up HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\nAccept: application/json\r\n"
            f"Cookie: {outsider}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        (s4, _, _), = await read_responses(reader, 1)
        writer.write(get("/five", gate.port, cookie))
        (s5, _, _), = await read_responses(reader, 1)
        mid = await fast_path_counts(metrics_port)
        writer.write(get("/six", gate.port, cookie))
        (s6, _, b6), = await read_responses(reader, 1)
        writer.close()
        assert (s2, s3, json.loads(b3)["path"], s4, s5) == (403, 200, "/three", 403, 200)
        assert (s6, json.loads(b6)["path"]) == (200, "/six")
        after = await fast_path_counts(metrics_port)
        assert mid.get("served", 0) - before.get("served", 0) == 0
        assert after["served"] - mid.get("served", 0) == 1  # /six: back in the front
        assert after["returned"] - before["returned"] == 2  # for the POST, and for /six
        # /two, and the POST: /three left the parser empty, so the POST went back to the
        # front, which handed it over again (denied).
        assert after["handed_off"] - before.get("handed_off", 0) == 2
        assert [r["path"] for r in upstream.seen.requests] == ["/three", "/five", "/six"]


async def test_uploads_stream_and_head_has_no_body(upstream: Upstream, tmp_path: Path) -> None:
    async with gate_with_metrics(upstream.url, tmp_path) as (gate, metrics_port):
        before = await fast_path_counts(metrics_port)  # counters are per process
        cookie = mint_cookie(gate)
        size = 3 * 1024 * 1024 + 7
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
            headers = {"Cookie": cookie}
            async with client.post(f"{gate.url}/upload", data=b"u" * size, headers=headers) as r:
                assert r.status == 200 and (await r.json())["received"] == size
            async with client.head(f"{gate.url}/download/12345", headers=headers) as r:
                assert r.status == 200 and r.headers["Content-Length"] == "12345"
                assert await r.read() == b""
            async with client.get(f"{gate.url}/download/2000000", headers=headers) as r:
                assert len(await r.read()) == 2000000
        after = await fast_path_counts(metrics_port)
        assert after["served"] - before.get("served", 0) == 3
        assert after.get("handed_off", 0) == before.get("handed_off", 0)


async def test_upstream_framings_reach_the_client_intact(tmp_path: Path) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /eof"):
                # No length and not chunked: the body ends when the connection does.
                w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"e" * 70000)
                await w.drain()
                return
            if head.startswith(b"GET /chunked"):
                w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            elif head.startswith(b"GET /early"):
                w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                        b"HTTP/1.1 204 No Content\r\n\r\n")
            await w.drain()

    async with RawUpstream(script) as raw, gate_with_metrics(raw.url, tmp_path) as (gate, _):
        cookie = mint_cookie(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        writer.write(get("/chunked", gate.port, cookie) + get("/early", gate.port, cookie)
                     + get("/eof", gate.port, cookie))
        (s1, h1, b1), (s2, _, b2), (s3, h3, b3) = await read_responses(reader, 3)
        writer.close()
        assert (s1, b1, h1["transfer-encoding"]) == (200, b"hello world", "chunked")
        assert (s2, b2) == (204, b"")
        assert (s3, b3, h3["transfer-encoding"]) == (200, b"e" * 70000, "chunked")


async def test_a_pooled_connection_the_upstream_closed_is_retried_for_get(tmp_path: Path) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce")
        await w.drain()
        await r.read(1)  # the next request's first byte, then hang up unanswered

    async with RawUpstream(script) as raw, gate_with_metrics(raw.url, tmp_path) as (gate, _):
        cookie = mint_cookie(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        writer.write(get("/1", gate.port, cookie))
        [(s1, _, b1)] = await read_responses(reader, 1)
        writer.write(get("/2", gate.port, cookie))
        [(s2, _, b2)] = await read_responses(reader, 1)
        writer.close()
        assert (s1, b1, s2, b2) == (200, b"once", 200, b"once")
        assert raw.connections == 2


async def test_upstream_failures_are_pages_with_the_request_id(tmp_path: Path) -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)

    async def dies_mid_body(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"p" * 1000)
        await w.drain()
        w.transport.abort()

    dead = f"http://127.0.0.1:{free_port()}"
    async with gate_with_metrics(dead, tmp_path) as (gate, _):
        cookie = mint_cookie(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        writer.write(get("/x", gate.port, cookie))
        [(status, headers, body)] = await read_responses(reader, 1)
        writer.write(get("/y", gate.port, cookie))  # the connection stays usable
        [(again, _, _)] = await read_responses(reader, 1)
        writer.close()
        page = json.loads(body)
        assert status == 502 and page["error"] == "upstream_unavailable" and again == 502
        assert page["request_id"] == headers["x-request-id"]
        # HEAD: the same page's head without its body, and the connection stays in step.
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        writer.write(get("/h", gate.port, cookie).replace(b"GET ", b"HEAD ", 1)
                     + get("/g", gate.port, cookie))
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        [(second, _, second_body)] = await read_responses(reader, 1)
        writer.close()
        assert first.startswith(b"HTTP/1.1 502") and b"Content-Length: " in first
        assert second == 502 and json.loads(second_body)["error"] == "upstream_unavailable"
    async with RawUpstream(silent) as raw, gate_with_metrics(
        raw.url, tmp_path, route={"timeout": "0.5s"}
    ) as (gate, _):
        cookie = mint_cookie(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        writer.write(get("/slow", gate.port, cookie))
        [(status, _, body)] = await read_responses(reader, 1)
        writer.close()
        assert status == 504 and json.loads(body)["error"] == "upstream_timeout"
    async with RawUpstream(dies_mid_body) as raw, gate_with_metrics(raw.url, tmp_path) as (gate, _):
        cookie = mint_cookie(gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        writer.write(get("/cut", gate.port, cookie))
        head = await reader.readuntil(b"\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)  # EOF: the cut reaches the client
        writer.close()
        assert head.startswith(b"HTTP/1.1 200") and len(rest) < 100000


async def test_websockets_are_relayed_raw_with_the_upstreams_handshake(
    upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_with_metrics(upstream.url, tmp_path, max_connections_per_ip=2) as (
        gate, metrics_port
    ):
        before = await fast_path_counts(metrics_port)
        cookie = mint_cookie(gate)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
            # More sockets one after another than the per-IP cap: each closed relay gives
            # its slot back.
            for round_ in range(4):
                async with client.ws_connect(
                    f"{gate.url}/ws", origin=gate.url, headers={"Cookie": cookie},
                    compress=15 if round_ == 0 else 0, protocols=("chat",),
                ) as ws:
                    assert ws.protocol == "chat"
                    assert (ws.compress != 0) == (round_ == 0)  # negotiated end to end
                    await ws.send_str("headers")
                    echoed = json.loads(await ws.receive_str(timeout=5))
                    sent = {k.lower(): v for k, v in echoed.items()}
                    assert sent["x-pomerium-claim-email"] == "alice@example.com"
                    assert "cookie" not in sent  # only clawgate's cookie was sent
                    await ws.send_bytes(b"z" * 200_000)
                    assert await ws.receive_bytes(timeout=5) == b"z" * 200_000
                    await ws.send_str("close:4001")
                    msg = await ws.receive(timeout=5)
                    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4001)
        after = await fast_path_counts(metrics_port)
        assert after["served"] - before.get("served", 0) == 4
        assert after.get("handed_off", 0) == before.get("handed_off", 0)


async def test_front_and_handler_send_the_upstream_the_same_request(
    upstream: Upstream, tmp_path: Path
) -> None:
    """The same signed-in request through the front and through the full handler."""
    seen: dict[bool, tuple[dict[str, str], dict[str, str]]] = {}
    for fast in (True, False):
        directory = tmp_path / f"fast-{fast}"
        directory.mkdir()
        async with gate_with_metrics(upstream.url, directory, fast_path=fast) as (
            gate, metrics_port
        ):
            cookie = mint_cookie(gate)
            reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
            writer.write(get("/same/path?q=1", gate.port, cookie,
                             "X-Forwarded-For: 6.6.6.6\r\nX-Custom: kept\r\n"
                             "Connection: keep-alive, X-Hop\r\nX-Hop: dropped\r\n"))
            [(status, headers, body)] = await read_responses(reader, 1)
            writer.close()
            assert status == 200
            counts = await fast_path_counts(metrics_port)
            assert ("served" in counts) or not fast
            port = str(gate.port)  # the two gates listen on different ports
            sent = {k.lower(): v.replace(port, "PORT")
                    for k, v in json.loads(body)["headers"].items()}
            seen[fast] = (sent, {k: v.replace(port, "PORT") for k, v in headers.items()})
    (front_sent, front_got), (handler_sent, handler_got) = seen[True], seen[False]
    varying = {"x-request-id", "x-pomerium-jwt-assertion"}  # fresh per request / per key
    assert {k: v for k, v in front_sent.items() if k not in varying} == {
        k: v for k, v in handler_sent.items() if k not in varying
    }
    assert "x-hop" not in front_sent and front_sent["x-custom"] == "kept"
    # The client sees the upstream's headers and clawgate's security headers either way.
    response_varying = {"x-request-id", "date", "content-length", "server"}
    assert {k: v for k, v in front_got.items() if k not in response_varying} == {
        k: v for k, v in handler_got.items() if k not in response_varying
    }


async def test_a_head_admitted_before_is_checked_again_each_time(
    upstream: Upstream, tmp_path: Path
) -> None:
    """Identical heads are admitted from a template (proxy/exchange.py): rate limits,
    sign-out and configuration reloads must still apply to every one of them."""
    limits = {"proxy_per_user": {"rate": 0.001, "burst": 3}}
    async with gate_with_metrics(upstream.url, tmp_path, rate_limits=limits) as (gate, _):
        cookie = mint_cookie(gate)
        same = get("/same", gate.port, cookie)
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
        statuses = []
        for _ in range(4):
            writer.write(same)
            [(status, _, _)] = await read_responses(reader, 1)
            statuses.append(status)
        writer.close()
        assert statuses == [200, 200, 200, 429]
        assert [r["path"] for r in upstream.seen.requests] == ["/same"] * 3

    upstream.seen.requests.clear()
    directory = tmp_path / "second"
    directory.mkdir()
    async with gate_with_metrics(upstream.url, directory) as (gate, _):
        cookie = mint_cookie(gate)
        same = get("/same", gate.port, cookie)

        async def once() -> int:
            r, w = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure())
            w.write(same)
            [(status, _, _)] = await read_responses(r, 1)
            w.close()
            return status

        assert [await once(), await once()] == [200, 200]
        # A reload that no longer allows alice: the remembered head must not get through.
        config = dict(gate.config)
        config["routes"] = [{**config["routes"][0], "policy": [
            {"allow": {"or": [{"email": {"is": "bob@example.com"}}]}}]}]
        gate.write(config)
        for _ in range(50):
            if await once() == 403:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the reloaded policy was not applied to a remembered head")
        gate.write({**config, "routes": [{**config["routes"][0], "policy": [
            {"allow": {"or": [{"email": {"is": "alice@example.com"}}]}}]}]})
        for _ in range(50):
            if await once() == 200:
                break
            await asyncio.sleep(0.1)
        # Sign-out revokes the session: the same head is anonymous from then on.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
            headers = {"Cookie": cookie, "Accept": "application/json"}
            async with client.get(f"{gate.url}/.clawgate/user", headers=headers) as r:
                csrf = (await r.json())["csrf"]
            async with client.post(f"{gate.url}/.clawgate/sign_out", allow_redirects=False,
                                   headers={**headers, "X-Clawgate-Csrf": csrf}) as r:
                assert r.status == 302
        seen = len(upstream.seen.requests)
        assert await once() == 401
        assert len(upstream.seen.requests) == seen
