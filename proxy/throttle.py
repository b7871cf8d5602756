"""Rate limits on the request path: 429 with Retry-After when a bucket is empty.

Public surface:

- :class:`Throttle`: the limiters for the ``rate_limits`` setting in force (rebuilt when
  a reload changes it), with ``check_ip`` and ``check_user``. With ``workers: N`` the
  limits hold for all workers together: each worker reports what it admitted to its
  siblings (proxy/peers.py, ``share``/``take_admitted``) and is charged with what they
  admitted (``charge``).
- :data:`THROTTLE`: where the server app keeps its :class:`Throttle`.
- :func:`ip_refusal`: per client IP, separately for the sign-in endpoints
  (``sign_in_per_ip``) and everything else (``proxy_per_ip``).
- :func:`limit_user`: the per-user check for proxied traffic (``proxy_per_user``),
  called once the session is known.

The client IP is the one ``xff_num_trusted_hops`` designates (see runtime.client_ip),
so behind a trusted load balancer each real client has its own bucket, and without
one a forged X-Forwarded-For changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import structlog
from aiohttp import web

from policy.paths import UnsafePathError, normalize_path
from proxy import pages
from proxy.ratelimit import KeyedLimiter, address_key, retry_after_header
from proxy.runtime import REQUEST_ID, RUNTIME, client_ip
from proxy.settings import RateLimit, RateLimits

log = structlog.get_logger("clawgate.ratelimit")

__all__ = [
    "SIGN_IN_PATHS",
    "THROTTLE",
    "Throttle",
    "ip_refusal",
    "limit_user",
]

SIGN_IN_PATHS = frozenset({"/.clawgate/sign_in", "/.clawgate/callback"})
# The limits by their setting's name, as reports between workers name them.
SCOPES = tuple(RateLimits.model_fields)
_EXEMPT = frozenset({"/ping"})


def _no_report() -> None:
    pass


def _limiter(limit: RateLimit | None) -> KeyedLimiter | None:
    return None if limit is None else KeyedLimiter(limit.rate, limit.burst)


class Throttle:
    def __init__(self) -> None:
        self._config: RateLimits | None = None
        self.sign_in_ip: KeyedLimiter | None = None
        self.proxy_ip: KeyedLimiter | None = None
        self.proxy_user: KeyedLimiter | None = None
        self._by_scope: dict[str, KeyedLimiter | None] = {}
        self._pruned = time.monotonic()
        # With siblings: what this worker admitted since its last report, by scope and
        # key, and whom to tell when the first of a report comes in. None: no siblings.
        self._admitted: dict[tuple[str, str], int] | None = None
        self._report: Callable[[], None] = _no_report

    def share(self, report: Callable[[], None]) -> None:
        """Count admissions for sibling workers from now on; ``report()`` is called when
        the first admission after a ``take_admitted()`` is counted."""
        self._admitted = {}
        self._report = report

    def take_admitted(self) -> dict[str, dict[str, int]]:
        """What was admitted since the last call, by scope and key."""
        by_scope: dict[str, dict[str, int]] = {}
        if self._admitted:
            for (scope, key), n in self._admitted.items():
                by_scope.setdefault(scope, {})[key] = n
            self._admitted = {}
        return by_scope

    def charge(self, scope: str, counts: Mapping[str, int], now: float) -> None:
        """Charge the ``scope`` limit with what a sibling worker admitted."""
        limiter = self._by_scope.get(scope)
        if limiter is None:
            return
        for key, n in counts.items():
            limiter.spend(key, n, now)

    def _count(self, admitted: dict[tuple[str, str], int], scope: str, key: str) -> None:
        if not admitted:
            self._report()
        entry = (scope, key)
        admitted[entry] = admitted.get(entry, 0) + 1

    def configure(self, config: RateLimits) -> None:
        if config is self._config or config == self._config:
            return
        self._config = config
        self.sign_in_ip = _limiter(config.sign_in_per_ip)
        self.proxy_ip = _limiter(config.proxy_per_ip)
        self.proxy_user = _limiter(config.proxy_per_user)
        self._by_scope = {
            "sign_in_per_ip": self.sign_in_ip,
            "proxy_per_ip": self.proxy_ip,
            "proxy_per_user": self.proxy_user,
        }

    def _prune(self, now: float) -> None:
        if now - self._pruned < 60.0:
            return
        self._pruned = now
        for limiter in self._by_scope.values():
            if limiter is not None:
                limiter.prune(now)

    def check_ip(self, sign_in: bool, ip: str, now: float) -> float:
        self._prune(now)
        limiter = self.sign_in_ip if sign_in else self.proxy_ip
        if limiter is None:
            return 0.0
        key = address_key(ip)
        wait = limiter.hit(key, now)
        admitted = self._admitted
        if not wait and admitted is not None:
            self._count(admitted, "sign_in_per_ip" if sign_in else "proxy_per_ip", key)
        return wait

    def check_user(self, user: str, now: float) -> float:
        if self.proxy_user is None:
            return 0.0
        wait = self.proxy_user.hit(user, now)
        admitted = self._admitted
        if not wait and admitted is not None:
            self._count(admitted, "proxy_per_user", user)
        return wait


THROTTLE = web.AppKey("throttle", Throttle)


def too_many(request: web.BaseRequest, wait: float, scope: str) -> web.Response:
    log.info("rate_limited", scope=scope, retry_after=round(wait, 2))
    return pages.error(
        request,
        429,
        "Too many requests",
        "Slow down and try again in a moment.",
        error_code="rate_limited",
        request_id=request.get(REQUEST_ID),
        headers={"Retry-After": retry_after_header(wait)},
    )


def _is_sign_in(raw_path: str) -> bool:
    try:
        return normalize_path(raw_path) in SIGN_IN_PATHS
    except UnsafePathError:
        return False


def ip_refusal(request: web.Request) -> web.Response | None:
    """The per-IP check, called by the request middleware (proxy/server.py): a 429, or None."""
    raw_path = request.raw_path.partition("?")[0]
    if raw_path in _EXEMPT:
        return None
    app = request.app
    settings = app[RUNTIME].snapshot.settings
    throttle = app[THROTTLE]
    throttle.configure(settings.rate_limits)
    if throttle.sign_in_ip is not None or throttle.proxy_ip is not None:
        sign_in = _is_sign_in(raw_path)
        ip = client_ip(request, settings.xff_num_trusted_hops)
        wait = throttle.check_ip(sign_in, ip, time.monotonic())
        if wait > 0:
            return too_many(request, wait, "sign_in_per_ip" if sign_in else "proxy_per_ip")
    return None


def limit_user(request: web.Request, user: str) -> web.Response | None:
    """429 when ``user`` (the session's subject) has used up ``proxy_per_user``."""
    throttle = request.app.get(THROTTLE)
    if throttle is None or throttle.proxy_user is None:
        return None
    wait = throttle.check_user(user, time.monotonic())
    return too_many(request, wait, "proxy_per_user") if wait > 0 else None
