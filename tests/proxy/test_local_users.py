"""Local users from an .htpasswd made by Debian's `htpasswd -B` (apache2-utils): the
sign-in form, Basic auth for scripts, and what they refuse."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.gate import Gate, base_config, running_gate
from tests.support.upstream import Upstream, free_port

HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json"}


def htpasswd(path: Path, user: str, password: str, *, create: bool = False) -> None:
    tool = shutil.which("htpasswd")
    if tool is None:
        pytest.fail("htpasswd not found: apt-get install apache2-utils (scripts/setup --full)")
    flags = "-cbB" if create else "-bB"
    subprocess.run([tool, flags, "-C", "10", str(path), user, password], check=True,
                   capture_output=True)


@pytest.fixture
async def gate(upstream: Upstream, tmp_path: Path) -> Any:
    users = tmp_path / "users.htpasswd"
    htpasswd(users, "alice@example.com", "correct horse", create=True)
    htpasswd(users, "bob", "bob's password")
    port = free_port()
    config = base_config(
        port, upstream.url, idp=None, htpasswd_file=str(users),
        htpasswd_groups={"bob": ["operators"]},
        route={"allow_basic_auth": True,
               "policy": [{"allow": {"or": [{"email": {"is": "alice@example.com"}},
                                            {"groups": {"has": "operators"}}]}}]},
    )
    async with running_gate(config, tmp_path) as running:
        yield running


def browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 connector=aiohttp.TCPConnector(ssl=False))


async def form_sign_in(client: aiohttp.ClientSession, gate: Gate, user: str,
                       password: str) -> aiohttp.ClientResponse:
    async with client.get(f"{gate.url}/landing", headers=HTML) as r:
        page = await r.text()
        assert r.status == 200 and "<form" in page, page[:300]
    state = re.search(r'name=state value="([^"]+)"', page)
    back = re.search(r'name=redirect_uri value="([^"]+)"', page)
    assert state and back
    async with client.post(f"{gate.url}/.clawgate/sign_in", headers=HTML,
                           data={"state": state[1], "redirect_uri": back[1],
                                 "username": user, "password": password},
                           allow_redirects=False) as r:
        await r.read()
        return r


async def test_the_form_signs_a_local_user_in(gate: Gate, upstream: Upstream) -> None:
    async with browser() as client:
        answer = await form_sign_in(client, gate, "alice@example.com", "correct horse")
        assert answer.status == 302 and answer.headers["Location"] == "/landing"
        async with client.get(f"{gate.url}/landing", headers=JSON) as r:
            assert r.status == 200
        sent = {k.lower(): v for k, v in upstream.seen.last()["headers"].items()}
        assert sent["x-pomerium-claim-email"] == "alice@example.com"


async def test_wrong_password_and_unknown_user_read_the_same(gate: Gate) -> None:
    answers = []
    for user, password in (("alice@example.com", "wrong"), ("nobody@example.com", "wrong")):
        async with browser() as client:
            answer = await form_sign_in(client, gate, user, password)
            answers.append((answer.status, answer.reason))
    assert answers[0] == answers[1] == (401, "Unauthorized")


async def test_the_form_needs_its_state(gate: Gate) -> None:
    async with browser() as client, client.post(
        f"{gate.url}/.clawgate/sign_in", headers=HTML,
        data={"state": "x" * 32, "username": "bob", "password": "bob's password"},
        allow_redirects=False,
    ) as r:
        assert r.status == 403
        assert not any(c.key.startswith("__Host-_clawgate") and "_form_" not in c.key
                       for c in client.cookie_jar)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", **JSON}


async def test_basic_auth_for_scripts(gate: Gate, upstream: Upstream) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
        async with client.get(f"{gate.url}/api", headers=basic("bob", "bob's password")) as r:
            assert r.status == 200
        sent = {k.lower(): v for k, v in upstream.seen.last()["headers"].items()}
        assert "authorization" not in sent  # the password never goes upstream
        assert sent["x-clawgate-groups"] == "operators"  # bob is in by his group
        async with client.get(f"{gate.url}/api", headers=basic("bob", "nope")) as r:
            assert r.status == 401 and (await r.json())["error"] == "invalid_credentials"
            assert r.headers["WWW-Authenticate"].startswith("Basic")


async def test_guessing_is_slowed_down(gate: Gate) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
        statuses = []
        for i in range(8):
            async with client.get(f"{gate.url}/api", headers=basic("bob", f"guess{i}")) as r:
                statuses.append(r.status)
                retry = r.headers.get("Retry-After")
        assert statuses[:5] == [401] * 5 and statuses[-1] == 429 and retry is not None
        # The right password waits its turn too: no oracle while throttled.
        async with client.get(f"{gate.url}/api", headers=basic("bob", "bob's password")) as r:
            assert r.status == 429


async def test_basic_auth_needs_the_route_to_allow_it(upstream: Upstream, tmp_path: Path) -> None:
    users = tmp_path / "users.htpasswd"
    htpasswd(users, "bob", "pw", create=True)
    port = free_port()
    config = base_config(port, upstream.url, idp=None, htpasswd_file=str(users),
                         route={"policy": [{"allow": {"or": [{"user": {"is": "local:bob"}}]}}]})
    async with running_gate(config, tmp_path) as gate, aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=False)
    ) as client, client.get(f"{gate.url}/", headers=basic("bob", "pw")) as r:
        assert r.status == 401 and (await r.json())["error"] == "basic_auth_not_allowed"
