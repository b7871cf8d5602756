"""``/.clawgate/verify``: what the upstream receives for the signed-in user, shown to
that user (HTML, or JSON for API clients).

For the route host it is opened on (and ``?path=``, default ``/``): the decision and
the rule that made it, the upstream URL, the request head clawgate would send (the
same function builds it as for a proxied request, proxy/upstream_request.py), the
identity assertion decoded with each check an upstream should make (signature against
this clawgate's JWKS, ``iss``, ``aud``, ``exp``) marked pass or fail, and a curl
command that reproduces the request from the upstream's host. Operators use it to
set OpenClaw's trusted-proxy ``userHeader`` and ``requiredHeaders``.

Nothing here is logged: the page shows the user their own assertion and headers.
"""

from __future__ import annotations

import html
import shlex
import time
from typing import Any

import jwt
from aiohttp import web

from policy.paths import UnsafePathError, normalize_path
from proxy import pages
from proxy.admission import admit
from proxy.assertion import verify_assertion
from proxy.forward import request_connection
from proxy.framing import FramingError
from proxy.identity import apply_cookies, request_host, resolve, to_identity
from proxy.runtime import REQUEST_ID, Runtime, client_ip
from proxy.upstream_request import handler_header_set, match_route, upstream_target

__all__ = ["VERIFY_PATH", "verify_page"]

VERIFY_PATH = "/.clawgate/verify"


def _checks(token: str, jwks: dict[str, Any], audience: str) -> dict[str, Any]:
    """Each check an upstream makes on the assertion, separately, pass or fail."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return {"decoded": False}
    try:
        verify_assertion(token, jwks, audience)
        whole = True
    except jwt.PyJWTError:
        whole = False
    try:
        jwt.decode(token, options={"verify_signature": False, "verify_exp": True})
        fresh = True
    except jwt.PyJWTError:
        fresh = False
    try:
        verify_assertion_signature_only(token, jwks)
        signature = True
    except jwt.PyJWTError:
        signature = False
    return {
        "decoded": True,
        "header": header,
        "claims": claims,
        "checks": {
            "signature": signature,
            "iss": claims.get("iss") == audience,
            "aud": claims.get("aud") == audience,
            "exp": fresh,
            "all": whole,
        },
    }


def verify_assertion_signature_only(token: str, jwks: dict[str, Any]) -> None:
    """The signature alone, by the key the token names in this clawgate's JWKS."""
    kid = jwt.get_unverified_header(token).get("kid")
    for entry in jwks.get("keys", []):
        if isinstance(entry, dict) and entry.get("kid") == kid:
            key = jwt.PyJWK(entry, algorithm="ES256")
            jwt.decode(
                token,
                key,
                algorithms=["ES256"],
                options={"verify_exp": False, "verify_aud": False, "verify_iss": False},
            )
            return
    raise jwt.InvalidTokenError("no key in the JWKS matches the token's kid")


