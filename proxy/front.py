"""The front door of the TLS listener: ordinary proxied requests are served straight
from the connection's protocol callbacks; everything else goes to aiohttp unchanged.

Every accepted connection starts as a :class:`FrontConnection`. For each request head
it asks :func:`plan` whether the request is an ordinary, already-decidable proxied one:
HTTP/1.1, a plain method, no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``, a safe
path outside ``/.clawgate``, a session cookie that opens without a refresh, a route
whose policy allows the user, and room in the rate limits. If so, the request goes
over a pooled keep-alive upstream connection (:class:`UpstreamLink`, llhttp through
httptools) and the answer is relayed as it arrives: no task, future or request object
per request, the response head written from the upstream's parsed header list.

The first request that is anything else (not signed in, denied, a sign-in step, a
refresh due, a chunked upload, a malformed or oversized head, a shutdown under way)
ends the fast life of the connection: the connection, with every byte of that
request still unread, is handed to aiohttp's handler (``GuardedHandler`` in
proxy/connlimit.py), which runs proxy/handler.py as it always did. So the front never
decides anything but "forward"; every page, redirect and refusal comes from one code
path. The only responses of its own are 502/504 pages when the upstream fails before
answering, built by proxy/pages.py like the handler's.

What :func:`plan` checks mirrors proxy/handler.py and the request middleware in
proxy/server.py (same helpers, same order of effects): request id, per-IP and per-user
rate limits, route, session, decision, the decision and access log lines, metrics,
and the upstream header set of proxy/forward.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import httptools
import structlog
from aiohttp import web
from multidict import CIMultiDict

from policy.model import RequestFacts
from policy.paths import UnsafePathError, normalize_path
from proxy import metrics, pages
from proxy.connlimit import MAX_FIELD_SIZE, MAX_LINE_SIZE, REFUSED, TIMED_OUT, Guard, GuardedHandler
from proxy.endpoints import JWKS_PATH
from proxy.fastpath import serialize_head, upstream_response_headers
from proxy.forward import UpstreamError, upstream_headers
from proxy.handler import (
    authority,
    client_scheme,
    identity_headers,
    match_route,
    upstream_target,
)
from proxy.identity import _sealed_with_old_secret, to_identity
from proxy.ratelimit import address_key
from proxy.requestid import request_id
from proxy.runtime import Runtime, forwarded_client
from proxy.session import SessionError, parse_cookie_header
from proxy.snapshot import HSTS, Route
from proxy.throttle import Throttle

log = structlog.get_logger("clawgate.proxy")

_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
_RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS"})
# aiohttp's own limits for the listener (proxy/server.py): a head that would meet one
# of them goes to aiohttp so the answer (414, 431) is the same as ever.
_MAX_HEAD = 64 * 1024
_MAX_HEADERS = 100
# Pipelined bytes waiting behind a request in progress, and an upload waiting for its
# upstream connection: reading pauses above this.
_HIGH_WATER = 256 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}

PoolKey = tuple[str, int, bool, bool]

# Deadline kinds of the client side timer.
_HEAD, _IDLE, _READ = 1, 2, 3


class _Head:
    """llhttp callbacks for one request head."""

    __slots__ = ("headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


class Exchange:
    """A request :func:`plan` accepted: what to send upstream and what to log."""

    __slots__ = (
        "body_left",
        "close_after",
        "head_bytes",
        "headers",
        "host",
        "idle_timeout",
        "key",
        "method",
        "path",
        "response_headers",
        "rid",
        "route",
        "timeout",
        "user",
    )

    def __init__(
        self,
        *,
        route: Route,
        rid: str,
        method: str,
        host: str,
        path: str,
        user: str | None,
        headers: CIMultiDict[str],
        head_bytes: bytes,
        key: PoolKey,
        body_left: int,
        close_after: bool,
    ) -> None:
        self.route = route
        self.rid = rid
        self.method = method
        self.host = host
        self.path = path
        self.user = user
        self.headers = headers
        self.head_bytes = head_bytes
        self.key = key
        self.body_left = body_left
        self.close_after = close_after
        self.response_headers = route.response_headers
        self.timeout = route.timeout
        self.idle_timeout = route.idle_timeout


def _pool_key(route: Route) -> PoolKey:
    up = route.upstream
    tls = up.scheme == "https"
    return (
        up.raw_host or "",
        up.port or (443 if tls else 80),
        tls,
        not route.settings.tls_skip_verify,
    )


def plan(
    runtime: Runtime,
    throttle: Throttle,
    head_bytes: bytes,
    peer_ip: str,
    transport_scheme: str,
) -> Exchange | None:
    """The exchange for this request head, or None when aiohttp's handler must take it.

    None never has an effect: nothing is logged, counted or charged before the last
    check has passed (a rate limit refusal charges nothing the handler will not charge
    again when it refuses the same request).
    """
    if runtime.draining:
        return None
    head = _Head()
    parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(head_bytes)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    if parser.get_http_version() != "1.1":
        return None
    method_b = parser.get_method()
    if method_b not in _METHODS:
        return None
    url = head.url
    if not url.startswith(b"/") or b"#" in url or len(url) > MAX_LINE_SIZE:
        return None
    raw = head.headers
    if len(raw) > _MAX_HEADERS:
        return None
    host_b: bytes | None = None
    cookie_b = b""
    length: int | None = None
    close_after = False
    for name, value in raw:
        if len(name) + len(value) > MAX_FIELD_SIZE:
            return None
        lname = name.lower()
        if lname == b"host":
            if host_b is not None:
                return None
            host_b = value
        elif lname == b"cookie":
            if cookie_b:
                return None
            cookie_b = value
        elif lname == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif lname in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
        elif lname == b"connection":
            tokens = value.lower()
            if b"upgrade" in tokens:
                return None
            if b"close" in tokens:
                close_after = True
    if not host_b:
        return None
    raw_target = url.decode("utf-8", "surrogateescape")
    raw_path, _, query = raw_target.partition("?")
    try:
        path = normalize_path(raw_path)
    except UnsafePathError:
        return None
    if path == "/ping" or path.startswith("/.clawgate") or path == JWKS_PATH:
        return None
    snap = runtime.snapshot
    settings = snap.settings
    host = host_b.decode("utf-8", "surrogateescape")
    route = match_route(snap, host, path)
    if route is None:
        return None
    now = int(time.time())
    codec = snap.keys.codec
    cookies = parse_cookie_header(cookie_b.decode("utf-8", "surrogateescape"), codec.cookie_name)
    audience = host.lower()
    if audience.endswith(":443"):
        audience = audience[:-4]
    try:
        session = codec.decode(cookies, host="" if settings.cookie_domain else audience, now=now)
    except SessionError:
        return None
    if session is not None and (
        session.sid in runtime.revoked
        or session.needs_refresh(now)
        or _sealed_with_old_secret(snap, cookies, session, now)
    ):
        return None
    headers: CIMultiDict[str] = CIMultiDict(
        [
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for n, v in raw
        ]
    )
    hops = settings.xff_num_trusted_hops
    ip = (
        peer_ip
        if hops <= 0
        else forwarded_client(peer_ip, headers.getall("X-Forwarded-For", ()), hops)
    )
    identity = to_identity(session, settings.idp_groups_claim) if session is not None else None
    method = method_b.decode()
    decision = route.policy.decide(RequestFacts(method, path, ip, datetime.now(UTC)), identity)
    if not decision.allow:
        return None
    throttle.configure(settings.rate_limits)
    clock = time.monotonic()
    if throttle.proxy_ip is not None and throttle.check_ip(False, ip, clock) > 0:
        return None
    if (
        session is not None
        and throttle.proxy_user is not None
        and throttle.check_user(session.sub, clock) > 0
    ):
        return None

    # Committed: from here on this request is the front's.
    rid = request_id(headers, hops > 0)
    user = (session.email or session.sub) if session is not None else None
    metrics.observe_decision(True, decision.reason)
    log.info(
        "authorization",
        request_id=rid,
        allow=True,
        reason=decision.reason,
        route=route.name,
        user=user,
        method=method,
        path=path,
    )
    out = upstream_headers(
        headers,
        request_host=host,
        host=host if route.settings.preserve_host_header else authority(route.upstream),
        client_ip=ip,
        scheme=client_scheme(runtime, headers.get("X-Forwarded-Proto", ""), transport_scheme),
        strip=snap.identity_headers | route.remove_headers,
        cookie_prefix=snap.keys.cookie_name,
        set_headers=route.request_headers,
        identity=identity_headers(snap, route, session, audience),
        websocket=False,
    )
    out["X-Request-Id"] = rid
    try:
        request_head = serialize_head(method, upstream_target(route, path, query), out, "")
    except UpstreamError:
        request_head = b""  # a header value that cannot be sent: answered with a 502
    return Exchange(
        route=route,
        rid=rid,
        method=method,
        host=host,
        path=path,
        user=user,
        headers=headers,
        head_bytes=request_head,
        key=_pool_key(route),
        body_left=length or 0,
        close_after=close_after,
    )


class UpstreamLink(asyncio.Protocol):
    """One keep-alive connection to an upstream; parses responses as they arrive and
    hands every piece to the :class:`FrontConnection` it currently serves."""

    __slots__ = (
        "broken",
        "chunked_out",
        "closed",
        "complete",
        "got_bytes",
        "head_done",
        "headers",
        "idle_since",
        "interim",
        "keep_alive",
        "key",
        "out",
        "owner",
        "parser",
        "paused",
        "pool",
        "reason",
        "reused",
        "skip_body",
        "status",
        "transport",
        "until_eof",
    )

    def __init__(self, pool: LinkPool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser: Any = httptools.HttpResponseParser(self)
        self.owner: FrontConnection | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.paused = False
        self.out: list[bytes] = []
        self.reset(False)

    def reset(self, skip_body: bool) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.interim = False
        self.skip_body = skip_body
        self.chunked_out = False
        self.until_eof = False
        self.complete = False
        self.keep_alive = False
        self.got_bytes = False
        self.broken = False

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.broken and not self.closed

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    # -- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            self.broken = True  # bytes nobody asked for: out of step, never reuse
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            owner.upstream_failed(UpstreamError(502, "upstream_error:unexpected_upgrade"))
            return
        except httptools.HttpParserError as exc:
            owner.upstream_failed(UpstreamError(502, f"upstream_error:{type(exc).__name__}"))
            return
        owner.upstream_progress(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        owner = self.owner
        if owner is not None:
            owner.upstream_lost(self)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_client_reading(1)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_client_reading(1)

    # -- llhttp ---------------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # trailers arrive here too; they are dropped
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.interim = True  # 100 Continue, 103 Early Hints: not relayed
            return
        self.status = status
        self.head_done = True
        if self.owner is not None:
            self.owner.response_head(self)
        if self.skip_body:
            # Whatever length a HEAD response announces, no body follows; llhttp cannot
            # be told so, hence no reuse of this connection afterwards.
            self.complete = True
            self.keep_alive = False

    def on_body(self, data: bytes) -> None:
        if self.skip_body:
            self.broken = True
            return
        if self.chunked_out:
            self.out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.out.append(data)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.headers = []
            self.reason = b""
            return
        if self.skip_body:
            return
        if self.chunked_out:
            self.out.append(b"0\r\n\r\n")
        self.complete = True
        self.keep_alive = bool(self.parser.should_keep_alive())


class LinkPool:
    """Idle upstream connections per (host, port, TLS, verify), most recent first.

    ``idle_seconds`` stays below common upstream keep-alive timeouts (Node's is 5 s) so
    a request rarely meets a connection the upstream is closing; an idempotent request
    that does is retried once on a new connection.
    """

    def __init__(self, *, max_idle_per_key: int = 256, idle_seconds: float = 4.0) -> None:
        self._idle: dict[PoolKey, list[UpstreamLink]] = {}
        self._max_idle = max_idle_per_key
        self._idle_seconds = idle_seconds
        self._verify = ssl.create_default_context()
        self._no_verify = ssl.create_default_context()
        self._no_verify.check_hostname = False
        self._no_verify.verify_mode = ssl.CERT_NONE
        self.closing = False

    def take(self, key: PoolKey) -> UpstreamLink | None:
        stack = self._idle.get(key)
        if not stack:
            return None
        now = time.monotonic()
        while stack:
            link = stack.pop()
            if not link.closed and now - link.idle_since < self._idle_seconds:
                link.reused = True
                return link
            link.close()
        return None

    async def connect(self, key: PoolKey) -> UpstreamLink:
        host, port, tls, verify = key
        loop = asyncio.get_running_loop()
        link = UpstreamLink(self, key)
        ctx = (self._verify if verify else self._no_verify) if tls else None
        await loop.create_connection(
            lambda: link, host, port, ssl=ctx, server_hostname=host if tls else None
        )
        return link

    def release(self, link: UpstreamLink) -> None:
        link.owner = None
        if not link.reusable or self.closing:
            link.close()
            return
        stack = self._idle.setdefault(link.key, [])
        if len(stack) >= self._max_idle:
            link.close()
            return
        if link.paused and link.transport is not None:
            link.paused = False
            link.transport.resume_reading()
        link.idle_since = time.monotonic()
        link.out.clear()
        link.reset(False)
        stack.append(link)

    def forget(self, link: UpstreamLink) -> None:
        stack = self._idle.get(link.key)
        if stack and link in stack:
            stack.remove(link)

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        self.closing = True
        for stack in self._idle.values():
            for link in stack:
                link.close()
        self._idle.clear()


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
        self.pool = LinkPool()
        # asyncio.get_running_loop() costs a getpid() on Python 3.11: look it up once.
        self.loop = asyncio.get_running_loop()
        self.connections: set[FrontConnection] = set()
        self.handed_off = 0
        self.served = 0
        self.drained: asyncio.Event | None = None  # set while shutting down

    def protocol(self) -> FrontConnection:
        return FrontConnection(self)

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
        "_body_pending",
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
        self._sent_at = 0.0
        self._status = 0
        self._wrote = False
        self._draining = False
        self._body_pending: list[bytes] = []
        self._connecting: asyncio.Task[None] | None = None

    # -- connection life ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but behaves as one.
        self._transport = transport  # type: ignore[assignment]
        front = self._front
        peer = transport.get_extra_info("peername")
        self._peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else "0.0.0.0"  # noqa: S104
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
        if not self._buf and self._kind == _IDLE:
            self._set_deadline(_HEAD, self._front.guard.limits().header_timeout)
        self._buf += data
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
        transport = self._transport
        assert transport is not None
        front = self._front
        ex = plan(front.runtime, front.throttle, bytes(buf[:cut]), self._peer_ip, front.scheme)
        if ex is None:
            self._hand_off()
            return
        front.served += 1
        metrics.fast_path(True)
        del buf[:cut]
        self._ex = ex
        self._started = self._loop.time()
        self._status = 0
        self._wrote = False
        self._clear_deadline()
        if ex.body_left:
            self._set_deadline(_READ, front.guard.limits().read_timeout)
        if not ex.head_bytes:
            self._answer_error(UpstreamError(502, "upstream_error:bad_header"))
            return
        link = front.pool.take(ex.key)
        if link is not None:
            self._send(link)
        else:
            self._connecting = self._loop.create_task(self._connect(ex))
        if buf and ex.body_left:
            piece = bytes(buf[: ex.body_left])
            del buf[: len(piece)]
            ex.body_left -= len(piece)
            self._send_body(piece)
            if not ex.body_left and self._kind == _READ:
                self._kind = 0
        if len(buf) > _HIGH_WATER:
            self.pause_client_reading(2)

    def _hand_off(self) -> None:
        """Give the connection, with the unread request, to aiohttp's handler."""
        transport = self._transport
        if transport is None:
            return
        front = self._front
        front.handed_off += 1
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
        handler.adopt(transport, data, key)

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

    def _send(self, link: UpstreamLink) -> None:
        ex = self._ex
        assert ex is not None and link.transport is not None
        self._link = link
        link.owner = self
        link.reset(ex.method == "HEAD")
        link.transport.write(ex.head_bytes)
        pending = self._body_pending
        if pending:
            link.transport.write(b"".join(pending))
            pending.clear()
            self.resume_client_reading(2)
        self._sent_at = self._loop.time()
        if ex.timeout:
            self._set_udeadline(_HEAD, ex.timeout)

    def _send_body(self, piece: bytes) -> None:
        link = self._link
        if link is not None and link.transport is not None and not link.closed:
            link.transport.write(piece)
        elif link is None:
            self._body_pending.append(piece)
            if sum(map(len, self._body_pending)) > _HIGH_WATER:
                self.pause_client_reading(2)

    def response_head(self, link: UpstreamLink) -> None:
        ex = self._ex
        assert ex is not None
        status = link.status
        self._status = status
        metrics.observe_upstream(ex.route.name, self._loop.time() - self._sent_at)
        headers = upstream_response_headers(link.headers, ex.response_headers)
        if "X-Request-Id" not in headers:
            headers["X-Request-Id"] = ex.rid
        framed = False
        for name, _ in link.headers:
            lname = name.lower()
            if lname == b"content-length":
                framed = True
            elif lname == b"transfer-encoding":
                framed = True
                link.chunked_out = True  # llhttp hands over de-chunked bytes
        no_body = ex.method == "HEAD" or status in _NO_BODY_STATUS
        if not framed and not no_body:
            link.chunked_out = link.until_eof = True
        if link.chunked_out and not no_body:
            headers.popall("Content-Length", None)
            headers["Transfer-Encoding"] = "chunked"
        if ex.close_after or self._draining or ex.body_left:
            headers["Connection"] = "close"
        lines = [b"HTTP/1.1 %d %s" % (status, link.reason or _REASONS.get(status, b"Unknown"))]
        lines.extend(f"{k}: {v}".encode("utf-8", "surrogateescape") for k, v in headers.items())
        lines.append(b"\r\n")
        link.out.append(b"\r\n".join(lines))
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
            and ex.method in _RETRYABLE
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
        close = ex.close_after or ex.body_left > 0 or self._draining
        self._status = exc.status
        if self._transport is not None:
            self._transport.write(render(page, ex.rid, self._front.runtime.secure, close))
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
        elapsed = self._loop.time() - self._started
        log.info(
            "access",
            request_id=ex.rid,
            method=ex.method,
            host=ex.host,
            path=ex.path,
            status=self._status,
            duration_ms=round(elapsed * 1000, 2),
            user=ex.user,
            route=ex.route.name,
        )
        metrics.observe_request(ex.route.name, self._status, elapsed)
        if self._transport is None:
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


def render(page: web.Response, rid: str, secure: bool, close: bool) -> bytes:
    """A clawgate page as bytes, with the headers the request middleware adds."""
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
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


FRONTS = web.AppKey("fronts", list[Front])
