"""The one decision: is this request allowed, and until when does that answer hold.

Every path that lets a request, a WebSocket or an SSH connection through asks
:func:`admit`: the handler (proxy/handler.py), the front's admission
(proxy/exchange.py), the re-checks of open WebSockets (proxy/policy_watch.py) and the
SSH door, at approval and while connected (proxy/ssh_gate.py). Its :class:`Verdict` carries
how long it may be reused without asking again: until the next bound of a time
criterion the policy looked at (``Decision.valid_until``, policy/engine.py), the
session's hard expiry and its refresh time, whichever comes first. The configuration
generation bounds it too: every cache that keeps a verdict is keyed by the snapshot
(or the compiled policy) it was made with. Revocations are not in the verdict, as
they can come at any moment: whoever reuses a verdict checks ``Runtime.refuses``
each time (:func:`still_holds`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from policy.engine import Policy
from policy.model import Decision, Identity, RequestFacts
from proxy.session import Session

__all__ = ["FOREVER", "Verdict", "admit", "still_holds"]

FOREVER = math.inf


class Guarded(Protocol):
    """A route of either kind (proxy/snapshot.py ``Route``, ``SshRouteConfig``)."""

    @property
    def policy(self) -> Policy: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """A policy decision and the time (Unix seconds) from which it must not be reused."""

    decision: Decision
    valid_until: float

    @property
    def allow(self) -> bool:
        return self.decision.allow


def admit(
    route: Guarded,
    session: Session | None,
    identity: Identity | None,
    method: str,
    path: str,
    ip: str,
    now: float,
    *,
    ssh_username: str | None = None,
) -> Verdict:
    """Decide a request on ``route`` at ``now`` (Unix seconds) for ``identity`` (made
    from ``session``; None: anonymous). An SSH connection is decided with method
    ``SSH``, an empty path and the login name it asked for."""
    facts = RequestFacts(method, path, ip, datetime.fromtimestamp(now, UTC), ssh_username)
    decision = route.policy.decide(facts, identity)
    until = FOREVER if decision.valid_until is None else decision.valid_until.timestamp()
    if session is not None:
        until = min(until, session.expires_at, session.refresh_at)
    return Verdict(decision, until)


def still_holds(
    valid_until: float,
    session: Session | None,
    refused: Callable[[Session], bool],
    now: float,
) -> bool:
    """True while a verdict made earlier may stand for the same request: before its
    validity ends, and its session not revoked since."""
    return now < valid_until and (session is None or not refused(session))
