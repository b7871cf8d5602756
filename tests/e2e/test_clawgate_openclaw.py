"""clawgate in front of the real OpenClaw gateway, end to end.

The stack (``tests/e2e/conftest.py``): the test IdP, clawgate on the host end of a veth pair
(``https://10.213.x.1:<port>``), the gateway in trusted-proxy mode on 127.0.0.1 behind a
recording TCP tap, and a client in a network namespace (10.213.x.2). The client must be
outside loopback because OpenClaw refuses an ``X-Forwarded-For`` naming a loopback address; the
IdP, which listens on 127.0.0.1 only, is reached from the namespace through two TCP relays so
its issuer URL is ``http://127.0.0.1:<port>`` on both sides (clawgate accepts an ``http`` issuer
only on loopback, and that rule stays).

Gateway: ``userHeader: x-pomerium-claim-email``, ``requiredHeaders: [x-pomerium-jwt-assertion]``,
``allowUsers: [alice]``, ``identityScopes: {alice: [operator.read]}``, ``allowedOrigins`` = the
clawgate origin, ``trustedProxies: [127.0.0.1]`` + ``allowLoopback``. clawgate's policy allows
alice and bob, not mallory.

Each test runs one small aiohttp client inside the namespace (`CLIENT`), which signs in
through the real IdP pages, loads the Control UI, and speaks the gateway's WebSocket protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ALICE, BOB, SERVICE, OpenClawStack
from tests.support.idp import ALICE as ALICE_USER
from tests.support.idp import BOB as BOB_USER
from tests.support.idp import MALLORY as MALLORY_USER

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# OpenClaw checks only that the required header is present and non-blank.
FAKE_ASSERTION = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ0ZXN0In0.c2ln"

# Runs inside the namespace. Steps, in order, each optional:
#   anonymous  GET / and a WebSocket upgrade without a session
#   login      sign in through the IdP's pages, starting at /
#   ws         open wss://<origin>/ with the page's Origin and complete the gateway handshake
#              (with an Ed25519 device identity, as a browser has, when args["device"])
#   sign_out   POST /.clawgate/sign_out with the CSRF token, then read what the socket does,
#              then GET / again
#   direct     straight to the gateway with forged identity headers (optionally X-Forwarded-For)
CLIENT = r"""
import asyncio, json, os
import aiohttp
from tests.support.idp import login
from tests.support.openclaw import DeviceIdentity, OpenClawHandshakeError, openclaw_handshake

args = json.loads(os.environ["CLAWGATE_CLIENT_ARGS"])
base = args.get("base", "")
HTML = {"Accept": "text/html,application/xhtml+xml"}
WS = {"Accept": "*/*"}  # what a browser's WebSocket upgrade carries

async def handshake(s, url, headers, out):
    try:
        ws = await s.ws_connect(url, headers={**WS, **headers}, max_msg_size=0)
    except aiohttp.WSServerHandshakeError as e:
        out["upgrade_status"] = e.status
        return None
    try:
        out["hello"] = await openclaw_handshake(
            ws,
            build_id=args.get("build_id"),
            device=DeviceIdentity() if args.get("device") else None,
        )
    except OpenClawHandshakeError as e:
        out["error"] = {"code": e.code, "detail": e.detail_code, "message": str(e)}
    return ws

