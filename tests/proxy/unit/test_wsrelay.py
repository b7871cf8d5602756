"""The raw WebSocket relay: frame tracking, the upstream handshake, relaying over real sockets.

The relay tests run a small front server that plays clawgate's client side (read the
upgrade request, open the upstream, write its 101 back, hand both sockets to RawRelay)
and drive it with aiohttp's WebSocket client, on asyncio and on uvloop, over TCP and TLS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import uvloop
from aiohttp import WSMsgType, web

from proxy.tls import generate_self_signed, new_server_context
from proxy.upstream_link import UpstreamError
from proxy.websocket import ConnectionRegistry, LiveConnection
from proxy.wsrelay import (
    FrameError,
    FrameTracker,
    RawRelay,
    Upgraded,
    accept_for,
    close_frame,
    open_upstream,
)

MB = 1024 * 1024


# --- frames -----------------------------------------------------------------------------


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    masked: bool = False,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    mbit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if masked:
        mask = os.urandom(4)
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


def stream_of(sizes: list[int], *, masked: bool) -> tuple[bytes, list[int]]:
    """Frames of the given payload sizes and the offsets where each frame starts."""
    out = b""
    starts = []
    for i, size in enumerate(sizes):
        starts.append(len(out))
        out += frame(1 if i % 2 else 2, bytes([i % 251]) * size, masked=masked)
    return out, starts


def feed_split(tracker: FrameTracker, data: bytes, cuts: list[int]) -> bytes:
    forwarded = []
    prev = 0
    for cut in [*cuts, len(data)]:
        forwarded.append(tracker.take(data[prev:cut]))
        prev = cut
    return b"".join(forwarded)


SIZES = [0, 1, 125, 126, 127, 300, 65535, 65536, 70000]


@pytest.mark.parametrize("masked", [True, False])
def test_tracker_headers_split_at_every_offset(masked: bool) -> None:
    data, starts = stream_of(SIZES, masked=masked)
    offsets = {k for s in starts for k in range(s, min(s + 16, len(data)))}
    for cut in sorted(offsets):
        t = FrameTracker(masked=masked, max_payload=MB)
        assert feed_split(t, data, [cut]) == data, cut
        assert t.at_boundary


@pytest.mark.parametrize("masked", [True, False])
def test_tracker_byte_by_byte(masked: bool) -> None:
    data, _ = stream_of([0, 3, 125, 126, 200], masked=masked)
    t = FrameTracker(masked=masked, max_payload=MB)
    out = b""
    for i in range(len(data)):
        out += t.take(data[i : i + 1])
        # Only a partial header may ever be held back.
        assert len(data[: i + 1]) - len(out) < 14
    assert out == data and t.at_boundary


def test_tracker_withholds_a_partial_header() -> None:
    t = FrameTracker(masked=False, max_payload=MB)
    whole = frame(2, b"x" * 70000)
    assert t.take(whole[:5]) == b""
    assert not t.at_boundary
    assert t.take(whole[5:20]) == whole[:20]
    assert t.need == 70000 - 10
    t.feed(whole[20:])
    assert t.at_boundary


def test_tracker_lengths_16_and_64_bit() -> None:
    t = FrameTracker(masked=False, max_payload=10 * MB)
    t.take(frame(2, length=65535)[:4])
    assert t.need == 65535
    t = FrameTracker(masked=False, max_payload=10 * MB)
    t.take(frame(2, length=5 * MB)[:10])
    assert t.need == 5 * MB
    t.feed(b"\0" * (5 * MB - 1))
    assert not t.at_boundary
    t.feed(b"\0")
    assert t.at_boundary


def test_tracker_masking_rules() -> None:
    with pytest.raises(FrameError) as exc:
        FrameTracker(masked=True, max_payload=MB).feed(frame(1, b"hi", masked=False))
    assert exc.value.code == 1002
    with pytest.raises(FrameError) as exc:
        FrameTracker(masked=False, max_payload=MB).feed(frame(1, b"hi", masked=True))
    assert exc.value.code == 1002
    FrameTracker(masked=True, max_payload=MB).feed(frame(1, b"hi", masked=True))


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_tracker_reserved_opcodes(opcode: int) -> None:
    with pytest.raises(FrameError) as exc:
        FrameTracker(masked=False, max_payload=MB).feed(frame(opcode, b"x"))
    assert exc.value.code == 1002


def test_tracker_control_frame_rules() -> None:
    for bad in (
        frame(9, b"x" * 126),  # ping longer than 125
        frame(9, b"x", fin=False),  # fragmented ping
        frame(8, b"x"),  # a close payload of one byte cannot hold a code
    ):
        with pytest.raises(FrameError) as exc:
            FrameTracker(masked=False, max_payload=MB).feed(bad)
        assert exc.value.code == 1002
    t = FrameTracker(masked=False, max_payload=MB)
    t.feed(frame(9, b"x" * 125) + frame(0xA, b"") + frame(8, b""))


VALID_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                     3000, 3999, 4000, 4999)
INVALID_CLOSE_CODES = (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("code", VALID_CLOSE_CODES)
def test_tracker_passes_a_valid_close_code_and_reason(masked: bool, code: int) -> None:
    close = frame(8, code.to_bytes(2, "big") + "bye – ok".encode(), masked=masked)
    data = frame(1, b"before", masked=masked) + close
    t = FrameTracker(masked=masked, max_payload=MB)
    assert t.take(data) == data
    assert t.saw_close


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
def test_tracker_fails_an_invalid_close_code_after_what_came_before(
    masked: bool, code: int
) -> None:
    before = frame(1, b"echo in flight", masked=masked)
    close = frame(8, code.to_bytes(2, "big") + b"x", masked=masked)
    with pytest.raises(FrameError) as exc:
        FrameTracker(masked=masked, max_payload=MB).take(before + close)
    assert exc.value.code == 1002
    # What the sender had sent before the bad close still goes through, in order.
    assert exc.value.settled == before


@pytest.mark.parametrize("masked", [True, False])
def test_tracker_fails_a_close_reason_that_is_not_utf8(masked: bool) -> None:
    for reason in (b"\xff", b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80", b"ok\xc0\xaf"):
        with pytest.raises(FrameError) as exc:
            FrameTracker(masked=masked, max_payload=MB).take(
                frame(8, (1000).to_bytes(2, "big") + reason, masked=masked)
            )
        assert exc.value.code == 1007


@pytest.mark.parametrize("masked", [True, False])
def test_tracker_checks_a_close_frame_split_across_reads(masked: bool) -> None:
    before = frame(2, b"data", masked=masked)
    good = frame(8, (1000).to_bytes(2, "big") + b"normal", masked=masked)
    for cut in range(len(before) + 1, len(before) + len(good)):
        data = before + good
        t = FrameTracker(masked=masked, max_payload=MB)
        # Held until whole, then passed on unchanged.
        assert t.take(data[:cut]) + t.take(data[cut:]) == data
    bad = frame(8, (1005).to_bytes(2, "big"), masked=masked)
    for cut in range(1, len(bad)):
        t = FrameTracker(masked=masked, max_payload=MB)
        assert t.take(bad[:cut]) == b""
        with pytest.raises(FrameError) as exc:
            t.take(bad[cut:])
        assert exc.value.code == 1002


def test_tracker_fragmentation_rules() -> None:
    t = FrameTracker(masked=False, max_payload=MB)
    # A ping may come between the fragments of a message.
    t.feed(frame(1, b"a", fin=False) + frame(9, b"p") + frame(0, b"b", fin=False) + frame(0, b"c"))
    assert t.at_boundary
    with pytest.raises(FrameError) as exc:
        FrameTracker(masked=False, max_payload=MB).feed(frame(0, b"orphan"))
    assert exc.value.code == 1002
    with pytest.raises(FrameError) as exc:
        FrameTracker(masked=False, max_payload=MB).feed(
            frame(1, b"a", fin=False) + frame(2, b"interleaved")
        )
    assert exc.value.code == 1002


def test_tracker_64_bit_length_with_top_bit() -> None:
    bad = bytes([0x82, 127]) + struct.pack("!Q", 1 << 63)
    with pytest.raises(FrameError) as exc:
        FrameTracker(masked=False, max_payload=MB).feed(bad)
    assert exc.value.code == 1002


def test_tracker_max_payload() -> None:
    with pytest.raises(FrameError) as exc:
        FrameTracker(masked=False, max_payload=1000).feed(frame(2, length=1001)[:4])
    assert exc.value.code == 1009
    FrameTracker(masked=False, max_payload=1000).feed(frame(2, b"x" * 1000))
    # The limit is on the message, not only each fragment.
    with pytest.raises(FrameError) as exc:
        FrameTracker(masked=False, max_payload=1000).feed(
            frame(2, b"x" * 600, fin=False) + frame(0, b"x" * 600)
        )
    assert exc.value.code == 1009


def test_tracker_rsv_bits() -> None:
    compressed = frame(1, b"xx", rsv=0x40)
    with pytest.raises(FrameError) as exc:
        FrameTracker(masked=False, max_payload=MB).feed(compressed)
    assert exc.value.code == 1002
    FrameTracker(masked=False, max_payload=MB, rsv_allowed=True).feed(compressed)
    for bad in (
        frame(1, b"xx", rsv=0x20),  # RSV2: no extension in use defines it
        frame(9, b"", rsv=0x40),  # control frames are never compressed
        frame(1, b"a", fin=False) + frame(0, b"b", rsv=0x40),  # nor continuations
    ):
        with pytest.raises(FrameError):
            FrameTracker(masked=False, max_payload=MB, rsv_allowed=True).feed(bad)


def test_tracker_settled_is_what_came_before_the_bad_frame() -> None:
    good = frame(1, b"fine") + frame(2, b"x" * 300)
    t = FrameTracker(masked=False, max_payload=MB)
    with pytest.raises(FrameError) as exc:
        t.take(good + frame(3, b"bad"))
    assert exc.value.settled == good
    # A bad header that began in an earlier read: nothing of it was forwarded.
    t = FrameTracker(masked=False, max_payload=MB)
    bad = bytes([0x82, 127]) + struct.pack("!Q", 1 << 63)
    assert t.take(bad[:3]) == b""
    with pytest.raises(FrameError) as exc:
        t.take(bad[3:])
    assert exc.value.settled == b""


def test_tracker_saw_close_once_the_close_frame_has_passed() -> None:
    close = frame(8, struct.pack("!H", 1000) + b"bye", masked=True)
    t = FrameTracker(masked=True, max_payload=MB)
    t.feed(frame(1, b"hi", masked=True))
    for i in range(len(close) - 1):
        t.feed(close[i : i + 1])
        assert not t.saw_close
    t.feed(close[-1:])
    assert t.saw_close and t.at_boundary


def test_tracker_finish_frame() -> None:
    t = FrameTracker(masked=False, max_payload=MB)
    t.take(frame(2, b"y" * 1000)[:100])
    assert t.finish_frame(b"z" * 50) == 50
    assert t.finish_frame(b"z" * 2000) == 1000 - 96 - 50
    assert t.at_boundary and t.finish_frame(b"zz") == 0


def test_close_frame() -> None:
    assert close_frame(1008, "signed out", masked=False) == frame(
        8, struct.pack("!H", 1008) + b"signed out"
    )
    masked = close_frame(1001, "x" * 200, masked=True)
    assert masked[0] == 0x88 and masked[1] == 0x80 | 122
    mask = masked[2:6]
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(masked[6:]))
    assert body == struct.pack("!H", 1001) + b"x" * 120
    t = FrameTracker(masked=True, max_payload=MB)
    t.feed(masked)
    assert t.saw_close


# --- servers ----------------------------------------------------------------------------


@dataclass
class Echo:
    """What the echo upstream saw."""

    closes: list[int | None] = field(default_factory=list)
    flood_sent: int = 0
    extensions: list[str] = field(default_factory=list)


def echo_app(state: Echo) -> web.Application:
    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        state.extensions.append(request.headers.get("Sec-WebSocket-Extensions", ""))
        ws = web.WebSocketResponse(autoping=True, max_msg_size=64 * MB)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                text: str = msg.data
                if text.startswith("close:"):
                    await ws.close(code=int(text.split(":")[1]), message=b"bye")
                elif text.startswith("flood:"):
                    chunk = b"f" * 65536
                    left = int(text.split(":")[1])
                    while left > 0:
                        await ws.send_bytes(chunk[: min(left, len(chunk))])
                        state.flood_sent += min(left, len(chunk))
                        left -= len(chunk)
                elif text.startswith("burst:"):
                    count, size = (int(x) for x in text.split(":")[1:])
                    for i in range(count):
                        await ws.send_str(f"{i}:" + "b" * size)
                elif text.startswith("ping:"):
                    await ws.ping(text[5:].encode())
                elif text == "goodthenbad":
                    assert request.transport is not None
                    request.transport.write(frame(1, b"good") + frame(3, b"nope"))
                elif text == "badframe":
                    # A reserved opcode straight onto the socket.
                    assert request.transport is not None
                    request.transport.write(frame(3, b"nope"))
                else:
                    await ws.send_str(text)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        state.closes.append(ws.close_code)
        return ws

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no")

    app = web.Application()
    app.router.add_get("/forbidden", refuse)
    app.router.add_get("/{tail:.*}", ws_handler)
    return app


@contextlib.asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None and server.sockets
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def request_head(port: int, key: str, path: str = "/ws", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


class Front:
    """Plays clawgate's client side of the relay on 127.0.0.1."""

    def __init__(
        self,
        upstream_port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float | None = None,
        max_payload: int | None = None,
        allow_rsv: bool = True,
    ) -> None:
        self.upstream_port = upstream_port
        self.ssl_context = ssl_context
        self.idle_timeout = idle_timeout
        self.max_payload = max_payload
        self.allow_rsv = allow_rsv
        self.registry = ConnectionRegistry()
        self.conns: list[LiveConnection] = []
        self.relays: list[RawRelay] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Front:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _FrontProtocol(self), "127.0.0.1", 0, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.conns:
            await conn.close(1001, "test over")
        for conn in self.conns:
            await asyncio.wait_for(conn.closed.wait(), 10)

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/ws"

    async def upgrade(self, proto: _FrontProtocol, head: bytes) -> None:
        transport = proto.transport
        assert transport is not None
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
        key = next(v for k, v in headers if k.lower() == "sec-websocket-key")
        extra = "".join(
            f"{k}: {v}\r\n"
            for k, v in headers
            if k.lower() not in {"host", "upgrade", "connection", "sec-websocket-key"}
            and k.lower() != "sec-websocket-version"
        )
        try:
            upgraded = await open_upstream(
                "127.0.0.1",
                self.upstream_port,
                ssl_context=None,
                server_hostname=None,
                request_head=request_head(self.upstream_port, key, path, extra),
                key=key,
                timeout=5,
            )
        except UpstreamError as exc:
            transport.write(f"HTTP/1.1 {exc.status} X\r\nContent-Length: 0\r\n\r\n".encode())
            transport.close()
            return
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            + b"".join(k + b": " + v + b"\r\n" for k, v in upgraded.headers)
            + b"\r\n"
        )
        extensions = upgraded.header(b"sec-websocket-extensions") or b""
        conn = LiveConnection(session=None, host="127.0.0.1", path=path, source_ip="127.0.0.1")
        relay = RawRelay(
            transport,
            upgraded,
            conn,
            self.registry,
            idle_timeout=self.idle_timeout,
            rsv_allowed=self.allow_rsv and b"permessage-deflate" in extensions,
            **({} if self.max_payload is None else {"max_payload": self.max_payload}),
        )
        self.conns.append(conn)
        self.relays.append(relay)
        relay.start(bytes(proto.buffer))


