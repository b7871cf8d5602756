"""``/.clawgate/ssh/<code>``: the browser half of an SSH sign-in.

The SSH door shows this URL on the user's terminal (proxy/ssh_gate.py). Here the user,
signed in through the usual flow, sees what they would approve (route, login, client
key fingerprint, client address, their own account) and approves or refuses with a
POST carrying their session's CSRF token. The decision is ``proxy.ssh_gate.decide``,
the same one the door applies; a refusal goes back to the terminal at once. An
approval URL answers once: a replay, or one whose attempt has timed out, gets a page
saying so and changes nothing.
"""

from __future__ import annotations

import hmac
import html
import re
import time
from collections.abc import Mapping

import structlog
from aiohttp import web

from proxy import pages
from proxy.endpoints import _anonymous
from proxy.identity import apply_cookies, resolve
from proxy.runtime import REQUEST_ID, Runtime, client_ip
from proxy.ssh import Grant, Refusal
from proxy.ssh_gate import APPROVAL_PREFIX, PendingApproval, answer, decide, find_route
from proxy.ssh_gate import load_pending as load
from proxy.store import StoreError

log = structlog.get_logger("clawgate.ssh")

_CODE = re.compile(r"^[A-Za-z0-9_-]{32}$")
_MAX_FORM = 4096


def _gone(request: web.Request, rid: str | None) -> web.Response:
    return pages.error(
        request,
        410,
        "SSH sign-in not found",
        "This SSH sign-in has expired or was already answered. Run ssh again for a new link.",
        error_code="ssh_approval_gone",
        request_id=rid,
    )


def _details(pending: PendingApproval, user: str) -> str:
    rows = (
        ("Route", pending.route),
        ("Login", pending.login),
        ("Client key", pending.key_fingerprint),
        ("Client address", pending.client_address),
        ("Your account", user),
    )
    return (
        "<dl>"
        + "".join(
            f"<dt>{html.escape(k)}</dt><dd><code>{html.escape(v)}</code></dd>" for k, v in rows
        )
        + "</dl>"
    )


def _form(csrf: str, action: str, label: str) -> str:
    return (
        f'<form method=post><input type=hidden name=csrf value="{html.escape(csrf)}">'
        f'<input type=hidden name=action value="{action}">'
        f"<button type=submit name=do value={action}>{html.escape(label)}</button></form>"
    )


async def ssh_approval(
    runtime: Runtime, request: web.Request, route_name: str | None
) -> web.StreamResponse:
    rid = request.get(REQUEST_ID)
    code = request.path[len(APPROVAL_PREFIX) :]
    if not _CODE.fullmatch(code):
        return _gone(request, rid)
    resolved = await resolve(runtime, request)
    session = resolved.session
    if session is None:
        return await _anonymous(runtime, request, resolved, request.path)
    try:
        pending = await load(runtime, code)
    except StoreError:
        return pages.error(
            request,
            503,
            "Try again",
            "clawgate cannot reach its shared store right now.",
            error_code="store_unavailable",
            request_id=rid,
        )
    if pending is None:
        return _gone(request, rid)
    route = find_route(runtime.snapshot, pending.route)
    user = session.email or session.sub
    settings = runtime.snapshot.settings
    ip = client_ip(request, settings.xff_num_trusted_hops)
    now = time.time()
    if route is None:
        verdict: Grant | Refusal = Refusal(f"no SSH route named {pending.route!r}", "removed")
    else:
        # Decided with the SSH client's address: that is where the shell will be used.
        verdict, _ = decide(runtime, route, session, pending.login, pending.client_address, now)
    if request.method == "GET":
        body = _details(pending, user)
        if isinstance(verdict, Refusal):
            body = (
                f"<p>clawgate will refuse this SSH sign-in: {html.escape(verdict.message)}.</p>"
                + body
                + _form(session.csrf, "refuse", "Close the SSH sign-in")
            )
        else:
            body = (
                "<p>Approve only if you just ran <code>ssh</code> yourself and the key "
                "fingerprint matches the one your terminal shows.</p>"
                + body
                + _form(session.csrf, "approve", "Approve")
                + _form(session.csrf, "refuse", "Refuse")
            )
        response = pages.html_response(200, "Approve SSH sign-in?", body, rid)
        apply_cookies(response, settings, resolved, int(settings.cookie_expire))
        return response
    if request.method != "POST":
        return pages.error(
            request,
            405,
            "Method not allowed",
            "Use the buttons on the page.",
            error_code="method_not_allowed",
            request_id=rid,
        )
    origin = request.headers.get("Origin")
    # Pages are sent with "Referrer-Policy: no-referrer", so a browser posts their forms
    # with "Origin: null"; the CSRF token below is what proves the form is ours.
    if origin is not None and origin not in (f"https://{request.host}", "null"):
        return _refused_csrf(request, rid, "cross-origin")
    form: Mapping[str, object] = {}
    length = request.content_length
    if not request.content_type.endswith("form-urlencoded") or length is None or length > _MAX_FORM:
        return _refused_csrf(request, rid, "not a form")
    form = await request.post()
    token = str(form.get("csrf", ""))
    if not hmac.compare_digest(token.encode(), session.csrf.encode()):
        return _refused_csrf(request, rid, "csrf token")
    if form.get("action") != "approve" and isinstance(verdict, Grant):
        verdict = Refusal("the sign-in was refused in the browser", "refused by the user")
    if isinstance(verdict, Refusal):
        written = await answer(runtime, code, session=None, refusal=verdict)
    else:
        written = await answer(runtime, code, session=session, refusal=None)
    if not written:
        return _gone(request, rid)
    log.info(
        "ssh_approval",
        route=pending.route,
        login=pending.login,
        key=pending.key_fingerprint,
        client=pending.client_address,
        approver_address=ip,
        user=user,
        approved=isinstance(verdict, Grant),
        reason=verdict.reason,
    )
    if isinstance(verdict, Refusal):
        return pages.error(
            request,
            403,
            "SSH sign-in refused",
            f"{verdict.message}. Your terminal says so too.",
            error_code="ssh_refused",
            request_id=rid,
            user=user,
        )
    return pages.html_response(
        200,
        "SSH sign-in approved",
        "<p>You can go back to your terminal. This page can be closed.</p>"
        + _details(pending, user),
        rid,
    )


def _refused_csrf(request: web.Request, rid: str | None, why: str) -> web.Response:
    log.warning("ssh_approval_refused", reason=why)
    return pages.error(
        request,
        403,
        "Approval refused",
        "The form was stale or came from another site. Open the link from your terminal again.",
        error_code="csrf",
        request_id=rid,
    )
