"""Live reload and continuous authorization of open WebSockets."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import aiohttp

from tests.support.gate import Gate, base_config, client_session, register_client, running_gate
from tests.support.idp import ALICE, BOB, TestIdP, login
from tests.support.upstream import Upstream, free_port


async def _wait_for(predicate, timeout: float = 6.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def _health(gate: Gate) -> dict:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as s, s.get(
        f"http://{gate.config['health_address']}/readyz"
    ) as r:
        return await r.json()  # type: ignore[no-any-return]


async def test_policy_change_applies_live_and_closes_no_longer_allowed_websockets(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as alice, client_session() as bob:
        await login(alice, f"{gate.url}/", ALICE.username, ALICE.password)
        await login(bob, f"{gate.url}/", BOB.username, BOB.password)
        ws_alice = await alice.ws_connect(f"{gate.url}/ws", origin=gate.url)
        ws_bob = await bob.ws_connect(f"{gate.url}/ws", origin=gate.url)
        await ws_bob.send_str("ping")
        assert await ws_bob.receive_str(timeout=5) == "ping"

        # New policy: only alice. Bob's open WebSocket must be closed with 1008.
        config = copy.deepcopy(gate.config)
        config["routes"][0]["policy"] = [{"allow": {"or": [{"email": {"is": "alice@example.com"}}]}}]
        gate.write(config)
        msg = await ws_bob.receive(timeout=8)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws_bob.close_code == 1008
        assert "policy" in (msg.extra or "")
        # Alice's connection, still allowed, stays open and working.
        await ws_alice.send_str("still here")
        assert await ws_alice.receive_str(timeout=5) == "still here"
        # HTTP follows the new policy too, without a restart.
        async with bob.get(f"{gate.url}/x", headers={"Accept": "application/json"}) as r:
            assert r.status == 403
        health = await _health(gate)
        assert health["config_generation"] == 2
        assert health["config_on_disk_in_force"] is True
        await ws_alice.close()


async def test_broken_config_keeps_last_good_and_reports_it(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as alice:
        await login(alice, f"{gate.url}/", ALICE.username, ALICE.password)
        ws = await alice.ws_connect(f"{gate.url}/ws", origin=gate.url)
        good = gate.path.read_text()
        # A policy with a typo in a criterion: refused, old config stays.
        assert "- email:" in good
        gate.path.write_text(good.replace("- email:", "- emial:", 1))

        async def reported() -> bool:
            return (await _health(gate))["config_on_disk_in_force"] is False

        await _wait_for(reported)
        health = await _health(gate)
        assert "emial" in health["config_error"]
        assert ":" in health["config_error"]  # file:line
        assert health["config_generation"] == 1
        async with alice.get(f"{gate.url}/still-works") as r:
            assert r.status == 200
        await ws.send_str("alive")
        assert await ws.receive_str(timeout=5) == "alive"
        # Garbage, then a deleted file: still the last good config.
        gate.path.write_text("{{{ not yaml")
        await asyncio.sleep(1.5)
        gate.path.unlink()
        await asyncio.sleep(1.5)
        async with alice.get(f"{gate.url}/still-works") as r:
            assert r.status == 200
        # A good file again is picked up.
        gate.path.write_text(good)

        async def healed() -> bool:
            return (await _health(gate))["config_on_disk_in_force"] is True

        await _wait_for(healed)
        await ws.close()


async def test_listener_and_secret_changes_need_restart(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as alice:
        await login(alice, f"{gate.url}/", ALICE.username, ALICE.password)
        config = copy.deepcopy(gate.config)
        config["cookie_secret"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        config["routes"][0]["set_request_headers"] = {"X-Generation": "two"}
        gate.write(config)

        async def applied() -> bool:
            return (await _health(gate))["config_generation"] == 2

        await _wait_for(applied)
        health = await _health(gate)
        assert health["needs_restart"] == ["cookie_secret"]
        assert health["config_on_disk_in_force"] is False
        # The route change applied; the old secret still decodes the existing session.
        async with alice.get(f"{gate.url}/echo") as r:
            assert r.status == 200
            seen = json.loads(await r.text())
        assert seen["headers"]["X-Generation"] == "two"


async def test_session_expiry_closes_websocket(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp, cookie_expire="3s")
    async with running_gate(config, tmp_path) as gate, client_session() as alice:
        await login(alice, f"{gate.url}/", ALICE.username, ALICE.password)
        ws = await alice.ws_connect(f"{gate.url}/ws", origin=gate.url)
        msg = await ws.receive(timeout=15)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
        assert msg.extra == "session expired"
