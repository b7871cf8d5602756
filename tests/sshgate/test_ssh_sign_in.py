"""The SSH door end to end: a running clawgate (``serve``), the real OpenID provider, a
real OpenSSH ``sshd`` trusting clawgate's User CA, the real ``ssh`` client on a pty, and
the approval in a browser (Debian's Chromium through Playwright for the first sign-in;
a browser-like aiohttp client, which walks the same IdP pages, for the others).

Only the policy, identity and approval side is tested here; the door's own protocol
handling (relay, key proof, host keys) is tested against the same real parts in
tests/ssh/.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.ssh import init_ca
from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.ssh.conftest import SshClient, expect, finish, run_ssh, transcript
from tests.support.gate import Gate, base_config, register_client, running_gate
from tests.support.idp import TestIdP, login
from tests.support.sshd import Sshd, keygen
from tests.support.upstream import Upstream, free_port

pytestmark = [pytest.mark.timeout(180)]

URL = re.compile(r"https://127\.0\.0\.1:\d+/\.clawgate/ssh/[A-Za-z0-9_-]{32}")
PROMPT = re.compile(r"[#$] $")
LOGIN = "root"  # sshd maps it to this principal (AuthorizedPrincipalsFile)


@dataclass
class Door:
    gate: Gate
    sshd: Sshd
    client: SshClient
    ssh_port: int
    config: dict[str, Any]
    tmp: Path


def door_config(
    port: int, ssh_port: int, sshd: Sshd, upstream: Upstream, idp: TestIdP, tmp: Path,
    **route: Any,
) -> dict[str, Any]:  # fmt: skip
    ssh_route: dict[str, Any] = {
        "from": "ssh://openclaw",
        "to": f"ssh://127.0.0.1:{sshd.port}",
        "policy": [
            {"allow": {"and": [{"groups": {"has": "admins"}}, {"ssh_username": {"is": LOGIN}}]}}
        ],
    }
    ssh_route.update(route)
    config = base_config(port, upstream.url, idp=idp)
    config["routes"].append(ssh_route)
    config.update(
        ssh_address=f"127.0.0.1:{ssh_port}",
        ssh_user_ca_key_file=str(tmp / "user_ca"),
        ssh_approval_timeout="20s",
        data_dir=str(tmp / "data"),
    )
    return config


@contextlib.asynccontextmanager
async def door_parts(
    idp: TestIdP, upstream: Upstream, tmp: Path, *, sshd_trusts: str | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[dict[str, Any], Sshd, SshClient]]:  # fmt: skip
    """A User CA, a client key, an sshd trusting the CA (or ``sshd_trusts``) and the
    config of a clawgate in front of it; the test starts clawgate."""
    ca_line = init_ca(tmp / "user_ca")
    port, ssh_port = free_port(), free_port()
    register_client(idp, port)
    key = tmp / "id_ed25519"
    keygen(key, comment="alice-laptop")
    async with Sshd(tmp / "sshd", sshd_trusts or ca_line, principals=(LOGIN,)) as sshd:
        config = door_config(port, ssh_port, sshd, upstream, idp, tmp)
        config.update(overrides)
        yield config, sshd, SshClient(tmp, key, ssh_port)


@pytest.fixture
async def door(idp: TestIdP, upstream: Upstream, tmp_path: Path) -> AsyncIterator[Door]:
    async with door_parts(idp, upstream, tmp_path) as (config, sshd, client):
        async with running_gate(config, tmp_path) as gate:
            yield Door(gate, sshd, client, client.port, config, tmp_path)


async def approval_url(child: Any) -> str:
    await expect(child, URL, timeout=30)
    found = URL.search(transcript(child))
    assert found is not None
    return found.group(0)


def browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(ssl=False),
        headers={"Accept": "text/html"},
    )


async def answer(http: aiohttp.ClientSession, url: str, user: str, action: str) -> tuple[int, str]:
    """Open the approval link as ``user`` (signing in at the IdP), then press a button."""
    page = await login(http, url, user, f"{user.split('@')[0]}-password")
    text = await page.text()
    assert page.status == 200, text
    csrf = re.search(r'name=csrf value="([^"]+)"', text)
    assert csrf is not None, text
    origin = url.split("/.clawgate/")[0]
    async with http.post(
        url, data={"csrf": csrf.group(1), "action": action}, headers={"Origin": origin}
    ) as done:
        return done.status, await done.text()


def approve_in_chromium(url: str) -> dict[str, str]:
    from playwright.sync_api import sync_playwright

    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="clawgate-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            ignore_https_errors=True,
        )  # fmt: skip
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(url)
            page.fill("#idp-login input[name=username]", "alice@example.com")
            page.fill("#idp-login input[name=password]", "alice-password")
            page.click("#idp-login button[type=submit]")
            page.wait_for_url(url)
            out["title"] = page.title()
            out["shown"] = page.inner_text("body")
            with page.expect_navigation():
                page.click("button[value=approve]")
            out["after"] = page.inner_text("body")
        finally:
            context.close()
    return out


def certificate_of(auth_info: str) -> str:
    """``ssh-keygen -L`` of the certificate sshd accepted (from $SSH_USER_AUTH)."""
    line = next(x for x in auth_info.splitlines() if x.startswith("publickey "))
    cert = line.split(" ", 1)[1]
    shown = subprocess.run(
        ["ssh-keygen", "-L", "-f", "-"], input=cert, capture_output=True, text=True, check=True
    )
    return shown.stdout


async def test_permitted_user_gets_a_shell_after_approving_in_chromium(door: Door) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("needs Debian's chromium (scripts/setup --full)")
    child = door.client.spawn(f"{LOGIN}@openclaw")
    url = await approval_url(child)
    assert url.startswith(door.gate.url)
    seen = await asyncio.to_thread(approve_in_chromium, url)
    # The page showed what was being approved before the click.
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", str(door.client.key)], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    for shown in ("openclaw", LOGIN, fingerprint, "127.0.0.1", "alice@example.com"):
        assert shown in seen["shown"], seen
    assert fingerprint in transcript(child)  # the terminal names the same key
    assert "approved" in seen["after"]

    await expect(child, PROMPT)
    child.sendline("echo sum=$((40+2)); exit 3")
    await expect(child, "sum=42")
    out, status = await finish(child)
    assert status == 3, out

    # The same key within the session: no browser, and exec returns output and status.
    ran = await run_ssh(door.client, f"{LOGIN}@openclaw", "printf ok; exit 7")
    assert (ran.stdout, ran.status) == (b"ok", 7), ran.stderr
    assert URL.search(ran.stderr) is None

    # The certificate the upstream accepted: principal, key id, minutes of validity, and
    # no forwarding (the route allows none).
    ran = await run_ssh(door.client, f"{LOGIN}@openclaw", 'cat "$SSH_USER_AUTH"')
    shown = certificate_of(ran.stdout.decode())
    assert re.search(rf"Principals:\s*\n\s*{LOGIN}\s*\n", shown), shown
    assert re.search(r'Key ID: "clawgate:alice@example\.com:session=[0-9a-f]{12}"', shown), shown
    valid = re.search(r"Valid: from (\S+) to (\S+)", shown)
    assert valid is not None, shown
    from datetime import datetime

    span = datetime.fromisoformat(valid.group(2)) - datetime.fromisoformat(valid.group(1))
    assert 60 <= span.total_seconds() <= 600, shown
    assert "permit-pty" in shown
    for never in ("permit-port-forwarding", "permit-agent-forwarding", "permit-X11-forwarding"):
        assert never not in shown, shown
    accepted = door.sshd.accepted_certificates()
    assert accepted and all("clawgate:alice@example.com" in line for line in accepted)


async def test_denied_user_never_reaches_sshd(door: Door) -> None:
    child = door.client.spawn(f"{LOGIN}@openclaw")
    url = await approval_url(child)
    async with browser() as http:
        page = await login(http, url, "bob@example.com", "bob-password")
        text = await page.text()
        assert "will refuse" in text and "not allowed by policy for route openclaw" in text
        status, _ = await answer(http, url, "bob@example.com", "refuse")
    assert status == 403
    out, code = await finish(child)
    assert "clawgate: not allowed by policy for route openclaw" in out
    assert code != 0
    assert door.sshd.connections() == 0, door.sshd.log()


async def test_a_login_the_policy_does_not_name_is_refused(door: Door) -> None:
    child = door.client.spawn("nobody@openclaw")
    url = await approval_url(child)
    async with browser() as http:
        status, _ = await answer(http, url, "alice@example.com", "approve")
    assert status == 403
    out, code = await finish(child)
    assert "not allowed by policy for route openclaw" in out and code != 0
    assert door.sshd.connections() == 0


async def test_approval_urls_work_once(door: Door) -> None:
    child = door.client.spawn(f"{LOGIN}@openclaw", "true")
    url = await approval_url(child)
    async with browser() as http:
        status, _ = await answer(http, url, "alice@example.com", "approve")
        assert status == 200
        _, code = await finish(child)
        assert code == 0
        # Replayed: the page and the button both say it is gone, nothing changes.
        async with http.get(url) as again:
            assert again.status == 410
        async with http.post(url, data={"csrf": "x", "action": "approve"}) as again:
            assert again.status in (403, 410)

    # A link with a forged code is not found.
    async with browser() as http:
        page = await login(http, url[:-4] + "AAAA", "alice@example.com", "alice-password")
        assert page.status == 410


async def test_an_unanswered_approval_expires(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    parts = door_parts(idp, upstream, tmp_path, ssh_approval_timeout="3s")
    async with parts as (config, sshd, client), running_gate(config, tmp_path):
        child = client.spawn(f"{LOGIN}@openclaw", "true")
        url = await approval_url(child)
        out, code = await finish(child, timeout=30)
        assert "not approved in time" in out and code != 0
        # Its link is spent: signing in afterwards approves nothing.
        async with browser() as http:
            page = await login(http, url, "alice@example.com", "alice-password")
            assert page.status == 410
    assert sshd.connections() == 0


async def test_sign_out_ends_the_ssh_session(door: Door) -> None:
    child = door.client.spawn(f"{LOGIN}@openclaw")
    url = await approval_url(child)
    async with browser() as http:
        status, _ = await answer(http, url, "alice@example.com", "approve")
        assert status == 200
        await expect(child, PROMPT)
        child.sendline("echo still-here")
        await expect(child, "still-here")
        async with http.get(f"{door.gate.url}/.clawgate/user") as me:
            csrf = (await me.json())["csrf"]
        async with http.post(
            f"{door.gate.url}/.clawgate/sign_out",
            data={"csrf": csrf},
            headers={"Origin": door.gate.url},
            allow_redirects=False,
        ) as out:
            assert out.status == 302
    text, _ = await finish(child)
    assert "clawgate: signed out" in text
    # The remembered key went with the session: the next ssh asks the browser again.
    again = door.client.spawn(f"{LOGIN}@openclaw", "true")
    await approval_url(again)
    again.terminate(force=True)


async def test_a_policy_change_ends_the_ssh_session(door: Door) -> None:
    child = door.client.spawn(f"{LOGIN}@openclaw")
    url = await approval_url(child)
    async with browser() as http:
        status, _ = await answer(http, url, "alice@example.com", "approve")
        assert status == 200
    await expect(child, PROMPT)
    config = dict(door.config)
    routes = [dict(r) for r in config["routes"]]
    routes[1]["policy"] = [{"allow": {"and": [{"email": {"is": "bob@example.com"}}]}}]
    config["routes"] = routes
    door.gate.write(config)
    text, _ = await finish(child, timeout=30)
    assert "clawgate: not allowed by policy for route openclaw" in text


async def test_wrong_ca_is_a_clear_failure(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    other_ca = init_ca(tmp_path / "other_ca")
    async with door_parts(idp, upstream, tmp_path, sshd_trusts=other_ca) as (config, _, client):
        async with running_gate(config, tmp_path):
            child = client.spawn(f"{LOGIN}@openclaw", "true")
            url = await approval_url(child)
            async with browser() as http:
                status, _ = await answer(http, url, "alice@example.com", "approve")
                assert status == 200
            out, code = await finish(child)
    assert code != 0
    assert "refused clawgate's certificate" in out, out


async def test_host_key_is_the_same_after_a_restart(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    async with door_parts(idp, upstream, tmp_path) as (config, _, client):
        for run in range(2):
            async with running_gate(config, tmp_path):
                # First run: accept-new records the key; second: it must match exactly.
                child = client.spawn(
                    f"{LOGIN}@openclaw", "true", strict="accept-new" if run == 0 else "yes"
                )
                await approval_url(child)
                child.terminate(force=True)
                assert "HOST IDENTIFICATION HAS CHANGED" not in transcript(child)
    assert client.known_hosts.read_text().count("ssh-ed25519") == 1


async def test_revoking_the_user_ends_the_ssh_session(door: Door) -> None:
    child = door.client.spawn(f"{LOGIN}@openclaw")
    url = await approval_url(child)
    async with browser() as http:
        status, _ = await answer(http, url, "alice@example.com", "approve")
        assert status == 200
    await expect(child, PROMPT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.cli", "sessions", "revoke",
        "--user", "alice@example.com", "--config", str(door.gate.path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text, _ = await finish(child)
    assert "clawgate: signed out" in text


async def test_session_expiry_ends_the_ssh_session(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    async with door_parts(idp, upstream, tmp_path, cookie_expire="7s") as (config, _, client):
        async with running_gate(config, tmp_path):
            child = client.spawn(f"{LOGIN}@openclaw")
            url = await approval_url(child)
            async with browser() as http:
                status, _ = await answer(http, url, "alice@example.com", "approve")
                assert status == 200
            await expect(child, PROMPT)
            text, _ = await finish(child, timeout=40)
    assert "clawgate: session expired" in text
