"""The values a policy decision is made from and the decision itself.

These are plain immutable records: the proxy builds an :class:`Identity` from a verified
session and :class:`RequestFacts` from the request, and the engine returns a :class:`Decision`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["Decision", "Identity", "RequestFacts"]


@dataclass(frozen=True, slots=True)
class Identity:
    """A signed-in user, as asserted by the identity provider.

    ``email_verified`` is ``None`` when the provider sent no ``email_verified`` claim; the
    engine then treats the address as verified (many providers omit the claim). ``False``
    means the provider says the address is unverified, and email/domain criteria will not
    match it unless the route sets ``allow_unverified_email: true``.
    """

    sub: str
    email: str | None = None
    email_verified: bool | None = None
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the engine may know about the request itself.

    ``path`` must already be the output of :func:`policy.paths.normalize_path`; ``now`` must be
    timezone-aware (a naive time would make date/time criteria silently depend on the host's
    clock zone, so it is refused).
    """

    method: str
    path: str
    source_ip: str
    now: datetime
    # The login name asked for at the SSH door (``ssh -l NAME``); None for HTTP requests,
    # so an ``ssh_username`` criterion never matches one.
    ssh_username: str | None = None

    def __post_init__(self) -> None:
        if self.now.tzinfo is None or self.now.utcoffset() is None:
            raise ValueError("RequestFacts.now must be timezone-aware")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a policy check; ``reason`` is for logs and the operator, never secret.

    ``valid_until`` bounds how long the decision holds: with the same identity and the same
    facts apart from ``now``, every ``now'`` with ``facts.now <= now' < valid_until`` gets the
    same ``allow`` and ``reason``. It is timezone-aware UTC and later than ``facts.now``;
    ``None`` means the decision does not depend on the clock. Anything that reuses a decision
    (a cache) must stop doing so at ``valid_until``. The bound may be earlier than the moment
    the decision really changes (e.g. at a time-zone offset change), never later.
    """

    allow: bool
    reason: str
    valid_until: datetime | None = None
