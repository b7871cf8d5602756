"""Three real ``clawgate serve`` replicas sharing one real redis-server, with the real
test IdP: what one replica learns (a sign-out, a consumed sign-in state, a user signed
out everywhere) holds on the others within a second, including one that was down.

The replicas stand behind one name, as behind a load balancer: each listens on its
own port, and clients send every request with the first replica's Host (and Origin),
which all three serve (same routes, same cookie secret and signing key).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from proxy.assertion import generate_signing_key
from tests.support.gate import JSON, GateProcess, base_config, client_session, register_client
from tests.support.idp import ALICE, TestIdP, login
from tests.support.redis import RedisServer
from tests.support.upstream import Upstream, free_port

ROOT = Path(__file__).resolve().parents[2]


class Replicas:
    def __init__(self, idp: TestIdP, upstream: Upstream, redis: RedisServer, tmp: Path) -> None:
        self.port = free_port()  # the name clients use: the first replica's
        register_client(idp, self.port)
        self.signing_key = generate_signing_key()
        self.tmp = tmp
        self.idp, self.upstream, self.redis = idp, upstream, redis
        self.gates: list[GateProcess] = []
        self.overrides: dict[str, Any] = {}

    def config(self, port: int) -> dict[str, Any]:
        config = base_config(
            self.port,
            self.upstream.url,
            idp=self.idp,
            signing_key=self.signing_key,
            databroker_storage_type="redis",
            databroker_storage_connection_string=self.redis.url,
            log_format="json",
            log_level="info",
            **self.overrides,
        )
        config["address"] = f"127.0.0.1:{port}"
        config["health_address"] = f"127.0.0.1:{free_port()}"
        return config

    async def start(self, count: int = 3) -> None:
        for index in range(count):
            directory = self.tmp / f"replica-{index}"
            directory.mkdir()
            gate = GateProcess(self.config(self.port if index == 0 else free_port()), directory)
            await asyncio.to_thread(gate.start)
            self.gates.append(gate)

    async def stop(self) -> None:
        for gate in self.gates:
            await asyncio.to_thread(gate.stop)

    def url(self, index: int) -> str:
        return f"https://127.0.0.1:{self.gates[index].port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    async with RedisServer() as server:
        yield server


@pytest.fixture
async def replicas(
    idp: TestIdP, upstream: Upstream, redis: RedisServer, tmp_path: Path
) -> AsyncIterator[Replicas]:
    group = Replicas(idp, upstream, redis, tmp_path)
    try:
        await group.start()
        yield group
    finally:
        await group.stop()


def session_cookie(browser: aiohttp.ClientSession) -> str:
    return "; ".join(
        f"{c.key}={c.value}" for c in browser.cookie_jar if c.key.startswith("__Host-_clawgate")
    )


async def status_on(replicas: Replicas, index: int, cookie: str) -> int:
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False, force_close=True)
        ) as client,
        client.get(
            f"{replicas.url(index)}/x", headers={"Cookie": cookie, "Host": replicas.host, **JSON}
        ) as r,
    ):
        return r.status


async def websocket_on(
    replicas: Replicas, index: int, cookie: str
) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False))
    ws = await client.ws_connect(
        f"{replicas.url(index)}/ws",
        origin=f"https://{replicas.host}",
        headers={"Cookie": cookie, "Host": replicas.host},
    )
    await ws.send_str("hello")
    assert (await ws.receive(timeout=5)).data == "hello"
    return client, ws


async def closed_within(ws: aiohttp.ClientWebSocketResponse, limit: float) -> float:
    started = time.monotonic()
    msg = await ws.receive(timeout=limit + 2)
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    assert ws.close_code == 1008
    return time.monotonic() - started


async def refused_within(replicas: Replicas, index: int, cookie: str, limit: float) -> float:
    started = time.monotonic()
    while True:
        status = await status_on(replicas, index, cookie)
        elapsed = time.monotonic() - started
        if status == 401:
            return elapsed
        assert status == 200
        assert elapsed < limit, f"replica {index} still admits the session after {elapsed:.2f} s"
        await asyncio.sleep(0.05)


async def signed_in(replicas: Replicas) -> tuple[aiohttp.ClientSession, str]:
    browser = client_session()
    await login(browser, f"{replicas.url(0)}/", ALICE.username, ALICE.password)
    cookie = session_cookie(browser)
    assert cookie
    for index in range(len(replicas.gates)):
        assert await status_on(replicas, index, cookie) == 200
    return browser, cookie


async def sign_out(replicas: Replicas, cookie: str, index: int = 0) -> None:
    """Sign out through replica ``index`` as the browser would (its CSRF token, a POST)."""
    headers = {"Cookie": cookie, "Host": replicas.host}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
        async with client.get(
            f"{replicas.url(index)}/.clawgate/user", headers={**headers, **JSON}
        ) as r:
            csrf = (await r.json())["csrf"]
        async with client.post(
            f"{replicas.url(index)}/.clawgate/sign_out", data={"csrf": csrf},
            headers=headers, allow_redirects=False,
        ) as r:
            assert r.status == 302


async def test_sign_out_on_one_replica_holds_on_all(replicas: Replicas) -> None:
    browser, cookie = await signed_in(replicas)
    async with browser:
        client, ws = await websocket_on(replicas, 2, cookie)
        try:
            await sign_out(replicas, cookie)
            closing = asyncio.ensure_future(closed_within(ws, 1.0))
            assert await refused_within(replicas, 1, cookie, 1.0) < 1.0
            assert await closing < 1.0
        finally:
            await client.close()


async def test_sessions_revoke_user_ends_them_everywhere(replicas: Replicas) -> None:
    browser, cookie = await signed_in(replicas)
    async with browser:
        client, ws = await websocket_on(replicas, 1, cookie)
        try:
            closing = asyncio.ensure_future(closed_within(ws, 1.0))
            done = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "proxy.cli",
                    "sessions",
                    "revoke",
                    "--user",
                    "alice@example.com",
                    "--config",
                    str(replicas.gates[0].path),
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            assert "signed out alice@example.com" in done.stdout
            assert await closing < 1.5
            for index in range(3):
                assert await refused_within(replicas, index, cookie, 1.0) < 1.0
        finally:
            await client.close()
    # A sign-in after the revocation is a new session, and it works (a second later:
    # the mark covers every session issued up to its second).
    await asyncio.sleep(1.1)
    browser, cookie = await signed_in(replicas)
    await browser.close()
    listed = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "proxy.cli",
            "sessions",
            "list",
            "--config",
            str(replicas.gates[0].path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    assert "alice@example.com: sessions issued up to" in listed.stdout


async def test_a_callback_consumed_on_one_replica_is_refused_on_another(
    replicas: Replicas,
) -> None:
    async with client_session() as browser:
        redirect = await login(
            browser,
            f"{replicas.url(0)}/",
            ALICE.username,
            ALICE.password,
            stop_at=f"https://{replicas.host}/.clawgate/callback",
        )
        callback = redirect.headers["Location"]
        login_cookies = "; ".join(
            f"{c.key}={c.value}" for c in browser.cookie_jar if "_login_" in c.key
        )
        assert login_cookies
        target = urlsplit(callback)
        path = f"{target.path}?{target.query}"

        async def redeem(index: int) -> tuple[int, str]:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client,
                client.get(
                    f"{replicas.url(index)}{path}",
                    allow_redirects=False,
                    headers={"Cookie": login_cookies, "Host": replicas.host},
                ) as r,
            ):
                return r.status, await r.text()

        status, _ = await redeem(0)
        assert status == 302
        status, page = await redeem(1)
        assert status == 400 and "state_replayed" in page

    async def logged() -> bool:  # the log reaches its file a moment later
        return '"reason":"state_replayed"' in replicas.gates[1].log_text()

    await eventually(logged, 3.0, "the replay's reason in replica 1's log")


async def test_a_replica_that_was_down_catches_up(replicas: Replicas) -> None:
    browser, cookie = await signed_in(replicas)
    async with browser:
        await asyncio.to_thread(replicas.gates[1].stop)
        await sign_out(replicas, cookie)
        gate = replicas.gates[1]
        restarted = GateProcess(gate.config, gate.path.parent)
        await asyncio.to_thread(restarted.start)
        replicas.gates[1] = restarted
        # Serving as soon as it listens; the sign-outs in force are loaded by then or
        # a moment later, never missed.
        assert await refused_within(replicas, 1, cookie, 1.0) < 1.0


async def test_one_refresh_for_a_session_expired_on_two_replicas_at_once(
    idp_clean: TestIdP, upstream: Upstream, redis: RedisServer, tmp_path: Path
) -> None:
    """The provider rotates refresh tokens (spending one twice revokes the grant): two
    replicas receiving the same expired session at the same moment refresh it once, and
    the user stays signed in on both."""
    idp = idp_clean
    idp.set_config(id_token_ttl_seconds=2, access_token_ttl_seconds=2)
    group = Replicas(idp, upstream, redis, tmp_path)
    group.overrides = {"idp_clock_leeway": "0s"}
    try:
        await group.start(2)
        browser, cookie = await signed_in(group)
        await browser.close()
        await asyncio.sleep(3)  # the ID token has expired: the next request refreshes
        before = idp.stats().get("token", 0)
        statuses = await asyncio.gather(
            *(status_on(group, i % 2, cookie) for i in range(12))
        )
        assert statuses == [200] * 12
        assert idp.stats().get("token", 0) - before == 1
    finally:
        await group.stop()
        idp.set_config(id_token_ttl_seconds=3600, access_token_ttl_seconds=3600)


async def test_a_rate_limit_holds_for_the_deployment(
    idp: TestIdP, upstream: Upstream, redis: RedisServer, tmp_path: Path
) -> None:
    """proxy_per_user at 20/s (burst 10) over three replicas, load spread over all three
    for 3 s: what they admit together is what one would, within 10% (plus what slips
    through in one report's delay)."""
    rate, burst, seconds = 20.0, 10, 3.0
    group = Replicas(idp, upstream, redis, tmp_path)
    group.overrides = {
        "rate_limits": {
            "sign_in_per_ip": None,
            "proxy_per_user": {"rate": rate, "burst": burst},
        }
    }
    try:
        await group.start(3)
        browser, cookie = await signed_in(group)
        await browser.close()
        await asyncio.sleep(burst / rate + 0.5)  # the sign-in's requests are paid back
        admitted = refused = 0
        clients = [
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) for _ in range(3)
        ]
        deadline = time.monotonic() + seconds

        async def hammer(index: int) -> None:
            nonlocal admitted, refused
            client = clients[index]
            while time.monotonic() < deadline:
                async with client.get(
                    f"{group.url(index)}/x",
                    headers={"Cookie": cookie, "Host": group.host, **JSON},
                ) as r:
                    await r.read()
                    if r.status == 200:
                        admitted += 1
                    else:
                        assert r.status == 429
                        refused += 1

        try:
            await asyncio.gather(*(hammer(i) for i in range(3)), *(hammer(i) for i in range(3)))
        finally:
            for client in clients:
                await client.close()
        allowed = burst + rate * seconds
        assert refused > admitted  # the load was well above the limit
        assert allowed * 0.9 <= admitted <= allowed * 1.1, (admitted, refused, allowed)
    finally:
        await group.stop()


