"""An API key record (what the key file holds about one key) and the small text
formats the CLI and the file share: durations, rates, names, route hosts.

The record never holds the key, only its hash: the key is shown once, at creation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = [
    "ApiKey",
    "KeyFileError",
    "RateLimit",
    "check_group",
    "check_name",
    "check_route",
    "format_rate",
    "normalize_route",
    "parse_duration",
    "parse_rate",
    "route_matches",
]

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# A route's host as requests name it: lower case, optionally a "*." wildcard (one label,
# as in a route's ``from``), and a port only when not the default 443.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_PATTERN = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*(?::([1-9][0-9]{{0,4}}))?")
_HASH_PATTERN = re.compile(r"[0-9a-f]{64}")


class KeyFileError(ValueError):
    """The key file cannot be used; the message names the file, the line where it is
    known, and the key concerned. Raised rather than skipping the bad entry, so a typo
    never silently drops (or widens) a key."""


@dataclass(frozen=True)
class RateLimit:
    """Token bucket for one key: ``rate`` requests per second, ``burst`` in reserve."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number, not {self.rate!r}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {self.burst!r}")


@dataclass(frozen=True)
class ApiKey:
    """One service account: who a request carrying the key is, and where it may go."""

    name: str
    key_hash: str  # hex SHA-256 of the whole key string; never the key
    groups: tuple[str, ...]
    created: datetime  # UTC
    expires: datetime | None  # UTC; None = never
    rate: RateLimit | None
    routes: tuple[str, ...]  # route hosts; empty = any route that allows keys

    def __post_init__(self) -> None:
        # The same checks as the file loader, so a record built in code (or by the CLI)
        # cannot hold what the file would refuse.
        check_name(self.name)
        if not _HASH_PATTERN.fullmatch(self.key_hash):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        for group in self.groups:
            check_group(group)
        for route in self.routes:
            check_route(route)
        for label, when in (("created", self.created), ("expires", self.expires)):
            if when is not None and when.utcoffset() is None:
                raise ValueError(f"{label} must carry a time zone (UTC)")
        if self.expires is not None and self.expires <= self.created:
            raise ValueError("expires must be after created")

    @property
    def subject(self) -> str:
        """The identity's subject: prefixed so it can never collide with a user's."""
        return f"apikey:{self.name}"

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def allows_route(self, host: str) -> bool:
        """Whether the key may be used on a request for ``host`` (lower case, with the
        port unless 443, as ``proxy.identity.request_host`` gives it)."""
        return not self.routes or any(route_matches(entry, host) for entry in self.routes)


def route_matches(entry: str, host: str) -> bool:
    """Whether a key's ``routes`` entry covers a request for ``host``: the same host and
    port, or for ``*.example.com`` one label under example.com, as a route's ``from``."""
    host = host.lower()
    if host.endswith(":443"):
        host = host[:-4]
    name, _, port = host.partition(":")
    entry_name, _, entry_port = entry.partition(":")
    if entry_port != port:
        return False
    if entry_name == name:
        return True
    label, dot, rest = name.partition(".")
    return entry_name.startswith("*.") and bool(dot and label) and "*." + rest == entry_name


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"name {name!r} must be 1 to 63 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )


def check_group(group: str) -> None:
    if (
        not group
        or group != group.strip()
        or "," in group
        or any(not c.isprintable() for c in group)
    ):
        raise ValueError(
            f"group {group!r} must be non-empty, printable, without commas or edge spaces"
        )


def check_route(host: str) -> None:
    match = _HOST_PATTERN.fullmatch(host)
    if match is None or (match.group(1) is not None and int(match.group(1)) > 65535):
        raise ValueError(
            f"route {host!r} must be a route's lower-case host name, e.g. "
            "openclaw.example.com or *.example.com, with :PORT only if not 443 "
            "(no scheme or path)"
        )
    if match.group(1) == "443":
        raise ValueError(f"route {host!r}: 443 is the default port; leave it out")


def normalize_route(text: str) -> str:
    """``text`` as :func:`check_route` wants it (lower case, no ``:443``), checked."""
    host = text.strip().lower().rstrip(".")
    if host.endswith(":443"):
        host = host[:-4]
    check_route(host)
    return host


_DURATION = re.compile(r"\s*(\d+)\s*([mhdwy])\s*")
_DURATION_UNITS = {
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
    "y": timedelta(days=365),
}


def parse_duration(text: str) -> timedelta:
    """``30m`` (minutes, not months), ``12h``, ``90d``, ``2w``, ``1y`` (365 days)."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: use a whole number and a unit, e.g. 30m "
            "(minutes), 12h, 90d, 2w or 1y"
        )
    count = int(match.group(1))
    if count == 0:
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    return count * _DURATION_UNITS[match.group(2)]


_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*(?::\s*(\d+)\s*)?")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> RateLimit:
    """``10/s``, ``600/m``, ``100/h``; a burst after a colon (``5/s:20``), else
    ``max(1, ceil(rate per second))``."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a rate: use requests per second, minute or hour, with an "
            "optional burst after a colon, e.g. 10/s, 600/m or 5/s:20"
        )
    rate = float(match.group(1)) / _PER[match.group(2)]
    if rate <= 0:
        raise ValueError(f"{text!r}: a rate must be more than zero")
    burst = int(match.group(3)) if match.group(3) is not None else max(1, math.ceil(rate))
    if burst < 1:
        raise ValueError(f"{text!r}: the burst must be at least 1")
    return RateLimit(rate, burst)


def format_rate(limit: RateLimit) -> str:
    """Text :func:`parse_rate` reads back as ``limit``: per second, minute or hour,
    preferring a whole number; the burst only when it is not the default."""
    text = _rate_text(limit.rate)
    if limit.burst != max(1, math.ceil(parse_rate(text).rate)):
        text += f":{limit.burst}"
    return text


def _rate_text(rate: float) -> str:
    candidates: list[str] = []
    for unit, seconds in _PER.items():
        count = rate * seconds
        candidates.append(f"{round(count)}/{unit}")
    for unit, seconds in _PER.items():
        candidates.append(f"{rate * seconds!r}/{unit}")
    for text in candidates:
        try:
            if parse_rate(text).rate == rate:
                return text
        except ValueError:  # "0/s", or a repr in exponent form
            continue
    # Not exactly representable in the text form (a rate built in code): the nearest.
    return f"{rate:.12f}".rstrip("0").rstrip(".") + "/s"
