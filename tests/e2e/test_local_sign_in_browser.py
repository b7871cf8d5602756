"""A real browser (Debian's Chromium, driven by Playwright) signs in with a local user's
password: an .htpasswd made by Debian's `htpasswd -B`, clawgate's sign-in form, and
the page behind it served by the test upstream with the user's identity headers.

No OpenClaw here, so no network namespace: Chromium runs on loopback beside clawgate.
Playwright's sync API runs in a thread of its own (it cannot share the test's loop).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.gate import base_config, running_gate
from tests.support.upstream import Upstream, free_port

pytestmark = [pytest.mark.e2e]


def browse(url: str, user: str, password: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clawgate-chromium-") as profile, \
            sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            ignore_https_errors=True,
        )
        try:
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto(url)
            out["form_title"] = page.title()
            page.fill("input[name=username]", user)
            page.fill("input[name=password]", password)
            with page.expect_navigation():
                page.click("button[type=submit]")
            out["url"] = page.url
            out["body"] = page.inner_text("body")
        finally:
            context.close()
    return out


async def test_chromium_signs_in_with_the_form(upstream: Upstream, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() or shutil.which("htpasswd") is None:
        pytest.fail("needs Debian's chromium and apache2-utils (scripts/setup --full)")
    users = tmp_path / "users.htpasswd"
    subprocess.run(["htpasswd", "-cbB", "-C", "10", str(users), "alice@example.com",
                    "correct horse"], check=True, capture_output=True)
    port = free_port()
    config = base_config(port, upstream.url, idp=None, htpasswd_file=str(users))
    async with running_gate(config, tmp_path) as gate:
        wrong = await asyncio.to_thread(browse, f"{gate.url}/after", "alice@example.com", "nope")
        assert "Wrong user name or password" in wrong["body"]
        assert upstream.seen.requests == []
        shown = await asyncio.to_thread(
            browse, f"{gate.url}/after", "alice@example.com", "correct horse")
    assert "Sign in" in shown["form_title"]
    assert shown["url"] == f"{gate.url}/after"
    echoed = json.loads(shown["body"])
    assert echoed["path"] == "/after"
    headers = {k.lower(): v for k, v in echoed["headers"].items()}
    assert headers["x-pomerium-claim-email"] == "alice@example.com"
