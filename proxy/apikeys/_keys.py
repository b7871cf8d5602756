"""The key string itself: how it is made, how a typo is caught, how it is hashed.

A key is ``cgk_`` + 32 random base62 characters (about 190 bits, from ``secrets``) + 6
base62 characters of the CRC32 of the random part. The prefix lets secret scanners and
people recognise a leaked key; the checksum lets the proxy refuse a mistyped or
truncated key without touching the key set, so garbage costs no lookup and never shows
up as "unknown key" noise. CRC32 catches every change of a single character (any
error within 32 bits), so a one-character typo is always refused.

Only the SHA-256 of the whole key string is ever stored. A fast hash is enough: the
random part is far too large to guess, unlike a password, so there is nothing for a
slow hash to protect.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import zlib

__all__ = ["KEY_LENGTH", "PREFIX", "hash_key", "new_key", "well_formed"]

PREFIX = "cgk_"
_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
_RANDOM_CHARS = 32
_CHECK_CHARS = 6  # 62**6 > 2**32: every CRC32 value fits
KEY_LENGTH = len(PREFIX) + _RANDOM_CHARS + _CHECK_CHARS


def _checksum(random_part: str) -> str:
    value = zlib.crc32(random_part.encode("ascii"))
    out = []
    for _ in range(_CHECK_CHARS):
        value, digit = divmod(value, len(_ALPHABET))
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def new_key() -> str:
    """A fresh key; show it once, store only :func:`hash_key` of it."""
    random_part = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_CHARS))
    return PREFIX + random_part + _checksum(random_part)


def well_formed(key: str) -> bool:
    """Prefix, alphabet, length and checksum; says nothing about whether the key exists."""
    if len(key) != KEY_LENGTH or not key.startswith(PREFIX):
        return False
    body = key[len(PREFIX) :]
    if any(c not in _INDEX for c in body):
        return False
    random_part, check = body[:_RANDOM_CHARS], body[_RANDOM_CHARS:]
    return _checksum(random_part) == check


def hash_key(key: str) -> str:
    """Hex SHA-256 of the whole key string, as the key file stores it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
