"""The front door of the TLS listener: ordinary proxied requests are served straight
from the connection's protocol callbacks; everything else goes to aiohttp unchanged.

Every accepted connection starts as a :class:`FrontConnection`. For each request head
it asks :func:`proxy.exchange.plan` whether the request is an ordinary proxied one
that can be decided at once: HTTP/1.1, a plain method, no ``Transfer-Encoding``,
``Upgrade`` or expectation but ``100-continue`` (answered once admitted), a safe path
outside ``/.clawgate``, a session cookie that opens without a refresh, a route whose
policy allows the user, and room in the rate limits. If so, the request goes over a
pooled keep-alive upstream connection (proxy/upstream_link.py, llhttp through
httptools) and the answer is relayed as it arrives: no task, future or request
object per request, the response head written from the upstream's head bytes.

A request that is anything else (not signed in, denied, a sign-in step, a refresh
due, a chunked upload, a malformed or oversized head, a shutdown under way) goes, with
every byte of it still unread, to aiohttp's handler (``GuardedHandler`` in
proxy/connlimit.py), which runs proxy/handler.py as it always did. So the front never
decides anything but "forward"; every page, redirect and refusal comes from one code
path. The connection comes back (``Front.take_back``) when its next request starts
while aiohttp holds nothing of it: every request the handler read was a whole head
without a body, answered, and the connection kept alive. The only responses of its
own are 502/504 pages when the upstream fails before answering, built by
proxy/pages.py like the handler's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from multidict import CIMultiDict

from proxy import metrics, pages
from proxy.connlimit import REFUSED, TIMED_OUT, Guard, GuardedHandler
from proxy.exchange import Exchange, known_head, plan
from proxy.forward import CONTINUE
from proxy.ratelimit import address_key
from proxy.response_head import extras_for, head_prefix, head_suffix
from proxy.runtime import Runtime
from proxy.snapshot import HSTS
from proxy.throttle import Throttle
from proxy.upstream_link import (
    NO_BODY_STATUS,
    RETRYABLE,
    ResponseHead,
    UpstreamError,
    UpstreamLink,
)
from proxy.websocket import LiveConnection
from proxy.wsrelay import open_admitted, switch_protocols

log = structlog.get_logger("clawgate.proxy")

# aiohttp's limits for the listener are within this: a longer head goes to the handler,
# whose answer (414, 431) stays the same as ever.
_MAX_HEAD = 64 * 1024
# Pipelined bytes waiting behind a request in progress, and an upload waiting for its
# upstream connection: reading pauses above this.
_HIGH_WATER = 256 * 1024

# Deadline kinds of the client side timer.
_HEAD, _IDLE, _READ = 1, 2, 3


class Front:
    """What every :class:`FrontConnection` of one listener shares."""

    def __init__(
        self,
        runtime: Runtime,
        throttle: Throttle,
        guard: Guard,
        fallback: Callable[[], GuardedHandler],
        *,
        scheme: str,
    ) -> None:
        self.runtime = runtime
        self.throttle = throttle
        self.guard = guard
        self.fallback = fallback
        self.scheme = scheme
        self.pool = runtime.links  # shared with the handler path
        # The configured logger itself, not structlog's lazy proxy (one lookup less per
        # line, two lines per request); made after logging is configured.
        self.log: Any = log.bind()
        # asyncio.get_running_loop() costs a getpid() on Python 3.11: look it up once.
        self.loop = asyncio.get_running_loop()
        self.connections: set[FrontConnection] = set()
        self.drained: asyncio.Event | None = None  # set while shutting down

    def protocol(self) -> FrontConnection:
        return FrontConnection(self)

    def take_back(self, transport: asyncio.Transport, key: str | None, data: bytes) -> None:
        """A keep-alive connection aiohttp's handler has answered comes back with the
        first bytes of its next request (GuardedHandler's hand-back)."""
        metrics.connection_returned()
        conn = FrontConnection(self)
        transport.set_protocol(conn)
        conn.adopt(transport, key, data)

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now; let busy ones finish their response (then they
        close) for up to ``grace`` seconds, and cut what is left."""
        self.drained = asyncio.Event()
        for conn in list(self.connections):
            conn.drain()
        self.check_drained()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained.wait(), grace)
        for conn in list(self.connections):
            conn.abort()
        self.pool.close()

    def check_drained(self) -> None:
        if self.drained is not None and not any(c.busy for c in self.connections):
            self.drained.set()


class FrontConnection(asyncio.Protocol):
    """One client connection while it is served by the front (see the module text)."""

    __slots__ = (
        "_buf",
        "_closed",
        "_connecting",
        "_deadline",
        "_draining",
        "_ex",
        "_front",
        "_key",
        "_kind",
        "_link",
        "_loop",
        "_paused",
        "_peer_ip",
        "_sent_at",
        "_started",
        "_status",
        "_timer",
        "_timer_at",
        "_transport",
        "_udeadline",
        "_ukind",
        "_upstream_s",
        "_utimer",
        "_wrote",
    )

    def __init__(self, front: Front) -> None:
        self._front = front
        self._loop = front.loop
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._closed = False
        self._ex: Exchange | None = None
        self._link: UpstreamLink | None = None
        self._key: str | None = None
        self._peer_ip = "0.0.0.0"  # noqa: S104
        self._paused = 0  # bit 1: the upstream is slow to take a body; bit 2: buffer full
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline = 0.0
        self._kind = 0
        self._utimer: asyncio.TimerHandle | None = None
        self._udeadline = 0.0
        self._ukind = 0
        self._started = 0.0
        # Request and upstream timings use perf_counter: uvloop's loop.time() counts
        # whole milliseconds (deadlines below use it; a millisecond is fine there).
        self._sent_at = 0.0
        self._upstream_s = -1.0  # time to the upstream's response head; -1: none came
        self._status = 0
        self._wrote = False
        self._draining = False
        self._connecting: asyncio.Task[None] | None = None

    # -- connection life ------------------------------------------------------------------

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but behaves as one.
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else "0.0.0.0"  # noqa: S104

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._attach(transport)
        front = self._front
        limits = front.guard.limits()
        if limits.max_connections_per_ip is not None:
            key = address_key(self._peer_ip)
            if not front.guard.counter.acquire(key, limits.max_connections_per_ip):
                # Before writing: asyncio's TLS transport may deliver the request that is
                # already buffered from inside write() or close().
                self._transport = None
                front.guard.refusals.refused(key, limits.max_connections_per_ip)
                transport.write(REFUSED)  # type: ignore[attr-defined]
                transport.close()
                return
            self._key = key
        front.connections.add(self)
        self._set_deadline(_HEAD, limits.header_timeout)

    def adopt(self, transport: asyncio.BaseTransport, key: str | None, data: bytes) -> None:
        """Serve a connection again from its next request on; ``key`` is its slot in
        the per-IP count, taken when it was accepted."""
        self._attach(transport)
        self._key = key
        self._draining = self._front.drained is not None  # shutting down: this one, then close
        self._front.connections.add(self)
        self._set_deadline(_HEAD, self._front.guard.limits().header_timeout)
        self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._transport = None
        self._front.connections.discard(self)
        if self._front.drained is not None:
            self._front.check_drained()
        if self._key is not None:
            self._front.guard.counter.release(self._key)
            self._key = None
        self._cancel_timers()
        if self._ex is not None:
            self._abandon(499)

    def pause_writing(self) -> None:
        link = self._link
        if link is not None and link.transport is not None and not link.closed:
            link.paused = True
            link.transport.pause_reading()

    def resume_writing(self) -> None:
        link = self._link
        if link is not None and link.paused and link.transport is not None and not link.closed:
            link.paused = False
            link.transport.resume_reading()

    def pause_client_reading(self, reason: int) -> None:
        if not self._paused and self._transport is not None:
            self._transport.pause_reading()
        self._paused |= reason

    def resume_client_reading(self, reason: int) -> None:
        was = self._paused
        self._paused &= ~reason
        if was and not self._paused and self._transport is not None:
            self._transport.resume_reading()

    @property
    def busy(self) -> bool:
        return self._ex is not None

    def drain(self) -> None:
        self._draining = True
        if self._ex is None:
            self._close_client()

    def abort(self) -> None:
        if self._transport is not None:
            self._closed = True
            self._transport.abort()

    # -- requests -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._closed:
            return  # refused or closing: whatever still arrives is not read
        ex = self._ex
        if ex is not None:
            if ex.body_left:
                piece = data[: ex.body_left]
                ex.body_left -= len(piece)
                self._send_body(piece)
                data = data[len(piece) :]
                if not ex.body_left and self._kind == _READ:
                    self._kind = 0
            if data:
                self._buf += data  # pipelined: served once this response is done
                if len(self._buf) > _HIGH_WATER:
                    self.pause_client_reading(2)
            return
        buf = self._buf
        if not buf:
            if self._kind == _IDLE:
                self._set_deadline(_HEAD, self._front.guard.limits().header_timeout)
            if data.endswith(b"\r\n\r\n") and (
                known_head(data, self._peer_ip) or data.find(b"\r\n\r\n") == len(data) - 4
            ):
                # The usual case: exactly one request head, nothing after it.
                ex = self._admit(data)
                if ex is None:
                    buf += data
                    self._hand_off()
                else:
                    self._start(ex)
                return
        buf += data
        self._next()

    def _next(self) -> None:
        buf = self._buf
        if not buf:
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD or b"\n\n" in buf or b"\n\r\n" in buf:
                self._hand_off()
            return
        cut = end + 4
        ex = self._admit(bytes(buf[:cut]))
        if ex is None:
            self._hand_off()
            return
        del buf[:cut]
        self._start(ex)
        if self._ex is not ex:
            return  # answered already (a 502 for a head that cannot be sent)
        if buf and ex.body_left:
            piece = bytes(buf[: ex.body_left])
            del buf[: len(piece)]
            ex.body_left -= len(piece)
            self._send_body(piece)
            if not ex.body_left and self._kind == _READ:
                self._kind = 0
        if len(buf) > _HIGH_WATER:
            self.pause_client_reading(2)

    def _admit(self, head: bytes) -> Exchange | None:
        front = self._front
        return plan(front.runtime, front.throttle, head, self._peer_ip, front.scheme, front.log)

    def _start(self, ex: Exchange) -> None:
        """Begin the exchange plan() admitted: on a pooled upstream link, a new one, or a
        WebSocket upgrade."""
        front = self._front
        self._ex = ex
        self._started = time.perf_counter()
        self._status = 0
        self._upstream_s = -1.0
        self._wrote = False
        self._kind = 0  # no header or idle deadline while the exchange runs
        if ex.body_left:
            self._set_deadline(_READ, front.guard.limits().read_timeout)
        if not ex.head_bytes:
            self._answer_error(UpstreamError(502, "upstream_error:bad_header"))
            return
        if ex.expect_continue and self._transport is not None:
            self._transport.write(CONTINUE)  # allowed: the body may come (forward.py)
        if ex.websocket:
            self._connecting = self._loop.create_task(self._open_websocket(ex))
            return
        link = front.pool.take(ex.key)
        if link is not None:
            self._send(link)
        else:
            self._connecting = self._loop.create_task(self._connect(ex))

    def _hand_off(self) -> None:
        """Give the connection, with the unread request, to aiohttp's handler."""
        transport = self._transport
        if transport is None:
            return
        front = self._front
        metrics.fast_path(False)
        front.connections.discard(self)
        self._cancel_timers()
        if self._paused:
            self._paused = 0
            transport.resume_reading()
        handler = front.fallback()
        data = bytes(self._buf)
        self._buf.clear()
        key, self._key = self._key, None
        self._transport = None
        transport.set_protocol(handler)
        # Back to the front between requests, unless it is shutting down.
        give_back = front.take_back if front.drained is None else None
        handler.adopt(transport, data, key, give_back)

    # -- upstream -------------------------------------------------------------------------

    async def _connect(self, ex: Exchange) -> None:
        try:
            if ex.timeout:
                link = await asyncio.wait_for(self._front.pool.connect(ex.key), ex.timeout)
            else:
                link = await self._front.pool.connect(ex.key)
        except (TimeoutError, OSError) as exc:
            self._connecting = None
            if self._ex is ex:
                timeout = isinstance(exc, TimeoutError)
                self._answer_error(
                    UpstreamError(504, "upstream_timeout")
                    if timeout
                    else UpstreamError(502, "upstream_unreachable")
                )
            return
        self._connecting = None
        if self._ex is not ex:  # the client left meanwhile
            link.close()
            return
        self._send(link)

    async def _open_websocket(self, ex: Exchange) -> None:
        """Upgrade at the upstream, answer the client with the upstream's 101, and hand
        both connections to a raw frame relay (proxy/wsrelay.py)."""
        front = self._front
        conn = LiveConnection(
            session=ex.session,
            host=ex.host,
            path=ex.path,
            source_ip=ex.client_ip,
            valid_until=ex.valid_until,
        )
        registry = front.runtime.registry
        try:
            upgraded = await open_admitted(
                conn,
                registry,
                ex.key,
                front.pool,
                request_head=ex.head_bytes,
                client_key=ex.ws_key or "",
                timeout=ex.timeout or front.runtime.snapshot.settings.default_upstream_timeout,
            )
        except UpstreamError as exc:
            self._connecting = None
            if self._ex is ex:
                self._answer_error(exc)
            return
        self._connecting = None
        transport = self._transport
        if self._ex is not ex or transport is None or self._closed:
            registry.discard(conn)
            upgraded.transport.abort()  # the client left meanwhile
            return
        self._status = 101
        # From here on the relay owns both transports; this object only waits to write
        # the access line and free the per-IP slot when the relay is done.
        front.connections.discard(self)
        self._cancel_timers()
        self._transport = None
        leftover = bytes(self._buf)
        self._buf.clear()
        if self._paused:
            self._paused = 0
            transport.resume_reading()
        conn.on_closed = self._websocket_closed
        switch_protocols(
            transport,
            upgraded,
            ex.rid,
            conn,
            front.runtime.registry,
            idle_timeout=ex.route.idle_timeout,
            leftover=leftover,
        )

    def _websocket_closed(self) -> None:
        if self._key is not None:
            self._front.guard.counter.release(self._key)
            self._key = None
        if self._ex is not None:
            self._done()

    def _send(self, link: UpstreamLink) -> None:
        ex = self._ex
        assert ex is not None and link.transport is not None
        self._link = link
        link.owner = self
        link.reset(ex.method == "HEAD")
        link.transport.write(ex.head_bytes)
        pending = ex.pending
        if pending:
            link.transport.write(b"".join(pending))
            pending.clear()
            self.resume_client_reading(2)
        self._sent_at = time.perf_counter()
        if ex.timeout:
            self._set_udeadline(_HEAD, ex.timeout)

    def _send_body(self, piece: bytes) -> None:
        """Body bytes of the exchange in progress: to its link, or kept with the
        exchange until the link is there. They belong to that exchange alone: when it
        ends, whatever of them was not sent ends with it (never the next request's)."""
        ex = self._ex
        link = self._link
        if link is not None and link.transport is not None and not link.closed:
            link.transport.write(piece)
        elif link is None and ex is not None:
            ex.pending.append(piece)
            if sum(map(len, ex.pending)) > _HIGH_WATER:
                self.pause_client_reading(2)

    def response_head(self, link: UpstreamLink, head: ResponseHead) -> None:
        ex = self._ex
        assert ex is not None
        status = head.status
        self._status = status
        self._upstream_s = time.perf_counter() - self._sent_at
        if ex.body_left or ex.pending:
            # Answered before it had the whole body: whether the upstream will still
            # read the rest by its framing is its own affair, so the link is never
            # reused (the rest of the body may still go to it, and ends with it).
            link.broken = True
        if head.chunked:
            link.chunked_out = True  # llhttp hands over de-chunked bytes
        no_body = ex.method == "HEAD" or status in NO_BODY_STATUS
        if not head.framed and not no_body:
            link.chunked_out = link.until_eof = True
        chunked = link.chunked_out and not no_body
        extras = extras_for(ex.response_headers)
        rendered = head.rendered.get((extras, chunked))
        if rendered is None:
            if len(head.rendered) >= 16:  # routes of configurations no longer in force
                head.rendered.clear()
            rendered = head.rendered[(extras, chunked)] = head_prefix(
                status, head.reason, head.headers, extras, chunked=chunked
            )
        prefix, needs_id = rendered
        link.out.append(
            head_suffix(
                prefix,
                ex.rid if needs_id else None,
                chunked=chunked,
                close=ex.close_after or self._draining or ex.body_left > 0,
            )
        )
        self._wrote = True
        if self._kind == _READ:
            self._kind = 0  # the response has started: no read timeout from here on
        idle = ex.idle_timeout
        if idle:
            self._set_udeadline(_IDLE, idle)
        else:
            self._clear_udeadline()

    def upstream_progress(self, link: UpstreamLink) -> None:
        out = link.out
        transport = self._transport
        if out:
            if transport is not None:
                transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        ex = self._ex
        if ex is not None and ex.idle_timeout and link.head_done:
            self._udeadline = self._loop.time() + ex.idle_timeout
        if link.complete:
            self._finish()

    def upstream_lost(self, link: UpstreamLink) -> None:
        ex = self._ex
        if link is not self._link or ex is None or link.complete:
            return
        if link.head_done:
            if link.until_eof:
                # No length and not chunked: the end of the connection ends the body.
                link.out.append(b"0\r\n\r\n")
                link.complete = True
                link.keep_alive = False
                self.upstream_progress(link)
                return
            self.upstream_failed(UpstreamError(502, "upstream_error:ServerDisconnectedError"))
            return
        if (
            link.reused
            and not link.got_bytes
            and "Content-Length" not in ex.headers
            and ex.method in RETRYABLE
        ):
            # A keep-alive connection the upstream had just closed: once more, anew.
            self._link = None
            self._connecting = self._loop.create_task(self._connect(ex))
            return
        self.upstream_failed(UpstreamError(502, "upstream_error:ServerDisconnectedError"))

    def upstream_failed(self, exc: UpstreamError) -> None:
        link = self._link
        if link is not None:
            link.broken = True
            link.owner = None
            link.close()
            self._link = None
        if self._ex is None:
            return
        if self._wrote:
            # Headers are gone already: the only honest signal left is to cut the connection.
            log.warning(
                "upstream_stream_aborted",
                request_id=self._ex.rid,
                error=exc.reason,
                path=self._ex.path,
            )
            self._close_client()
            self._abandon(self._status)
            return
        self._answer_error(exc)

    def _answer_error(self, exc: UpstreamError) -> None:
        ex = self._ex
        assert ex is not None
        metrics.upstream_error(ex.route.name, exc.reason)
        log.warning("upstream_failed", request_id=ex.rid, reason=exc.reason, status=exc.status)
        if exc.status == 504:
            title, detail, code = (
                "Upstream timed out",
                "The service behind clawgate did not answer in time.",
                "upstream_timeout",
            )
        else:
            title, detail, code = (
                "Upstream unavailable",
                "The service behind clawgate cannot be reached right now.",
                "upstream_unavailable",
            )
        page = pages.error_page(
            pages.prefers_html(ex.headers),
            exc.status,
            title,
            detail,
            error_code=code,
            request_id=ex.rid,
        )
        # A failed upgrade ends the connection too: the client may already have sent
        # WebSocket frames behind its head, which must never be read as a request.
        close = ex.close_after or ex.body_left > 0 or self._draining or ex.websocket
        self._status = exc.status
        if self._transport is not None:
            self._transport.write(
                render(
                    page,
                    ex.rid,
                    self._front.runtime.secure,
                    close,
                    head_only=ex.method == "HEAD",
                )
            )
        if close:
            self._close_client()
        self._done()

    def _finish(self) -> None:
        link = self._link
        ex = self._ex
        assert ex is not None
        self._link = None
        if link is not None:
            if ex.body_left:
                link.broken = True  # the upstream answered before taking the whole body
            self._front.pool.release(link)
        if ex.close_after or ex.body_left or self._draining:
            self._close_client()
        self._done()

    def _done(self) -> None:
        ex = self._ex
        assert ex is not None
        self._ex = None
        self._clear_udeadline()
        elapsed = time.perf_counter() - self._started
        ex.access_line.emit(self._front.log, ex.rid, self._status, round(elapsed * 1000, 2))
        metrics.front_done(ex.route.name, self._status, elapsed, self._upstream_s)
        if self._transport is None or self._closed:
            # Closing (Connection: close, a body left unread, shutdown): whatever the
            # client pipelined behind is never read as a request.
            self._buf.clear()
            return
        if self._buf:
            self.resume_client_reading(2)
            self._set_deadline(_HEAD, self._front.guard.limits().header_timeout)
            self._next()
        else:
            self._set_deadline(_IDLE, self._front.runtime.snapshot.settings.timeout_idle)

    def _abandon(self, status: int) -> None:
        """The exchange ends without a full response (client or upstream gone)."""
        link, self._link = self._link, None
        if link is not None:
            link.broken = True
            link.owner = None
            link.close()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._ex is not None:
            self._status = status
            self._done()

    def _close_client(self) -> None:
        transport = self._transport
        if transport is not None:
            self._closed = True
            transport.close()

    # -- timers: one lazily re-armed handle per side --------------------------------------

    def _set_deadline(self, kind: int, seconds: float) -> None:
        if seconds <= 0:
            self._kind = 0
            return
        self._kind = kind
        self._deadline = deadline = self._loop.time() + seconds
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _clear_deadline(self) -> None:
        self._kind = 0

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._kind
        if kind == 0 or self._transport is None:
            return
        now = self._loop.time()
        if now < self._deadline:
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._kind = 0
        limits = self._front.guard.limits()
        if kind == _IDLE:
            self._close_client()
            return
        if kind == _HEAD:
            log.info(
                "connection_closed",
                reason="header_timeout",
                client=self._key,
                timeout=limits.header_timeout,
            )
        else:
            log.info(
                "connection_closed",
                reason="read_timeout",
                client=self._key,
                timeout=limits.read_timeout,
            )
        assert self._transport is not None
        self._closed = True  # first: a TLS transport may deliver data from inside write()
        self._transport.write(TIMED_OUT)
        self._close_client()

    def _set_udeadline(self, kind: int, seconds: float) -> None:
        self._ukind = kind
        self._udeadline = deadline = self._loop.time() + seconds
        if self._utimer is None:
            self._utimer = self._loop.call_at(deadline, self._on_utimer)

    def _clear_udeadline(self) -> None:
        self._ukind = 0

    def _on_utimer(self) -> None:
        self._utimer = None
        kind = self._ukind
        if kind == 0 or self._ex is None:
            return
        now = self._loop.time()
        if now < self._udeadline:
            self._utimer = self._loop.call_at(self._udeadline, self._on_utimer)
            return
        self._ukind = 0
        self.upstream_failed(UpstreamError(504, "upstream_timeout"))

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._utimer):
            if timer is not None:
                timer.cancel()
        self._timer = self._utimer = None
        self._kind = self._ukind = 0


def render(
    page: web.Response, rid: str, secure: bool, close: bool, *, head_only: bool = False
) -> bytes:
    """A clawgate page as bytes, with the headers the request middleware adds; without
    the body for a HEAD request (its length stays, as for a GET)."""
    body = page.body
    assert isinstance(body, bytes)
    headers = CIMultiDict(page.headers)
    headers["Content-Length"] = str(len(body))
    headers.setdefault("X-Request-Id", rid)
    if secure:
        headers.setdefault("Strict-Transport-Security", HSTS)
    headers.setdefault("Server", "clawgate")
    if close:
        headers["Connection"] = "close"
    lines = [f"HTTP/1.1 {page.status} {page.reason}"]
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    return head if head_only else head + body


FRONTS = web.AppKey("fronts", list[Front])
