"""Pooled keep-alive connections to upstreams for the front (proxy/front.py).

An :class:`UpstreamLink` parses responses with llhttp (httptools) as they arrive and
hands every piece to the :class:`LinkOwner` it currently serves; the owner writes
them to its client. A link goes back to the :class:`LinkPool` only after a complete
response on a connection both sides keep alive.

A response head is read as raw bytes and looked up in a small cache of heads seen
before (:func:`response_head`): an upstream answers most requests with the same bytes
but for its ``Date`` header once a second, so the head's header list, and what the
owner makes of it, is built once per distinct head instead of once per response. The
link's own llhttp parser has no per-header callbacks; llhttp still checks every byte
of every head and frames every body.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any, Protocol

import httptools

PoolKey = tuple[str, int, bool, bool]

# Requests sent again, once, on a new connection when a pooled one turns out to have
# been closed by the upstream before any byte of an answer (both paths do it).
RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS"})
# Responses that never carry a body, whatever their head says.
NO_BODY_STATUS = frozenset({204, 304})

# A response head longer than this is refused (502): the raw bytes are kept until the
# head is complete, and nothing legitimate sends 64 KB of response headers.
MAX_RESPONSE_HEAD = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be reached or answered wrongly; ``status`` is what the
    client gets (502, 504) when no response head has gone out yet."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ResponseHead:
    """One distinct response head, parsed: status, reason and header list as llhttp
    read them. ``rendered`` is the owner's to fill (the client's head, per route)."""

    __slots__ = ("chunked", "framed", "headers", "reason", "rendered", "status")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.framed = False  # Content-Length or Transfer-Encoding: the body has an end
        self.chunked = False  # Transfer-Encoding: llhttp hands over de-chunked bytes
        for name, _ in headers:
            lname = name.lower()
            if lname == b"content-length":
                self.framed = True
            elif lname == b"transfer-encoding":
                self.framed = self.chunked = True
        self.rendered: dict[object, tuple[bytes, bool]] = {}


class HeadReader:
    """llhttp callbacks gathering one head: the request target (``url``) or the status
    reason, and the header list in order."""

    __slots__ = ("headers", "reason", "url")

    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


# Heads by their exact bytes; bounded in entries and in the size of each head.
_HEADS: dict[bytes, ResponseHead] = {}
_HEADS_MAX = 512
_HEAD_CACHED_MAX = 4096


def response_head(raw: bytes, status: int) -> ResponseHead:
    """The parsed head of ``raw`` (a whole head, ending in CRLF CRLF, that llhttp has
    accepted and found ``status`` in)."""
    hit = _HEADS.get(raw)
    if hit is not None:
        return hit
    reader = HeadReader()
    httptools.HttpResponseParser(reader).feed_data(raw)
    head = ResponseHead(status, reader.reason, reader.headers)
    if len(raw) <= _HEAD_CACHED_MAX:
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        _HEADS[raw] = head
    return head


class LinkOwner(Protocol):
    """What a link reports to the connection it serves."""

    def response_head(self, link: UpstreamLink, head: ResponseHead) -> None: ...

    def upstream_progress(self, link: UpstreamLink) -> None: ...

    def upstream_lost(self, link: UpstreamLink) -> None: ...

    def upstream_failed(self, exc: UpstreamError) -> None: ...

    def pause_client_reading(self, reason: int) -> None: ...

    def resume_client_reading(self, reason: int) -> None: ...


class UpstreamLink(asyncio.Protocol):
    """One keep-alive connection to an upstream; parses responses as they arrive and
    hands every piece to the :class:`LinkOwner` it currently serves."""

    __slots__ = (
        "broken",
        "chunked_out",
        "closed",
        "complete",
        "got_bytes",
        "head_done",
        "idle_since",
        "interim",
        "keep_alive",
        "key",
        "out",
        "owner",
        "parser",
        "paused",
        "pool",
        "raw",
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
        self.owner: LinkOwner | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.paused = False
        self.out: list[bytes] = []
        self.reset(False)

    def reset(self, skip_body: bool) -> None:
        self.status = 0
        self.raw = b""  # the response head's bytes so far (and what followed them)
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
        if self.complete:
            # More than the response's framing said: the link is out of step with the
            # upstream. Those bytes reach nobody, and the link is never reused.
            self.broken = True
            self.close()
            return
        self.got_bytes = True
        if not self.head_done:
            self.raw = self.raw + data if self.raw else data
            if len(self.raw) > MAX_RESPONSE_HEAD and self.raw.find(b"\r\n\r\n") < 0:
                owner.upstream_failed(UpstreamError(502, "upstream_error:head_too_large"))
                return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError) as exc:
            if self.complete:
                # Garbage after a whole response: the response stands, the link goes.
                self.broken = True
                self.close()
            elif isinstance(exc, httptools.HttpParserUpgrade):
                owner.upstream_failed(UpstreamError(502, "upstream_error:unexpected_upgrade"))
                return
            else:
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

    # No on_status / on_header: the head is read from its raw bytes (module text), and
    # trailers are dropped.

    def on_headers_complete(self) -> None:
        if self.complete:
            self.broken = True  # a second response in the same read: never relayed
            return
        status = self.parser.get_status_code()
        raw = self.raw
        end = raw.find(b"\r\n\r\n") + 4  # llhttp insists on CRLF: the head ends there
        if 100 <= status < 200:
            self.interim = True  # 100 Continue, 103 Early Hints: not relayed
            self.raw = raw[end:]
            return
        self.status = status
        self.head_done = True
        self.raw = b""
        if self.owner is not None:
            self.owner.response_head(self, response_head(raw[:end], status))
        if self.skip_body:
            # Whatever length a HEAD response announces, no body follows; llhttp cannot
            # be told so, hence no reuse of this connection afterwards.
            self.complete = True
            self.keep_alive = False

    def on_body(self, data: bytes) -> None:
        if self.skip_body or self.complete:
            self.broken = True
            return
        if self.chunked_out:
            self.out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.out.append(data)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.skip_body or self.complete:
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

    def tls_context(self, verify: bool) -> ssl.SSLContext:
        return self._verify if verify else self._no_verify

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
        ctx = self.tls_context(verify) if tls else None
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
        link.out.clear()  # the next owner's reset() clears the rest
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
