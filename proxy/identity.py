"""Who is asking: session cookie -> Session (refreshed when due) -> policy Identity.

Anything wrong with a cookie makes the request anonymous (and clears the cookie);
it never grants anything. A refresh that fails ends the session.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import structlog
from aiohttp import web

from policy.model import Identity
from proxy.oidc import OidcError, SignInResult
from proxy.runtime import Runtime
from proxy.session import Session, SessionCodec, SessionError, parse_cookie_header
from proxy.settings import Settings
from proxy.snapshot import Snapshot
from proxy.store import StoreError

log = structlog.get_logger("clawgate.identity")

# Claims that describe the token, not the user: not worth a cookie byte.
_PROTOCOL_CLAIMS = frozenset(
    {
        "iss",
        "aud",
        "exp",
        "iat",
        "nbf",
        "nonce",
        "at_hash",
        "c_hash",
        "auth_time",
        "sid",
        "azp",
        "jti",
        "acr",
        "amr",
        "s_hash",
        # Aggregated and distributed claims (OpenID Connect Core 5.6.2): references to
        # claims held elsewhere, and a source may carry an access token. clawgate does
        # not resolve them, and a token must never reach a cookie, header or assertion.
        "_claim_names",
        "_claim_sources",
    }
)
_refreshing: dict[str, asyncio.Future[Session | None]] = {}
# Refresh results by (sid, spent refresh token). Requests sent before the browser stored
# the refreshed cookie still carry the old one; spending a rotated refresh token twice makes
# the IdP revoke the whole grant, so they get the result of the refresh already done.
_recent_refreshes: OrderedDict[tuple[str, str], tuple[float, Session]] = OrderedDict()
_RECENT_REFRESH_TTL = 120.0
_RECENT_REFRESH_MAX = 10000


@dataclass
class Resolved:
    session: Session | None
    set_cookies: list[tuple[str, str]] = field(default_factory=list)
    clear_cookies: list[str] = field(default_factory=list)
    problem: str | None = None


def request_host(request: web.BaseRequest) -> str:
    """Lower-case host of the request without the default port (what sessions bind to)."""
    host = request.host.lower()
    return host[:-4] if host.endswith(":443") else host


def session_host(settings: Settings, request: web.BaseRequest) -> str:
    # With cookie_domain the cookie is shared on purpose; otherwise bind it to this host.
    return "" if settings.cookie_domain else request_host(request)


def read_cookies(request: web.BaseRequest, snapshot: Snapshot) -> dict[str, str]:
    return parse_cookie_header(request.headers.get("Cookie", ""), snapshot.keys.cookie_name)


async def resolve(runtime: Runtime, request: web.BaseRequest) -> Resolved:
    snap = runtime.snapshot
    cookies = read_cookies(request, snap)
    codec = snap.keys.codec
    now = int(time.time())
    try:
        session = codec.decode(cookies, host=session_host(snap.settings, request), now=now)
    except SessionError as exc:
        log.info("session_rejected", reason=exc.reason)
        return Resolved(None, clear_cookies=codec.chunk_names(cookies), problem=exc.reason)
    if session is None:
        return Resolved(None)
    if runtime.refuses(session):
        return Resolved(None, clear_cookies=codec.chunk_names(cookies), problem="signed_out")
    if not session.needs_refresh(now):
        if sealed_with_old_secret(snap, cookies, session, now):
            # Rotation: move the session to the new secret so the old one can be dropped.
            pairs = codec.encode(session)
            stale = [n for n in codec.chunk_names(cookies) if n not in {p[0] for p in pairs}]
            return Resolved(session, set_cookies=pairs, clear_cookies=stale)
        return Resolved(session)
    refreshed = await refresh(runtime, session)
    if refreshed is None:
        return Resolved(None, clear_cookies=codec.chunk_names(cookies), problem="refresh_failed")
    try:
        pairs = codec.encode(refreshed)
    except SessionError as exc:
        # The IdP now sends more claims than fit in the cookies: end the session cleanly.
        log.warning("session_refresh_failed", reason=exc.reason, user=session.email or session.sub)
        return Resolved(None, clear_cookies=codec.chunk_names(cookies), problem=exc.reason)
    stale = [n for n in codec.chunk_names(cookies) if n not in {p[0] for p in pairs}]
    return Resolved(refreshed, set_cookies=pairs, clear_cookies=stale)


_primary_codecs: dict[int, tuple[SessionCodec, SessionCodec | None]] = {}


def _primary_codec(snap: Snapshot, now: int) -> SessionCodec | None:
    """A codec holding only the secret that encrypts, or None with a single secret.

    Built once per codec in force. A reload may show secrets the running codec does not
    use (keys change only at restart), so the candidate must open what the codec seals.
    """
    codec = snap.keys.codec
    hit = _primary_codecs.get(id(codec))
    if hit is not None and hit[0] is codec:
        return hit[1]
    primary: SessionCodec | None = None
    secrets = snap.settings.cookie_secret
    if len(secrets) > 1:
        try:
            candidate = SessionCodec(
                [SessionCodec.parse_secret(secrets[0].get_secret_value())], codec.cookie_name
            )
            probe = Session.create(
                sub="probe",
                email=None,
                email_verified=None,
                groups=(),
                claims={},
                host="",
                now=now,
                lifetime=60,
                refresh_at=now + 60,
                refresh_token=None,
                id_token=None,
            )
            candidate.decode(dict(codec.encode(probe)), host="", now=now)
            primary = candidate
        except (ValueError, SessionError):
            primary = None
    _primary_codecs.clear()
    _primary_codecs[id(codec)] = (codec, primary)
    return primary


def sealed_with_old_secret(
    snap: Snapshot, cookies: Mapping[str, str], session: Session, now: int
) -> bool:
    primary = _primary_codec(snap, now)
    if primary is None:
        return False
    try:
        primary.decode(cookies, host=session.host, now=now)
    except SessionError as exc:
        return exc.reason == "bad_key_or_tampered"
    return False


async def refresh(runtime: Runtime, session: Session) -> Session | None:
    """Refresh with the IdP, once per session at a time; None when it cannot be done."""
    if session.refresh_token is None or runtime.oidc is None:
        log.info("session_refresh_impossible", user=session.email or session.sub)
        return None
    key = (session.sid, session.refresh_token)
    recent = _recent_refreshes.get(key)
    if recent is not None:
        at, updated = recent
        if time.monotonic() - at < _RECENT_REFRESH_TTL and not updated.needs_refresh(
            int(time.time())
        ):
            return updated
    pending = _refreshing.get(session.sid)
    if pending is None:
        # A task of its own: a client that goes away must not cancel the refresh that
        # other requests of the same session are waiting for.
        pending = asyncio.ensure_future(_refresh_once(runtime, session, key))
        _refreshing[session.sid] = pending
        sid = session.sid
        pending.add_done_callback(
            lambda done: _refreshing.pop(sid, None) if _refreshing.get(sid) is done else None
        )
    return await asyncio.shield(pending)


async def _refresh_once(runtime: Runtime, session: Session, key: tuple[str, str]) -> Session | None:
    """Exactly one process of the deployment spends a refresh token: providers rotate
    them and revoke the whole grant when an old one is used twice. The first takes the
    store's lock for it and leaves the refreshed session (sealed like a cookie) in the
    store; the others wait on the lock and take that, never calling the IdP."""
    store = runtime.store
    slot = "refresh:" + hashlib.sha256("\0".join(key).encode()).hexdigest()[:32]
    wait = runtime.snapshot.settings.idp_timeout + 2.0
    async with store.lock(slot, ttl=wait, wait=wait) as held:
        shared = await _read_handover(runtime, session, slot)
        if shared is not None:
            return shared
        if not held:
            # The store is down or the holder took too long: refreshing risks spending
            # the token twice, not refreshing ends the session for sure.
            log.warning("session_refresh_unlocked", user=session.email or session.sub)
        updated = await _refresh_with_idp(runtime, session, key)
        if updated is not None:
            try:
                pairs = runtime.snapshot.keys.codec.encode(updated)
                await store.put(slot, json.dumps(pairs).encode(), _HANDOVER_TTL)
            except (SessionError, StoreError) as exc:
                log.warning("session_refresh_not_shared", detail=str(exc))
        return updated


# How long a refreshed session stays where processes still holding the spent refresh
# token find it: requests sent just before the new cookie arrived.
_HANDOVER_TTL = 600.0


async def _read_handover(runtime: Runtime, session: Session, slot: str) -> Session | None:
    try:
        raw = await runtime.store.get(slot)
        if raw is None:
            return None
        pairs = json.loads(raw)
        cookies = {str(name): str(value) for name, value in pairs}
        return runtime.snapshot.keys.codec.decode(cookies, host=session.host, now=int(time.time()))
    except (StoreError, ValueError, TypeError, SessionError):
        return None


async def _refresh_with_idp(
    runtime: Runtime, session: Session, key: tuple[str, str]
) -> Session | None:
    assert runtime.oidc is not None and session.refresh_token is not None
    try:
        result = await runtime.oidc.refresh(session.refresh_token, session.id_token)
        updated = apply_refresh(runtime.snapshot.settings, session, result)
    except OidcError as exc:
        log.warning("session_refresh_failed", reason=exc.reason, user=session.email or session.sub)
        return None
    log.info("session_refreshed", user=updated.email or updated.sub)
    _recent_refreshes[key] = (time.monotonic(), updated)
    while len(_recent_refreshes) > _RECENT_REFRESH_MAX:
        _recent_refreshes.popitem(last=False)
    return updated


def apply_refresh(settings: Settings, session: Session, result: SignInResult) -> Session:
    claims = result.claims
    if claims.get("sub") not in (None, session.sub):
        raise OidcError("subject_changed", "the refreshed identity is a different user")
    if not claims or "email" not in claims:
        return session.with_refreshed(
            refresh_at=result.expires_at,
            id_token=result.id_token,
            refresh_token=result.refresh_token,
        )
    fields = identity_fields(settings, claims)
    return session.with_refreshed(
        refresh_at=result.expires_at,
        id_token=result.id_token,
        refresh_token=result.refresh_token,
        email=fields["email"],
        email_verified=fields["email_verified"],
        groups=fields["groups"],
        claims=fields["claims"],
    )


def identity_fields(settings: Settings, claims: Mapping[str, Any]) -> dict[str, Any]:
    email = claims.get("email")
    verified = claims.get("email_verified")
    raw_groups = _claim_path(claims, settings.idp_groups_claim)
    if isinstance(raw_groups, str):
        groups = [raw_groups]
    elif isinstance(raw_groups, list):
        groups = [str(g) for g in raw_groups if isinstance(g, str | int)]
    else:
        groups = []
    # What has its own session field is not stored twice: cookies are small, and a
    # long groups list would otherwise fill them three times over (field, claims, ID token).
    own = {"sub", "email", "email_verified", settings.idp_groups_claim}
    extra = {k: v for k, v in claims.items() if k not in _PROTOCOL_CLAIMS and k not in own}
    return {
        "email": email if isinstance(email, str) else None,
        "email_verified": verified if isinstance(verified, bool) else None,
        "groups": groups,
        "claims": extra,
    }


def _claim_path(claims: Mapping[str, Any], name: str) -> Any:
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.replace(".", "/").split("/"):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def new_session(settings: Settings, request: web.BaseRequest, result: SignInResult) -> Session:
    fields = identity_fields(settings, result.claims)
    now = int(time.time())
    return Session.create(
        sub=str(result.claims["sub"]),
        email=fields["email"],
        email_verified=fields["email_verified"],
        groups=fields["groups"],
        claims=fields["claims"],
        host=session_host(settings, request),
        now=now,
        lifetime=int(settings.cookie_expire),
        refresh_at=result.expires_at,
        refresh_token=result.refresh_token,
        id_token=result.id_token,
        provider_sid=_provider_sid(result.claims),
    )


def _provider_sid(claims: Mapping[str, Any]) -> str | None:
    sid = claims.get("sid")
    return sid if isinstance(sid, str) and 0 < len(sid) <= 255 else None


_identity_cache: dict[str, tuple[Session, str, Identity]] = {}


def to_identity(session: Session, groups_claim: str = "groups") -> Identity:
    """Policy view of a session; memoized per sid (sessions are immutable).

    ``claim/<name>`` criteria see every claim the provider sent, including the ones
    the session keeps in their own fields (sub, email, email_verified, groups).
    """
    hit = _identity_cache.get(session.sid)
    if hit is not None and hit[0] is session and hit[1] == groups_claim:
        return hit[2]
    claims: dict[str, Any] = dict(session.claims)
    claims["sub"] = session.sub
    if session.email is not None:
        claims["email"] = session.email
    if session.email_verified is not None:
        claims["email_verified"] = session.email_verified
    claims.setdefault(groups_claim, list(session.groups))
    identity = Identity(
        sub=session.sub,
        email=session.email,
        email_verified=session.email_verified,
        groups=frozenset(session.groups),
        claims=MappingProxyType(claims),
    )
    if len(_identity_cache) > 10000:
        _identity_cache.clear()
    _identity_cache[session.sid] = (session, groups_claim, identity)
    return identity


def cookie_attributes(settings: Settings) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "path": "/",
        "secure": not settings.insecure_server,
        "httponly": settings.cookie_http_only,
        "samesite": settings.cookie_same_site.capitalize(),
    }
    if settings.cookie_domain:
        attrs["domain"] = settings.cookie_domain
    return attrs


def apply_cookies(
    response: web.StreamResponse, settings: Settings, resolved: Resolved, max_age: int | None
) -> None:
    attrs = cookie_attributes(settings)
    for name, value in resolved.set_cookies:
        response.set_cookie(name, value, max_age=max_age, **attrs)
    for name in resolved.clear_cookies:
        response.del_cookie(
            name,
            path="/",
            domain=attrs.get("domain"),
            secure=attrs["secure"],
            httponly=attrs["httponly"],
            samesite=attrs["samesite"],
        )