class _FrontProtocol(asyncio.Protocol):
    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.started and b"\r\n\r\n" in self.buffer:
            self.started = True
            head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
            self.buffer = bytearray(rest)
            task = asyncio.ensure_future(self.front.upgrade(self, head))
            self.front.tasks.add(task)
            task.add_done_callback(self.front.tasks.discard)


# --- open_upstream ----------------------------------------------------------------------


async def test_open_upstream_success_keeps_early_frames() -> None:
    state = Echo()
    async with running(echo_app(state)) as port:
        key = new_key()
        # A text frame right behind the request head: the echo comes back right after
        # the 101, possibly in the same read.
        head = request_head(port, key) + frame(1, b"early", masked=True)
        up = await open_upstream(
            "127.0.0.1",
            port,
            ssl_context=None,
            server_hostname=None,
            request_head=head,
            key=key,
            timeout=5,
        )
        assert up.status == 101
        assert up.header(b"Sec-WebSocket-Accept") == accept_for(key).encode()
        await asyncio.sleep(0.2)
        early = up.leftover + b"".join(up.protocol.buffered)
        assert early == frame(1, b"early")
        up.transport.close()


async def test_open_upstream_refused() -> None:
    async with running(echo_app(Echo())) as port:
        key = new_key()
        with pytest.raises(UpstreamError) as exc:
            await open_upstream(
                "127.0.0.1",
                port,
                ssl_context=None,
                server_hostname=None,
                request_head=request_head(port, key, "/forbidden"),
                key=key,
                timeout=5,
            )
        assert (exc.value.status, exc.value.reason) == (403, "upstream_ws_refused:403")


