"""The Redis store through Sentinel: one master, one sentinel (Debian's redis-server
runs as a sentinel with ``--sentinel``)."""

from __future__ import annotations

import time

from proxy.store import StoreError
from tests.store.conftest import MakeStore, eventually, revocation
from tests.support.redis import RedisServer

SERVICE = "clawgate-master"


async def test_sentinel(make_store: MakeStore) -> None:
    password = "sentinel-test-pw"
    async with (
        RedisServer(password=password) as master,
        RedisServer(sentinel_of=(SERVICE, master)) as sentinel,
    ):
        url = f"redis+sentinel://:{password}@127.0.0.1:{sentinel.port}/{SERVICE}/0"
        a, _ = await make_store(url)
        b, b_seen = await make_store(url)
        r = revocation("frank@example.com")
        await a.revoke(r)
        await eventually(lambda: r in b_seen.revocations, within=1.0, what="delivered")
        assert await a.consume_once("k", 5)
        assert not await b.consume_once("k", 5)
        # It is the master behind the sentinel that holds the state.
        assert await master.command("ZCARD", "clawgate:revocations") == 1

        unknown, _ = await make_store(
            f"redis+sentinel://:{password}@127.0.0.1:{sentinel.port}/no-such-service",
            wait_healthy=False,
        )
        started = time.monotonic()
        try:
            await unknown.get("k")
        except StoreError as e:
            assert password not in str(e)
        else:
            raise AssertionError("an unknown service must fail")
        assert time.monotonic() - started < 3
        assert not unknown.healthy
