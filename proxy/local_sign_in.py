"""Signing in with a local user's password (``htpasswd_file``, proxy/localusers/).

``/.clawgate/sign_in`` shows a form when local users are configured (with a button for
the identity provider when there is one too); its POST checks the password and sets
the same encrypted session cookie as an OIDC sign-in, for ``local:USER``.

- CSRF: the form carries a state that must match a sealed, short-lived login cookie
  bound to the host, and each state signs in once (the store's single-use keys).
- Brute force: per-address and per-user delays that grow with failures
  (``Throttle``); an unknown user costs the same bcrypt check as a wrong password, and
  both get the same answer.
- HTTPS only, unless ``insecure_server`` (then clawgate is behind a TLS proxy).
"""

from __future__ import annotations

import asyncio
import html
import secrets
import time

import structlog
from aiohttp import web

from proxy import pages
from proxy.identity import Resolved, apply_cookies, cookie_attributes, request_host, session_host
from proxy.localusers import Throttle
from proxy.ratelimit import retry_after_header
from proxy.runtime import REQUEST_ID, Runtime, client_ip
from proxy.session import LOGIN_STATE_PURPOSE, Session, SessionError
from proxy.store import StoreError

log = structlog.get_logger("clawgate.local_sign_in")

__all__ = ["PASSWORD_THROTTLE", "SIGN_IN_PATH", "sign_in_form", "sign_in_post"]

SIGN_IN_PATH = "/.clawgate/sign_in"
_FORM_TTL = 600
_MAX_FORM = 8 * 1024
# One for the form and Basic auth alike: guesses count wherever they are made.
PASSWORD_THROTTLE = Throttle()


def _state_cookie(runtime: Runtime, state: str) -> str:
    return f"{runtime.snapshot.keys.cookie_name}_form_{state[:12]}"


def _page(
    status: int,
    state: str,
    return_to: str,
    *,
    error: str | None,
    idp: bool,
    rid: str | None,
) -> web.Response:
    e = html.escape
    body = []
    if error:
        body.append(f'<p class="error">{e(error)}</p>')
    body.append(
        f'<form method=post action="{SIGN_IN_PATH}">'
        f'<input type=hidden name=state value="{e(state)}">'
        f'<input type=hidden name=redirect_uri value="{e(return_to)}">'
        '<p><label>User <input name=username autocomplete=username required></label></p>'
        '<p><label>Password <input name=password type=password '
        "autocomplete=current-password required></label></p>"
        "<p><button type=submit>Sign in</button></p></form>"
    )
    if idp:
        target = f"{SIGN_IN_PATH}?provider=idp&redirect_uri={e(return_to)}"
        body.append(f'<p><a href="{target}">Sign in with your identity provider</a></p>')
    return pages.html_response(status, "Sign in", "".join(body), rid)


def sign_in_form(
    runtime: Runtime, request: web.Request, return_to: str, *, error: str | None = None,
    status: int = 200,
) -> web.Response:
    """The form, with a fresh state bound to a login cookie for this host."""
    state = secrets.token_urlsafe(24)
    sealed = runtime.snapshot.keys.codec.seal(
        LOGIN_STATE_PURPOSE,
        {"form": state, "host": request_host(request)},
        ttl=_FORM_TTL,
        now=int(time.time()),
    )
    response = _page(
        status,
        state,
        return_to,
        error=error,
        idp=runtime.oidc is not None,
        rid=request.get(REQUEST_ID),
    )
    attrs = cookie_attributes(runtime.snapshot.settings)
    attrs["samesite"] = "Strict"
    attrs["httponly"] = True
    attrs.pop("domain", None)
    response.set_cookie(_state_cookie(runtime, state), sealed, max_age=_FORM_TTL, **attrs)
    response.headers["Cache-Control"] = "no-store"
    return response