async def verify_page(
    runtime: Runtime, request: web.Request, route_name: str | None
) -> web.StreamResponse:
    snap = runtime.snapshot
    rid = request.get(REQUEST_ID)
    resolved = await resolve(runtime, request)
    session = resolved.session
    if session is None:
        if pages.wants_html(request):
            anonymous = pages.redirect(f"/.clawgate/sign_in?redirect_uri={VERIFY_PATH}")
        else:
            anonymous = pages.json_response(
                401, {"error": "unauthenticated", "message": "sign in first"}
            )
        apply_cookies(anonymous, snap.settings, resolved, None)
        return anonymous
    try:
        path = normalize_path(request.query.get("path", "/"))
    except UnsafePathError:
        return pages.error(
            request, 400, "Bad request", "The path is not acceptable.",
            error_code="unsafe_path", request_id=rid,
        )
    route = match_route(snap, request.host, path)
    if route is None:
        return pages.error(
            request, 404, "No route", f"No route serves {path} on this host.",
            error_code="no_route", request_id=rid,
        )
    identity = to_identity(session, snap.settings.idp_groups_claim)
    ip = client_ip(request, snap.settings.xff_num_trusted_hops)
    decision = admit(route, session, identity, "GET", path, ip, time.time()).decision
    audience = request_host(request)
    try:
        connection = request_connection(request.headers)
    except FramingError:
        return pages.error(
            request, 400, "Bad request", "The request's framing is not acceptable.",
            error_code="bad_framing", request_id=rid,
        )
    headers = handler_header_set(
        runtime,
        route,
        session,
        request.headers,
        host=request.host,
        audience=audience,
        client_ip=ip,
        forwarded_proto=request.headers.get("X-Forwarded-Proto", ""),
        transport_scheme=request.scheme,
        websocket=False,
        connection=connection,
    )
    if rid:
        headers["X-Request-Id"] = rid  # the framing writes it last, as here
    target = upstream_target(route, path, "")
    upstream = f"{route.upstream.scheme}://{headers.get('Host', '')}{target}"
    assertion_header = snap.settings.jwt_assertion_header
    token = headers.get(assertion_header, "")
    info: dict[str, Any] = {
        "route": route.name,
        "path": path,
        "upstream_url": upstream,
        "request_id": rid,
        "decision": {"allow": decision.allow, "reason": decision.reason},
        "identity_headers": {
            name: headers.get(name, "")
            for name in (assertion_header, *snap.settings.jwt_claims_headers)
            if route.pass_identity
        },
        "headers": [[k, v] for k, v in headers.items()],
        "assertion": _checks(token, snap.keys.signer.jwks(), audience) if token else None,
        "curl": _curl(upstream, headers),
    }
    if pages.wants_html(request):
        response: web.Response = pages.html_response(200, "What the upstream receives",
                                                     _render(info), rid)
    else:
        response = pages.json_response(200, info)
    apply_cookies(response, snap.settings, resolved, int(snap.settings.cookie_expire))
    return response


def _curl(url: str, headers: Any) -> str:
    parts = ["curl", "-sS"]
    for name, value in headers.items():
        if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
            continue
        parts += ["-H", shlex.quote(f"{name}: {value}")]
    host = headers.get("Host")
    if host:
        parts += ["-H", shlex.quote(f"Host: {host}")]
    parts.append(shlex.quote(url))
    return " ".join(parts)


def _render(info: dict[str, Any]) -> str:
    e = html.escape
    decision = info["decision"]
    verdict = "allowed" if decision["allow"] else "denied"
    rows = "".join(
        f"<tr><td><code>{e(k)}</code></td><td><code>{e(v)}</code></td></tr>"
        for k, v in info["headers"]
    )
    out = [
        f"<p>Route <code>{e(info['route'])}</code>, path <code>{e(info['path'])}</code>: "
        f"<strong>{verdict}</strong> (<code>{e(decision['reason'])}</code>).</p>",
        f"<p>Upstream: <code>{e(info['upstream_url'])}</code></p>",
        f"<h2>Request headers sent upstream</h2><table>{rows}</table>",
    ]
    assertion = info["assertion"]
    if assertion and assertion.get("decoded"):
        checks = "".join(
            f"<li><code>{e(name)}</code>: {'pass' if ok else 'FAIL'}</li>"
            for name, ok in assertion["checks"].items()
        )
        claims = "".join(
            f"<tr><td><code>{e(str(k))}</code></td><td><code>{e(str(v))}</code></td></tr>"
            for k, v in assertion["claims"].items()
        )
        out.append(f"<h2>Identity assertion</h2><ul>{checks}</ul><table>{claims}</table>")
    elif assertion is None:
        out.append("<p>This route does not pass identity headers (pass_identity_headers).</p>")
    out.append(f"<h2>Reproduce from the upstream's host</h2><pre>{e(info['curl'])}</pre>")
    return "".join(out)