async def test_open_upstream_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UpstreamError) as exc:
        await open_upstream(
            "127.0.0.1",
            port,
            ssl_context=None,
            server_hostname=None,
            request_head=request_head(port, "k"),
            key="k",
            timeout=5,
        )
    assert exc.value.status == 502
    assert exc.value.reason == "upstream_unreachable:ConnectionRefusedError"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: d3Jvbmc=\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: {}\r\n\r\n",
    ],
    ids=["wrong-accept", "no-accept", "no-upgrade"],
)
async def test_open_upstream_bad_handshake(answer: bytes) -> None:
    key = new_key()
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer.replace(b"{}", accept_for(key).encode()))
        await reader.read()  # until clawgate closes
        closed.set()
        writer.close()

    async with raw_server(handler) as port:
        with pytest.raises(UpstreamError) as exc:
            await open_upstream(
                "127.0.0.1",
                port,
                ssl_context=None,
                server_hostname=None,
                request_head=request_head(port, key),
                key=key,
                timeout=5,
            )
        assert (exc.value.status, exc.value.reason) == (502, "upstream_ws_bad_handshake")
        await asyncio.wait_for(closed.wait(), 5)


async def test_open_upstream_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async with raw_server(handler) as port:
        with pytest.raises(UpstreamError) as exc:
            await open_upstream(
                "127.0.0.1",
                port,
                ssl_context=None,
                server_hostname=None,
                request_head=request_head(port, "k"),
                key="k",
                timeout=0.3,
            )
        assert (exc.value.status, exc.value.reason) == (504, "upstream_timeout")


