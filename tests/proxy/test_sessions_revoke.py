"""``clawgate sessions revoke`` with the memory store: the running process group (two
workers here) signs the user out, closes their WebSockets with 1008 in every worker,
and refuses requests it cannot verify."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from proxy.revoke_request import PATH, SIGNATURE_HEADER, RevokeRequestError, read, sign
from proxy.store import Revocation
from tests.support.gate import (
    COOKIE_SECRET,
    JSON,
    GateProcess,
    base_config,
    client_session,
    register_client,
)
from tests.support.idp import ALICE, TestIdP, login
from tests.support.upstream import Upstream, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_signed_requests_only() -> None:
    wanted = Revocation("user", "alice@example.com", 1000, 9000)
    body, signature = sign(wanted, COOKIE_SECRET, 1000)
    assert read(body, signature, ["other", COOKIE_SECRET], 1030) == wanted
    for args, problem in [
        ((body, signature, ["another secret"], 1000), "bad signature"),
        ((body, "0" * 64, [COOKIE_SECRET], 1000), "bad signature"),
        ((body.replace(b"alice", b"alicf"), signature, [COOKIE_SECRET], 1000), "bad signature"),
        ((body, signature, [COOKIE_SECRET], 1061), "stale"),
        ((body, signature, [COOKIE_SECRET], 939), "stale"),
    ]:
        try:
            read(*args)  # type: ignore[arg-type]
        except RevokeRequestError as exc:
            assert str(exc) == problem
        else:
            raise AssertionError(f"accepted: {problem}")
    session_body, session_sig = sign(Revocation("session", "sid", 0, 9000), COOKIE_SECRET, 1000)
    try:
        read(session_body, session_sig, [COOKIE_SECRET], 1000)
    except RevokeRequestError as exc:
        assert str(exc) == "malformed"  # only users and everyone are asked for this way
    else:
        raise AssertionError("a session id was accepted")


async def test_revoke_user_in_every_worker(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp, workers=2, log_format="json")
    gate = GateProcess(config, tmp_path)
    await asyncio.to_thread(gate.start)
    try:
        async with client_session() as browser:
            await login(browser, f"{gate.url}/", ALICE.username, ALICE.password)
            cookie = "; ".join(f"{c.key}={c.value}" for c in browser.cookie_jar
                               if c.key.startswith("__Host-_clawgate"))
            sockets = []
            for _ in range(12):  # separate connections: spread over both workers
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False))
                ws = await session.ws_connect(f"{gate.url}/ws", origin=gate.url,
                                              headers={"Cookie": cookie})
                sockets.append((session, ws))
            health = f"http://{config['health_address']}{PATH}"
            # A forged request changes nothing.
            body, _ = sign(Revocation("user", "alice@example.com", int(time.time()),
                                      int(time.time()) + 3600), COOKIE_SECRET, int(time.time()))
            async with aiohttp.ClientSession() as client, client.post(
                health, data=body, headers={SIGNATURE_HEADER: "0" * 64}
            ) as r:
                assert r.status == 403 and (await r.json())["error"] == "bad signature"
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=False, force_close=True)
            ) as fresh, fresh.get(f"{gate.url}/x", headers={"Cookie": cookie, **JSON}) as r:
                assert r.status == 200

            started = time.monotonic()
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "proxy.cli", "sessions", "revoke",
                 "--user", "alice@example.com", "--config", str(gate.path)],
                capture_output=True, text=True, cwd=ROOT, timeout=30,
            )
            assert done.returncode == 0, done.stderr
            assert "refused by the running process group" in done.stdout
            codes = []
            for session, ws in sockets:
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.CLOSE
                codes.append(ws.close_code)
                await session.close()
            assert codes == [1008] * 12
            assert time.monotonic() - started < 10
            for _ in range(8):
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=False, force_close=True)
                ) as fresh, fresh.get(f"{gate.url}/x", headers={"Cookie": cookie, **JSON}) as r:
                    assert r.status == 401
        lines = [json.loads(raw) for raw in gate.log_text().splitlines() if raw.strip()]
        closing = {x.get("worker") for x in lines if x.get("event") == "websocket_closed_by_clawgate"}
        assert closing == {0, 1}
        assert any(x.get("event") == "sessions_revoke_refused" for x in lines)
    finally:
        await asyncio.to_thread(gate.stop)


def test_without_a_running_clawgate_it_says_so(tmp_path: Path) -> None:
    config = base_config(free_port(), "http://127.0.0.1:1", idp=None,
                         route={"allow_public_unauthenticated_access": True, "policy": None})
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "sessions", "revoke", "--all", "--config", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )
    assert done.returncode == 1
    assert "cannot reach the running clawgate" in done.stderr
