"""Which requests the front (proxy/front.py) may serve itself, and what it then sends.

:func:`plan` reads one request head and answers with an :class:`Exchange` (the
upstream request head, the route, what to log) when the request is an ordinary,
already-decidable proxied one, or None when the full handler (proxy/handler.py) must
take it. It mirrors the handler and the request middleware in proxy/server.py, calling
the same helpers in the same order of effects: request id, per-IP and per-user rate
limits, route, session, decision, the decision log line, metrics, and the upstream
header set of proxy/forward.py. It keeps no state between calls.
"""

from __future__ import annotations

import time
from typing import Any

import httptools
import structlog
from multidict import CIMultiDict

from policy.engine import Policy
from policy.model import Identity
from policy.paths import UnsafePathError, normalize_path
from proxy import metrics
from proxy.admission import Verdict, admit, still_holds
from proxy.connlimit import MAX_FIELD_SIZE, MAX_LINE_SIZE
from proxy.credentials import for_clawgate
from proxy.endpoints import JWKS_PATH
from proxy.forward import upstream_headers
from proxy.framing import (
    Framing,
    FramingError,
    connection_options,
    finish_head,
    request_head_prefix,
)
from proxy.identity import sealed_with_old_secret, to_identity
from proxy.logging import PreparedLine
from proxy.requestid import new_request_id, trusted_request_id
from proxy.runtime import Runtime, forwarded_client
from proxy.session import Session, SessionCodec, SessionError, parse_cookie_header
from proxy.settings import Settings
from proxy.snapshot import Route, Snapshot
from proxy.throttle import Throttle
from proxy.upstream_link import HeadReader, PoolKey
from proxy.upstream_request import (
    authority,
    client_scheme,
    identity_headers,
    match_route,
    pool_key,
    upstream_target,
)
from proxy.wsrelay import valid_client_key

log = structlog.get_logger("clawgate.proxy")

_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
# aiohttp's own limit on the number of headers is higher; past this the handler decides.
_MAX_HEADERS = 100


class Exchange:
    """A request :func:`plan` accepted: what to send upstream and what to log."""

    __slots__ = (
        "access_line",
        "body_left",
        "client_ip",
        "close_after",
        "expect_continue",
        "head_bytes",
        "headers",
        "host",
        "idle_timeout",
        "key",
        "method",
        "path",
        "pending",
        "response_headers",
        "rid",
        "route",
        "session",
        "timeout",
        "valid_until",
        "websocket",
        "ws_key",
    )

    def __init__(
        self,
        *,
        route: Route,
        rid: str,
        method: str,
        host: str,
        path: str,
        headers: CIMultiDict[str],
        head_bytes: bytes,
        key: PoolKey,
        body_left: int,
        close_after: bool,
        access_line: PreparedLine,
        session: Session | None = None,
        client_ip: str = "",
        ws_key: str | None = None,
        expect_continue: bool = False,
        valid_until: float = 0.0,
    ) -> None:
        self.route = route
        self.rid = rid
        self.method = method
        self.host = host
        self.path = path
        self.session = session
        self.client_ip = client_ip
        # Until when the admission holds (proxy/admission.py); an open WebSocket is
        # decided again then.
        self.valid_until = valid_until
        # A WebSocket upgrade: relayed raw (proxy/wsrelay.py) once the upstream agrees.
        self.websocket = ws_key is not None
        self.ws_key = ws_key
        self.headers = headers
        self.head_bytes = head_bytes
        self.key = key
        self.body_left = body_left
        self.close_after = close_after
        self.response_headers = route.response_headers
        self.timeout = route.timeout
        self.idle_timeout = route.idle_timeout
        # Written when the exchange ends; rendered once per remembered head.
        self.access_line = access_line
        # The client waits for "100 Continue" before it sends the body.
        self.expect_continue = expect_continue and body_left > 0
        # Body bytes read before the upstream link was there; they die with the exchange.
        self.pending: list[bytes] = []


