"""Streaming HTTP to the upstream, with header hygiene in both directions.

Bodies are relayed chunk by chunk in both directions (no whole-body buffering), so
large transfers and server-sent events flow with flat memory. Headers the client
could use to impersonate someone (identity, X-Forwarded-*) never pass through as
sent: they are removed and, where clawgate vouches for them, set fresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.framing import (
    CHUNKED,
    NO_BODY,
    ConnectionOptions,
    Framing,
    FramingError,
    connection_options,
)
from proxy.snapshot import HSTS, SECURITY_HEADERS
from proxy.upstream_link import (
    NO_BODY_STATUS,
    RETRYABLE,
    LinkPool,
    PoolKey,
    ResponseHead,
    UpstreamError,
    UpstreamLink,
)

log = structlog.get_logger("clawgate.forward")

# The security headers every route gets by default (see proxy/snapshot.py).
DEFAULT_RESPONSE_HEADERS = {**SECURITY_HEADERS, "Strict-Transport-Security": HSTS}

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
# Whatever the client sends under these names is discarded; clawgate sets its own.
ATTRIBUTION_HEADERS = frozenset(
    h.lower()
    for h in (
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Forwarded-Port",
        "X-Forwarded-Prefix",
        "Forwarded",
        "X-Real-IP",
        "X-Client-IP",
        "True-Client-IP",
        "CF-Connecting-IP",
        "X-Envoy-External-Address",
    )
)
_WS_HANDSHAKE = frozenset(
    h.lower()
    for h in (
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Accept",
    )
)
_CHUNK = 64 * 1024


def strip_cookies(header: str, drop_prefix: str) -> str:
    """Remove clawgate's own cookies from a Cookie header; keep the upstream's."""
    kept = [
        part.strip()
        for part in header.split(";")
        if part.strip() and not part.strip().startswith(drop_prefix)
    ]
    return "; ".join(kept)


# clawgate answers ``Expect: 100-continue`` itself, once the request is allowed
# (send_continue below; the front in proxy/front.py): passed on, it would make an HTTP
# client library wait for the upstream's own 100, which a server may never send.
_ANSWERED_HERE = frozenset({"expect"})
# Request headers no upstream ever receives from the client, whatever the route.
_NEVER_FORWARDED = HOP_BY_HOP | ATTRIBUTION_HEADERS | _ANSWERED_HERE

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def expects_continue(request: web.BaseRequest) -> bool:
    """An HTTP/1.1 request with a body whose client waits for ``100 Continue``."""
    return (
        request.version >= (1, 1)
        and request.headers.get("Expect", "").lower() == "100-continue"
        and request.body_exists
    )


async def defer_continue(request: web.Request) -> None:
    """The route's expect handler: ``100 Continue`` waits until the request is allowed
    (aiohttp's default sends it before any check, inviting the bodies of requests that
    will be refused); any other expectation is refused with 417."""
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="Unknown expectation (only 100-continue is supported)")


# Headers that some proxy or upstream reads as "who the user is". A client's copy never
# passes, whatever the configuration says: OpenClaw's trusted-proxy mode reads a user
# header whose name the operator chooses, so a look-alike the operator did not list in
# jwt_claims_headers must not reach it either.
IDENTITY_LOOKALIKES = frozenset(
    (
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-preferred-username",
        "x-forwarded-groups",
        "x-forwarded-access-token",
        "remote-user",
        "x-remote-user",
        "x-remote-email",
        "x-remote-groups",
        "x-webauth-user",
        "x-user",
        "x-email",
    )
)
IDENTITY_PREFIXES = ("x-pomerium-", "x-auth-request-", "x-clawgate-")


def is_identity_lookalike(name: str) -> bool:
    """``name`` (lower case, ``-`` for ``_``) is one only clawgate may set."""
    return name in IDENTITY_LOOKALIKES or name.startswith(IDENTITY_PREFIXES)


def request_connection(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> ConnectionOptions:
    """The client's ``Connection`` options; raises FramingError when they name a
    framing header (the request is refused with 400)."""
    return connection_options(headers.getall("Connection", ()))


def upstream_headers(
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    *,
    request_host: str,
    host: str,
    client_ip: str,
    scheme: str,
    strip: frozenset[str],
    cookie_prefix: str,
    set_headers: Mapping[str, str],
    identity: Mapping[str, str],
    websocket: bool,
    connection: ConnectionOptions,
) -> CIMultiDict[str]:
    """The header set the upstream receives (framing aside: proxy/framing.py writes
    that). ``strip`` lists identity header names (lower case); ``request_host`` is the
    Host the client sent; ``connection`` is what request_connection() read."""
    drop = _NEVER_FORWARDED | strip | connection.nominated
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        key = name.lower()
        if "_" in key:
            # CGI-style upstreams (WSGI, PHP) read X_Forwarded_For as X-Forwarded-For:
            # an underscore spelling must not smuggle in what the dash spelling cannot.
            key = key.replace("_", "-")
        if key in drop or key == "host" or is_identity_lookalike(key):
            continue
        if key in _WS_HANDSHAKE and not websocket:
            continue
        if key == "cookie":
            value = strip_cookies(value, cookie_prefix)
            if not value:
                continue
        out.add(name, value)
    out["Host"] = host
    out["X-Forwarded-For"] = client_ip
    out["X-Forwarded-Proto"] = scheme
    out["X-Forwarded-Host"] = request_host
    for name, value in set_headers.items():
        out[name] = value
    for name, value in identity.items():
        out[name] = value
    return out


def request_framing(request: web.BaseRequest) -> Framing:
    """The framing of the body the handler path forwards, from what aiohttp's parser
    read: chunked only when ``chunked`` is the one transfer coding."""
    codings = request.headers.getall("Transfer-Encoding", ())
    if codings:
        if len(codings) != 1 or codings[0].strip().lower() != "chunked":
            raise FramingError("unsupported_transfer_encoding")
        return CHUNKED
    length = request.content_length
    return Framing(length) if length else NO_BODY


def response_header_list(
    raw: list[tuple[bytes, bytes]], extra: Mapping[str, str]
) -> CIMultiDict[str]:
    """The client's response headers from the upstream's: hop-by-hop ones and those the
    upstream's ``Connection`` names dropped, the route's headers applied (a default
    security header never overrides the upstream's own, maybe stricter, choice)."""
    upstream: CIMultiDict[str] = CIMultiDict(
        (n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in raw
    )
    drop = set(HOP_BY_HOP)
    for value in upstream.getall("Connection", ()):
        drop.update(t.strip().lower() for t in value.split(",") if t.strip())
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in drop:
            out.add(name, value)
    for name, value in extra.items():
        if name in upstream and DEFAULT_RESPONSE_HEADERS.get(name) == value:
            continue
        out[name] = value
    return out


@dataclass(frozen=True)
class UpstreamRequest:
    """Everything the forwarder needs, decided before it runs: where, the head bytes
    (proxy/framing.py) and the framing of the body that follows them."""

    key: PoolKey
    method: str
    head: bytes
    framing: Framing
    timeout: float | None
    idle_timeout: float | None
    response_headers: Mapping[str, str]


_BUFFERED_MAX = 256 * 1024


class _LinkReader:
    """The handler path's owner of an upstream link: the link's callbacks become an
    awaitable response head and body pieces (the front owns links from its protocol
    callbacks instead; both read responses with the same UpstreamLink)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, link: UpstreamLink, head_only: bool):
        self.link = link
        self.head: asyncio.Future[ResponseHead] = loop.create_future()
        self.pieces: list[bytes] = []
        self.buffered = 0
        self.wake: asyncio.Event = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.error: UpstreamError | None = None
        self.finished = False
        # The link closed before any byte of an answer on a connection it had reused.
        self.stale = False
        self.head_only = head_only
        link.owner = self
        link.reset(head_only)

    def response_head(self, link: UpstreamLink, head: ResponseHead) -> None:
        no_body = self.head_only or head.status in NO_BODY_STATUS
        if not head.framed and not no_body:
            link.until_eof = True
        if not self.head.done():
            self.head.set_result(head)

    def upstream_progress(self, link: UpstreamLink) -> None:
        if link.out:
            for piece in link.out:
                self.pieces.append(piece)
                self.buffered += len(piece)
            link.out.clear()
            if self.buffered > _BUFFERED_MAX and link.transport is not None and not link.closed:
                link.paused = True
                link.transport.pause_reading()
        if link.complete:
            self.finished = True
        self.wake.set()

    def upstream_lost(self, link: UpstreamLink) -> None:
        if link.complete:
            return
        if link.head_done and link.until_eof:
            link.complete = True  # no length, not chunked: the end of the connection ends it
            link.keep_alive = False
            self.finished = True
            self.wake.set()
            return
        if link.reused and not link.got_bytes and not link.head_done:
            self.stale = True
        self.upstream_failed(UpstreamError(502, "upstream_error:ServerDisconnectedError"))

    def upstream_failed(self, exc: UpstreamError) -> None:
        self.link.broken = True
        self.link.close()
        if self.error is None:
            self.error = exc
        if not self.head.done():
            self.head.set_exception(exc)
        self.writable.set()
        self.wake.set()

    def pause_client_reading(self, reason: int) -> None:
        self.writable.clear()  # the upstream is slow to take the body

    def resume_client_reading(self, reason: int) -> None:
        self.writable.set()

    async def read(self) -> bytes:
        """The next body piece; b'' at the end; raises UpstreamError when it broke."""
        while not self.pieces:
            if self.error is not None:
                raise self.error
            if self.finished:
                return b""
            self.wake.clear()
            await self.wake.wait()
        piece = b"".join(self.pieces)
        self.pieces.clear()
        self.buffered = 0
        link = self.link
        if link.paused and link.transport is not None and not link.closed:
            link.paused = False
            link.transport.resume_reading()
        return piece


async def _connect(pool: LinkPool, up: UpstreamRequest, *, fresh: bool) -> UpstreamLink:
    link = None if fresh else pool.take(up.key)
    if link is not None:
        return link
    try:
        if up.timeout:
            return await asyncio.wait_for(pool.connect(up.key), up.timeout)
        return await pool.connect(up.key)
    except TimeoutError:
        raise UpstreamError(504, "upstream_timeout") from None
    except OSError:
        raise UpstreamError(502, "upstream_unreachable") from None


async def _send_body(request: web.BaseRequest, reader: _LinkReader, framing: Framing) -> bool:
    """Forward the body aiohttp's parser de-framed, framed as ``framing`` says; True
    when all of it went out (a client that left mid-body makes it False)."""
    link = reader.link
    sent = 0
    try:
        async for piece in request.content.iter_any():
            await reader.writable.wait()
            if link.closed or link.transport is None:
                return False
            sent += len(piece)
            if framing.chunked:
                link.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            elif sent > framing.length:
                return False  # cannot happen with aiohttp's parser; never send past it
            else:
                link.transport.write(piece)
    except Exception:  # any failure to read the client's body: not all of it went
        return False
    if link.closed or link.transport is None:
        return False
    if framing.chunked:
        link.transport.write(b"0\r\n\r\n")
        return True
    return sent == framing.length


async def forward_http(
    request: web.Request,
    pool: LinkPool,
    up: UpstreamRequest,
    on_head: Callable[[web.StreamResponse], None] | None = None,
) -> web.StreamResponse:
    """Relay one request and its response over a pooled upstream link (the front's
    pool); raises :class:`UpstreamError` before the response head went out. A link
    is reused only after a complete exchange: the whole body sent, the whole response
    read, nothing more."""
    loop = asyncio.get_running_loop()
    head_only = up.method == "HEAD"
    if up.framing.has_body and expects_continue(request):
        # Allowed: the client may send its body now (the front answers at the same point).
        await request.writer.write(CONTINUE)
        request.writer.output_size = 0
    link = await _connect(pool, up, fresh=False)
    reader = _LinkReader(loop, link, head_only)
    assert link.transport is not None
    link.transport.write(up.head)
    sender = (
        loop.create_task(_send_body(request, reader, up.framing)) if up.framing.has_body else None
    )
    if sender is not None:
        sender.add_done_callback(lambda task: _body_ended(task, reader))
    try:
        try:
            head = await asyncio.wait_for(asyncio.shield(reader.head), up.timeout)
        except UpstreamError:
            if not (reader.stale and sender is None and up.method in RETRYABLE):
                raise
            # A keep-alive connection the upstream had just closed: once more, anew.
            link = await _connect(pool, up, fresh=True)
            reader = _LinkReader(loop, link, head_only)
            assert link.transport is not None
            link.transport.write(up.head)
            head = await asyncio.wait_for(asyncio.shield(reader.head), up.timeout)
    except TimeoutError:
        _discard(reader, sender)
        raise UpstreamError(504, "upstream_timeout") from None
    except (UpstreamError, asyncio.CancelledError):
        _discard(reader, sender)
        raise
    if sender is not None and not (sender.done() and not sender.cancelled() and sender.result()):
        # Answered before it had the whole body: the link is never reused (as on the front).
        link.broken = True
    response = web.StreamResponse(status=head.status, reason=head.reason.decode("latin-1") or None)
    try:
        response.headers.update(response_header_list(head.headers, up.response_headers))
        no_body = head_only or head.status in NO_BODY_STATUS
        if not no_body and (head.chunked or not head.framed):
            response.headers.popall("Content-Length", None)
            response.enable_chunked_encoding()
        if on_head is not None:
            on_head(response)
        if not request.content.is_eof():
            # Answered before the client's body is all here: as the front does, this
            # connection ends with the response, and no more of that body is read as
            # anything (aiohttp discards what comes, then closes).
            response.force_close()
        await response.prepare(request)
        idle = up.idle_timeout
        while True:
            chunk = await (asyncio.wait_for(reader.read(), idle) if idle else reader.read())
            if not chunk:
                break
            await response.write(chunk)
        await response.write_eof()
    except (TimeoutError, UpstreamError, aiohttp.ClientError, ConnectionResetError) as exc:
        # Headers are gone already: the only honest signal left is to cut the connection.
        reason = exc.reason if isinstance(exc, UpstreamError) else type(exc).__name__
        log.warning("upstream_stream_aborted", error=reason, path=request.path)
        _discard(reader, sender)
        if request.transport is not None:
            request.transport.close()
        return response
    except BaseException:
        _discard(reader, sender)
        raise
    if sender is not None and not (sender.done() and not sender.cancelled() and sender.result()):
        # The upstream answered before it had the whole body: the link is out of step.
        sender.cancel()
        link.broken = True
    if not request.content.is_eof():
        response.force_close()
    pool.release(link)
    return response


def _body_ended(task: asyncio.Task[bool], reader: _LinkReader) -> None:
    """A body that could not all go out (the client left, or its chunks were
    malformed) while no answer has come: the exchange ends now, its link with it, and
    the upstream never sees a whole request."""
    if task.cancelled() or reader.head.done():
        return
    if task.exception() is not None or not task.result():
        reader.upstream_failed(UpstreamError(400, "client_body_incomplete"))


def _discard(reader: _LinkReader, sender: asyncio.Task[bool] | None) -> None:
    """An exchange that did not end cleanly: its link is closed, never pooled, and no
    more of the client's body goes anywhere."""
    if sender is not None:
        sender.cancel()
    link = reader.link
    link.broken = True
    link.owner = None
    link.close()
