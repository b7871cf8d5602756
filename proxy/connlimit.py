"""Connection-level defences aiohttp lacks: a per-IP connection cap, a header timeout,
a whole-request read timeout, and proper statuses for oversized request heads.

Public surface:

- :class:`Limits`: the numbers in force (read again for every new connection, so a
  config reload applies to new connections).
- :class:`ConnectionCounter`: open connections per client address.
- :class:`GuardedSite`: a ``web.TCPSite`` whose connections are :class:`GuardedHandler`.

Timeouts follow Go's ``net/http`` and Pomerium:

- ``timeout_header``: from the first byte of a request (or from accept, for the
  first one) until its header block is complete. Slowloris clients trickle header
  bytes forever; they are cut here.
- ``timeout_read``: from the first byte of a request until its body is fully
  received or the response has started, whichever is first (Pomerium's semantics),
  so a slow body cannot hold a connection and an upstream request open. WebSocket
  upgrades are exempt once the handshake is answered.

The per-connection cost is one timer per request head, the same as aiohttp's own
keep-alive timer; the per-chunk cost is an integer comparison.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from proxy import pages
from proxy.ratelimit import address_key
from proxy.settings import Settings

log = structlog.get_logger("clawgate.connections")

__all__ = [
    "ConnectionCounter",
    "GuardedHandler",
    "GuardedSite",
    "Limits",
    "framing_refusal",
    "limits_for",
]


def _plain(status: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        + extra
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


REFUSED = _plain(
    "503 Service Unavailable", b"too many connections from your address\n", b"Retry-After: 5\r\n"
)
TIMED_OUT = _plain("408 Request Timeout", b"the request took too long\n")


# aiohttp's parser limits for the listener; big enough for a chunked session cookie
# beside the upstream's own cookies.
MAX_FIELD_SIZE = 32 * 1024
MAX_LINE_SIZE = 16 * 1024


@dataclass(frozen=True)
class Limits:
    """``max_connections_per_ip`` None = no cap; a timeout of 0 = off."""

    max_connections_per_ip: int | None
    header_timeout: float
    read_timeout: float


def limits_for(settings: Settings) -> Limits:
    """The connection limits a configuration sets (made once, with its snapshot)."""
    # Behind trusted proxies every connection comes from a proxy: a per-peer cap would
    # throttle the load balancer, not a client. The proxy in front owns that limit.
    cap = settings.max_connections_per_ip if settings.xff_num_trusted_hops == 0 else None
    return Limits(
        max_connections_per_ip=cap,
        header_timeout=settings.timeout_header,
        read_timeout=settings.timeout_read,
    )


class ConnectionCounter:
    """Open connections per key; ``acquire`` refuses past the cap."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def acquire(self, key: str, cap: int | None) -> bool:
        current = self._open.get(key, 0)
        if cap is not None and current >= cap:
            return False
        self._open[key] = current + 1
        return True

    def release(self, key: str) -> None:
        current = self._open.get(key, 0)
        if current <= 1:
            self._open.pop(key, None)
        else:
            self._open[key] = current - 1

    def count(self, key: str) -> int:
        return self._open.get(key, 0)

    def total(self) -> int:
        return sum(self._open.values())


class _RefusalLog:
    """At most one log line per second about refused connections, with a count."""

    def __init__(self) -> None:
        self._last = 0.0
        self._suppressed = 0

    def refused(self, key: str, cap: int | None) -> None:
        now = time.monotonic()
        if now - self._last < 1.0:
            self._suppressed += 1
            return
        log.warning(
            "connection_refused",
            reason="max_connections_per_ip",
            client=key,
            limit=cap,
            refused_since_last_log=self._suppressed,
        )
        self._last = now
        self._suppressed = 0


class Guard:
    """State shared by every connection of one listener."""

    def __init__(self, limits: Callable[[], Limits]) -> None:
        self.limits = limits
        self.counter = ConnectionCounter()
        self.refusals = _RefusalLog()