def plan(
    runtime: Runtime,
    throttle: Throttle,
    head_bytes: bytes,
    peer_ip: str,
    transport_scheme: str,
    logger: Any = log,
) -> Exchange | None:
    """The exchange for this request head, or None when aiohttp's handler must take it.

    None never has an effect: nothing is logged, counted or charged before the last
    check has passed (a rate limit refusal charges nothing the handler will not charge
    again when it refuses the same request).

    A head seen before from the same address, under the same configuration, is
    admitted from its :class:`_Template`: what depends only on the head's bytes (route,
    decision, the upstream header set) is reused, while everything that depends on time
    or on other requests (session expiry, revocation, refresh, rate limits, the
    assertion, the request id, the log line) is checked or made again.
    """
    if runtime.draining:
        return None
    template = _TEMPLATES.get((head_bytes, peer_ip))
    if template is not None and template.snap is runtime.snapshot:
        outcome = _from_template(template, runtime, throttle, logger)
        if not isinstance(outcome, _Stale):
            return outcome
    return _plan_fresh(runtime, throttle, head_bytes, peer_ip, transport_scheme, logger)


def _plan_fresh(
    runtime: Runtime,
    throttle: Throttle,
    head_bytes: bytes,
    peer_ip: str,
    transport_scheme: str,
    logger: Any,
) -> Exchange | None:
    head = HeadReader()
    parser = httptools.HttpRequestParser(head)
    upgrade = False
    try:
        parser.feed_data(head_bytes)
    except httptools.HttpParserUpgrade:
        upgrade = True  # llhttp stops after the head of an Upgrade request
    except httptools.HttpParserError:
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
    ws_key: str | None = None
    origin: str | None = None
    origins = 0
    connection_values: list[str] = []
    expect_continue = False
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
        elif lname == b"transfer-encoding":
            return None
        elif lname == b"expect":
            # 100-continue is answered at admission (front.py); anything else is the
            # handler's (417).
            if expect_continue or value.strip().lower() != b"100-continue":
                return None
            expect_continue = True
        elif lname == b"upgrade":
            if value.strip().lower() != b"websocket" or not upgrade:
                return None
        elif lname == b"sec-websocket-key":
            if ws_key is not None:
                return None
            ws_key = value.decode("latin-1")
        elif lname == b"sec-websocket-version":
            if value.strip() != b"13":
                return None
        elif lname == b"origin":
            origin = value.decode("utf-8", "surrogateescape")
            origins += 1
        elif lname == b"connection":
            connection_values.append(value.decode("latin-1"))
        elif lname == b"authorization" and for_clawgate(value):
            return None  # an API key or a password: checked by the handler alone
    if not host_b or origins > 1:
        return None
    try:
        connection = connection_options(connection_values)
    except FramingError:
        return None  # the handler's 400
    close_after = connection.close
    if upgrade and (method_b != b"GET" or length is not None or not valid_client_key(ws_key)):
        return None
    if not upgrade:
        ws_key = None
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
    if upgrade and (
        not route.settings.allow_websockets
        or (origin is not None and origin not in route.allowed_origins)
    ):
        return None  # the handler's 403 pages (cross-site WebSocket hijacking included)
    clock = time.time()
    now = int(clock)
    audience = host.lower()
    if audience.endswith(":443"):
        audience = audience[:-4]
    try:
        session = _session(snap, cookie_b, "" if settings.cookie_domain else audience, now)
    except SessionError:
        return None
    if session is not None and (runtime.refuses(session) or session.needs_refresh(now)):
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
    verdict = _admit(route, session, identity, method, path, ip, clock)
    decision = verdict.decision
    if not decision.allow:
        return None
    if _limited(throttle, settings, ip, session):
        return None

    # Committed: from here on this request is the front's.
    given = trusted_request_id(headers) if hops > 0 else None
    rid = given or new_request_id()
    user = (session.email or session.sub) if session is not None else None
    lines = _Lines(decision.reason, route, user, method, host, path)
    _admitted(logger, rid, decision.reason, lines)
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
        websocket=upgrade,
        connection=connection,
    )
    if upgrade:
        out["Connection"] = "Upgrade"
        out["Upgrade"] = "websocket"
    key = pool_key(route)
    try:
        # The same head the handler path writes (proxy/framing.py), framed from what
        # llhttp read; clawgate's request id goes last, so a template ends before it.
        prefix = request_head_prefix(
            method, upstream_target(route, path, query), out.items(), Framing(length or 0)
        )
        request_head = finish_head(prefix, rid)
    except FramingError:
        prefix = request_head = b""  # a header value that cannot be sent: answered with a 502
    if prefix and not upgrade and len(head_bytes) <= _TEMPLATE_HEAD_MAX:
        if len(_TEMPLATES) >= _TEMPLATES_MAX:
            _TEMPLATES.clear()
        _TEMPLATES[(head_bytes, peer_ip)] = _Template(
            snap=snap,
            route=route,
            session=session,
            audience=audience,
            assertion=out.get(settings.jwt_assertion_header) if session is not None else None,
            assertion_until=(
                snap.keys.signer.reused_until(session, audience=audience)
                if session is not None and route.pass_identity
                else 0
            ),
            reason=decision.reason,
            valid_until=verdict.valid_until,
            client_ip=ip,
            method=method,
            host=host,
            path=path,
            headers=headers,
            prefix=prefix,
            body_left=length or 0,
            close_after=close_after,
            expect_continue=expect_continue,
            given_id=given,
            key=key,
            lines=lines,
        )
    return Exchange(
        route=route,
        rid=rid,
        method=method,
        host=host,
        path=path,
        headers=headers,
        head_bytes=request_head,
        key=key,
        body_left=length or 0,
        session=session,
        client_ip=ip,
        ws_key=ws_key,
        close_after=close_after,
        expect_continue=expect_continue,
        access_line=lines.access,
        valid_until=verdict.valid_until,
    )


