"""The request path: route, identity, decision, upstream.

Data flows one way. The policy decides on the normalized path, and the upstream
receives exactly that path, so what was checked is what is served.
"""

from __future__ import annotations

import time

import structlog
from aiohttp import web
from multidict import CIMultiDict

from policy.paths import UnsafePathError, normalize_path
from proxy import metrics, pages
from proxy.admission import admit
from proxy.connlimit import GuardedHandler
from proxy.credentials import presented
from proxy.endpoints import ENDPOINTS, JWKS_PATH, _anonymous
from proxy.forward import (
    UpstreamRequest,
    forward_http,
    request_connection,
    request_framing,
)
from proxy.framing import NO_BODY, ConnectionOptions, FramingError, request_head
from proxy.identity import Resolved, apply_cookies, request_host, resolve, to_identity
from proxy.requestid import new_request_id
from proxy.runtime import REQUEST_ID, ROUTE_NAME, RUNTIME, USER, Runtime, client_ip
from proxy.service_identity import credential_session
from proxy.session import Session
from proxy.snapshot import Route
from proxy.ssh_approval import ssh_approval
from proxy.ssh_gate import APPROVAL_PREFIX
from proxy.throttle import limit_user
from proxy.upstream_link import UpstreamError
from proxy.upstream_request import (
    client_scheme,
    handler_header_set,
    match_route,
    pool_key,
    upstream_target,
)
from proxy.websocket import LiveConnection
from proxy.wsrelay import open_admitted, switch_protocols, valid_client_key

log = structlog.get_logger("clawgate.proxy")


def is_websocket_upgrade(request: web.BaseRequest, connection: ConnectionOptions) -> bool:
    return connection.upgrade and request.headers.get("Upgrade", "").strip().lower() == "websocket"


async def handle(request: web.Request) -> web.StreamResponse:
    response = await _handle(request)
    if "Upgrade" in request.headers and not isinstance(response, _Switched):
        # An upgrade not done (refused, failed, or not a WebSocket: Upgrade is hop-by-
        # hop): the client may already have sent bytes of the other protocol behind the
        # head, which must never be read as requests. The connection ends with this
        # answer, on both paths (proxy/front.py closes after its own upgrade errors).
        response.force_close()
    return response