# --- the relay, end to end --------------------------------------------------------------


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    made = generate_self_signed(["127.0.0.1"])
    tmp: Path = tmp_path_factory.mktemp("tls")
    (tmp / "cert.pem").write_bytes(made.cert_pem)
    (tmp / "key.pem").write_bytes(made.key_pem)
    ctx = new_server_context()
    ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    return ctx


@dataclass
class Setup:
    loop_factory: Callable[[], asyncio.AbstractEventLoop]
    tls: ssl.SSLContext | None

    def run(self, scenario: Callable[[Setup], Awaitable[None]]) -> None:
        with asyncio.Runner(loop_factory=self.loop_factory) as runner:
            runner.run(asyncio.wait_for(scenario(self), 30))

    @contextlib.asynccontextmanager
    async def stack(self, **front: Any) -> AsyncIterator[tuple[Front, Echo, aiohttp.ClientSession]]:
        state = Echo()
        async with (
            running(echo_app(state)) as port,
            Front(port, ssl_context=self.tls, **front) as gate,
            aiohttp.ClientSession() as session,
        ):
            yield gate, state, session


@pytest.fixture(params=["asyncio-tcp", "uvloop-tcp", "uvloop-tls"])
def setup(request: pytest.FixtureRequest, server_tls: ssl.SSLContext) -> Iterator[Setup]:
    loop_name, transport = request.param.split("-")
    factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
    yield Setup(factory, server_tls if transport == "tls" else None)


