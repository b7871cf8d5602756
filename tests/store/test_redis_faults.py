"""The Redis store when Redis fails: cut off, restarted, stopped, refusing, untrusted."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, MutableMapping
from typing import Any

import pytest

from proxy.store import StoreError
from proxy.store._redis import RedisStore
from tests.store.conftest import MakeStore, eventually, revocation
from tests.support.redis import RedisServer


async def test_replica_cut_off_during_a_sign_out_catches_up(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    # B connects as its own user, so it alone can be cut off (and kept off) while A
    # stays connected and signs someone out.
    await redis_server.command("ACL", "SETUSER", "replica-b", "on", ">b-pass", "~*", "&*", "+@all")
    a, _ = await make_store(redis_server.url)
    b, b_seen = await make_store(redis_server.url_with("b-pass", user="replica-b"))
    before = revocation("before@example.com")
    await a.revoke(before)
    await eventually(lambda: before in b_seen.revocations, what="B following")

    await redis_server.command("ACL", "SETUSER", "replica-b", "off")
    await redis_server.command("CLIENT", "KILL", "USER", "replica-b")
    await eventually(lambda: not b.healthy, what="B unhealthy")
    missed = revocation("missed@example.com")
    await a.revoke(missed)
    await asyncio.sleep(0.3)
    assert missed not in b_seen.revocations  # really cut off
    assert not b.healthy
    b_seen.revocations.clear()

    await redis_server.command("ACL", "SETUSER", "replica-b", "on")
    await eventually(lambda: b.healthy, what="B healthy again")
    # From the set, at reconnect: the stream point it resumed from is past it.
    assert sorted(r.subject for r in b_seen.revocations) == [
        "before@example.com",
        "missed@example.com",
    ]
    after = revocation("after@example.com")
    await a.revoke(after)
    await eventually(lambda: after in b_seen.revocations, within=1.0, what="live again")


async def test_server_restart_keeps_the_replicas_following(make_store: MakeStore) -> None:
    async with RedisServer(persist=True) as server:
        a, _ = await make_store(server.url)
        b, b_seen = await make_store(server.url)
        before = revocation("before@example.com")
        await a.revoke(before)
        await eventually(lambda: before in b_seen.revocations, what="B following")
        b_seen.revocations.clear()

        await server.stop()
        await eventually(lambda: not a.healthy and not b.healthy, what="both unhealthy")
        with pytest.raises(StoreError):
            await a.revoke(revocation("nowhere@example.com"))
        await server.restart()
        await eventually(lambda: a.healthy and b.healthy, what="both healthy again")
        assert b_seen.revocations == [before]  # all of them again, after a reconnect

        after = revocation("after@example.com")
        await a.revoke(after)
        await eventually(lambda: after in b_seen.revocations, within=1.0, what="live again")
        assert await b.consume_once("once", 5)


async def test_stopped_server_fails_every_call_quickly(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    a, a_seen = await make_store(redis_server.url)
    redis_server.pause()
    try:
        timings = await asyncio.gather(
            failing(a.revoke(revocation("x@example.com"))),
            failing(a.consume_once("k", 5)),
            failing(a.get("k")),
            failing(a.put("k", b"v", 5)),
            failing(a.revocations()),
            locking(a, wait=0.2),
            charging(a),
        )
        assert all(t < 3.0 for t in timings), timings
        await eventually(lambda: not a.healthy, within=5.0, what="unhealthy")
        started = time.monotonic()
        await a.charge({"ip": {"192.0.2.1": 1}})  # dropped at once now
        assert time.monotonic() - started < 0.1
    finally:
        redis_server.resume()
    await eventually(lambda: a.healthy, within=5.0, what="healthy again")
    assert await a.consume_once("fresh", 5)
    await a.put("k2", b"v2", 5)
    assert await a.get("k2") == b"v2"
    async with a.lock("l", ttl=5, wait=1) as held:
        assert held
    r = revocation("after@example.com")
    await a.revoke(r)
    await eventually(lambda: r in a_seen.revocations, what="delivered")


async def failing(call: Awaitable[object]) -> float:
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        await call
    assert "127.0.0.1:" in str(caught.value)
    return time.monotonic() - started


async def locking(store: RedisStore, wait: float) -> float:
    started = time.monotonic()
    async with store.lock("l", ttl=5, wait=wait) as held:
        assert not held
    return time.monotonic() - started


async def charging(store: RedisStore) -> float:
    started = time.monotonic()
    await store.charge({"ip": {"192.0.2.1": 1}})
    return time.monotonic() - started


PASSWORD = "Sup3r-s3cret/p@ss word"


async def test_password(
    make_store: MakeStore,
    store_logs: list[MutableMapping[str, Any]],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    async with RedisServer(password=PASSWORD) as server:
        good, good_seen = await make_store(server.url)
        r = revocation("dave@example.com")
        await good.revoke(r)
        await eventually(lambda: r in good_seen.revocations, what="delivered")
        assert await good.consume_once("k", 5)

        errors: list[StoreError] = []
        for url in (server.url_with(PASSWORD + "-wrong"), server.url_with(None)):
            bad, bad_seen = await make_store(url, wait_healthy=False)
            await asyncio.sleep(0.5)
            assert not bad.healthy
            for call in (bad.revoke(r), bad.consume_once("k2", 5), bad.get("k"), bad.revocations()):
                with pytest.raises(StoreError) as caught:
                    await call
                errors.append(caught.value)
            async with bad.lock("l", ttl=5, wait=0.2) as held:
                assert not held
            await bad.charge({"ip": {"k": 1}})
            assert bad_seen.revocations == []
            await bad.aclose()
            assert not bad.healthy

    assert any(line["event"] == "store_unreachable" for line in store_logs)
    said = [
        *("".join(traceback.format_exception(e)) for e in errors),
        *(repr(e) for e in errors),
        repr(store_logs),
        caplog.text,
        *capsys.readouterr(),
    ]
    assert any("WRONGPASS" in s or "NOAUTH" in s or "Authentication" in s for s in said)
    for secret in (PASSWORD, "Sup3r-s3cret", "Sup3r-s3cret%2Fp%40ss"):
        assert not any(secret in s for s in said), secret


async def test_tls(make_store: MakeStore) -> None:
    async with RedisServer(tls=True) as server:
        assert server.url.startswith("rediss://")
        a, _ = await make_store(server.url)
        _b, b_seen = await make_store(server.url)
        r = revocation("erin@example.com")
        await a.revoke(r)
        await eventually(lambda: r in b_seen.revocations, within=1.0, what="delivered over TLS")
        # Verification off, as the query asks: no CA needed.
        base = f"rediss://127.0.0.1:{server.port}"
        lax, _ = await make_store(f"{base}?ssl_cert_reqs=none")
        assert await lax.consume_once("k", 5)
        # Verification on and the test CA unknown: refused.
        strict, strict_seen = await make_store(base, wait_healthy=False)
        with pytest.raises(StoreError, match=r"SSL|certificate"):
            await strict.consume_once("k2", 5)
        await asyncio.sleep(0.3)
        assert not strict.healthy and strict_seen.revocations == []
        # Plain text to a TLS port: refused too, not hung.
        plain, _ = await make_store(f"redis://127.0.0.1:{server.port}", wait_healthy=False)
        started = time.monotonic()
        with pytest.raises(StoreError):
            await plain.get("k")
        assert time.monotonic() - started < 3


async def test_start_does_not_raise_when_redis_is_down(make_store: MakeStore) -> None:
    server = RedisServer()
    try:
        store, _seen = await make_store(server.url, wait_healthy=False)
        await asyncio.sleep(0.3)
        assert not store.healthy
        with pytest.raises(StoreError):
            await store.get("k")
        await server.start()
        await eventually(lambda: store.healthy, within=3.0, what="healthy once up")
        assert await store.get("k") is None
    finally:
        await server.close()