async def sign_in_post(
    runtime: Runtime, request: web.Request, safe_return: str
) -> web.StreamResponse:
    """Check the form; sign in, or show the form again with one generic error."""
    rid = request.get(REQUEST_ID)
    settings = runtime.snapshot.settings
    users = runtime.snapshot.local_users
    if users is None:
        return pages.error(request, 404, "Not found", "No local users are configured.",
                           error_code="no_local_users", request_id=rid)
    if request.scheme != "https" and not settings.insecure_server:
        return pages.error(request, 400, "Sign-in refused", "Passwords go over HTTPS only.",
                           error_code="insecure", request_id=rid)
    length = request.content_length
    if not request.content_type.endswith("form-urlencoded") or length is None or (
        length > _MAX_FORM
    ):
        return pages.error(request, 400, "Sign-in refused", "Send the sign-in form.",
                           error_code="bad_form", request_id=rid)
    form = await request.post()
    state = str(form.get("state", ""))
    user = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    sealed = request.cookies.get(_state_cookie(runtime, state)) if state else None
    try:
        login = (
            runtime.snapshot.keys.codec.unseal(LOGIN_STATE_PURPOSE, sealed, now=int(time.time()))
            if sealed
            else None
        )
    except SessionError:
        login = None
    if (
        login is None
        or not secrets.compare_digest(str(login.get("form", "")), state)
        or login.get("host") != request_host(request)
    ):
        log.warning("local_sign_in_refused", reason="csrf")
        return sign_in_form(runtime, request, safe_return, status=403,
                            error="The sign-in form was stale or forged. Please try again.")
    ip = client_ip(request, settings.xff_num_trusted_hops)
    now = time.monotonic()
    wait = PASSWORD_THROTTLE.wait(ip, user, now)
    if wait > 0:
        log.info("local_sign_in_refused", reason="throttled", retry_after=round(wait, 1))
        response = sign_in_form(runtime, request, safe_return, status=429,
                                error="Too many attempts. Please wait and try again.")
        response.headers["Retry-After"] = retry_after_header(wait)
        return response
    try:
        if not await runtime.store.consume_once(f"form:{state}", _FORM_TTL):
            return sign_in_form(runtime, request, safe_return, status=403,
                                error="The sign-in form was already used. Please try again.")
    except StoreError:
        return pages.error(request, 503, "Sign-in unavailable",
                           "Signing in is briefly unavailable. Please try again in a moment.",
                           error_code="store_unavailable", request_id=rid)
    # Counted as a failure before the check, cleared on success: attempts sent in
    # parallel cannot all pass wait() while their bcrypt checks run.
    PASSWORD_THROTTLE.failed(ip, user, time.monotonic())
    found = await asyncio.to_thread(users.check, user, password)
    if found is None:
        log.warning("local_sign_in_failed", reason="bad_credentials")
        return sign_in_form(runtime, request, safe_return, status=401,
                            error="Wrong user name or password.")
    PASSWORD_THROTTLE.succeeded(ip, user)
    issued = int(time.time())
    lifetime = int(settings.cookie_expire)
    session = Session.create(
        sub=found.subject,
        email=found.email,
        email_verified=None,
        groups=tuple(settings.htpasswd_groups.get(found.name, ())),
        claims={},
        host=session_host(settings, request),
        now=issued,
        lifetime=lifetime,
        # No provider tokens to refresh: the session simply lasts its lifetime.
        refresh_at=issued + lifetime,
        refresh_token=None,
        id_token=None,
    )
    try:
        pairs = runtime.snapshot.keys.codec.encode(session)
    except SessionError:
        return pages.error(request, 500, "Sign-in failed", "The session could not be made.",
                           error_code="session_too_large", request_id=rid)
    response = pages.redirect(safe_return)
    apply_cookies(response, settings, Resolved(session, pairs, []), lifetime)
    response.del_cookie(_state_cookie(runtime, state), path="/")
    log.info("sign_in", user=found.subject, method="password")
    return response