def connect(
    session: aiohttp.ClientSession, gate: Front, **kw: Any
) -> Any:  # the ws_connect context manager
    kw.setdefault("autoping", False)
    kw.setdefault("max_msg_size", 64 * MB)
    return session.ws_connect(gate.url, ssl=False, **kw)


async def wait_closed(gate: Front) -> None:
    for conn in gate.conns:
        await asyncio.wait_for(conn.closed.wait(), 10)
    assert len(gate.registry) == 0


def test_relay_echo(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, _state, session), connect(session, gate) as ws:
            assert len(gate.registry) == 1
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "hello"
            await ws.send_bytes(b"\x00\x01binary")
            assert (await ws.receive(timeout=5)).data == b"\x00\x01binary"
            big = os.urandom(MB)
            await ws.send_bytes(big)
            assert (await ws.receive(timeout=10)).data == big
            for i in range(200):
                await ws.send_str(f"m{i}")
            for i in range(200):
                assert (await ws.receive(timeout=5)).data == f"m{i}"

    setup.run(scenario)


def test_relay_pings_pass_through(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, _state, session), connect(session, gate) as ws:
            await ws.ping(b"from-client")
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (WSMsgType.PONG, b"from-client")
            await ws.send_str("ping:from-upstream")
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (WSMsgType.PING, b"from-upstream")

    setup.run(scenario)