def _limited(throttle: Throttle, settings: Settings, ip: str, session: Session | None) -> bool:
    """Charge this request to the per-IP and per-user limits; True when one is used up."""
    throttle.configure(settings.rate_limits)
    clock = time.monotonic()
    if throttle.proxy_ip is not None and throttle.check_ip(False, ip, clock) > 0:
        return True
    return (
        session is not None
        and throttle.proxy_user is not None
        and throttle.check_user(session.sub, clock) > 0
    )


class _Lines:
    """The two log lines of an admitted request (the decision and, at its end, the
    access line), rendered once but for the request id, status and duration; kept with
    a remembered head for every request admitted from it."""

    __slots__ = ("access", "authorization")

    def __init__(
        self, reason: str, route: Route, user: str | None, method: str, host: str, path: str
    ) -> None:
        self.authorization = PreparedLine(
            "authorization",
            {
                "allow": True,
                "reason": reason,
                "route": route.name,
                "user": user,
                "method": method,
                "path": path,
            },
        )
        self.access = PreparedLine(
            "access",
            {"method": method, "host": host, "path": path, "user": user, "route": route.name},
            tail=("status", "duration_ms"),
        )


def _admitted(logger: Any, rid: str, reason: str, lines: _Lines) -> None:
    """Count and log the allow decision, as the handler does (and count the request as
    the front's)."""
    metrics.front_admitted(reason)
    lines.authorization.emit(logger, rid)


class _Template:
    """What a fresh admission of one request head found, for the next identical head."""

    __slots__ = (
        "assertion",
        "assertion_until",
        "audience",
        "body_left",
        "client_ip",
        "close_after",
        "expect_continue",
        "given_id",
        "headers",
        "host",
        "key",
        "lines",
        "method",
        "path",
        "prefix",
        "reason",
        "route",
        "session",
        "snap",
        "valid_until",
    )

    def __init__(
        self,
        *,
        snap: Snapshot,
        route: Route,
        session: Session | None,
        audience: str,
        assertion: str | None,
        assertion_until: int,
        reason: str,
        valid_until: float,
        client_ip: str,
        method: str,
        host: str,
        path: str,
        headers: CIMultiDict[str],
        prefix: bytes,
        body_left: int,
        close_after: bool,
        expect_continue: bool,
        given_id: str | None,
        key: PoolKey,
        lines: _Lines,
    ) -> None:
        self.snap = snap
        self.route = route
        self.session = session
        self.audience = audience
        self.assertion = assertion
        # Until then the signer hands out the same assertion: no need to ask it.
        self.assertion_until = assertion_until
        self.reason = reason
        # The admission's validity (proxy/admission.py): the decision, and all that was
        # derived from it here, is reused only before then and while the session is not
        # revoked; a reload makes the template stale through ``snap``.
        self.valid_until = valid_until
        self.client_ip = client_ip
        self.method = method
        self.host = host
        self.path = path
        self.headers = headers
        self.prefix = prefix
        self.body_left = body_left
        self.close_after = close_after
        self.expect_continue = expect_continue
        self.given_id = given_id
        self.key = key
        self.lines = lines


# Heads admitted before, by (head bytes, peer address). Bounded in entries and in the
# size of each head; a configuration reload makes every entry stale (``snap``).
_TEMPLATES: dict[tuple[bytes, str], _Template] = {}
_TEMPLATES_MAX = 1024
_TEMPLATE_HEAD_MAX = 8192


