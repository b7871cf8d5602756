"""API keys on the request path: a key made by `clawgate apikey create` calls a route
that allows keys, as the principal apikey:NAME; the key itself never reaches the
upstream; every refusal is JSON; revoking the key ends its requests and WebSockets."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.assertion import verify_assertion
from tests.support.gate import Gate, base_config, running_gate
from tests.support.upstream import Upstream, free_port

ROOT = Path(__file__).resolve().parents[2]
JSON_ONLY = {"Accept": "application/json"}


def apikey(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "apikey", *args, "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )


async def call(gate: Gate, path: str, key: str | None, **headers: str) -> tuple[int, Any, Any]:
    sent = dict(JSON_ONLY, **headers)
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=False, force_close=True)
    ) as client, client.get(f"{gate.url}{path}", headers=sent, allow_redirects=False) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body, r.headers


@pytest.fixture
async def keyed(upstream: Upstream, tmp_path: Path) -> Any:
    port = free_port()
    config = base_config(
        port, upstream.url, idp=None,
        api_keys_file="api_keys.yaml",
        route={
            "allow_api_keys": True,
            "policy": [{"allow": {"or": [{"user": {"is": "apikey:ci-bot"}},
                                         {"groups": {"has": "bots"}}]}}],
        },
        # The IdP is not needed: keys are the only way in here.
        idp_provider_url="http://127.0.0.1:9", idp_client_id="x", idp_client_secret="y",
    )
    async with running_gate(config, tmp_path) as gate:
        yield gate


async def test_a_key_calls_the_route_as_its_principal(
    keyed: Gate, upstream: Upstream, tmp_path: Path
) -> None:
    made = apikey(keyed.path, "create", "ci-bot", "--groups", "bots", "--expires", "90d")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("cgk_")
    await asyncio.sleep(1.5)  # the file is re-read like the config
    status, body, _ = await call(keyed, "/api/status", key)
    assert status == 200, body
    seen = upstream.seen.last()
    sent = {k.lower(): v for k, v in seen["headers"].items()}
    assert "authorization" not in sent  # the key never goes upstream
    assert key not in str(seen)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client, \
            client.get(f"{keyed.url}/.well-known/clawgate/jwks.json") as r:
        jwks = await r.json()
    claims = verify_assertion(sent["x-pomerium-jwt-assertion"], jwks, f"127.0.0.1:{keyed.port}")
    assert claims["sub"] == "apikey:ci-bot" and claims.get("groups") == ["bots"]
    assert "email" not in claims or not claims["email"]
    # The email header names the service principal (never an address).
    assert sent["x-pomerium-claim-email"] == "apikey:ci-bot"
    listed = apikey(keyed.path, "list")
    assert "ci-bot" in listed.stdout and key not in listed.stdout


async def test_refusals_are_json_never_a_sign_in(keyed: Gate) -> None:
    made = apikey(keyed.path, "create", "ci-bot", "--expires", "90d")
    key = made.stdout.strip().splitlines()[-1]
    await asyncio.sleep(1.5)
    typo = key[:-1] + ("a" if key[-1] != "a" else "b")
    unknown = apikey(keyed.path, "create", "other", "--expires", "90d").stdout.strip()
    apikey(keyed.path, "revoke", "other")
    await asyncio.sleep(1.5)
    for presented, error in [(typo, "invalid_api_key"), (unknown, "invalid_api_key"),
                             ("cgk_short", "invalid_api_key")]:
        status, body, headers = await call(keyed, "/x", presented)
        assert status == 401 and body["error"] == error, (presented, body)
        assert "Location" not in headers
    # No key at all: the usual anonymous answer for an API client (JSON 401).
    status, body, _ = await call(keyed, "/x", None)
    assert status == 401 and isinstance(body, dict)


async def test_a_key_another_policy_does_not_name_is_denied(keyed: Gate) -> None:
    made = apikey(keyed.path, "create", "stranger", "--expires", "1d")
    key = made.stdout.strip().splitlines()[-1]
    await asyncio.sleep(1.5)
    status, body, _ = await call(keyed, "/x", key)
    assert status == 403 and body["error"] == "forbidden"


async def test_per_key_rate_limit(keyed: Gate) -> None:
    made = apikey(keyed.path, "create", "ci-bot", "--rate", "1/s:3", "--expires", "1d")
    key = made.stdout.strip().splitlines()[-1]
    await asyncio.sleep(1.5)
    statuses = [(await call(keyed, "/x", key))[0] for _ in range(6)]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    _, _, headers = await call(keyed, "/x", key)
    assert int(headers.get("Retry-After", "0")) >= 1


async def test_revoking_a_key_ends_its_requests_and_websockets(keyed: Gate) -> None:
    made = apikey(keyed.path, "create", "ci-bot", "--expires", "1d")
    key = made.stdout.strip().splitlines()[-1]
    await asyncio.sleep(1.5)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
        ws = await client.ws_connect(f"{keyed.url}/ws", origin=keyed.url,
                                     headers={"Authorization": f"Bearer {key}"})
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "hi"
        assert apikey(keyed.path, "revoke", "ci-bot").returncode == 0
        started = time.monotonic()
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
        assert time.monotonic() - started < 4  # the reload's poll, then at once
    status, body, _ = await call(keyed, "/x", key)
    assert status == 401


async def test_a_route_that_does_not_allow_keys(upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    config = base_config(port, upstream.url, idp=None, api_keys_file="api_keys.yaml",
                         route={"allow_public_unauthenticated_access": True, "policy": None},
                         )
    async with running_gate(config, tmp_path) as gate:
        key = apikey(gate.path, "create", "ci-bot", "--expires", "1d").stdout.strip()
        await asyncio.sleep(1.5)
        status, body, _ = await call(gate, "/x", key)
        assert status == 401 and body["error"] == "api_keys_not_allowed"
        assert upstream.seen.requests == []
