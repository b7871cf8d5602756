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
from yarl import URL

from proxy.snapshot import HSTS, SECURITY_HEADERS

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


@dataclass(frozen=True)
class UpstreamRequest:
    """Everything the forwarder needs, decided before it runs."""

    url: URL
    headers: CIMultiDict[str]
    timeout: float | None
    idle_timeout: float | None
    response_headers: Mapping[str, str]
    ssl: bool


class UpstreamError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Headers the client named in ``Connection`` are hop-by-hop too (RFC 9110 7.6.1)."""
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(tokens)


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
) -> CIMultiDict[str]:
    """The header set the upstream receives. ``strip`` lists identity header names
    (lower case); ``request_host`` is the Host the client sent."""
    drop = _NEVER_FORWARDED | strip | connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        key = name.lower()
        if key in drop or key == "host":
            continue
        if "_" in key and key.replace("_", "-") in drop:
            # CGI-style upstreams (WSGI, PHP) read X_Forwarded_For as X-Forwarded-For:
            # an underscore spelling must not smuggle in what the dash spelling cannot.
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


def _response_headers(
    upstream: CIMultiDictProxy[str], extra: Mapping[str, str]
) -> CIMultiDict[str]:
    drop = HOP_BY_HOP | connection_tokens(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in drop:
            out.add(name, value)
    for name, value in extra.items():
        if name in upstream and DEFAULT_RESPONSE_HEADERS.get(name) == value:
            continue  # a default never overrides the upstream's own (maybe stricter) choice
        out[name] = value
    return out


async def forward_http(
    request: web.Request,
    client: aiohttp.ClientSession,
    up: UpstreamRequest,
    on_head: Callable[[web.StreamResponse], None] | None = None,
) -> web.StreamResponse:
    """Relay one request and its response; raises :class:`UpstreamError` before headers."""
    # ``timeout`` bounds the wait for the response head; the body may then stream for as
    # long as it keeps moving (``idle_timeout``), which long downloads and SSE need.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=up.timeout)
    data = request.content if request.body_exists else None
    if data is not None and expects_continue(request):
        # Allowed: the client may send its body now (aiohttp's own handler does the same).
        await request.writer.write(CONTINUE)
        request.writer.output_size = 0
    try:
        ctx = client.request(
            request.method,
            up.url,
            headers=up.headers,
            data=data,
            allow_redirects=False,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            ssl=up.ssl,
        )
        upstream = await asyncio.wait_for(ctx.__aenter__(), up.timeout)
    except TimeoutError:
        raise UpstreamError(504, "upstream_timeout") from None
    except aiohttp.ClientConnectorError:
        raise UpstreamError(502, "upstream_unreachable") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(502, f"upstream_error:{type(exc).__name__}") from None
    try:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.update(_response_headers(upstream.headers, up.response_headers))
        if upstream.headers.get("Content-Length") is None and request.method != "HEAD":
            response.enable_chunked_encoding()
        if on_head is not None:
            on_head(response)
        await response.prepare(request)
        idle = up.idle_timeout
        while True:
            if idle:
                chunk = await asyncio.wait_for(upstream.content.readany(), idle)
            else:
                chunk = await upstream.content.readany()
            if not chunk:
                break
            await response.write(chunk)
        await response.write_eof()
        return response
    except (TimeoutError, aiohttp.ClientError, ConnectionResetError) as exc:
        # Headers are gone already: the only honest signal left is to cut the connection.
        log.warning("upstream_stream_aborted", error=type(exc).__name__, path=request.path)
        upstream.close()
        if request.transport is not None:
            request.transport.close()
        return response
    finally:
        await ctx.__aexit__(None, None, None)
