"""Raw WebSocket relay: after both handshakes, bytes go between the two sockets as they are.

Decoding every frame on the way through (two WebSocket objects and three tasks per
connection) costs most of the round-trip rate and tens of KB per idle connection. A
relay does not need the payloads: it needs to know where frames begin and end, so it can
refuse frames no endpoint should see and put its own close frame between two frames.
So each direction runs a :class:`FrameTracker` over the byte stream, payloads are never
copied or unmasked, and everything happens in protocol callbacks, with no task per
connection.

A trailing partial frame header is held back rather than forwarded: then a refused frame
never reaches the peer even in part, and a close frame clawgate writes always lands
between two whole frames.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
from collections.abc import Callable
from typing import cast

import httptools
import structlog

from proxy import websocket
from proxy.response_head import NO_EXTRAS, response_head_bytes
from proxy.upstream_link import LinkPool, PoolKey, UpstreamError
from proxy.websocket import (
    CLOSE_HANDSHAKE_TIMEOUT,
    GOING_AWAY,
    MAX_MESSAGE,
    REFUSAL_DRAIN_TIMEOUT,
    ConnectionRegistry,
    LiveConnection,
)

log = structlog.get_logger("clawgate.websocket")

__all__ = [
    "FrameError",
    "FrameTracker",
    "HandshakeProtocol",
    "RawRelay",
    "Upgraded",
    "close_frame",
    "open_upstream",
]

PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007
MESSAGE_TOO_BIG = 1009
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A response head larger than this is not a WebSocket handshake worth waiting for.
_MAX_HEAD = 64 * 1024


class FrameError(Exception):
    """A frame a relay must not pass on; ``code`` is the close code to answer with.

    ``settled`` is what of the chunk being fed may still be forwarded: the bytes before
    the refused frame's header, which end on a frame boundary.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.settled: bytes = b""


