"""Growing delays after failed sign-ins, per client IP and per user name. Pure: no I/O,
no clock; callers pass ``now`` (monotonic seconds).

A bcrypt cost makes each guess slow for the attacker's own hardware only once they
hold the file; against the sign-in form the limit must come from here. A few mistakes
cost nothing; after them every failure doubles the wait, up to ``max_delay``. Per IP
stops one client guessing many names; per user stops many clients guessing one
name (only slower: refusing the user outright would let anyone lock them out).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from proxy.ratelimit import address_key

__all__ = ["Throttle"]

# 2**60 seconds is beyond any max_delay; the cap keeps the float arithmetic finite.
_MAX_DOUBLINGS = 60


@dataclass
class _Failures:
    count: int
    last: float


class Throttle:
    """Not thread-safe: one per event loop (per worker process).

    At most ``max_keys`` names and addresses are tracked together; past that the one
    whose last failure is oldest is dropped, which bounds memory against an attacker
    spread over many addresses, at the cost of forgetting that one key early.
    """

    def __init__(
        self,
        *,
        per_ip_free: int = 5,
        per_user_free: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        forget_after: float = 900.0,
        max_keys: int = 100_000,
    ) -> None:
        if per_ip_free < 0 or per_user_free < 0:
            raise ValueError("the free failures cannot be negative")
        if not 0 < base_delay <= max_delay:
            raise ValueError("base_delay must be > 0 and at most max_delay")
        if forget_after <= 0 or max_keys < 2:
            raise ValueError("forget_after must be > 0 and max_keys >= 2")
        self._free = {"ip": per_ip_free, "user": per_user_free}
        self._base = base_delay
        self._max = max_delay
        # Never forget a key while it still has a delay to wait out.
        self._forget = max(forget_after, max_delay)
        self._max_keys = max_keys
        # Ordered by last failure, oldest first: forgetting and eviction pop the front.
        self._failures: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    @staticmethod
    def _keys(ip: str, user: str) -> tuple[tuple[str, str], tuple[str, str]]:
        # IPv6 by /64, as the rate limits count it; names without case, so "Alice" and
        # "alice" share one allowance (more caution, never less).
        return ("ip", address_key(ip)), ("user", user.casefold())

    def _delay(self, kind: str, count: int) -> float:
        extra = count - self._free[kind]
        if extra <= 0:
            return 0.0
        return min(self._base * 2.0 ** min(extra - 1, _MAX_DOUBLINGS), self._max)

    def _until(self, key: tuple[str, str], now: float) -> float:
        """When ``key`` may try again; 0 when it is not (or no longer) tracked."""
        entry = self._failures.get(key)
        if entry is None:
            return 0.0
        if now - entry.last >= self._forget:
            del self._failures[key]
            return 0.0
        return entry.last + self._delay(key[0], entry.count)

    def wait(self, ip: str, user: str, now: float) -> float:
        """Seconds before the next attempt from ``ip`` or for ``user`` may be checked
        (0: now), the longer of the two waits."""
        return max(0.0, *(self._until(key, now) - now for key in self._keys(ip, user)))

    def failed(self, ip: str, user: str, now: float) -> None:
        self._prune(now)
        for key in self._keys(ip, user):
            self._until(key, now)  # drops it if forgotten: counting starts over
            entry = self._failures.get(key)
            if entry is None:
                while len(self._failures) >= self._max_keys:
                    self._failures.popitem(last=False)
                self._failures[key] = _Failures(1, now)
            else:
                entry.count += 1
                entry.last = now
                self._failures.move_to_end(key)

    def succeeded(self, ip: str, user: str) -> None:
        for key in self._keys(ip, user):
            self._failures.pop(key, None)

    def _prune(self, now: float) -> None:
        """Forget the keys without a failure for ``forget_after``. The order is by last
        failure, so this stops at the first key still remembered."""
        while self._failures:
            entry = next(iter(self._failures.values()))
            if now - entry.last < self._forget:
                return
            self._failures.popitem(last=False)