def test_relay_client_close_reaches_upstream(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, state, session):
            async with connect(session, gate) as ws:
                await ws.send_str("x")
                await ws.receive(timeout=5)
                assert await ws.close(code=4002, message=b"done")
            await wait_closed(gate)
            assert state.closes == [4002]

    setup.run(scenario)


def test_relay_upstream_close_reaches_client(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, _state, session):
            async with connect(session, gate) as ws:
                await ws.send_str("close:4001")
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4001, "bye")
            await wait_closed(gate)

    setup.run(scenario)


def test_relay_clawgate_close_reaches_a_client_that_reads_late(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, state, session):
            async with connect(session, gate) as ws:
                # Far more than the socket buffers hold, so part of it is still queued
                # (or not yet sent) when clawgate closes.
                await ws.send_str("burst:40:100000")
                await asyncio.sleep(0.3)
                await gate.conns[0].close(1008, "signed out")
                await asyncio.sleep(1.0)  # the client is not reading
                for i in range(40):
                    msg = await ws.receive(timeout=5)
                    assert msg.type == WSMsgType.TEXT and msg.data.startswith(f"{i}:"), i
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, "signed out")
            await wait_closed(gate)
            assert state.closes == [1001]

    setup.run(scenario)


def test_relay_idle_timeout(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack(idle_timeout=0.3) as (gate, state, session):
            async with connect(session, gate) as ws:
                await ws.send_str("still here")
                await ws.receive(timeout=5)
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1001, "idle timeout")
            await wait_closed(gate)
            assert state.closes == [1001]
            assert gate.conns[0].close_reason == "idle timeout"

    setup.run(scenario)


def test_relay_backpressure_bounds_buffers(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, state, session), connect(session, gate) as ws:
            total = 50 * MB
            await ws.send_str(f"flood:{total}")
            await asyncio.sleep(1.0)  # the client reads nothing meanwhile
            relay = gate.relays[0]
            client_buffer = relay._client.get_write_buffer_size()
            assert client_buffer < 2 * MB, client_buffer
            assert not relay._up.is_reading()
            stalled_at = state.flood_sent
            # The upstream is held back: nothing more gets out while the client reads
            # nothing. What it did send sits in the relay's bounded buffers (above) and
            # in the kernel's loopback socket buffers, which autotune to several MB each.
            await asyncio.sleep(0.5)
            assert state.flood_sent == stalled_at
            assert stalled_at < 32 * MB, stalled_at
            received = 0
            while received < total:
                msg = await ws.receive(timeout=10)
                assert msg.type == WSMsgType.BINARY
                received += len(msg.data)
                assert relay._client.get_write_buffer_size() < 2 * MB
            assert received == total
            assert relay._up.is_reading()

    setup.run(scenario)


def test_relay_permessage_deflate(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, state, session), connect(session, gate, compress=15) as ws:
            assert ws.compress == 15
            assert "permessage-deflate" in state.extensions[0]
            text = "compressible " * 5000
            await ws.send_str(text)
            assert (await ws.receive(timeout=5)).data == text

    setup.run(scenario)