def known_head(data: bytes, peer_ip: str) -> bool:
    """True when ``data`` is exactly a request head admitted before from this address:
    then it holds one head and nothing else (a remembered head was cut at its first
    blank line), which spares scanning a kilobyte of cookies for that line."""
    return (data, peer_ip) in _TEMPLATES


class _Stale:
    """A template that no longer fits: admit the request afresh."""


_STALE = _Stale()


def _from_template(
    t: _Template, runtime: Runtime, throttle: Throttle, logger: Any
) -> Exchange | _Stale | None:
    """An exchange from ``t``, None to hand the request over, or _STALE to admit afresh."""
    session = t.session
    clock = time.time()
    now = int(clock)
    route = t.route
    if not still_holds(t.valid_until, session, runtime.refuses, clock):
        return _STALE
    if session is not None and route.pass_identity and now >= t.assertion_until:
        token = t.snap.keys.signer.sign(session, audience=t.audience, now=now)
        if token != t.assertion:
            return _STALE  # re-signed since: the header set changes
    if _limited(throttle, t.snap.settings, t.client_ip, session):
        return None
    rid = t.given_id or new_request_id()
    _admitted(logger, rid, t.reason, t.lines)
    return Exchange(
        route=route,
        rid=rid,
        method=t.method,
        host=t.host,
        path=t.path,
        headers=t.headers,
        head_bytes=finish_head(t.prefix, rid),
        key=t.key,
        body_left=t.body_left,
        session=session,
        client_ip=t.client_ip,
        close_after=t.close_after,
        expect_continue=t.expect_continue,
        access_line=t.lines.access,
        valid_until=t.valid_until,
    )


# Sessions by (Cookie header, session host): the header is parsed and the session
# opened once per cookie value instead of once per request. Entries hold the codec they
# were opened with; expiry is checked on every hit (as SessionCodec.decode does).
_SESSIONS: dict[tuple[bytes, str], tuple[SessionCodec, Session]] = {}
# Verdicts by (policy, identity, method, path, address): an entry stands only while
# its policy and identity objects are the ones it was made for (a reload or another
# session makes it miss) and before the verdict's own valid_until (_admit); the
# caller checks revocation before asking.
_DECISIONS: dict[tuple[int, int, str, str, str], tuple[Policy, Identity | None, Verdict]] = {}
_CACHE_MAX = 4096


def _session(snap: Snapshot, cookie: bytes, host: str, now: int) -> Session | None:
    """The session in the Cookie header, None without one; raises SessionError when it
    is not acceptable, or when it was sealed with a secret other than the first
    (the handler re-seals those)."""
    codec = snap.keys.codec
    key = (cookie, host)
    hit = _SESSIONS.get(key)
    if hit is not None and hit[0] is codec:
        cached = hit[1]
        if now < cached.expires_at:
            return cached
    cookies = parse_cookie_header(cookie.decode("utf-8", "surrogateescape"), codec.cookie_name)
    session = codec.decode(cookies, host=host, now=now)
    if session is not None and sealed_with_old_secret(snap, cookies, session, now):
        raise SessionError("old_secret", "sealed with a secret being rotated out")
    if session is not None and len(cookie) <= 8192:  # only what opened: bounded by design
        if len(_SESSIONS) >= _CACHE_MAX:
            _SESSIONS.clear()
        _SESSIONS[key] = (codec, session)
    return session


def _admit(
    route: Route,
    session: Session | None,
    identity: Identity | None,
    method: str,
    path: str,
    ip: str,
    clock: float,
) -> Verdict:
    """:func:`proxy.admission.admit`, remembered until the verdict's own validity ends
    (a time criterion's next bound, the session's expiry or refresh); entries hold the
    compiled policy and the identity they were made for, so a reload or another
    session never meets them."""
    policy = route.policy
    key = (id(policy), id(identity), method, path, ip)
    hit = _DECISIONS.get(key)
    if hit is not None and hit[0] is policy and hit[1] is identity and clock < hit[2].valid_until:
        return hit[2]
    verdict = admit(route, session, identity, method, path, ip, clock)
    if len(path) <= 512:
        if len(_DECISIONS) >= _CACHE_MAX:
            _DECISIONS.clear()
        _DECISIONS[key] = (policy, identity, verdict)
    return verdict