# Takes a keep-alive connection back from the handler: (transport, its per-IP slot, the
# first bytes of its next request).
GiveBack = Callable[[asyncio.Transport, "str | None", bytes], None]


# How a request head says where its body ends, as llhttp reads it (names are tokens:
# an underscore spelling is another header).
_CODING = re.compile(rb"\ntransfer-encoding[ \t]*:", re.IGNORECASE)
_LENGTH = re.compile(rb"\ncontent-length[ \t]*:([^\r\n]*)", re.IGNORECASE)
_DIGITS = re.compile(rb"[ \t]*[0-9]{1,15}[ \t]*")


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with the limits of :class:`Limits` enforced.

    A connection the front handed over (``adopt``) goes back to it when its next
    request starts, if aiohttp's parser holds nothing of it yet: every request so far
    was a whole head without a body, answered, on a connection kept alive. Otherwise
    it stays here for its life.
    """

    def __init__(self, manager: Server, *, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._limits = guard.limits()
        self._key: str | None = None
        self._refused = False
        self._busy = 0  # requests parsed and not yet answered
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = 0.0
        self._read_timers: list[asyncio.TimerHandle] = []
        self._give_back: GiveBack | None = None
        # Request bodies aiohttp is still reading (see _fail_open_bodies).
        self._open_bodies: list[Any] = []
        # Everything given to aiohttp's parser so far ended a bodyless request head.
        self._parser_empty = False

    # -- connection life -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limits = self._limits
        if limits.max_connections_per_ip is not None:
            peer = transport.get_extra_info("peername")
            key = address_key(str(peer[0])) if isinstance(peer, tuple) and peer else "?"
            if not self._guard.counter.acquire(key, limits.max_connections_per_ip):
                self._refused = True
                self._guard.refusals.refused(key, limits.max_connections_per_ip)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(REFUSED)
                transport.close()
                return
            self._key = key
        super().connection_made(transport)
        self._arm_head(self._loop.time())

    def adopt(
        self,
        transport: asyncio.Transport,
        data: bytes,
        key: str | None,
        give_back: GiveBack | None = None,
    ) -> None:
        """Take over a connection the front (proxy/front.py) accepted, with the bytes of
        the request it left unread; ``key`` is its slot in the per-IP count, and
        ``give_back`` returns the connection to the front between requests."""
        self._key = key
        self._give_back = give_back
        super().connection_made(transport)
        self._arm_head(self._loop.time())
        if data:
            self.data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        if self._key is not None:
            self._guard.counter.release(self._key)
            self._key = None
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self._give_back is not None and self._idle_between_requests():
            self._hand_back(data)
            return
        # aiohttp's parser drops every request of a read in which a later one is
        # malformed (or comes after "Connection: close"). Fed one whole request at a
        # time, the requests before the bad one are answered, as the front answers
        # them. Where a request's end is not plain from its head (chunked, a length
        # given twice or oddly), the rest goes in together: a body found malformed in
        # the same read is then refused before its head is forwarded.
        start = 0
        end = data.find(b"\r\n\r\n")
        while 0 <= end < len(data) - 4:
            head = data[start : end + 4]
            stop = end + 4
            if _CODING.search(head) is not None:
                break
            lengths = _LENGTH.findall(head)
            if lengths:
                if len(lengths) != 1 or not _DIGITS.fullmatch(lengths[0]):
                    break
                stop += int(lengths[0])
                if stop >= len(data):
                    break
            self._received(data[start:stop])
            start = stop
            end = data.find(b"\r\n\r\n", start)
        self._received(data[start:] if start else data)

    def _received(self, data: bytes) -> None:
        if self._busy == 0 and self._head_timer is None and data:
            self._arm_head(self._loop.time())  # first bytes of the next keep-alive request
        before = self._request_count
        super().data_received(data)
        parsed = self._request_count - before
        if data:
            # A head that ends the bytes, with no body to come, leaves the parser empty;
            # anything else (a body, part of the next head) may be held in it.
            last = self._messages[-1] if parsed and self._messages else None
            self._parser_empty = (
                last is not None
                and last[1] is EMPTY_PAYLOAD
                and not getattr(last[0], "upgrade", True)
                and data.endswith(b"\r\n\r\n")
            )
        if parsed:
            self._busy += parsed
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            fresh = list(self._messages)[-parsed:]
            error = getattr(fresh[-1][0], "exc", None) if fresh else None
            if isinstance(error, Exception):
                self._fail_open_bodies(error)
            for message, payload in fresh:
                if getattr(message, "upgrade", True) or payload.is_eof():
                    continue
                self._open_bodies.append(payload)
                if self._limits.read_timeout > 0:
                    when = self._head_started + self._limits.read_timeout
                    self._read_timers.append(self._loop.call_at(when, self._read_expired, payload))

    def _fail_open_bodies(self, error: Exception) -> None:
        """aiohttp's parser found the bytes malformed inside a body (a bad chunk) and
        queued its 400, but leaves the body being read open: whoever reads it (the
        forwarder, proxy/forward.py) would wait for the read timeout. It fails now, so
        the exchange ends and its upstream link is cut before a whole request went."""
        for payload in self._open_bodies:
            if not payload.is_eof():
                payload.set_exception(error)
        self._open_bodies.clear()

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._busy = max(0, self._busy - 1)
            if self._busy == 0:
                self._open_bodies.clear()
                for timer in self._read_timers:
                    timer.cancel()
                self._read_timers.clear()

    # -- back to the front ------------------------------------------------------------

    def _idle_between_requests(self) -> bool:
        """Answered everything, kept alive, waiting for the next request, and with
        nothing of it in aiohttp's parser."""
        try:
            waiter = self._waiter
            upgraded, payload_parser = self._upgraded, self._payload_parser
        except AttributeError:  # another aiohttp than the one this was written against
            return False
        return (
            self._parser_empty
            and self._keepalive
            and self._busy == 0
            and not self._messages
            and waiter is not None
            and not waiter.done()
            and self.transport is not None
            and not self._force_close
            and not self._close
            and not upgraded
            and payload_parser is None
            and not self._read_timers
        )

    def take_upgraded(self) -> tuple[asyncio.Transport, bytes, Callable[[], None]] | None:
        """Give up the connection of the upgrade request being handled, once the
        upstream has agreed to it: its transport, what the client sent after the head
        (aiohttp holds it unparsed), and a callable that frees its per-IP slot when the
        relay is done. None when the connection cannot be given up as it is (not an
        upgrade, gone, anything else queued behind it)."""
        transport = self.transport
        try:
            upgraded, tail = self._upgraded, self._message_tail
            queued, payload_parser = self._messages, self._payload_parser
        except AttributeError:  # another aiohttp than the one this was written against
            return None
        if transport is None or not upgraded or queued or payload_parser is not None:
            return None
        self._message_tail = b""
        paused = getattr(self, "_buffer_paused", False)  # aiohttp pauses a full queue
        key, self._key = self._key, None
        self._cancel_timers()
        # aiohttp lets go as for a lost connection (the request handler is not cancelled:
        # handler_cancellation is off), with no transport to close.
        self.transport = None
        RequestHandler.connection_lost(self, None)
        if paused:
            transport.resume_reading()
        guard = self._guard

        def release() -> None:
            if key is not None:
                guard.counter.release(key)

        return transport, tail, release

    def _hand_back(self, data: bytes) -> None:
        transport = self.transport
        give_back = self._give_back
        assert transport is not None and give_back is not None
        key, self._key = self._key, None  # the front's now
        self._cancel_timers()
        # aiohttp lets go as for a lost connection (its bookkeeping, the waiting task),
        # with no transport to close.
        self.transport = None
        RequestHandler.connection_lost(self, None)
        give_back(transport, key, data)

    # -- timers ----------------------------------------------------------------------

    def _arm_head(self, now: float) -> None:
        self._head_started = now
        timeout = self._limits.header_timeout
        if timeout > 0:
            self._head_timer = self._loop.call_at(now + timeout, self._head_expired)

    def _cancel_timers(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        for timer in self._read_timers:
            timer.cancel()
        self._read_timers.clear()

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._busy or self.transport is None:
            return
        log.info(
            "connection_closed",
            reason="header_timeout",
            client=self._key,
            timeout=self._limits.header_timeout,
        )
        self._abort(send_408=True)

    def _read_expired(self, payload: Any) -> None:
        if payload.is_eof() or self.transport is None:
            return
        current = self._current_request
        if current is not None and current.writer.output_size > 0:
            return  # the response has started: from here on it is a stream, not a read
        log.info(
            "connection_closed",
            reason="read_timeout",
            client=self._key,
            timeout=self._limits.read_timeout,
        )
        self._abort(send_408=current is None or current.writer.output_size == 0)

    def _abort(self, *, send_408: bool) -> None:
        transport = self.transport
        if transport is not None and send_408 and not transport.is_closing():
            transport.write(TIMED_OUT)
        self.force_close()

    # -- malformed requests ----------------------------------------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A page of our own for requests the parser refused, never echoing their bytes
        (aiohttp's default repeats the offending header, which may be a cookie, into
        both the response and the log)."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        code, title, reason = status, "Bad request", "malformed_request"
        if isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else None
            if str(limit) == str(self.max_line_size):
                code, title, reason = 414, "Request target too long", "uri_too_long"
            else:
                code, title, reason = 431, "Request headers too large", "headers_too_large"
        elif isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc.message):
            code, title, reason = 431, "Request headers too large", "headers_too_large"
        elif status == 500:
            title, reason = "Internal error", "internal_error"
            if exc is not None:
                log.error("unhandled_error", error=type(exc).__name__)
        elif status == 504:
            title, reason = "Timed out", "timeout"
        if status != 500:
            log.info(
                "request_rejected",
                reason=reason,
                status=code,
                parser_error=type(exc).__name__ if exc else None,
            )
        resp = pages.error(
            request, code, title, "clawgate could not accept this request.", error_code=reason
        )
        resp.force_close()
        return resp