def test_relay_refuses_compressed_frames_without_the_extension(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack(allow_rsv=False) as (gate, state, session):
            async with connect(session, gate, compress=15) as ws:
                await ws.send_str("compressible " * 100)
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1002)
            await wait_closed(gate)
            assert state.closes == [1001]

    setup.run(scenario)


def test_relay_refuses_a_bad_upstream_frame(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, _state, session):
            async with connect(session, gate) as ws:
                await ws.send_str("before")
                assert (await ws.receive(timeout=5)).data == "before"
                await ws.send_str("badframe")
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1002)
            await wait_closed(gate)

    setup.run(scenario)


def test_relay_too_big_message_is_1009(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack(max_payload=64 * 1024) as (gate, state, session):
            async with connect(session, gate) as ws:
                await ws.send_bytes(b"x" * 1000)
                assert (await ws.receive(timeout=5)).data == b"x" * 1000
                await ws.send_bytes(b"x" * 100_000)
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
            await wait_closed(gate)
            assert state.closes == [1001]
            assert gate.conns[0].close_code == 1009

    setup.run(scenario)


def test_relay_client_vanishing_closes_upstream_with_1001(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, state, session):
            ws = await connect(session, gate)
            await ws.send_str("x")
            await ws.receive(timeout=5)
            conn = ws._response.connection
            assert conn is not None and conn.transport is not None
            conn.transport.abort()
            await wait_closed(gate)
            for _ in range(50):
                if state.closes:
                    break
                await asyncio.sleep(0.05)
            assert state.closes == [1001]

    setup.run(scenario)


def test_relay_registry_and_closed(setup: Setup) -> None:
    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, _state, session):
            sockets = [await connect(session, gate) for _ in range(5)]
            for ws in sockets:
                await ws.send_str("x")
                await ws.receive(timeout=5)
            assert len(gate.registry) == 5
            # Reading is what makes aiohttp answer a close, so read while clawgate closes.
            readers = [asyncio.ensure_future(ws.receive(timeout=5)) for ws in sockets]
            await asyncio.wait_for(gate.registry.close_all(1012, "restart"), 2)
            assert all(c.closed.is_set() for c in gate.conns)
            assert len(gate.registry) == 0
            for reader in readers:
                msg = await reader
                assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1012)

    setup.run(scenario)


def test_upgraded_header_lookup() -> None:
    up = Upgraded(101, "OK", [(b"X-A", b"1")], None, None, b"")  # type: ignore[arg-type]
    assert up.header(b"x-a") == b"1" and up.header(b"x-b") is None


# --- refusals keep order, close codes by class ------------------------------------------


async def raw_client(
    s: Setup, gate: Front
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that writes frames as they are, bad ones included."""
    tls = None
    if s.tls is not None:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=tls)
    writer.write(request_head(gate.port, new_key()))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await asyncio.wait_for(reader.readexactly(2), 5)
    assert not b1 & 0x80, "frames to the client are never masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    return b0 & 0x0F, await asyncio.wait_for(reader.readexactly(n), 5)


async def upstream_closed(state: Echo) -> list[int | None]:
    for _ in range(100):
        if state.closes:
            break
        await asyncio.sleep(0.05)
    return state.closes


def test_relay_refusal_delivers_the_upstreams_answers_first(setup: Setup) -> None:
    """A good message and a bad frame in one read: the client still gets the echo of
    the good one before clawgate's 1002, and the upstream a clean 1001 close."""

    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, state, _session):
            reader, writer = await raw_client(s, gate)
            writer.write(
                frame(1, b"first", masked=True)
                + frame(2, b"x" * 70000, masked=True)
                + frame(1, b"bad", masked=True, rsv=0x20)
            )
            assert await read_frame(reader) == (1, b"first")
            assert await read_frame(reader) == (2, b"x" * 70000)
            opcode, payload = await read_frame(reader)
            assert (opcode, payload[:2]) == (8, (1002).to_bytes(2, "big"))
            assert payload[2:] == b"reserved bits set"
            assert await asyncio.wait_for(reader.read(), 5) == b""  # and nothing after
            writer.close()
            await wait_closed(gate)
            assert await upstream_closed(state) == [1001]
            assert gate.conns[0].close_code == 1002

    setup.run(scenario)


