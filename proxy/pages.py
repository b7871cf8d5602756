"""clawgate's own pages: errors, who-am-I, sign-out; HTML for browsers, JSON for APIs.

Every value shown is HTML-escaped, and the pages carry a CSP that allows nothing but
their own inline stylesheet (pinned by hash) and form posts to the same origin.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;"
    "color:#1d2330}h1{font-size:1.4rem}code{background:#eef;padding:0 .2rem}"
    "dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem}"
    "dt{font-weight:600}.muted{color:#667;font-size:.85rem}"
    "button{font-size:1rem;padding:.4rem 1rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

SIGN_OUT_PATH = "/.clawgate/sign_out"


def wants_html(request: web.BaseRequest) -> bool:
    """Browsers navigating ask for text/html; fetch/XHR and API clients do not."""
    return prefers_html(request.headers)


def prefers_html(headers: Mapping[str, str]) -> bool:
    if "text/html" in headers.get("Accept", ""):
        return True
    return headers.get("Sec-Fetch-Mode") == "navigate"


def _page(title: str, body: str, request_id: str | None) -> str:
    rid = (
        f'<p class="muted">request id <code>{html.escape(request_id)}</code></p>'
        if request_id
        else ""
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)} · clawgate</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}{rid}</body></html>"
    )


def sign_out_form(csrf: str, label: str = "Sign out") -> str:
    return (
        f'<form method=post action="{SIGN_OUT_PATH}">'
        f'<input type=hidden name=csrf value="{html.escape(csrf)}">'
        f"<button type=submit>{html.escape(label)}</button></form>"
    )


def html_response(
    status: int, title: str, body: str, request_id: str | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=_page(title, body, request_id),
        content_type="text/html",
        charset="utf-8",
        headers=PAGE_HEADERS,
    )


def json_response(status: int, payload: Mapping[str, Any]) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(payload, separators=(",", ":")),
        content_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def error(
    request: web.BaseRequest,
    status: int,
    title: str,
    detail: str,
    *,
    error_code: str,
    request_id: str | None = None,
    user: str | None = None,
    csrf: str | None = None,
    headers: Mapping[str, str] | None = None,
    reason: str | None = None,
) -> web.Response:
    """:func:`error_page` for ``request``."""
    return error_page(
        wants_html(request),
        status,
        title,
        detail,
        error_code=error_code,
        request_id=request_id,
        user=user,
        csrf=csrf,
        headers=headers,
        reason=reason,
    )


def error_page(
    html_page: bool,
    status: int,
    title: str,
    detail: str,
    *,
    error_code: str,
    request_id: str | None = None,
    user: str | None = None,
    csrf: str | None = None,
    headers: Mapping[str, str] | None = None,
    reason: str | None = None,
) -> web.Response:
    """An error as a small HTML page or, for non-browser clients, JSON.

    ``reason`` is the policy decision's explanation (which rule decided, or that none
    matched): it names criteria, never another user's data.
    """
    if html_page:
        body = f"<p>{html.escape(detail)}</p>"
        if reason is not None:
            body += f'<p class="muted">Decision: <code>{html.escape(reason)}</code></p>'
        if user is not None:
            body += f"<p>You are signed in as <strong>{html.escape(user)}</strong>.</p>"
            if csrf is not None:
                body += sign_out_form(csrf, "Sign out and use another account")
        resp = html_response(status, title, body, request_id)
    else:
        payload: dict[str, Any] = {"error": error_code, "message": detail}
        if reason is not None:
            payload["reason"] = reason
        if request_id:
            payload["request_id"] = request_id
        resp = json_response(status, payload)
    if headers:
        resp.headers.update(headers)
    return resp


def who_am_i(info: Mapping[str, Any], csrf: str, request_id: str | None) -> web.Response:
    rows = "".join(
        f"<dt>{html.escape(k.replace('_', ' ').capitalize())}</dt><dd>{html.escape(_text(v))}</dd>"
        for k, v in info.items()
        if v is not None
    )
    body = (
        f"<dl>{rows}</dl>"
        '<p><a href="/.clawgate/verify">What the upstream receives for you</a></p>'
        f"{sign_out_form(csrf)}"
    )
    return html_response(200, "Signed in", body, request_id)


def signed_out(request_id: str | None) -> web.Response:
    return html_response(
        200,
        "You are signed out",
        '<p>Your clawgate session has ended. <a href="/">Sign in again</a>.</p>',
        request_id,
    )


def confirm_sign_out(csrf: str, request_id: str | None) -> web.Response:
    """Sign-out by GET (a link, another site) only asks; the POST with the token acts."""
    return html_response(
        200, "Sign out?", f"<p>End your session?</p>{sign_out_form(csrf)}", request_id
    )


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def redirect(location: str, status: int = 302) -> web.Response:
    """A redirect that is returned (aiohttp deprecates returning HTTPException objects)."""
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})
