"""What a proxied request becomes upstream, apart from framing (proxy/framing.py) and
the header set itself (proxy/forward.py): which route serves it, the target path, the
scheme the client used, the identity headers (assertion and claims) and the upstream
connection pool it may use. Both request paths (proxy/handler.py, proxy/exchange.py)
and the verify page (proxy/verify.py) ask these functions, so they all agree.
"""

from __future__ import annotations

import time

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from policy.routes import rewrite_path
from proxy.forward import upstream_headers
from proxy.framing import ConnectionOptions
from proxy.runtime import Runtime
from proxy.session import Session
from proxy.snapshot import Route, Snapshot
from proxy.upstream_link import PoolKey

__all__ = [
    "authority",
    "client_scheme",
    "handler_header_set",
    "identity_headers",
    "match_route",
    "pool_key",
    "upstream_target",
]


# Route lookups by (Host header, normalized path) for the table in force. The table is
# immutable, so a hit is always what RouteTable.match would say; the size is bounded
# in entries and key length because both keys come from the client.
_routes_for: list[object] = [None]
_route_cache: dict[tuple[str, str], Route | None] = {}
_ROUTE_CACHE_MAX = 4096


def match_route(snap: Snapshot, host: str, path: str) -> Route | None:
    table = snap.table
    if _routes_for[0] is not table:
        _route_cache.clear()
        _routes_for[0] = table
    key = (host, path)
    try:
        return _route_cache[key]
    except KeyError:
        pass
    route = table.match(host, path)
    if len(host) + len(path) > 512:  # long keys are rare; caching them would cost memory
        return route
    if len(_route_cache) >= _ROUTE_CACHE_MAX:
        _route_cache.clear()
    _route_cache[key] = route
    return route


def client_scheme(runtime: Runtime, forwarded_proto: str, transport_scheme: str) -> str:
    """The scheme the client used: https when clawgate terminates TLS; behind a trusted
    TLS-terminating load balancer (insecure_server with xff_num_trusted_hops), what it
    says in ``forwarded_proto``; else the scheme of the connection itself."""
    if runtime.secure:
        return "https"
    if runtime.snapshot.settings.xff_num_trusted_hops > 0:
        told = forwarded_proto.strip().lower()
        if told in ("http", "https"):
            return told
    return transport_scheme


def identity_headers(
    snap: Snapshot, route: Route, session: Session | None, audience: str
) -> dict[str, str]:
    """The assertion and claim headers for ``route``; ``audience`` is the session host
    form of the request's Host (lower case, no :443)."""
    if not route.pass_identity:
        return {}
    settings = snap.settings
    out: dict[str, str] = {}
    if session is not None:
        out[settings.jwt_assertion_header] = snap.keys.signer.sign(
            session, audience=audience, now=int(time.time())
        )
    else:
        out[settings.jwt_assertion_header] = ""
    for header, claim in settings.jwt_claims_headers.items():
        out[header] = _claim_value(session, claim) if session is not None else ""
    return out


def _claim_value(session: Session, claim: str) -> str:
    if claim == "email":
        if session.email is None and session.sub.startswith(SERVICE_PRINCIPAL):
            # An API key has no email; a gateway keyed on the email header (OpenClaw's
            # trusted-proxy userHeader) sees the service principal instead. Never an
            # address, so no email or domain rule downstream can match it by accident.
            return session.sub
        return session.email or ""
    if claim in ("sub", "user"):
        return session.sub
    if claim == "groups":
        return ",".join(session.groups)
    value = session.claims.get(claim)
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    text = str(value)
    # A claim value must not be able to inject header lines.
    return "" if any(c in text for c in "\r\n\x00") else text


def pool_key(route: Route) -> PoolKey:
    """Which pooled upstream connections may carry this route's requests."""
    up = route.upstream
    tls = up.scheme == "https"
    return (
        up.raw_host or "",
        up.port or (443 if tls else 80),
        tls,
        not route.settings.tls_skip_verify,
    )


def authority(url: URL) -> str:
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    if url.explicit_port is not None:
        return f"{host}:{url.explicit_port}"
    return host


def upstream_target(route: Route, path: str, query: str) -> str:
    """Path and query the upstream receives: the checked path (prefix rewritten) under
    the upstream URL's own path."""
    settings = route.settings
    if settings.prefix_rewrite is not None and settings.prefix is not None:
        path = rewrite_path(path, settings.prefix, settings.prefix_rewrite)
    target = route.upstream.raw_path.rstrip("/") + path
    return f"{target}?{query}" if query else target




_AUTHORIZATION = frozenset({"authorization"})
# The subjects of API-key sessions (proxy/service_identity.py).
SERVICE_PRINCIPAL = "apikey:"


def handler_header_set(
    runtime: Runtime,
    route: Route,
    session: Session | None,
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    *,
    host: str,
    audience: str,
    client_ip: str,
    forwarded_proto: str,
    transport_scheme: str,
    websocket: bool,
    connection: ConnectionOptions,
    credential: bool = False,
) -> CIMultiDict[str]:
    """The upstream header set for a request the handler serves (and the one the
    verify page shows): ``host`` is the Host the client sent, ``audience`` its session
    host form (proxy/identity.py request_host); ``credential``: the request's
    Authorization header is an API key or a password of clawgate's, never forwarded."""
    snap = runtime.snapshot
    strip = snap.identity_headers | route.remove_headers
    if credential:
        strip = strip | _AUTHORIZATION
    return upstream_headers(
        headers,
        request_host=host,
        host=host if route.settings.preserve_host_header else authority(route.upstream),
        client_ip=client_ip,
        scheme=client_scheme(runtime, forwarded_proto, transport_scheme),
        strip=strip,
        cookie_prefix=snap.keys.cookie_name,
        set_headers=route.request_headers,
        identity=identity_headers(snap, route, session, audience),
        websocket=websocket,
        connection=connection,
    )