def test_relay_bad_upstream_frame_after_data_in_the_same_read(setup: Setup) -> None:
    """The upstream writes a good frame and a bad one together: the good one reaches
    the client, then 1002; the bad one never does."""

    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, _state, _session):
            reader, writer = await raw_client(s, gate)
            writer.write(frame(1, b"goodthenbad", masked=True))
            assert await read_frame(reader) == (1, b"good")
            opcode, payload = await read_frame(reader)
            assert (opcode, payload[:2]) == (8, (1002).to_bytes(2, "big"))
            assert payload[2:] == b"reserved opcode"
            writer.write(frame(8, payload[:2], masked=True))  # the client's reply
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await wait_closed(gate)

    setup.run(scenario)


# (what the client sends, what the client hears back, what the upstream was closed with).
# A valid close passes to the upstream as it is and its answer comes back (the echo
# answers every close with 1000); any other is failed by clawgate itself.
CLOSE_CLASSES = {
    "normal": ((1000).to_bytes(2, "big") + b"bye", 1000, 1000),
    "defined": ((1013).to_bytes(2, "big"), 1000, 1013),
    "application": ((4999).to_bytes(2, "big") + "\u00e9".encode(), 1000, 4999),
    "reserved-1004": ((1004).to_bytes(2, "big"), 1002, 1001),
    "report-only-1005": ((1005).to_bytes(2, "big"), 1002, 1001),
    "report-only-1006": ((1006).to_bytes(2, "big"), 1002, 1001),
    "tls-1015": ((1015).to_bytes(2, "big"), 1002, 1001),
    "unassigned-2000": ((2000).to_bytes(2, "big"), 1002, 1001),
    "below-range": ((999).to_bytes(2, "big"), 1002, 1001),
    "above-range": ((5000).to_bytes(2, "big"), 1002, 1001),
    "reason-not-utf8": ((1000).to_bytes(2, "big") + b"\xce\xba\xff", 1007, 1001),
}


@pytest.mark.parametrize("case", sorted(CLOSE_CLASSES))
def test_relay_client_close_codes_by_class(setup: Setup, case: str) -> None:
    sent, heard, upstream_saw = CLOSE_CLASSES[case]

    async def scenario(s: Setup) -> None:
        async with s.stack() as (gate, state, _session):
            reader, writer = await raw_client(s, gate)
            writer.write(frame(1, b"before", masked=True) + frame(8, sent, masked=True))
            assert await read_frame(reader) == (1, b"before")
            opcode, payload = await read_frame(reader)
            assert opcode == 8
            assert int.from_bytes(payload[:2], "big") == heard
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await wait_closed(gate)
            assert await upstream_closed(state) == [upstream_saw]

    setup.run(scenario)


def test_relay_refusal_waits_only_so_long_for_a_silent_upstream(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream that never answers clawgate's close: what it sent in the meantime
    still reaches the client, and the client's 1002 goes out once the drain is over."""
    monkeypatch.setattr("proxy.wsrelay.REFUSAL_DRAIN_TIMEOUT", 0.3)
    # The closing deadline, which also ends the upstream link that never replies.
    monkeypatch.setattr("proxy.wsrelay.CLOSE_HANDSHAKE_TIMEOUT", 1.0)
    seen: list[bytes] = []

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_for(key).encode()
            + b"\r\n\r\n"
        )
        seen.append(await reader.read(1024))
        await asyncio.sleep(0.1)
        writer.write(frame(1, b"late"))
        await reader.read()  # deaf to the close; ends when clawgate drops the link
        writer.close()

    async def scenario(s: Setup) -> None:
        async with raw_server(deaf) as port, Front(port, ssl_context=s.tls) as gate:
            reader, writer = await raw_client(s, gate)
            started = asyncio.get_running_loop().time()
            writer.write(frame(1, b"hi", masked=True) + frame(9, b"x" * 126, masked=True))
            assert await read_frame(reader) == (1, b"late")
            opcode, payload = await read_frame(reader)
            assert (opcode, payload) == (8, (1002).to_bytes(2, "big") + b"control frame too big")
            assert asyncio.get_running_loop().time() - started >= 0.25
            writer.close()
            await wait_closed(gate)
            assert seen and seen[0].startswith(frame(1, b"hi", masked=True)[:2])

    setup.run(scenario)