async def _handle(request: web.Request) -> web.StreamResponse:
    runtime: Runtime = request.app[RUNTIME]
    snap = runtime.snapshot
    rid = request.get(REQUEST_ID)
    raw_path, _, query = request.raw_path.partition("?")
    if raw_path == "/ping":
        return web.Response(text="OK", headers={"Cache-Control": "no-store"})
    try:
        # Before anything else: clawgate frames what it forwards (proxy/framing.py), and
        # a request whose framing a header could make ambiguous is not served at all.
        connection = request_connection(request.headers)
        framing = request_framing(request)
    except FramingError as exc:
        log.info("request_rejected", reason="ambiguous_framing", detail=exc.reason)
        return pages.error(
            request,
            400,
            "Bad request",
            "The request's framing is not acceptable.",
            error_code="bad_framing",
            request_id=rid,
        )
    try:
        path = normalize_path(raw_path)
    except UnsafePathError as exc:
        log.info("request_rejected", reason="unsafe_path", detail=str(exc))
        return pages.error(
            request,
            400,
            "Bad request",
            "The request path is not acceptable.",
            error_code="unsafe_path",
            request_id=rid,
        )
    if path.startswith("/.clawgate") or path == JWKS_PATH:
        endpoint = ENDPOINTS.get(path)
        if endpoint is None and path.startswith(APPROVAL_PREFIX) and snap.ssh_routes:
            endpoint = ssh_approval
        route_name = snap.hosts.match(request.host, "/")
        if endpoint is None or route_name is None:
            return _not_found(request, rid)
        request[ROUTE_NAME] = route_name
        return await endpoint(runtime, request, route_name)
    route = match_route(snap, request.host, path)
    if route is None:
        return _not_found(request, rid)
    request[ROUTE_NAME] = route.name
    credential = presented(request.headers.getall("Authorization", ()))
    if credential is None:
        resolved = await resolve(runtime, request)
    else:
        # An API key or a local user's password: the cookie plays no part, and the
        # credential never goes upstream.
        found = await credential_session(
            runtime,
            route,
            credential,
            audience=request_host(request),
            ip=client_ip(request, snap.settings.xff_num_trusted_hops),
            secure=client_scheme(
                runtime, request.headers.get("X-Forwarded-Proto", ""), request.scheme
            )
            == "https",
            rid=rid,
        )
        if isinstance(found, web.StreamResponse):
            return found
        resolved = Resolved(found)
    session = resolved.session
    identity = to_identity(session, snap.settings.idp_groups_claim) if session is not None else None
    if session is not None:
        request[USER] = session.email or session.sub
        limited = limit_user(request, session.sub)
        if limited is not None:
            return limited
    ip = client_ip(request, snap.settings.xff_num_trusted_hops)
    verdict = admit(route, session, identity, request.method, path, ip, time.time())
    decision = verdict.decision
    metrics.observe_decision(decision.allow, decision.reason)
    log.info(
        "authorization",
        allow=decision.allow,
        reason=decision.reason,
        route=route.name,
        user=request.get(USER),
        method=request.method,
        path=path,
    )
    max_age = int(snap.settings.cookie_expire)
    if not decision.allow:
        if identity is None:
            return await _anonymous(runtime, request, resolved, request.raw_path)
        denied = pages.error(
            request,
            403,
            "Access denied",
            "You are signed in, but this account is not allowed here.",
            error_code="forbidden",
            request_id=rid,
            user=session.email or session.sub if session else None,
            csrf=session.csrf if session else None,
            reason=decision.reason,
        )
        apply_cookies(denied, snap.settings, resolved, max_age)
        return denied
    websocket = is_websocket_upgrade(request, connection)
    headers = handler_header_set(
        runtime,
        route,
        session,
        request.headers,
        host=request.host,
        audience=request_host(request),
        client_ip=ip,
        forwarded_proto=request.headers.get("X-Forwarded-Proto", ""),
        transport_scheme=request.scheme,
        websocket=websocket,
        connection=connection,
        credential=credential is not None,
    )
    try:
        if websocket:
            target = upstream_target(route, path, query)
            return await _websocket(
                runtime, request, route, session, path, ip, target, headers, verdict.valid_until
            )
        try:
            head = request_head(
                request.method, upstream_target(route, path, query), headers.items(), framing, rid
            )
        except FramingError as exc:
            raise UpstreamError(502, "upstream_error:bad_header") from exc
        sent = time.perf_counter()
        refreshed = bool(resolved.set_cookies or resolved.clear_cookies)

        # An upgrade to anything but a WebSocket is not done: the connection ends with
        # this answer (handle()), which must say so in its head.
        declined_upgrade = "Upgrade" in request.headers

        def on_head(response: web.StreamResponse) -> None:
            if declined_upgrade:
                response.force_close()
            metrics.observe_upstream(route.name, time.perf_counter() - sent)
            if rid:
                response.headers.setdefault("X-Request-Id", rid)
            if refreshed:  # a refreshed session's new cookie rides on the proxied head
                apply_cookies(response, snap.settings, resolved, max_age)

        response = await forward_http(
            request,
            runtime.links,
            UpstreamRequest(
                key=pool_key(route),
                method=request.method,
                head=head,
                framing=framing,
                timeout=route.timeout,
                idle_timeout=route.idle_timeout,
                response_headers=route.response_headers,
            ),
            on_head=on_head,
        )
    except UpstreamError as exc:
        metrics.upstream_error(route.name, exc.reason)
        failed = _upstream_failed(request, exc, rid)
        if not request.content.is_eof():
            # The body is not all here: the connection ends with this answer (as on the
            # front), so nothing of that body is ever taken for the next request.
            failed.force_close()
        return failed
    return response