async def main():
    out = {}
    steps = args["steps"]
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(ssl=False),
        timeout=aiohttp.ClientTimeout(total=30),
        headers=HTML,  # navigations, as a browser sends them
    ) as s:
        ws = None
        if "anonymous" in steps:
            async with s.get(base + "/", headers=HTML, allow_redirects=False) as r:
                out["anon_status"] = r.status
                out["anon_location"] = r.headers.get("Location", "")
            try:
                async with s.ws_connect(base + "/", headers={**WS, "Origin": base}):
                    out["anon_ws"] = "open"
            except aiohttp.WSServerHandshakeError as e:
                out["anon_ws"] = e.status
        if "login" in steps:
            r = await login(s, base + "/", args["username"], args["password"])
            out["login_status"] = r.status
            out["login_url"] = str(r.url)
            out["login_body"] = (await r.text())[:3000]
        if "key" in steps:
            bearer = {"Authorization": "Bearer " + args["key"]}
            async with s.get(base + "/", headers={**HTML, **bearer},
                             allow_redirects=False) as r:
                out["key_status"] = r.status
                out["key_body"] = (await r.text())[:3000]
            ws = await handshake(s, base.replace("https://", "wss://") + "/",
                                 {"Origin": base, **bearer}, out)
        if "ws" in steps:
            ws = await handshake(s, base.replace("https://", "wss://") + "/",
                                 {"Origin": base}, out)
        if "sign_out" in steps:
            async with s.get(base + "/.clawgate/user", headers={"Accept": "application/json"}) as r:
                csrf = (await r.json())["csrf"]
            async with s.post(base + "/.clawgate/sign_out", data={"csrf": csrf},
                              headers={"Origin": base}, allow_redirects=False) as r:
                out["sign_out_status"] = r.status
            if ws is not None:
                # Gateway events (ticks, presence) may still be in flight; then the close.
                texts = 0
                while True:
                    msg = await ws.receive(timeout=10)
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
                    texts += 1
                out["ws_after_sign_out"] = {"type": msg.type.name, "code": ws.close_code,
                                            "reason": msg.extra, "texts_before": texts}
            async with s.get(base + "/", headers=HTML, allow_redirects=False) as r:
                out["after_status"] = r.status
                out["after_location"] = r.headers.get("Location", "")
        if ws is not None and not ws.closed:
            await ws.close()
        if "direct" in steps:
            d = args["direct"]
            async with s.get(d + "/", headers=args["forged"]) as r:
                out["direct_status"] = r.status
                out["direct_body"] = (await r.text())[:2000]
            ws = await handshake(s, d.replace("http://", "ws://") + "/", args["forged"], out)
            if ws is not None:
                await ws.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def run_client(stack: OpenClawStack, steps: list[str], **args: Any) -> dict[str, Any]:
    return stack.run_in_namespace(
        CLIENT,
        {"base": stack.origin, "build_id": stack.gateway.build_id, "steps": steps, **args},
    )


def test_unauthenticated_browser_is_sent_to_the_idp(openclaw_stack: OpenClawStack) -> None:
    stack = openclaw_stack
    before = len(stack.tap.requests())
    out = run_client(stack, ["anonymous"])
    assert out["anon_status"] == 302, out
    assert out["anon_location"].startswith(f"{stack.idp.issuer}/"), out
    assert "code_challenge_method=S256" in out["anon_location"]
    # Without a session a WebSocket upgrade is answered by clawgate (401), not forwarded.
    assert out["anon_ws"] == 401, out
    assert len(stack.tap.requests()) == before


def test_alice_signs_in_and_the_control_ui_connects_as_her(
    openclaw_stack: OpenClawStack,
) -> None:
    stack = openclaw_stack
    out = run_client(
        stack, ["login", "ws"], username=ALICE_USER.username, password=ALICE_USER.password
    )
    # The Control UI page itself, served by the gateway through clawgate.
    assert out["login_status"] == 200, out
    assert out["login_url"] == f"{stack.origin}/", out
    assert f'data-openclaw-control-ui-build-id="{stack.gateway.build_id}' in out["login_body"]
    hello = out.get("hello")
    assert hello is not None, out
    assert hello["type"] == "hello-ok"
    assert hello["auth"]["method"] == "trusted-proxy"
    # Device-less session: the gateway grants exactly alice's identityScopes.
    assert hello["auth"]["scopes"] == ["operator.read"]
    # hello-ok carries no email; the gateway's log names the user it authenticated.
    match = stack.gateway.wait_for_log(
        r"\[ws\] authenticated user connected conn=(\S+) user=alice@example\.com"
    )
    assert match.group(1)
    # What the gateway received: clawgate's identity headers on the page and on the upgrade,
    # the client's real (non-loopback) address, the browser's Origin, the upstream Host.
    upgrades = [
        r for r in stack.tap.requests() if (r.header("upgrade") or "").lower() == "websocket"
    ]
    assert upgrades, "no WebSocket upgrade reached the gateway"
    last = upgrades[-1]
    assert last.header("x-pomerium-claim-email") == ALICE
    assert (last.header("x-pomerium-jwt-assertion") or "").count(".") == 2
    assert last.header("x-forwarded-for") == stack.ns.ns_addr
    assert last.header("origin") == stack.origin
    assert last.header("host") == f"127.0.0.1:{stack.tap.port}"
    assert "_clawgate" not in (last.header("cookie") or "")


def test_user_denied_by_policy_gets_403_and_never_reaches_the_gateway(
    openclaw_stack: OpenClawStack,
) -> None:
    stack = openclaw_stack
    out = run_client(
        stack,
        ["login", "ws"],
        username=MALLORY_USER.username,
        password=MALLORY_USER.password,
    )
    assert out["login_status"] == 403, out
    assert "mallory@evil.test" in out["login_body"]
    assert out["upgrade_status"] == 403, out
    assert MALLORY_USER.email not in stack.users_at_gateway()
    assert "mallory" not in stack.gateway.log_text()


