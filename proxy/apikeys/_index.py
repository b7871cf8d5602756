"""Find the key a request presents: format check, then one dict lookup by hash.

The cost does not depend on how many keys exist or on which one is presented: a
malformed key is refused by its checksum before any lookup, a well-formed one is hashed
and looked up in a dict. The final comparison uses ``hmac.compare_digest`` so that, even
with a dict in front, the stored hash is never compared byte by byte in early-exit
fashion.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from proxy.apikeys._keys import hash_key, well_formed
from proxy.apikeys._model import ApiKey

__all__ = ["KeyIndex", "LookupFailure"]

LookupFailure = Literal["malformed", "unknown", "expired"]


class KeyIndex:
    """An immutable set of keys, looked up by the hash of the presented key."""

    __slots__ = ("_by_hash", "_names")

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        by_hash: dict[str, ApiKey] = {}
        names: set[str] = set()
        for key in keys:
            # The loader refuses both already; an index built in code must not either,
            # or one key could stand for two identities.
            if key.name in names:
                raise ValueError(f"API key {key.name!r} is given twice")
            if key.key_hash in by_hash:
                raise ValueError(
                    f"API keys {by_hash[key.key_hash].name!r} and {key.name!r} have the same hash"
                )
            names.add(key.name)
            by_hash[key.key_hash] = key
        self._by_hash: Mapping[str, ApiKey] = MappingProxyType(by_hash)
        self._names = tuple(sorted(names))

    def lookup(self, presented: str, now: datetime) -> tuple[ApiKey | None, str]:
        """``(key, "")`` when ``presented`` is a listed key not expired at ``now`` (an
        aware datetime); else ``(None, reason)``, reason one of :data:`LookupFailure`."""
        if not well_formed(presented):
            return None, "malformed"
        digest = hash_key(presented)
        key = self._by_hash.get(digest)
        if key is None or not hmac.compare_digest(key.key_hash, digest):
            return None, "unknown"
        if key.expired(now):
            return None, "expired"
        return key, ""

    def names(self) -> tuple[str, ...]:
        """The keys' names, sorted."""
        return self._names

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"KeyIndex({len(self)} keys)"
