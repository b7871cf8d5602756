"""A real browser signs in through clawgate and uses the OpenClaw Control UI.

Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright for Python, never Playwright's own
browser download) runs *inside* the test network namespace, so the gateway sees a non-loopback
client address (OpenClaw refuses an ``X-Forwarded-For`` naming loopback). The shared stack from
``tests/e2e/conftest.py`` provides clawgate on ``https://10.213.x.1:<port>``, the gateway behind it
with ``deviceAutoApprove`` (a browser presents an Ed25519 device identity), and the test IdP,
which the browser reaches at its real issuer URL ``http://127.0.0.1:<port>`` through two TCP
relays (the IdP listens on loopback only, and clawgate accepts an http issuer only on loopback).

The browser: opens clawgate, is redirected to the IdP's login page, fills and submits it as
alice, lands on the Control UI through clawgate, and the UI connects. The connected signal is the
UI's identity card, ``button.sidebar-identity-card`` labelled "Identity and app menu for alice":
the UI renders it only after the gateway accepted the WebSocket and told it who the user is; a
refused connection shows the ``.login-gate`` panel ("Proxy authentication required") instead,
and a dropped one a ``.gateway-status`` banner. The agent welcome panel (agent name "Assistant",
fetched over the socket) then replaces the loading skeletons, and the screenshot is taken. The
browser's own ``hello-ok`` frame and the gateway log lines naming alice confirm it.

This file is also the driver: ``python tests/e2e/test_browser.py '<json args>'`` runs the browser
and prints one JSON object (the test runs it with ``ip netns exec``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in CI; the namespace and a throwaway profile are the isolation
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",  # clawgate's self-signed certificate
]
SCREENSHOT = ROOT / "test-artifacts" / "openclaw-dashboard.png"
CONNECTED = 'button.sidebar-identity-card[aria-label="Identity and app menu for alice"]'
WELCOME = ".agent-chat__welcome .agent-chat__welcome-avatar[aria-label]"


# -- the driver (runs inside the namespace) ----------------------------------------------------


def drive(args: dict[str, Any]) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {"ws_urls": [], "hello": None}
    timeout_ms = int(args.get("timeout", 30) * 1000)
    with (
        tempfile.TemporaryDirectory(prefix="clawgate-chromium-") as profile,
        sync_playwright() as p,
    ):
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            ignore_https_errors=True,
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(timeout_ms)

            def on_websocket(ws: Any) -> None:
                out["ws_urls"].append(ws.url)

                def on_frame(payload: str | bytes) -> None:
                    if isinstance(payload, str) and '"hello-ok"' in payload:
                        frame = json.loads(payload)
                        out["hello"] = {
                            "type": frame["payload"]["type"],
                            "auth": frame["payload"].get("auth"),
                        }

                ws.on("framereceived", on_frame)

            page.on("websocket", on_websocket)

            page.goto(args["origin"] + "/")
            out["login_page_url"] = page.url
            out["login_page_title"] = page.title()
            page.fill("#idp-login input[name=username]", args["username"])
            page.fill("#idp-login input[name=password]", args["password"])
            page.click("#idp-login button[type=submit]")
            page.wait_for_url(args["origin"] + "/**")
            out["landed_url"] = page.url
            out["title"] = page.title()
            out["secure_context"] = page.evaluate("window.isSecureContext")
            card = page.wait_for_selector(CONNECTED, state="visible")
            assert card is not None
            out["identity_label"] = card.get_attribute("aria-label")
            # Then data that only arrives over the WebSocket: the agent's welcome panel
            # (agent identity from the gateway) replaces the loading skeletons.
            agent = page.wait_for_selector(WELCOME, state="visible")
            assert agent is not None
            out["agent_label"] = agent.get_attribute("aria-label")
            page.wait_for_function("() => document.fonts.status === 'loaded'")
            out["login_gate_count"] = page.locator(".login-gate").count()
            out["gateway_status_count"] = page.locator(".gateway-status").count()
            Path(args["screenshot"]).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args["screenshot"])
        finally:
            context.close()
    return out


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_browser_signs_in_and_the_control_ui_connects(openclaw_stack: Any) -> None:
    from tests.e2e.conftest import e2e_unavailable
    from tests.support.idp import ALICE

    if not Path(CHROMIUM).exists():
        e2e_unavailable(f"{CHROMIUM} is missing (apt-get install chromium; scripts/setup --full)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        e2e_unavailable("Playwright for Python is not installed (pip install -e '.[test]')")

    stack = openclaw_stack
    SCREENSHOT.unlink(missing_ok=True)
    out = stack.run_script_in_namespace(
        Path(__file__),
        {
            "origin": stack.origin,
            "username": ALICE.username,
            "password": ALICE.password,
            "screenshot": str(SCREENSHOT),
        },
    )
    # Redirected to the IdP's own login page, at the issuer clawgate uses.
    assert out["login_page_url"].startswith(f"{stack.idp.issuer}/interaction/"), out
    assert out["login_page_title"] == "Sign in - test IdP"
    # Back on the Control UI, served through clawgate, in a secure context (WebCrypto works,
    # so the browser signs in with a device identity).
    # (the sign-in returns to "/", where the UI routes itself, e.g. to /chat/main)
    assert out["landed_url"].startswith(f"{stack.origin}/"), out
    assert "OpenClaw" in out["title"], out  # "OpenClaw Control", then "<agent> — OpenClaw"
    assert out["secure_context"] is True
    # Connected: the identity card names alice, no login gate, no reconnecting banner.
    assert out["identity_label"] == "Identity and app menu for alice"
    assert out["login_gate_count"] == 0
    assert out["gateway_status_count"] == 0
    assert out["agent_label"] == "Assistant"  # the gateway's default agent, read over the socket
    # The UI's socket went to clawgate's origin, and the gateway answered it as trusted-proxy.
    assert f"wss://{stack.origin.removeprefix('https://')}/" in out["ws_urls"], out
    assert out["hello"]["auth"]["method"] == "trusted-proxy", out
    assert {"operator.read", "operator.write"} <= set(out["hello"]["auth"]["scopes"])
    stack.gateway.wait_for_log(
        r"security audit: trusted-proxy operator device auto-approved user=alice@example\.com"
    )
    stack.gateway.wait_for_log(
        r"\[ws\] authenticated user connected conn=\S+ user=alice@example\.com"
    )
    assert SCREENSHOT.stat().st_size > 10_000


if __name__ == "__main__":
    # Chromium wants a writable HOME; inside ``ip netns exec`` it may be unset.
    os.environ.setdefault("HOME", tempfile.gettempdir())
    if shutil.which(CHROMIUM) is None:
        sys.exit(f"{CHROMIUM} not found")
    print(json.dumps(drive(json.loads(sys.argv[1]))))