class FrameTracker:
    """Follows RFC 6455 frame headers in one direction of a byte stream.

    Payloads are skipped by length. ``take`` returns the part of what it has seen that
    may be forwarded now (everything except a trailing partial header, which it keeps
    until the rest arrives); ``feed`` is the same for callers that only watch.
    """

    __slots__ = (
        "_close",
        "_frag",
        "_held",
        "_mask",
        "_max",
        "_msg",
        "_rsv",
        "cut_close",
        "need",
        "saw_close",
    )

    def __init__(self, *, masked: bool, max_payload: int, rsv_allowed: bool = False) -> None:
        self._mask = 0x80 if masked else 0
        self._max = max_payload
        # permessage-deflate (RFC 7692) is the one extension that reaches a relay; it
        # defines RSV1 only, and only on the first frame of a data message.
        self._rsv = 0x40 if rsv_allowed else 0
        # Payload bytes of the current frame still to come; 0 between frames.
        self.need = 0
        self._held = b""
        self._close = False
        self._frag = False
        self._msg = 0
        self.saw_close = False
        # Set while a relay drains this direction before a close of its own: the close
        # frame that answers clawgate's is swallowed, with anything after it.
        self.cut_close = False

    @property
    def at_boundary(self) -> bool:
        return self.need == 0 and not self._held

    def feed(self, data: bytes) -> None:
        self.take(data)

    def finish_frame(self, data: bytes) -> int:
        """Consume only the rest of the current frame's payload; returns how much of
        ``data`` that was. Lets a relay forward up to the next boundary and stop there."""
        need = self.need
        if need == 0:
            return 0
        n = len(data)
        if n < need:
            self.need = need - n
            return n
        self.need = 0
        if self._close:
            self._close = False
            self.saw_close = True
        return need

    def take(self, data: bytes) -> bytes:
        """Track ``data``; return what may be forwarded now (usually ``data`` itself)."""
        n = len(data)
        need = self.need
        held = self._held
        if need:
            if need > n:
                self.need = need - n
                return data
            self.need = 0
            if self._close:
                self._close = False
                self.saw_close = True
            pos = need
        elif held:
            # A header split across reads: the rare case, so a copy is fine here.
            data = held + data
            self._held = b""
            pos = 0
            n = len(data)
        else:
            pos = 0
        while pos < n:
            if n - pos < 2:
                return self._hold(data, pos)
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            if length < 126:
                size = 2
            elif length == 126:
                size = 4
            else:
                size = 10
            if b1 & 0x80:
                size += 4
            if n - pos < size:
                return self._hold(data, pos)
            if length == 126:
                length = (data[pos + 2] << 8) | data[pos + 3]
            elif length == 127:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            opcode = b0 & 0x0F
            if b0 & 0x70 or (b1 & 0x80) != self._mask or not 0 < opcode < 3 or b0 < 0x80:
                if opcode == 8 and self.cut_close:
                    self.saw_close = True
                    self._held = b""
                    return data[:pos]
                self._check(data, pos, b0, b1, opcode, length)
            elif length > self._max:
                if length >> 63:
                    self._fail(data, pos, PROTOCOL_ERROR, "invalid frame length")
                self._fail(data, pos, MESSAGE_TOO_BIG, "frame too big")
            elif self._frag:
                self._fail(data, pos, PROTOCOL_ERROR, "message interleaved with a fragmented one")
            end = pos + size + length
            if opcode == 8 and length:
                if end > n:
                    # A close frame is checked whole (at most 131 bytes): held until then.
                    return self._hold(data, pos)
                self._check_close(data, pos + size, length)
            if end > n:
                self.need = end - n
                self._close = opcode == 8
                return data
            if opcode == 8:
                self.saw_close = True
            pos = end
        return data

    def _hold(self, data: bytes, pos: int) -> bytes:
        self._held = data[pos:]
        return data[:pos]

    def _fail(self, data: bytes, pos: int, code: int, reason: str) -> None:
        exc = FrameError(code, reason)
        exc.settled = data[:pos]
        self._held = b""
        self.need = 0
        raise exc

    def _check_close(self, data: bytes, start: int, length: int) -> None:
        """RFC 6455 7.4 and 5.5.1: a close frame's code must be one an endpoint may send,
        and its reason UTF-8; else the sender is failed (1002 / 1007) and the frame never
        passes. ``start`` is where the payload begins (the masking key ends there)."""
        payload = data[start : start + length]
        if self._mask:
            key = data[start - 4 : start]
            payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
        code = int.from_bytes(payload[:2], "big")
        frame = start - (6 if self._mask else 2)  # payloads of 2..125 bytes: a short header
        if not valid_close_code(code):
            self._fail(data, frame, PROTOCOL_ERROR, "invalid close code")
        try:
            payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            self._fail(data, frame, INVALID_PAYLOAD, "close reason is not UTF-8")

    def _check(self, data: bytes, pos: int, b0: int, b1: int, opcode: int, length: int) -> None:
        """The slow path of the header checks: anything but a whole unextended data frame."""
        if (b1 & 0x80) != self._mask:
            self._fail(data, pos, PROTOCOL_ERROR, "wrong masking for the direction")
        rsv = b0 & 0x70
        if rsv and (rsv & ~self._rsv or opcode == 0 or opcode >= 8):
            self._fail(data, pos, PROTOCOL_ERROR, "reserved bits set")
        if length >> 63:
            self._fail(data, pos, PROTOCOL_ERROR, "invalid frame length")
        fin = b0 & 0x80
        if opcode >= 8:
            if opcode > 0xA:
                self._fail(data, pos, PROTOCOL_ERROR, "reserved opcode")
            if not fin:
                self._fail(data, pos, PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                self._fail(data, pos, PROTOCOL_ERROR, "control frame too big")
            if opcode == 8 and length == 1:
                self._fail(data, pos, PROTOCOL_ERROR, "invalid close frame")
            return
        if opcode == 0:
            if not self._frag:
                self._fail(data, pos, PROTOCOL_ERROR, "continuation without a message")
            total = self._msg + length
        elif opcode < 3:
            if self._frag:
                self._fail(data, pos, PROTOCOL_ERROR, "message interleaved with a fragmented one")
            total = length
        else:
            self._fail(data, pos, PROTOCOL_ERROR, "reserved opcode")
            return
        if total > self._max:
            self._fail(data, pos, MESSAGE_TOO_BIG, "message too big")
        self._frag = not fin
        self._msg = total if not fin else 0


def valid_close_code(code: int) -> bool:
    """Codes an endpoint may put in a close frame: the defined ones (1004 is reserved,
    1005, 1006 and 1015 are for reports only, never the wire), and 3000-4999 for
    libraries and applications."""
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    """A close frame; the reason is cut to 120 bytes so the frame stays a control frame."""
    payload = code.to_bytes(2, "big") + reason.encode()[:120]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    mask = os.urandom(4)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + mask + body


def accept_for(key: str) -> str:
    digest = hashlib.sha1(key.encode() + _WS_GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


class HandshakeProtocol(asyncio.Protocol):
    """The upstream connection's protocol until the relay takes over.

    After the 101 head it stops reading and keeps whatever had already arrived, so no
    frame the upstream sends before the relay starts is lost.
    """

    __slots__ = (
        "_head",
        "_name",
        "_parser",
        "_size",
        "buffered",
        "ended",
        "headers",
        "leftover",
        "lost",
        "reason",
        "status",
        "transport",
        "upgrade",
    )

    def __init__(self, head: asyncio.Future[None]) -> None:
        self._head = head
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._size = 0
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.leftover = b""
        self.buffered: list[bytes] = []
        self.upgrade = False
        self.ended = False
        self.lost = False

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self.buffered.append(data)
            return
        self._size += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.leftover = data[upgrade.args[0] :]
            self.upgrade = True
            self._head_done()
            return
        except httptools.HttpParserError:
            self._head_done()
            return
        if self.status or self._size > _MAX_HEAD:
            # A head that is not a 101 (or 101 without an upgrade, or no end in sight).
            self._head_done()

    def _head_done(self) -> None:
        self._parser = None
        if self.transport is not None:
            self.transport.pause_reading()
        if not self._head.done():
            self._head.set_result(None)

    def eof_received(self) -> bool:
        self.ended = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = self.lost = True
        self._parser = None
        if not self._head.done():
            self._head.set_exception(ConnectionResetError("upstream closed during handshake"))


class Upgraded:
    """An upstream connection whose WebSocket handshake succeeded."""

    __slots__ = ("headers", "leftover", "protocol", "reason", "status", "transport")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: list[tuple[bytes, bytes]],
        transport: asyncio.Transport,
        protocol: HandshakeProtocol,
        leftover: bytes,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.transport = transport
        self.protocol = protocol
        self.leftover = leftover

    def header(self, name: bytes) -> bytes | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


def _tokens(value: bytes | None) -> set[bytes]:
    if value is None:
        return set()
    return {t.strip().lower() for t in value.split(b",")}


def valid_client_key(key: str | None) -> bool:
    """RFC 6455 4.2.1: the key is 16 random bytes, base64-encoded."""
    if key is None:
        return False
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except ValueError:
        return False


async def open_upstream(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    request_head: bytes,
    key: str,
    timeout: float | None,  # noqa: ASYNC109 - one deadline for connect, TLS and the 101
) -> Upgraded:
    """Connect to the upstream and run the client side of the WebSocket handshake.

    Raises UpstreamError with the status clawgate should answer the client with.
    """
    loop = asyncio.get_running_loop()
    head: asyncio.Future[None] = loop.create_future()
    protocol = HandshakeProtocol(head)
    transport: asyncio.Transport | None = None
    try:
        async with asyncio.timeout(timeout):
            if ssl_context is None:
                transport, _ = await loop.create_connection(lambda: protocol, host, port)
            else:
                transport, _ = await loop.create_connection(
                    lambda: protocol,
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=server_hostname,
                )
            transport.write(request_head)
            await head
    except TimeoutError:
        _drop(transport, protocol)
        raise UpstreamError(504, "upstream_timeout") from None
    except (OSError, ssl.SSLError) as exc:
        _drop(transport, protocol)
        raise UpstreamError(502, f"upstream_unreachable:{type(exc).__name__}") from None
    except BaseException:
        _drop(transport, protocol)
        raise
    transport = protocol.transport
    assert transport is not None
    status = protocol.status
    if status != 101:
        transport.abort()
        if status == 0:
            raise UpstreamError(502, "upstream_ws_bad_handshake")
        raise UpstreamError(
            502 if status >= 500 or status < 400 else status, f"upstream_ws_refused:{status}"
        )
    upgraded = Upgraded(
        status, protocol.reason, protocol.headers, transport, protocol, protocol.leftover
    )
    accept = upgraded.header(b"sec-websocket-accept")
    if (
        b"websocket" not in _tokens(upgraded.header(b"upgrade"))
        or b"upgrade" not in _tokens(upgraded.header(b"connection"))
        or accept is None
        or accept.strip() != accept_for(key).encode()
        or not protocol.upgrade
    ):
        transport.abort()
        raise UpstreamError(502, "upstream_ws_bad_handshake")
    protocol.leftover = b""
    return upgraded


def _drop(transport: asyncio.Transport | None, protocol: HandshakeProtocol) -> None:
    transport = transport or protocol.transport
    if transport is not None:
        transport.abort()


# Direction states: relaying bytes; waiting for the next frame boundary to write a close
# frame of clawgate's own; done (a close frame went out, nothing more is forwarded).
_RELAY, _INJECT, _DONE = 0, 1, 2


class _ClientSide(asyncio.Protocol):
    __slots__ = ("relay",)

    def __init__(self, relay: RawRelay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        self.relay._from_client(data)

    def eof_received(self) -> bool:
        self.relay._guard(self.relay._ended, True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay._guard(self.relay._lost, True)

    def pause_writing(self) -> None:
        self.relay._guard(self.relay._pause, True)

    def resume_writing(self) -> None:
        self.relay._guard(self.relay._resume, True)


class _UpstreamSide(asyncio.Protocol):
    __slots__ = ("relay",)

    def __init__(self, relay: RawRelay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        self.relay._from_upstream(data)

    def eof_received(self) -> bool:
        self.relay._guard(self.relay._ended, False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay._guard(self.relay._lost, False)

    def pause_writing(self) -> None:
        self.relay._guard(self.relay._pause, False)

    def resume_writing(self) -> None:
        self.relay._guard(self.relay._resume, False)


class RawRelay:
    """Relays one upgraded WebSocket between the client and the upstream transport.

    ``close`` (reached through ``LiveConnection.close``) writes clawgate's close frame to
    the client behind whatever was already relayed, so a client that reads late still
    gets the code, and 1001 to the upstream; each at a frame boundary of its direction.
    A side's transport is closed once a close frame went to it and its own close (or
    its end) came back; one deadline bounds all of that.
    """

    __slots__ = (
        "_client",
        "_client_gone",
        "_client_lost",
        "_closing",
        "_conn",
        "_down",
        "_down_close",
        "_down_state",
        "_drain_timer",
        "_idle",
        "_last",
        "_loop",
        "_registry",
        "_timer",
        "_up",
        "_up_gone",
        "_up_lost",
        "_up_state",
        "_upgraded",
        "_upward",
    )

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: Upgraded,
        conn: LiveConnection,
        registry: ConnectionRegistry,
        *,
        idle_timeout: float | None,
        rsv_allowed: bool,
        max_payload: int = MAX_MESSAGE,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = client
        self._up = upstream.transport
        self._upgraded: Upgraded | None = upstream
        self._conn = conn
        self._registry = registry
        self._idle = idle_timeout
        self._upward = FrameTracker(masked=True, max_payload=max_payload, rsv_allowed=rsv_allowed)
        self._down = FrameTracker(masked=False, max_payload=max_payload, rsv_allowed=rsv_allowed)
        # _up_state is about bytes going to the upstream, _down_state to the client.
        self._up_state = _RELAY
        self._down_state = _RELAY
        self._down_close = b""
        self._closing = False
        # "gone": nothing more will be read from that side; "lost": its transport is closed.
        self._client_gone = False
        self._up_gone = False
        self._client_lost = False
        self._up_lost = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

    # lifecycle

    def start(self, client_leftover: bytes) -> None:
        """Take over both transports; ``client_leftover`` is what the client sent after
        its request head. The client transport must not be closing."""
        upgraded = self._upgraded
        assert upgraded is not None
        self._upgraded = None
        handshake = upgraded.protocol
        self._client.set_protocol(_ClientSide(self))
        self._up.set_protocol(_UpstreamSide(self))
        self._registry.add(self._conn)
        self._conn.closer = self.close
        closed_early = self._conn.closing  # asked to close while the handshakes ran
        self._last = self._loop.time()
        if self._idle is not None:
            self._timer = self._loop.call_at(self._last + self._idle, self._tick)
        early = b"".join([upgraded.leftover, *handshake.buffered])
        upgraded.leftover = b""
        handshake.buffered = []
        if early:
            self._from_upstream(early)
        if client_leftover:
            self._from_client(client_leftover)
        if handshake.lost:
            # Its connection_lost went to the handshake protocol; it will not come again.
            self._guard(self._lost, False)
        elif handshake.ended:
            self._guard(self._ended, False)
        elif not self._up.is_closing():
            self._up.resume_reading()
        if closed_early:
            self.close(self._conn.close_code, self._conn.close_reason)

    def close(self, code: int, reason: str) -> None:
        """Close the client with ``code`` and the upstream with 1001; returns at once."""
        if self._closing or (self._client_lost and self._up_lost):
            return
        self._closing = True
        self._arm_deadline()
        if self._down_state == _RELAY:
            if self._client.is_closing():
                self._down_state = _DONE
            else:
                self._down_close = close_frame(code, reason, masked=False)
                self._down_state = _INJECT
        if self._up_state == _RELAY:
            self._up_state = _DONE if self._up.is_closing() else _INJECT
        self._progress()

    # data

    def _from_client(self, data: bytes) -> None:
        try:
            self._last = self._loop.time()
            if self._up_state == _RELAY:
                tracker = self._upward
                out = tracker.take(data)
                if out:
                    self._up.write(out)
                if tracker.saw_close:
                    self._up_state = _DONE
                    self._passed_close()
            elif not self._client_gone:
                self._after_close(data, self._upward, self._up_state, self._up, upward=True)
        except FrameError as exc:
            self._refused(exc, upward=True)
        except Exception:
            self._write_failed(self._up, False)

    def _from_upstream(self, data: bytes) -> None:
        try:
            self._last = self._loop.time()
            if self._down_state == _RELAY:
                tracker = self._down
                out = tracker.take(data)
                if out:
                    self._client.write(out)
                if tracker.saw_close:
                    if tracker.cut_close:
                        self._end_drain()
                    else:
                        self._down_state = _DONE
                        self._passed_close()
            elif not self._up_gone:
                self._after_close(data, self._down, self._down_state, self._client, upward=False)
        except FrameError as exc:
            self._refused(exc, upward=False)
        except Exception:
            self._write_failed(self._client, True)

    def _write_failed(self, dst: asyncio.Transport, client: bool) -> None:
        if dst.is_closing():
            # A transport that failed a moment ago refuses writes until its
            # connection_lost comes round; that is a side ending, not a bug.
            self._guard(self._ended, client)
        else:
            self._crash()

    def _after_close(
        self,
        data: bytes,
        tracker: FrameTracker,
        state: int,
        dst: asyncio.Transport,
        *,
        upward: bool,
    ) -> None:
        """Bytes from a side once its direction is closing: the rest of the current
        frame still goes out, then nothing; they are only watched for the close reply."""
        if state == _INJECT:
            done = tracker.finish_frame(data)
            if done:
                dst.write(data[:done])
                data = data[done:]
            if tracker.need == 0:
                self._inject(upward)
        if data and not tracker.saw_close:
            tracker.feed(data)
        self._progress()

    def _passed_close(self) -> None:
        # A close frame went through end to end: the endpoints run the closing handshake,
        # clawgate only bounds how long it may take.
        self._arm_deadline()
        self._progress()

    def _inject(self, upward: bool) -> None:
        if upward:
            self._up_state = _DONE
            if not self._up.is_closing():
                self._up.write(close_frame(GOING_AWAY, "client connection ended", masked=True))
        else:
            self._down_state = _DONE
            if not self._client.is_closing():
                self._client.write(self._down_close)
            self._down_close = b""

    def _progress(self) -> None:
        """Write pending close frames that can go now; close sides whose part is over."""
        if self._down_state == _INJECT and self._down.need == 0:
            self._inject(False)
        if self._up_state == _INJECT and self._upward.need == 0:
            self._inject(True)
        client, up = self._client, self._up
        if not client.is_closing():
            # Stuck: mid-frame towards the client and the rest of that frame never comes.
            stuck = self._down_state == _INJECT and self._up_gone
            replied = self._upward.saw_close or self._client_gone
            if stuck or (self._down_state == _DONE and replied):
                client.close()
        if not up.is_closing():
            stuck = self._up_state == _INJECT and self._client_gone
            replied = self._down.saw_close or self._up_gone
            if stuck or (self._up_state == _DONE and replied):
                up.close()

    def _refused(self, exc: FrameError, *, upward: bool) -> None:
        """A frame no endpoint may see: pass on what came before it, then close.

        The sender's stream cannot be followed past a bad header, so nothing more is read
        from it and no close reply is waited for. When the client sent it, the upstream
        may still be answering what came before: those answers reach the client first
        (``_drain``), as they would have from an endpoint that read frames in order."""
        log.info(
            "websocket_frame_refused",
            direction="client_to_upstream" if upward else "upstream_to_client",
            code=exc.code,
            reason=exc.reason,
            user=self._conn.user,
        )
        try:
            if upward:
                if exc.settled and self._up_state == _RELAY:
                    self._up.write(exc.settled)
                self._client_gone = True
                self._client.pause_reading()
                if not self._closing and self._down_state == _RELAY and not self._up_gone:
                    self._drain(exc.code, exc.reason)
                    return
            else:
                if exc.settled and self._down_state == _RELAY:
                    self._client.write(exc.settled)
                self._up_gone = True
                self._up.pause_reading()
                if self._down.cut_close:
                    self._end_drain()
            self._request_close(exc.code, exc.reason)
            self._progress()
        except Exception:
            self._crash()

    def _drain(self, code: int, reason: str) -> None:
        """Close the upstream now and the client once the upstream has replied (or
        ended, or taken too long): everything the upstream sent before its close reply
        is relayed first; the reply itself is swallowed and the client hears ``code``."""
        conn = self._conn
        if not conn.closing:
            conn.closing = True
            conn.close_code, conn.close_reason = code, reason
        self._closing = True
        self._arm_deadline()
        self._down_close = close_frame(code, reason, masked=False)
        self._down.cut_close = True
        self._up_state = _DONE if self._up.is_closing() else _INJECT
        self._drain_timer = self._loop.call_later(REFUSAL_DRAIN_TIMEOUT, self._drain_expired)
        self._progress()

    def _drain_expired(self) -> None:
        self._drain_timer = None
        self._guard(lambda _: self._end_drain(), False)

    def _end_drain(self) -> None:
        """The client's close goes out at the next frame boundary towards it."""
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self._down_state == _RELAY and self._down.cut_close:
            self._down_state = _INJECT
        self._progress()

    def _request_close(self, code: int, reason: str) -> None:
        conn = self._conn
        if not conn.closing:
            conn.closing = True
            conn.close_code, conn.close_reason = code, reason
        self.close(code, reason)

    # transport events

    def _guard(self, method: Callable[[bool], None], arg: bool) -> None:
        try:
            method(arg)
        except Exception:
            self._crash()

    def _ended(self, client: bool) -> None:
        """A side sent EOF or went away: nothing more is read from it or written to it."""
        if client:
            if self._client_gone and self._down_state == _DONE:
                return
            self._client_gone = True
            self._down_state = _DONE
            if self._up_state == _RELAY:
                self._request_close(GOING_AWAY, "client connection ended")
        else:
            if self._up_gone and self._up_state == _DONE:
                return
            self._up_gone = True
            self._up_state = _DONE
            if self._down.cut_close:
                self._end_drain()
            elif self._down_state == _RELAY:
                # Gone without a closing handshake: the client hears 1001, as it did
                # from the frame-decoding relay.
                self._request_close(GOING_AWAY, "")
        self._progress()

    def _lost(self, client: bool) -> None:
        if self._client_lost and self._up_lost:
            return
        if client:
            self._client_lost = True
        else:
            self._up_lost = True
        self._ended(client)
        if self._client_lost and self._up_lost:
            self._finish()

    def _pause(self, client: bool) -> None:
        # The client's transport is full: stop reading the upstream until it drains.
        src = self._up if client else self._client
        if not src.is_closing():
            src.pause_reading()

    def _resume(self, client: bool) -> None:
        src = self._up if client else self._client
        gone = self._up_gone if client else self._client_gone
        if not gone and not src.is_closing():
            src.resume_reading()

    def _finish(self) -> None:
        for timer in (self._timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._drain_timer = None
        self._registry.discard(self._conn)
        self._conn.closer = None
        self._conn.closed.set()
        done, self._conn.on_closed = self._conn.on_closed, None
        if done is not None:
            done()

    # timers: one per relay, first for idleness, then as the closing deadline

    def _arm_deadline(self) -> None:
        if self._timer is not None:
            if self._idle is None:
                return  # the deadline is already running
            self._timer.cancel()
        self._idle = None
        self._timer = self._loop.call_later(CLOSE_HANDSHAKE_TIMEOUT, self._deadline)

    def _deadline(self) -> None:
        self._timer = None
        # A peer that neither replied nor read in time loses whatever is still queued.
        self._client.abort()
        self._up.abort()
        if not (self._client_lost and self._up_lost):
            # abort() may not reach a protocol that was swapped in too late; do not wait.
            self._client_lost = self._up_lost = True
            self._finish()

    def _tick(self) -> None:
        idle = self._idle
        self._timer = None
        if idle is None or self._closing:
            return
        due = self._last + idle
        if self._loop.time() >= due:
            self._guard(self._idle_close, True)
        else:
            self._timer = self._loop.call_at(due, self._tick)

    def _idle_close(self, _: bool) -> None:
        self._request_close(GOING_AWAY, "idle timeout")

    def _crash(self) -> None:
        log.exception("websocket_relay_failed", user=self._conn.user)
        for transport in (self._client, self._up):
            try:
                transport.abort()
            except Exception:  # noqa: S112 - the other side must still go
                continue


async def open_admitted(
    conn: LiveConnection,
    registry: ConnectionRegistry,
    key: PoolKey,
    pool: LinkPool,
    *,
    request_head: bytes,
    client_key: str,
    timeout: float | None,  # noqa: ASYNC109 - passed on to open_upstream's one deadline
) -> Upgraded:
    """The upstream handshake of an upgrade either path admitted. ``conn`` is
    registered first: a sign-out or a policy change while the handshake runs finds it,
    and the relay closes it as soon as it starts; it leaves the registry again if the
    handshake fails."""
    host, port, tls, verify = key
    registry.add(conn)
    try:
        return await open_upstream(
            host,
            port,
            ssl_context=pool.tls_context(verify) if tls else None,
            server_hostname=host if tls else None,
            request_head=request_head,
            key=client_key,
            timeout=timeout,
        )
    except BaseException:
        registry.discard(conn)
        raise


def switch_protocols(
    client: asyncio.Transport,
    upgraded: Upgraded,
    request_id: str,
    conn: LiveConnection,
    registry: ConnectionRegistry,
    *,
    idle_timeout: float | None,
    leftover: bytes,
) -> RawRelay:
    """The end of every WebSocket upgrade, whichever path admitted it: the client gets
    the upstream's 101 as it is, but for hop-by-hop headers (``Upgrade`` and
    ``Connection`` are set again: they are this hop's too), and both transports go to
    one raw relay. ``leftover`` is what the client sent after its request head."""
    head = response_head_bytes(
        101,
        b"Switching Protocols",
        upgraded.headers,
        NO_EXTRAS,
        request_id,
        chunked=False,
        close=False,
    )
    client.write(head[:-2] + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    relay = RawRelay(
        client,
        upgraded,
        conn,
        registry,
        idle_timeout=idle_timeout,
        rsv_allowed=upgraded.header(b"sec-websocket-extensions") is not None,
        max_payload=websocket.MAX_MESSAGE,  # looked up now: tests lower it
    )
    relay.start(leftover)
    return relay