def test_user_allowed_by_clawgate_but_not_by_the_gateway_is_refused_there(
    openclaw_stack: OpenClawStack,
) -> None:
    """Defence in depth: bob passes clawgate's policy, the gateway's allowUsers refuses him."""
    stack = openclaw_stack
    out = run_client(
        stack,
        ["login", "ws"],
        username=BOB_USER.username,
        password=BOB_USER.password,
        device=True,  # as a browser connects; device-less, the gateway gives no reason
    )
    assert out["login_status"] == 200, out  # the static page is public on the gateway
    assert "hello" not in out, out
    assert out["error"]["detail"] == "AUTH_UNAUTHORIZED", out
    assert BOB in stack.users_at_gateway()
    stack.gateway.wait_for_log(r"\[ws\] unauthorized conn=.* reason=trusted_proxy_user_not_allowed")
    assert BOB not in stack.gateway.authenticated_users()


def test_forged_identity_headers_straight_to_the_gateway_are_refused(
    openclaw_stack: OpenClawStack,
) -> None:
    stack = openclaw_stack
    forged = {
        "Origin": stack.origin,
        "x-pomerium-claim-email": ALICE,
        "x-pomerium-jwt-assertion": FAKE_ASSERTION,
    }
    before = stack.gateway.authenticated_users().count(ALICE)
    out = run_client(stack, ["direct"], direct=stack.direct_gateway_url, forged=forged)
    # The namespace's address is not a trusted proxy: the headers are ignored, and the
    # Control UI client without a device identity is turned away.
    assert "hello" not in out, out
    assert out["error"]["detail"] == "CONTROL_UI_DEVICE_IDENTITY_REQUIRED", out

    spoofed = {**forged, "X-Forwarded-For": "203.0.113.7"}
    out = run_client(stack, ["direct"], direct=stack.direct_gateway_url, forged=spoofed)
    assert out["direct_status"] == 403, out
    assert '"proxy_attribution_required"' in out["direct_body"]
    assert out["upgrade_status"] == 403, out
    assert stack.gateway.authenticated_users().count(ALICE) == before


def test_sign_out_closes_the_open_websocket_and_requires_sign_in_again(
    openclaw_stack: OpenClawStack,
) -> None:
    stack = openclaw_stack
    out = run_client(
        stack,
        ["login", "ws", "sign_out"],
        username=ALICE_USER.username,
        password=ALICE_USER.password,
    )
    assert out["hello"]["auth"]["method"] == "trusted-proxy", out
    assert out["sign_out_status"] == 302, out
    closed = out["ws_after_sign_out"]
    assert closed["type"] == "CLOSE", closed
    assert closed["code"] == 1008, closed
    assert closed["reason"] == "signed out", closed
    assert out["after_status"] == 302, out
    assert out["after_location"].startswith(f"{stack.idp.issuer}/"), out


def test_an_api_key_reaches_the_gateway_as_its_service_principal(
    openclaw_stack: OpenClawStack,
) -> None:
    """A script with a key from `clawgate apikey create`: the gateway's trusted-proxy
    mode sees the service principal; the key itself never reaches the gateway."""
    import subprocess
    import sys
    import time

    stack = openclaw_stack
    made = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "apikey", "create", "ci-bot", "--expires", "1d",
         "--config", str(stack.gate.path)],
        capture_output=True, text=True, timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    time.sleep(1.5)  # the key file is re-read like the config
    out = run_client(stack, ["key"], key=key)
    assert out["key_status"] == 200, out
    assert f'data-openclaw-control-ui-build-id="{stack.gateway.build_id}' in out["key_body"]
    hello = out.get("hello")
    assert hello is not None and hello["auth"]["method"] == "trusted-proxy", out
    # The scopes the gateway's identityScopes give exactly this principal: it was
    # recognised as apikey:ci-bot (its log masks the name as apikey:***).
    assert hello["auth"]["scopes"] == ["operator.read"], hello
    match = stack.gateway.wait_for_log(
        r"\[ws\] authenticated user connected conn=(\S+) user=apikey:"
    )
    assert match.group(1)
    seen = [r for r in stack.tap.requests() if r.header("x-pomerium-claim-email") == SERVICE]
    assert seen, "no request reached the gateway as the service principal"
    for request in stack.tap.requests():
        assert key not in str(request.header("authorization") or "")
        assert request.header("authorization") is None or "cgk_" not in request.header(
            "authorization"
        )
