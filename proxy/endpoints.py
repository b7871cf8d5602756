"""clawgate's own endpoints on every route host: sign-in, callback, sign-out, who-am-I, JWKS.

Each handler ends in a deliberate response: a redirect, a page, or JSON. None of
them ever redirects to another host.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import unquote, urlsplit

import structlog
from aiohttp import web

from proxy import pages
from proxy.identity import (
    Resolved,
    apply_cookies,
    cookie_attributes,
    new_session,
    read_cookies,
    request_host,
    resolve,
)
from proxy.local_sign_in import sign_in_form, sign_in_post
from proxy.oidc import LOGOUT_TOKEN_MAX_AGE, OidcError
from proxy.runtime import REQUEST_ID, Runtime
from proxy.session import LOGIN_STATE_PURPOSE, SessionError
from proxy.shared_state import SHARED
from proxy.store import Revocation, StoreError
from proxy.verify import VERIFY_PATH, verify_page

log = structlog.get_logger("clawgate.endpoints")

PREFIX = "/.clawgate/"
CALLBACK = "/.clawgate/callback"
SIGNED_OUT = "/.clawgate/signed_out"
BACKCHANNEL_LOGOUT = "/.clawgate/backchannel_logout"
# A logout token is a few hundred bytes to a few KB.
_MAX_LOGOUT_FORM = 64 * 1024
JWKS_PATH = "/.well-known/clawgate/jwks.json"
LOGIN_TTL = 600
_STATE_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_MAX_SIGN_OUT_FORM = 4096

Handler = Callable[[Runtime, web.Request, str | None], Awaitable[web.StreamResponse]]


def safe_return_path(value: str | None) -> str:
    """A same-host path to send the user back to; anything doubtful becomes ``/``."""
    if not value or len(value) > 2048:
        return "/"
    if any(ord(c) < 0x21 or ord(c) == 0x7F or c == "\\" for c in value):
        return "/"
    decoded = unquote(value)
    for candidate in (value, decoded):
        if not candidate.startswith("/") or candidate.startswith("//"):
            return "/"
        if "\\" in candidate or any(ord(c) < 0x20 or ord(c) == 0x7F for c in candidate):
            return "/"
        parts = urlsplit(candidate)
        if parts.scheme or parts.netloc:
            return "/"
    return value


def login_cookie_name(runtime: Runtime, state: str) -> str:
    # One cookie per sign-in attempt, so two tabs signing in at once don't clash.
    return f"{runtime.snapshot.keys.cookie_name}_login_{state[:12]}"


def callback_url(request: web.BaseRequest) -> str:
    return f"https://{request.host}{CALLBACK}"


async def start_sign_in(runtime: Runtime, request: web.Request, return_to: str) -> web.Response:
    """302 to the identity provider, remembering state, nonce and PKCE verifier; or,
    with local users, the sign-in form (which offers the provider too)."""
    rid = request.get(REQUEST_ID)
    if runtime.snapshot.local_users is not None and request.query.get("provider") != "idp":
        return sign_in_form(runtime, request, safe_return_path(return_to))
    if runtime.oidc is None:
        return pages.error(
            request,
            500,
            "Sign-in is not configured",
            "No identity provider is configured for this route.",
            error_code="no_idp",
            request_id=rid,
        )
    try:
        auth = await runtime.oidc.authorize(callback_url(request))
    except OidcError as exc:
        log.error("sign_in_unavailable", reason=exc.reason)
        return pages.error(
            request,
            503,
            "Sign-in is unavailable",
            "The identity provider cannot be reached right now. Please try again shortly.",
            error_code="idp_unavailable",
            request_id=rid,
            headers={"Retry-After": "10"},
        )
    codec = runtime.snapshot.keys.codec
    sealed = codec.seal(
        LOGIN_STATE_PURPOSE,
        {
            "state": auth.state,
            "nonce": auth.nonce,
            "verifier": auth.code_verifier,
            "return_to": safe_return_path(return_to),
            "host": request_host(request),
        },
        ttl=LOGIN_TTL,
        now=int(time.time()),
    )
    response = pages.redirect(auth.url)
    attrs = cookie_attributes(runtime.snapshot.settings)
    attrs["samesite"] = "Lax"  # must survive the top-level redirect back from the IdP
    attrs["httponly"] = True
    attrs.pop("domain", None)
    response.set_cookie(login_cookie_name(runtime, auth.state), sealed, max_age=LOGIN_TTL, **attrs)
    response.headers["Cache-Control"] = "no-store"
    return response


async def sign_in(runtime: Runtime, request: web.Request, route: str | None) -> web.StreamResponse:
    if request.method == "POST":
        form_return = safe_return_path(request.query.get("redirect_uri", "/"))
        if runtime.snapshot.local_users is not None and request.content_type.endswith(
            "form-urlencoded"
        ):
            posted = await request.post()
            form_return = safe_return_path(str(posted.get("redirect_uri", form_return)))
        return await sign_in_post(runtime, request, form_return)
    return await start_sign_in(runtime, request, request.query.get("redirect_uri", "/"))


async def callback(runtime: Runtime, request: web.Request, route: str | None) -> web.StreamResponse:
    rid = request.get(REQUEST_ID)
    state = request.query.get("state", "")

    def fail(status: int, title: str, detail: str, code: str) -> web.Response:
        # The detail is what the page says too: never a token or a secret.
        log.warning("sign_in_failed", reason=code, detail=detail)
        resp = pages.error(request, status, title, detail, error_code=code, request_id=rid)
        if _STATE_RE.match(state):
            resp.del_cookie(login_cookie_name(runtime, state), path="/")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    if "error" in request.query:
        err = request.query.get("error", "")[:100]
        desc = request.query.get("error_description", "")[:300]
        return fail(
            401,
            "Sign-in was not completed",
            f"The identity provider reported: {err}" + (f" ({desc})" if desc else ""),
            "idp_error",
        )
    if not _STATE_RE.match(state):
        return fail(
            400, "Sign-in failed", "The sign-in response is missing its state.", "missing_state"
        )
    token = request.cookies.get(login_cookie_name(runtime, state))
    if not token:
        return fail(
            400,
            "No sign-in in progress",
            "This sign-in link was already used or has expired. Please start again.",
            "no_login_in_progress",
        )
    codec = runtime.snapshot.keys.codec
    try:
        login = codec.unseal(LOGIN_STATE_PURPOSE, token, now=int(time.time()))
    except SessionError as exc:
        return fail(
            400,
            "Sign-in failed",
            "The sign-in attempt expired or was altered. Please start again.",
            f"login_state_{exc.reason}",
        )
    if not hmac.compare_digest(str(login.get("state", "")), state) or login.get(
        "host"
    ) != request_host(request):
        return fail(
            400,
            "Sign-in failed",
            "The sign-in response does not belong to this sign-in attempt.",
            "state_mismatch",
        )
    try:
        # Single-use across every process and replica sharing the store: a callback
        # replayed elsewhere finds its state consumed.
        fresh = await runtime.store.consume_once(f"state:{state}", LOGIN_TTL)
    except StoreError:
        return fail(
            503,
            "Sign-in unavailable",
            "Signing in is briefly unavailable. Please try again in a moment.",
            "store_unavailable",
        )
    if not fresh:
        return fail(
            400,
            "No sign-in in progress",
            "This sign-in link was already used. Please start again.",
            "state_replayed",
        )
    code = request.query.get("code", "")
    if not code or len(code) > 4096:
        return fail(400, "Sign-in failed", "The sign-in response has no code.", "missing_code")
    assert runtime.oidc is not None
    try:
        result = await runtime.oidc.exchange_code(
            code,
            redirect_uri=callback_url(request),
            code_verifier=str(login["verifier"]),
            nonce=str(login["nonce"]),
        )
    except OidcError as exc:
        status = 502 if exc.reason == "idp_unreachable" else 401
        return fail(status, "Sign-in failed", exc.message, exc.reason)
    settings = runtime.snapshot.settings
    session = new_session(settings, request, result)
    try:
        pairs = codec.encode(session)
    except SessionError:
        return fail(
            500,
            "Sign-in failed",
            "The identity provider sent more claims than fit in a session cookie.",
            "session_too_large",
        )
    return_to = safe_return_path(str(login.get("return_to", "/")))
    response = pages.redirect(return_to)
    response.headers["Cache-Control"] = "no-store"
    cookies = read_cookies(request, runtime.snapshot)
    stale = [n for n in codec.chunk_names(cookies) if n not in {p[0] for p in pairs}]
    apply_cookies(response, settings, Resolved(session, pairs, stale), int(settings.cookie_expire))
    response.del_cookie(login_cookie_name(runtime, state), path="/")
    log.info("sign_in", user=session.email or session.sub, sid_hash=_short(session.sid))
    return response


async def sign_out(runtime: Runtime, request: web.Request, route: str | None) -> web.StreamResponse:
    rid = request.get(REQUEST_ID)
    resolved = await resolve(runtime, request)
    session = resolved.session
    if request.method == "GET":
        # A link or another site can make a browser GET this; only a POST with the token acts.
        if session is None:
            return pages.signed_out(rid)
        return pages.confirm_sign_out(session.csrf, rid)
    if request.method != "POST":
        return pages.error(
            request,
            405,
            "Method not allowed",
            "Use POST to sign out.",
            error_code="method_not_allowed",
            request_id=rid,
        )
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"https://{request.host}" and origin != "null":
        return pages.error(
            request,
            403,
            "Sign-out refused",
            "The sign-out request came from another site.",
            error_code="csrf",
            request_id=rid,
        )
    if session is None:
        response = pages.redirect(SIGNED_OUT)
        apply_cookies(response, runtime.snapshot.settings, resolved, None)
        return response
    form: Mapping[str, object] = {}
    if request.content_type.endswith("form-urlencoded"):
        # The app accepts unlimited bodies (they stream to the upstream); this one is read
        # into memory, so only a form of sign-out size is.
        length = request.content_length
        if length is None or length > _MAX_SIGN_OUT_FORM:
            return pages.error(
                request,
                413,
                "Sign-out refused",
                "The sign-out form is too large.",
                error_code="form_too_large",
                request_id=rid,
            )
        form = await request.post()
    token = str(form.get("csrf", "")) or request.headers.get("X-Clawgate-Csrf", "")
    if not hmac.compare_digest(token.encode(), session.csrf.encode()):
        return pages.error(
            request,
            403,
            "Sign-out refused",
            "The sign-out form was stale or forged. Reload the page and try again.",
            error_code="csrf",
            request_id=rid,
        )
    revocation = Revocation("session", session.sid, session.issued_at, session.expires_at)
    shared = request.app.get(SHARED)
    if shared is not None:
        await shared.sign_out(revocation)
    else:
        runtime.revoke(revocation)
    closed = await runtime.registry.close_session(session.sid, "signed out")
    log.info("sign_out", user=session.email or session.sub, websockets_closed=closed)
    target = SIGNED_OUT
    if runtime.oidc is not None:
        url = await runtime.oidc.end_session_url(
            session.id_token, f"https://{request.host}{SIGNED_OUT}"
        )
        if url is not None:
            target = url
    response = pages.redirect(target)
    response.headers["Cache-Control"] = "no-store"
    cookies = read_cookies(request, runtime.snapshot)
    names = runtime.snapshot.keys.codec.chunk_names(cookies) or [runtime.snapshot.keys.cookie_name]
    apply_cookies(response, runtime.snapshot.settings, Resolved(None, [], names), None)
    return response


async def signed_out(
    runtime: Runtime, request: web.Request, route: str | None
) -> web.StreamResponse:
    return pages.signed_out(request.get(REQUEST_ID))


def _user_info(runtime: Runtime, resolved: Resolved) -> dict[str, object]:
    session = resolved.session
    assert session is not None
    return {
        "email": session.email,
        "email_verified": session.email_verified,
        "user": session.sub,
        "groups": list(session.groups),
        "name": session.claims.get("name"),
        "session_expires_at": session.expires_at,
        "session_expires": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(session.expires_at)),
    }


async def whoami(runtime: Runtime, request: web.Request, route: str | None) -> web.StreamResponse:
    resolved = await resolve(runtime, request)
    if resolved.session is None:
        return await _anonymous(runtime, request, resolved, PREFIX)
    info = _user_info(runtime, resolved)
    info.pop("session_expires_at")
    response = pages.who_am_i(info, resolved.session.csrf, request.get(REQUEST_ID))
    apply_cookies(
        response, runtime.snapshot.settings, resolved, int(runtime.snapshot.settings.cookie_expire)
    )
    return response


async def user_json(
    runtime: Runtime, request: web.Request, route: str | None
) -> web.StreamResponse:
    resolved = await resolve(runtime, request)
    if resolved.session is None:
        response = pages.json_response(
            401, {"error": "unauthenticated", "message": "not signed in"}
        )
        apply_cookies(response, runtime.snapshot.settings, resolved, None)
        return response
    info = _user_info(runtime, resolved)
    info["csrf"] = resolved.session.csrf
    response = pages.json_response(200, info)
    apply_cookies(
        response, runtime.snapshot.settings, resolved, int(runtime.snapshot.settings.cookie_expire)
    )
    return response


async def jwks(runtime: Runtime, request: web.Request, route: str | None) -> web.StreamResponse:
    response = pages.json_response(200, runtime.snapshot.keys.signer.jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


async def _anonymous(
    runtime: Runtime, request: web.Request, resolved: Resolved, return_to: str
) -> web.StreamResponse:
    if pages.wants_html(request):
        response: web.StreamResponse = await start_sign_in(runtime, request, return_to)
    else:
        response = pages.json_response(
            401, {"error": "unauthenticated", "message": "sign in first"}
        )
    apply_cookies(response, runtime.snapshot.settings, resolved, None)
    return response


async def backchannel_logout(
    runtime: Runtime, request: web.Request, route: str | None
) -> web.StreamResponse:
    """OpenID Connect Back-Channel Logout 1.0: the provider says a session (or every
    session of a user) ended there; every session of clawgate's made from it is
    refused on every replica and its WebSockets closed with 1008. Answers as the spec
    says: 200 when done, 400 with an error for a token that is not acted on."""

    def refuse(status: int, error: str, detail: str) -> web.Response:
        log.warning("backchannel_logout_refused", reason=error, detail=detail)
        return web.json_response(
            {"error": error, "error_description": detail},
            status=status,
            headers={"Cache-Control": "no-store"},
        )

    if request.method != "POST" or not request.content_type.endswith("form-urlencoded"):
        return refuse(400, "invalid_request", "POST a form with logout_token")
    length = request.content_length
    if length is None or length > _MAX_LOGOUT_FORM:
        return refuse(400, "invalid_request", "the form is missing its length or too large")
    if runtime.oidc is None:
        return refuse(400, "invalid_request", "no identity provider is configured")
    form = await request.post()
    token = form.get("logout_token")
    if not isinstance(token, str) or not token:
        return refuse(400, "invalid_request", "no logout_token")
    try:
        logout = await runtime.oidc.verify_logout_token(token)
    except OidcError as exc:
        return refuse(400, "invalid_request", f"{exc.reason}: {exc.message}")
    try:
        fresh = await runtime.store.consume_once(
            f"logout:{logout.jti}", LOGOUT_TOKEN_MAX_AGE + 2 * runtime.oidc.leeway
        )
    except StoreError:
        return refuse(503, "temporarily_unavailable", "the shared store cannot be reached")
    if not fresh:
        return refuse(400, "invalid_request", "this logout token was used already")
    settings = runtime.snapshot.settings
    now = int(time.time())
    until = now + int(settings.cookie_expire) + int(settings.idp_clock_leeway) + 1
    if logout.sid is not None:
        revocation = Revocation("provider_session", logout.sid, now, until)
    else:
        assert logout.sub is not None
        revocation = Revocation("user", logout.sub, now, until)
    shared = request.app.get(SHARED)
    if shared is not None:
        await shared.sign_out(revocation)
    else:
        runtime.revoke(revocation)
    log.info("backchannel_logout", kind=revocation.kind)
    return web.Response(status=200, headers={"Cache-Control": "no-store"})


ENDPOINTS: dict[str, Handler] = {
    "/.clawgate/sign_in": sign_in,
    CALLBACK: callback,
    "/.clawgate/sign_out": sign_out,
    SIGNED_OUT: signed_out,
    "/.clawgate/": whoami,
    "/.clawgate": whoami,
    "/.clawgate/user": user_json,
    BACKCHANNEL_LOGOUT: backchannel_logout,
    VERIFY_PATH: verify_page,
    JWKS_PATH: jwks,
}


def _short(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]