def framing_refusal(request: web.BaseRequest) -> web.Response | None:
    """A 400 for requests whose framing a proxy in front may read differently, else None.

    HTTP/0.9 has no headers to speak of (a CR LF inside a target turns into one), and an
    HTTP/1.0 request with Transfer-Encoding is framed by whoever reads it: RFC 9112 6.1
    says to treat it as faulty and close the connection, which also drops anything
    pipelined behind it.
    """
    version = request.version
    if version == (1, 1) or (version == (1, 0) and "Transfer-Encoding" not in request.headers):
        return None
    log.info("request_rejected", reason="ambiguous_framing", version=f"{version[0]}.{version[1]}")
    resp = pages.error(
        request,
        400,
        "Bad request",
        "clawgate could not accept this request.",
        error_code="ambiguous_framing",
    )
    resp.force_close()
    return resp


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` serving :class:`GuardedHandler` connections."""

    __slots__ = ("_front", "_guard")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        guard: Guard,
        front: Callable[[Callable[[], GuardedHandler]], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._guard = guard
        self._front = front

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        # The handler arguments aiohttp would have used (max_field_size, keepalive...).
        handler_kwargs: dict[str, Any] = dict(server._kwargs)
        guard = self._guard

        def factory() -> GuardedHandler:
            return GuardedHandler(server, guard=guard, loop=loop, **handler_kwargs)

        # With a front (proxy/front.py) connections start there and come to the
        # factory's handler only when the front hands them over.
        front = self._front(factory) if self._front is not None else None
        protocol: Callable[[], asyncio.BaseProtocol] = (
            front.protocol if front is not None else factory
        )
        header_timeout = guard.limits().header_timeout
        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            # A TLS handshake that never finishes is a slowloris one layer down.
            ssl_handshake_timeout=(header_timeout or None) if self._ssl_context else None,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
