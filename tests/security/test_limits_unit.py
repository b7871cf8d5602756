"""The pure pieces behind rate limits and connection caps."""

from __future__ import annotations

import pytest

from proxy.connlimit import ConnectionCounter
from proxy.ratelimit import (
    MAX_DEBT_BURSTS,
    KeyedLimiter,
    TokenBucket,
    address_key,
    retry_after_header,
)
from proxy.settings import RateLimit, RateLimits
from proxy.throttle import Throttle


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0  # one token back after 1/rate seconds
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # capped at burst
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)


def test_keyed_limiter_separates_keys_and_bounds_memory() -> None:
    limiter = KeyedLimiter(rate=1.0, burst=1, max_keys=3)
    assert limiter.hit("a", 0.0) == 0.0
    assert limiter.hit("a", 0.0) > 0
    assert limiter.hit("b", 0.0) == 0.0
    for key in ("c", "d", "e"):
        limiter.hit(key, 0.0)
    assert len(limiter) == 3
    assert limiter.prune(10.0) == 3 and len(limiter) == 0


def test_retry_after_is_whole_seconds_never_zero() -> None:
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.2) == "2"


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("not an address", "not an address"),
    ],
)
def test_address_keys(address: str, key: str) -> None:
    assert address_key(address) == key


def test_connection_counter() -> None:
    counter = ConnectionCounter()
    assert counter.acquire("a", 2) and counter.acquire("a", 2)
    assert not counter.acquire("a", 2)
    assert counter.acquire("b", 2) and counter.total() == 3
    counter.release("a")
    assert counter.acquire("a", 2)
    counter.release("a")
    counter.release("a")
    counter.release("a")  # extra releases never go negative
    assert counter.count("a") == 0 and counter.acquire("x", None)


def test_spend_charges_what_siblings_admitted() -> None:
    bucket = TokenBucket(rate=1.0, burst=3, now=0.0)
    bucket.spend(2, 0.0)
    assert bucket.take(0.0) == 0.0  # one of three left
    assert bucket.take(0.0) == pytest.approx(1.0)
    bucket.spend(4, 0.0)  # a sibling admitted a burst of its own meanwhile: a debt
    assert bucket.tokens == pytest.approx(-4.0)
    assert bucket.take(4.0) == pytest.approx(1.0)  # refilled to 0 after 4 s, not yet 1
    assert bucket.take(5.0) == 0.0
    bucket.spend(10**6, 5.0)
    assert bucket.tokens == pytest.approx(-MAX_DEBT_BURSTS * 3)  # a bounded debt
    limiter = KeyedLimiter(rate=1.0, burst=2, max_keys=2)
    limiter.spend("a", 2, 0.0)
    assert limiter.hit("a", 0.0) > 0 and limiter.hit("b", 0.0) == 0.0


def test_throttle_reports_admissions_and_is_charged() -> None:
    throttle = Throttle()
    throttle.configure(
        RateLimits(
            sign_in_per_ip=RateLimit(rate=1.0, burst=2),
            proxy_per_ip=RateLimit(rate=1.0, burst=2),
            proxy_per_user=RateLimit(rate=1.0, burst=2),
        )
    )
    # Without siblings nothing is counted.
    assert throttle.check_ip(False, "192.0.2.1", 0.0) == 0.0
    assert throttle.take_admitted() == {}
    reports: list[int] = []
    throttle.share(lambda: reports.append(1))
    assert throttle.check_ip(False, "2001:db8::1", 0.0) == 0.0
    assert throttle.check_ip(False, "2001:db8::2", 0.0) == 0.0
    assert throttle.check_ip(False, "2001:db8::3", 0.0) > 0  # refused: not reported
    assert throttle.check_ip(True, "192.0.2.1", 0.0) == 0.0
    assert throttle.check_user("alice", 0.0) == 0.0
    assert reports == [1]  # once per report, at its first admission
    assert throttle.take_admitted() == {
        "proxy_per_ip": {"2001:db8::/64": 2},
        "sign_in_per_ip": {"192.0.2.1": 1},
        "proxy_per_user": {"alice": 1},
    }
    assert throttle.take_admitted() == {}
    throttle.check_user("bob", 0.0)
    assert reports == [1, 1]
    # A sibling's report: its admissions count against this worker's buckets.
    throttle.charge("proxy_per_user", {"carol": 2}, 0.0)
    assert throttle.check_user("carol", 0.0) > 0
    throttle.charge("sign_in_per_ip", {"198.51.100.1": 1}, 0.0)
    assert throttle.check_ip(True, "198.51.100.1", 0.0) == 0.0
    assert throttle.check_ip(True, "198.51.100.1", 0.0) > 0
    throttle.charge("no_such_scope", {"x": 1}, 0.0)  # ignored
