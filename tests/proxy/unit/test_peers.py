"""Rate-limit reports between workers, over real UNIX datagram sockets in one process."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from structlog.testing import capture_logs

from proxy.peers import _REPORT_BYTES, REPORT_DELAY, Peers, _report_messages
from proxy.settings import RateLimit, RateLimits
from proxy.store import Revocation
from proxy.throttle import Throttle

LIMITS = RateLimits(
    sign_in_per_ip=None,
    proxy_per_ip=RateLimit(rate=0.001, burst=3),
    proxy_per_user=RateLimit(rate=0.001, burst=3),
)


def _worker(directory: Path, index: int) -> tuple[Peers, Throttle]:
    runtime: Any = SimpleNamespace(
        snapshot=SimpleNamespace(settings=SimpleNamespace(rate_limits=LIMITS)), revoke_hooks=[]
    )
    peers = Peers(runtime, directory, index)
    peers.start()
    throttle = Throttle()
    peers.share_limits(throttle)
    return peers, throttle


async def test_admissions_reach_the_sibling_and_garbage_changes_nothing(tmp_path: Path) -> None:
    a, throttle_a = _worker(tmp_path, 0)
    b, throttle_b = _worker(tmp_path, 1)  # not configured yet: the report configures it
    try:
        throttle_a.configure(LIMITS)
        now = asyncio.get_running_loop().time()
        assert throttle_a.check_ip(False, "192.0.2.1", now) == 0.0
        assert throttle_a.check_ip(False, "192.0.2.1", now) == 0.0
        assert throttle_a.check_user("alice", now) == 0.0
        await asyncio.sleep(REPORT_DELAY * 5)
        assert throttle_a.take_admitted() == {}  # reported
        # Two of the address's three went through a; b has one left.
        assert throttle_b.check_ip(False, "192.0.2.1", now) == 0.0
        assert throttle_b.check_ip(False, "192.0.2.1", now) > 0
        assert throttle_b.check_user("alice", now) == 0.0

        # Malformed or hostile reports are dropped whole.
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        for doc in (
            {"admitted": {"proxy_per_user": {"bob": 2, "carol": -5}}},
            {"admitted": {"proxy_per_user": {"bob": 2, "carol": 10**9}}},
            {"admitted": {"proxy_per_user": {"bob": 2.5}}},
            {"admitted": {"proxy_per_user": {"bob": True}}},
            {"admitted": {"bogus": {"bob": 2}}},
            {"admitted": [1, 2]},
            {"admitted": {"proxy_per_user": ["bob"]}},
        ):
            sender.sendto(json.dumps(doc).encode(), str(tmp_path / "worker-1.sock"))
        sender.sendto(b"\xff not json", str(tmp_path / "worker-1.sock"))
        sender.close()
        await asyncio.sleep(REPORT_DELAY * 5)
        assert [throttle_b.check_user("bob", now) for _ in range(3)] == [0.0, 0.0, 0.0]
        assert throttle_b.check_user("bob", now) > 0
    finally:
        a.close()
        b.close()


async def test_a_large_report_is_split_into_datagrams(tmp_path: Path) -> None:
    a, throttle_a = _worker(tmp_path, 0)
    b, throttle_b = _worker(tmp_path, 1)
    try:
        throttle_a.configure(LIMITS)
        now = asyncio.get_running_loop().time()
        # Long subjects, so that the report takes several datagrams.
        users = [f"{'s' * 200}-{i:05d}" for i in range(1000)]
        for user in users:
            for _ in range(3):
                assert throttle_a.check_user(user, now) == 0.0
        await asyncio.sleep(REPORT_DELAY * 10)
        # Every one of the keys arrived with its count: b refuses them all.
        assert all(throttle_b.check_user(user, now) > 0 for user in users)
    finally:
        a.close()
        b.close()


def test_report_messages_stay_under_the_datagram_size() -> None:
    counts = {f"{'k' * 300}{i}": i + 1 for i in range(500)}
    messages = _report_messages("proxy_per_user", counts)
    assert len(messages) > 1 and all(len(m) <= _REPORT_BYTES for m in messages)
    merged: dict[str, int] = {}
    for message in messages:
        merged.update(json.loads(message)["admitted"]["proxy_per_user"])
    assert merged == counts
    assert _report_messages("proxy_per_ip", {"x" * 10_000: 1}) == []  # never a whole datagram


async def test_a_sibling_with_a_full_queue_still_gets_every_sign_out(tmp_path: Path) -> None:
    a, throttle_a = _worker(tmp_path, 0)
    # A sibling that does not read for a while: its queue (10 datagrams here) fills up.
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    slow.bind(str(tmp_path / "worker-1.sock"))
    slow.setblocking(False)
    try:
        throttle_a.configure(LIMITS)
        now = asyncio.get_running_loop().time()
        with capture_logs() as logs:
            for round_ in range(100):
                throttle_a.check_user(f"u{round_}", now)
                await asyncio.sleep(REPORT_DELAY * 1.5)
                if round_ == 50:
                    a.broadcast(Revocation("session", "sid-1", 0, 123))
        said = [x for x in logs if x["event"] == "peer_reports_dropped"]
        assert len(said) == 1 and said[0]["reports"] > 0  # said, and not once per report
        received, idle = [], 0
        while idle < 5:  # read until the outbox has nothing more to send
            try:
                received.append(json.loads(slow.recv(65536)))
                idle = 0
            except BlockingIOError:
                idle += 1
                await asyncio.sleep(REPORT_DELAY * 2)
        assert {"revocation": ["session", "sid-1", 0, 123]} in received
        reports = [m for m in received if "admitted" in m]
        # Some reports were dropped (more waited than are kept), none twice.
        assert 10 < len(reports) < 100
        users = [next(iter(m["admitted"]["proxy_per_user"])) for m in reports]
        assert len(users) == len(set(users))
    finally:
        a.close()
        slow.close()
