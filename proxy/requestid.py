"""Request ids: taken from a trusted hop, else 16 hex digits from the OS's CSPRNG."""

from __future__ import annotations

import secrets
from collections.abc import Mapping


class _RandomIds:
    """Ids drawn 512 at a time (one getrandom call for all of them)."""

    def __init__(self) -> None:
        self._pool = ""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = secrets.token_hex(4096), 0
        self._at = at + 16
        return self._pool[at : at + 16]


_RANDOM_IDS = _RandomIds()


def trusted_request_id(headers: Mapping[str, str]) -> str | None:
    """The ``X-Request-Id`` a trusted hop sent, when it is short and printable."""
    given = headers.get("X-Request-Id", "")
    if 0 < len(given) <= 128 and given.isprintable() and " " not in given:
        return given
    return None


def new_request_id() -> str:
    return _RANDOM_IDS.next()


def request_id(headers: Mapping[str, str], trust: bool) -> str:
    """The id for a request: the one a trusted hop sent, otherwise a fresh random one."""
    return (trust and trusted_request_id(headers)) or _RANDOM_IDS.next()