async def _websocket(
    runtime: Runtime,
    request: web.Request,
    route: Route,
    session: Session | None,
    path: str,
    ip: str,
    target: str,
    headers: CIMultiDict[str],
    valid_until: float,
) -> web.StreamResponse:
    """An upgrade, admitted: the upstream's handshake with the head the front would
    write, then the connection leaves aiohttp for the one raw relay both paths use
    (proxy/wsrelay.py). Returns when the WebSocket has ended."""
    rid = request.get(REQUEST_ID) or new_request_id()
    if not route.settings.allow_websockets:
        return pages.error(
            request,
            403,
            "WebSockets not allowed",
            "This route does not accept WebSocket connections.",
            error_code="websocket_not_allowed",
            request_id=rid,
        )
    origins = request.headers.getall("Origin", ())
    if len(origins) > 1 or (origins and origins[0] not in route.allowed_origins):
        # Cross-site WebSocket hijacking: the browser attaches our cookie to any site's
        # upgrade request, so only the route's own origin (or a listed one) may open one.
        log.warning("websocket_origin_refused", route=route.name)
        return pages.error(
            request,
            403,
            "WebSocket refused",
            "The WebSocket was opened from a page on another site.",
            error_code="origin_not_allowed",
            request_id=rid,
        )
    if runtime.draining:
        raise web.HTTPServiceUnavailable(text="shutting down")
    client_key = request.headers.getall("Sec-WebSocket-Key", ())
    protocol = request.protocol
    if (
        request.method != "GET"
        or len(client_key) != 1
        or not valid_client_key(client_key[0])
        or request.headers.get("Sec-WebSocket-Version", "").strip() != "13"
        or request.body_exists
        or not isinstance(protocol, GuardedHandler)
    ):
        return pages.error(
            request,
            400,
            "Bad request",
            "This is not a valid WebSocket handshake.",
            error_code="bad_websocket_handshake",
            request_id=rid,
        )
    headers["Connection"] = "Upgrade"
    headers["Upgrade"] = "websocket"
    try:
        head = request_head("GET", target, headers.items(), NO_BODY, rid)
    except FramingError as exc:
        raise UpstreamError(502, "upstream_error:bad_header") from exc
    conn = LiveConnection(
        session=session, host=request.host, path=path, source_ip=ip, valid_until=valid_until
    )
    upgraded = await open_admitted(
        conn,
        runtime.registry,
        pool_key(route),
        runtime.links,
        request_head=head,
        client_key=client_key[0],
        timeout=route.timeout or runtime.snapshot.settings.default_upstream_timeout,
    )
    taken = protocol.take_upgraded()
    if taken is None:  # the client left during the handshake
        runtime.registry.discard(conn)
        upgraded.transport.abort()
        return web.Response(status=499)
    transport, leftover, release = taken
    conn.on_closed = release
    switch_protocols(
        transport,
        upgraded,
        rid,
        conn,
        runtime.registry,
        idle_timeout=route.idle_timeout,
        leftover=leftover,
    )
    # The relay runs on its own from here, as on the front: holding this task (with its
    # request, match info and aiohttp's bookkeeping) for the connection's life would
    # cost every idle WebSocket of this path about 14 KB more.
    return _Switched()


class _Switched(web.StreamResponse):
    """What aiohttp gets back for a relayed WebSocket: the 101 went out on the raw
    transport, which aiohttp no longer holds, so there is nothing for it to write."""

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def _not_found(request: web.Request, rid: str | None) -> web.Response:
    return pages.error(
        request,
        404,
        "Not found",
        "No route matches this address.",
        error_code="no_route",
        request_id=rid,
    )


def _upstream_failed(request: web.Request, exc: UpstreamError, rid: str | None) -> web.Response:
    log.warning("upstream_failed", reason=exc.reason, status=exc.status)
    if exc.status == 400:
        return pages.error(
            request,
            400,
            "Bad request",
            "The request body ended early or was malformed.",
            error_code="bad_request_body",
            request_id=rid,
        )
    if exc.status == 504:
        return pages.error(
            request,
            504,
            "Upstream timed out",
            "The service behind clawgate did not answer in time.",
            error_code="upstream_timeout",
            request_id=rid,
        )
    return pages.error(
        request,
        502,
        "Upstream unavailable",
        "The service behind clawgate cannot be reached right now.",
        error_code="upstream_unavailable",
        request_id=rid,
    )
