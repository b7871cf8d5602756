"""A lean HTTP/1.1 client for the upstream hop: pooled keep-alive connections driven by
an asyncio protocol and llhttp (through httptools).

It does what :func:`proxy.forward.forward_http` does, with the same inputs, the same
errors and the same header hygiene, at a fraction of the per-request cost of
``aiohttp.ClientSession`` (no per-request client objects, no timers unless a wait is
actually needed, the response head parsed once in C and relayed as is).

Public surface:

- :class:`UpstreamPool`: keep-alive connections per (host, port, TLS, verify).
  ``await pool.close()`` at shutdown.
- :func:`forward_fast`: drop-in for :func:`proxy.forward.forward_http`.

Rules kept from ``forward.py``: bodies stream both ways with bounded buffers (the
upstream socket stops being read while the client is slow); ``timeout`` bounds the
wait for the response head and ``idle_timeout`` each wait for body bytes; no body for
HEAD, 1xx, 204 and 304; chunked towards the client when the upstream gives no length;
502/504 as :class:`proxy.forward.UpstreamError` before the head, a cut connection
after it. A connection goes back to the pool only when its response was read to the
end, the request body was sent in full and both sides agreed to keep it alive.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import httptools
import structlog
from aiohttp import web
from multidict import CIMultiDict

from proxy.forward import DEFAULT_RESPONSE_HEADERS, HOP_BY_HOP, UpstreamError, UpstreamRequest

log = structlog.get_logger("clawgate.forward")

# Reading from the upstream pauses above this many buffered bytes and resumes below
# LOW: a slow client throttles the upstream instead of growing memory here.
_HIGH = 256 * 1024
_LOW = 64 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_NO_BODY_STATUS = frozenset({204, 304})

PoolKey = tuple[str, int, bool, bool]


class _Closed(Exception):
    """The upstream closed the connection before the response was complete."""


class _Conn(asyncio.Protocol):
    """One upstream connection; parses responses as they arrive (llhttp callbacks)."""

    __slots__ = (
        "broken",
        "buffered",
        "chunks",
        "closed",
        "complete",
        "drain",
        "error",
        "framed",
        "got_bytes",
        "head",
        "head_done",
        "headers",
        "idle_since",
        "interim",
        "keep_alive",
        "key",
        "loop",
        "parser",
        "paused",
        "pool",
        "reason",
        "reused",
        "skip_body",
        "status",
        "transport",
        "until_eof",
        "waiter",
    )

    def __init__(self, pool: UpstreamPool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self.drain: asyncio.Future[None] | None = None
        self.parser: Any = None
        self._reset(False)

    def _reset(self, head_request: bool) -> None:
        # A connection is only reused after a complete response, so llhttp sits at a
        # message boundary and the parser carries over.
        if self.parser is None:
            self.parser = httptools.HttpResponseParser(self)
        self.head: asyncio.Future[None] | None = None
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.interim = False
        self.skip_body = head_request
        self.until_eof = False
        self.framed = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.got_bytes = False
        self.broken = False

    # -- asyncio protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            # Bytes nobody asked for: the connection is out of step, never reuse it.
            self.broken = True
            self._close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError(502, "upstream_error:unexpected_upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(502, f"upstream_error:{type(exc).__name__}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if self.head is None:
            return
        if self.head_done and self.until_eof and not self.complete:
            # No length, not chunked: the end of the connection is the end of the body.
            self.complete = True
            self._wake()
        elif not self.complete:
            self._fail(_Closed())
        drain, self.drain = self.drain, None
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError())

    def pause_writing(self) -> None:
        if self.drain is None:
            self.drain = self.loop.create_future()

    def resume_writing(self) -> None:
        drain, self.drain = self.drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- llhttp callbacks ---------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # trailers arrive through here too; they are dropped
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.interim = True  # 100 Continue, 103 Early Hints: not relayed
            return
        self.status = status
        chunked = False
        length = False
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length":
                length = True
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        self.framed = length or chunked
        self.until_eof = not self.framed and status not in _NO_BODY_STATUS
        self.head_done = True
        if self.skip_body:
            # Whatever length a HEAD response announces, no body follows; llhttp cannot be
            # told so, hence no reuse of this connection afterwards.
            self.complete = True
            self.keep_alive = False
        head = self.head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, data: bytes) -> None:
        if self.skip_body:
            self.broken = True
            return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.headers = []
            self.reason = b""
            return
        if self.skip_body:
            return
        self.complete = True
        self.keep_alive = bool(self.parser.should_keep_alive())
        self._wake()

    # -- used by forward_fast -----------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.broken = True
        head = self.head
        if head is not None and not head.done():
            head.set_exception(exc)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def start(self, head_request: bool) -> asyncio.Future[None]:
        if self.reused:
            self._reset(head_request)
        else:
            self.skip_body = head_request
        head: asyncio.Future[None] = self.loop.create_future()
        self.head = head
        return head

    async def read(self, idle: float | None) -> bytes:
        """The next buffered body bytes, b"" at the end of the response."""
        while not self.chunks:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            waiter = self.loop.create_future()
            self.waiter = waiter
            timer = self.loop.call_later(idle, _expire, waiter) if idle else None
            try:
                await waiter
            finally:
                self.waiter = None
                if timer is not None:
                    timer.cancel()
        if len(self.chunks) == 1:
            chunk = self.chunks.popleft()
        else:
            chunk = b"".join(self.chunks)
            self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionResetError()
        self.transport.write(data)
        if self.drain is not None:
            await self.drain

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.broken and not self.closed


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class UpstreamPool:
    """Idle keep-alive connections per upstream, most recently used first.

    ``idle_seconds`` stays below common upstream keep-alive timeouts (Node's is 5 s) so
    a request rarely meets a connection the upstream is closing at that moment; an
    idempotent request that does is retried once on a new connection.
    """

    def __init__(self, *, max_idle_per_key: int = 256, idle_seconds: float = 4.0) -> None:
        self._idle: dict[PoolKey, list[_Conn]] = {}
        self._max_idle = max_idle_per_key
        self._idle_seconds = idle_seconds
        self._verify = ssl.create_default_context()
        self._no_verify = ssl.create_default_context()
        self._no_verify.check_hostname = False
        self._no_verify.verify_mode = ssl.CERT_NONE
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop this pool serves. asyncio.get_running_loop() costs a getpid() system
        call on Python 3.11; a pool belongs to one app, and so to one running loop."""
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def _take(self, key: PoolKey) -> _Conn | None:
        stack = self._idle.get(key)
        if not stack:
            return None
        now = time.monotonic()
        while stack:
            conn = stack.pop()
            if not conn.closed and now - conn.idle_since < self._idle_seconds:
                conn.reused = True
                return conn
            conn._close()
        return None

    async def connect(self, key: PoolKey, connect_timeout: float | None) -> _Conn:
        host, port, tls, verify = key
        loop = asyncio.get_running_loop()
        ctx: ssl.SSLContext | None = None
        if tls:
            ctx = self._verify if verify else self._no_verify
        conn = _Conn(self, key)
        coro = loop.create_connection(
            lambda: conn, host, port, ssl=ctx, server_hostname=host if tls else None
        )
        if connect_timeout:
            await asyncio.wait_for(coro, connect_timeout)
        else:
            await coro
        return conn

    def release(self, conn: _Conn) -> None:
        if not conn.reusable or self._closing:
            conn._close()
            return
        conn.head = None
        stack = self._idle.setdefault(conn.key, [])
        if len(stack) >= self._max_idle:
            conn._close()
            return
        conn.idle_since = time.monotonic()
        stack.append(conn)

    def _forget(self, conn: _Conn) -> None:
        stack = self._idle.get(conn.key)
        if stack and conn in stack:
            stack.remove(conn)

    async def close(self) -> None:
        self._closing = True
        for stack in self._idle.values():
            for conn in stack:
                conn._close()
        self._idle.clear()


UPSTREAM_POOL = web.AppKey("upstream_pool", UpstreamPool)


def serialize_head(method: str, target: str, headers: CIMultiDict[str], framing: str) -> bytes:
    """A request head for the upstream; refuses (502) a value that would split it."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    if framing:
        lines.append(framing)
    text = "\r\n".join(lines) + "\r\n\r\n"
    # A CR, LF or NUL inside a name or value would split or smuggle a request: refuse.
    if text.count("\n") != len(lines) + 1 or "\r\r" in text or "\x00" in text:
        raise UpstreamError(502, "upstream_error:bad_header")
    return text.encode("utf-8", "surrogateescape")


def upstream_response_headers(
    raw: list[tuple[bytes, bytes]], extra: Mapping[str, str]
) -> CIMultiDict[str]:
    """The upstream's response headers for the client: hop-by-hop ones (and those its
    ``Connection`` names) dropped, ``extra`` set unless it is a default the upstream
    already chose for itself (as in forward.py)."""
    drop: frozenset[str] | set[str] = HOP_BY_HOP
    for name, value in raw:
        if name.lower() == b"connection":
            drop = set(drop)
            drop.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip())
    out: CIMultiDict[str] = CIMultiDict()
    add = out.add
    for name, value in raw:
        key = name.decode("utf-8", "surrogateescape")
        if key.lower() not in drop:
            add(key, value.decode("utf-8", "surrogateescape"))
    for header, text in extra.items():
        if DEFAULT_RESPONSE_HEADERS.get(header) == text and header in out:
            continue
        out[header] = text
    return out


async def _send_body(request: web.Request, conn: _Conn, chunked: bool) -> None:
    content = request.content
    while True:
        data = await content.readany()
        if not data:
            break
        if chunked:
            await conn.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            await conn.write(data)
    if chunked:
        await conn.write(b"0\r\n\r\n")


def _body_sent(task: asyncio.Task[None], conn: _Conn) -> None:
    # The client went away mid-upload (or the upstream did): the upstream will never
    # see the whole request, so nothing it answers may be relayed as if it had.
    if task.cancelled():
        return
    if task.exception() is not None and not conn.complete:
        conn._fail(UpstreamError(502, "upstream_error:request_body_incomplete"))


async def _exchange(
    request: web.Request,
    pool: UpstreamPool,
    up: UpstreamRequest,
    head_bytes: bytes,
    key: PoolKey,
    body: bool,
    chunked: bool,
) -> tuple[_Conn, asyncio.Task[None] | None]:
    """Send the request; return once the response head is in (or raise UpstreamError)."""
    loop = pool.loop()
    deadline = loop.time() + up.timeout if up.timeout else None
    retry = not body and request.method in _IDEMPOTENT
    while True:
        conn = pool._take(key)
        fresh = conn is None
        try:
            if conn is None:
                conn = await pool.connect(key, up.timeout)
        except TimeoutError:
            raise UpstreamError(504, "upstream_timeout") from None
        except OSError:
            raise UpstreamError(502, "upstream_unreachable") from None
        head = conn.start(request.method == "HEAD")
        assert conn.transport is not None
        conn.transport.write(head_bytes)
        sender = None
        if body:
            sender = asyncio.ensure_future(_send_body(request, conn, chunked))
            sender.add_done_callback(functools.partial(_body_sent, conn=conn))
        timer = None
        if deadline is not None:
            timer = loop.call_at(deadline, _expire, head)
        try:
            await head
            return conn, sender
        except TimeoutError:
            conn.broken = True
            conn._close()
            raise UpstreamError(504, "upstream_timeout") from None
        except UpstreamError:
            raise
        except _Closed:
            if retry and not fresh and not conn.got_bytes:
                retry = False  # a keep-alive connection the upstream had just closed
                continue
            raise UpstreamError(502, "upstream_error:ServerDisconnectedError") from None
        except BaseException:
            conn.broken = True
            conn._close()
            if sender is not None:
                sender.cancel()
            raise
        finally:
            if timer is not None:
                timer.cancel()


async def forward_fast(
    request: web.Request,
    pool: UpstreamPool,
    up: UpstreamRequest,
    on_head: Callable[[web.StreamResponse], None] | None = None,
) -> web.StreamResponse:
    """Relay one request and its response; raises :class:`UpstreamError` before headers."""
    url = up.url
    tls = url.scheme == "https"
    key: PoolKey = (url.raw_host or "", url.port or (443 if tls else 80), tls, up.ssl)
    body = request.body_exists
    chunked = body and request.content_length is None
    if body and request.content_length is None:
        up.headers.popall("Content-Length", None)
        framing = "Transfer-Encoding: chunked"
    else:
        framing = ""
    head_bytes = serialize_head(request.method, up.url.raw_path_qs, up.headers, framing)
    conn, sender = await _exchange(request, pool, up, head_bytes, key, body, chunked)
    released = False
    try:
        response = web.StreamResponse(
            status=conn.status,
            reason=conn.reason.decode("latin-1") or None,
            headers=upstream_response_headers(conn.headers, up.response_headers),
        )
        if not conn.framed and request.method != "HEAD" and conn.status not in _NO_BODY_STATUS:
            response.enable_chunked_encoding()
        if on_head is not None:
            on_head(response)
        if conn.chunks or conn.complete:
            # Body bytes are already here: send them with the head in one TLS record and
            # one syscall. With nothing yet, the head goes out at once (SSE, slow bodies).
            response._send_headers_immediately = False
        await response.prepare(request)
        idle = up.idle_timeout
        try:
            if conn.complete:
                await response.write_eof(await conn.read(idle))
            else:
                while True:
                    chunk = await conn.read(idle)
                    if not chunk:
                        break
                    await response.write(chunk)
                await response.write_eof()
        except (TimeoutError, UpstreamError, _Closed, ConnectionResetError) as exc:
            # Headers are gone already: the only honest signal left is to cut the connection.
            name = "ServerDisconnectedError" if isinstance(exc, _Closed) else type(exc).__name__
            log.warning("upstream_stream_aborted", error=name, path=request.path)
            conn.broken = True
            if request.transport is not None:
                request.transport.close()
            return response
        if sender is not None:
            if not sender.done():
                conn.broken = True  # the upstream answered before taking the whole body
            elif sender.cancelled() or sender.exception() is not None:
                conn.broken = True
        pool.release(conn)
        released = True
        return response
    finally:
        if not released:
            conn.broken = True
            conn._close()
        if sender is not None and not sender.done():
            sender.cancel()