async def readyz(gate: GateProcess) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as client, client.get(
        f"http://{gate.config['health_address']}/readyz"
    ) as r:
        return r.status, await r.json()


async def eventually(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.1)


async def test_redis_down_degrades_and_reconciles(replicas: Replicas) -> None:
    """Redis stopped (SIGSTOP), then killed and restarted empty: no request hangs, the
    sessions each replica knows keep working, new sign-ins are refused with a clear
    503, /readyz says so, a sign-out made meanwhile reaches the other replicas once
    Redis is back, and what each replica knew survives Redis losing its data."""
    browser, cookie = await signed_in(replicas)
    await browser.close()
    assert (await readyz(replicas.gates[0]))[1]["store"] == {"backend": "redis", "reachable": True}
    replicas.redis.pause()
    try:
        async def degraded() -> bool:
            status, body = await readyz(replicas.gates[1])
            return status == 200 and body["status"] == "degraded"

        await eventually(degraded, 6.0, "readyz reports the store unreachable")
        for index in range(3):  # served from what each replica knows, without waiting
            started = time.monotonic()
            assert await status_on(replicas, index, cookie) == 200
            assert time.monotonic() - started < 1.0
        # A new sign-in cannot have its single-use state guaranteed: refused, in bounded time.
        async with client_session() as other:
            started = time.monotonic()
            page = await login(other, f"{replicas.url(0)}/", ALICE.username, ALICE.password)
            assert page.status == 503 and "Sign-in unavailable" in await page.text()
            assert time.monotonic() - started < 10

        async def logged() -> bool:  # the log reaches its file a moment later
            return '"reason":"store_unavailable"' in replicas.gates[0].log_text()

        await eventually(logged, 3.0, "the refusal's reason in the log")
        # A sign-out on replica 0 while Redis is away: in force there at once.
        await sign_out(replicas, cookie)
        assert await status_on(replicas, 0, cookie) == 401
        assert await status_on(replicas, 1, cookie) == 200  # it cannot know yet
    finally:
        replicas.redis.resume()

    async def reconciled() -> bool:
        return all([await status_on(replicas, i, cookie) == 401 for i in range(3)])

    await eventually(reconciled, 5.0, "the sign-out made during the outage reached every replica")

    async def ready() -> bool:
        return (await readyz(replicas.gates[2]))[1]["status"] == "ok"

    await eventually(ready, 5.0, "readyz ok again")
    # Redis killed and restarted empty: the replicas reconnect and keep what they knew.
    await replicas.redis.restart()
    await eventually(ready, 10.0, "readyz ok after Redis lost its data")
    for index in range(3):
        assert await status_on(replicas, index, cookie) == 401
    for gate in replicas.gates:
        assert "Traceback" not in gate.log_text()


async def test_replicas_on_a_redis_with_tls_and_a_password(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    """The same sign-out everywhere over rediss:// with requirepass; the password never
    reaches a log."""
    async with RedisServer(password="correct horse battery", tls=True) as secured:
        group = Replicas(idp, upstream, secured, tmp_path)
        try:
            await group.start(2)
            browser, cookie = await signed_in(group)
            async with browser:
                client, ws = await websocket_on(group, 1, cookie)
                try:
                    await sign_out(group, cookie)
                    closing = asyncio.ensure_future(closed_within(ws, 1.0))
                    assert await refused_within(group, 1, cookie, 1.0) < 1.0
                    assert await closing < 1.0
                finally:
                    await client.close()
        finally:
            await group.stop()
        for gate in group.gates:
            assert "correct horse" not in gate.log_text()
            assert "store_connected" in gate.log_text()
