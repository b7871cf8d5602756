"""API keys: service accounts for scripts and CI jobs calling the proxied gateway.

A key is a bearer credential (``Authorization: Bearer cgk_...``) for a named service
account with groups, an optional expiry, an optional per-key rate limit and optionally
a set of routes. It is used only on routes that say ``allow_api_keys: true``, so no
existing route is opened by surprise.

The key is shown once, by ``clawgate apikey create``; the key file (``api_keys_file``)
holds only its SHA-256. A key carries a checksum, so a mistyped or truncated key is
refused by :func:`well_formed` without any lookup, and :class:`KeyIndex` finds a key
with one hash and one dict lookup, however many keys there are.

Public surface:

- :data:`PREFIX`, :func:`new_key`, :func:`well_formed`, :func:`hash_key`: the key string.
- :class:`ApiKey`, :class:`RateLimit`: one record of the key file.
- :class:`KeyIndex`: the keys in force, looked up by presented key.
- :func:`load_key_file`, :func:`save_key_file`, :class:`KeyFileError`: the file.
- :func:`parse_duration`, :func:`parse_rate`, :func:`format_rate`,
  :func:`normalize_route`: the CLI's ``--expires``, ``--rate`` and ``--routes``.
- :func:`route_matches` (and :meth:`ApiKey.allows_route`): whether a key's ``routes``
  entry covers a request's host.
- :func:`key_findings`: what ``clawgate audit`` reports about keys and their file.
"""

from __future__ import annotations

from proxy.apikeys._audit import key_findings
from proxy.apikeys._file import load_key_file, save_key_file
from proxy.apikeys._index import KeyIndex, LookupFailure
from proxy.apikeys._keys import PREFIX, hash_key, new_key, well_formed
from proxy.apikeys._model import (
    ApiKey,
    KeyFileError,
    RateLimit,
    format_rate,
    normalize_route,
    parse_duration,
    parse_rate,
    route_matches,
)

__all__ = [
    "PREFIX",
    "ApiKey",
    "KeyFileError",
    "KeyIndex",
    "LookupFailure",
    "RateLimit",
    "format_rate",
    "hash_key",
    "key_findings",
    "load_key_file",
    "new_key",
    "normalize_route",
    "parse_duration",
    "parse_rate",
    "route_matches",
    "save_key_file",
    "well_formed",
]
