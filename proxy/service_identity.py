"""Sessions for requests that carry an API key or a local user's password instead of
the session cookie, so that the rest of the request path (policy, identity headers,
assertion, WebSocket re-checks) treats them like any signed-in user.

- An API key (proxy/apikeys/) is the principal ``apikey:NAME`` with the key's groups
  and no email. Its session id is derived from the key's hash, so that removing the
  key from ``api_keys_file`` refuses it at once (``Runtime.refuses``) and closes its
  WebSockets at the next reload.
- A local user by Basic auth (proxy/localusers/) is ``local:NAME``.

Every refusal is a JSON 401 (or 403/429), never a sign-in redirect: these clients
are scripts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from aiohttp import web

from proxy import pages
from proxy.credentials import Ambiguous, ApiKeyCredential, BasicCredential
from proxy.local_sign_in import PASSWORD_THROTTLE
from proxy.ratelimit import KeyedLimiter, retry_after_header
from proxy.runtime import KEY_SESSION, Runtime
from proxy.session import Session
from proxy.snapshot import Route

log = structlog.get_logger("clawgate.credentials")

__all__ = ["credential_session"]

# How long a credential session may be relayed (a WebSocket) before it is checked
# again against the files in force; the key's own expiry comes first when sooner.
_CREDENTIAL_SESSION_LIFETIME = 3600

# Per-key token buckets, by (name, rate, burst): a changed limit starts a new bucket.
_key_limits: dict[tuple[str, float, int], KeyedLimiter] = {}


def _refusal(
    status: int, error: str, message: str, rid: str | None, *, scheme: str = "Bearer"
) -> web.Response:
    payload = {"error": error, "message": message}
    if rid:
        payload["request_id"] = rid
    response = pages.json_response(status, payload)
    if status == 401:
        response.headers["WWW-Authenticate"] = f'{scheme} realm="clawgate"'
    return response


async def credential_session(
    runtime: Runtime,
    route: Route,
    credential: ApiKeyCredential | BasicCredential | Ambiguous,
    *,
    audience: str,
    secure: bool,
    ip: str,
    rid: str | None,
) -> Session | web.Response:
    """The session a credential stands for on ``route``, or the refusal to answer."""
    if isinstance(credential, Ambiguous):
        log.info("credential_refused", reason="ambiguous", detail=credential.reason)
        return _refusal(400, "bad_credentials", credential.reason, rid)
    if isinstance(credential, ApiKeyCredential):
        return _key_session(runtime, route, credential, audience, rid)
    return await _basic_session(runtime, route, credential, audience, secure, ip, rid)


def _key_session(
    runtime: Runtime, route: Route, credential: ApiKeyCredential, audience: str, rid: str | None
) -> Session | web.Response:
    if not route.settings.allow_api_keys:
        log.info("api_key_refused", reason="route_does_not_allow_keys", route=route.name)
        return _refusal(401, "api_keys_not_allowed", "this route does not accept API keys", rid)
    now = datetime.now(UTC)
    key, reason = runtime.snapshot.api_keys.lookup(credential.key, now)
    if key is None:
        log.info("api_key_refused", reason=reason, route=route.name)
        return _refusal(401, "invalid_api_key", f"the API key is {reason}", rid)
    if not key.allows_route(audience):
        log.info("api_key_refused", reason="route_not_allowed", key=key.name, route=route.name)
        return _refusal(403, "route_not_allowed", "this API key is not for this route", rid)
    if key.rate is not None:
        bucket = (key.name, key.rate.rate, key.rate.burst)
        limiter = _key_limits.get(bucket)
        if limiter is None:
            if len(_key_limits) > 10_000:
                _key_limits.clear()
            limiter = _key_limits[bucket] = KeyedLimiter(key.rate.rate, key.rate.burst)
        wait = limiter.hit(key.name, time.monotonic())
        if wait > 0:
            log.info("rate_limited", scope="api_key", key=key.name, retry_after=round(wait, 2))
            response = _refusal(429, "rate_limited", "too many requests for this API key", rid)
            response.headers["Retry-After"] = retry_after_header(wait)
            return response
    issued = int(now.timestamp())
    lifetime = _CREDENTIAL_SESSION_LIFETIME
    if key.expires is not None:
        lifetime = max(1, min(lifetime, int(key.expires.timestamp()) - issued))
    session = _session(key.subject, None, key.groups, audience, issued, lifetime)
    # A stable id per key: the assertion cache and revocation both key on it.
    return dataclasses.replace(session, sid=KEY_SESSION + key.key_hash, csrf="")


async def _basic_session(
    runtime: Runtime,
    route: Route,
    credential: BasicCredential,
    audience: str,
    secure: bool,
    ip: str,
    rid: str | None,
) -> Session | web.Response:
    if not route.settings.allow_basic_auth:
        return _refusal(401, "basic_auth_not_allowed", "this route does not accept Basic auth", rid)
    if not secure:
        return _refusal(400, "insecure", "Basic auth is refused over plain HTTP", rid)
    users = runtime.snapshot.local_users
    if users is None:
        return _refusal(401, "invalid_credentials", "wrong user name or password", rid)
    wait = PASSWORD_THROTTLE.wait(ip, credential.user, time.monotonic())
    if wait > 0:
        log.info("rate_limited", scope="password", retry_after=round(wait, 1))
        response = _refusal(429, "rate_limited", "too many attempts; wait and try again", rid)
        response.headers["Retry-After"] = retry_after_header(wait)
        return response
    # Counted before the check (cleared on success), as for the form.
    PASSWORD_THROTTLE.failed(ip, credential.user, time.monotonic())
    user = await asyncio.to_thread(users.check, credential.user, credential.password)
    if user is None:
        log.info("basic_auth_refused", route=route.name)
        return _refusal(401, "invalid_credentials", "wrong user name or password", rid,
                        scheme="Basic")
    PASSWORD_THROTTLE.succeeded(ip, credential.user)
    groups = runtime.snapshot.settings.htpasswd_groups.get(user.name, ())
    return _session(
        user.subject, user.email, groups, audience, int(time.time()), _CREDENTIAL_SESSION_LIFETIME
    )


def _session(
    sub: str, email: str | None, groups: Sequence[str], audience: str, issued: int, lifetime: int
) -> Session:
    """A credential's session: no provider tokens, so nothing to refresh before it ends."""
    return Session.create(
        sub=sub,
        email=email,
        email_verified=None,
        groups=tuple(groups),
        claims={},
        host=audience,
        now=issued,
        lifetime=lifetime,
        refresh_at=issued + lifetime,
        refresh_token=None,
        id_token=None,
    )
