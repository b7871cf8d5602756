"""Signed-in sessions carried in encrypted cookies.

Public surface:

- :class:`Session`: what the proxy knows about a signed-in user (frozen).
- :class:`SessionCodec`: turns a :class:`Session` into cookie pairs and back, with
  AES-256-GCM, key rotation, chunking of large sessions and a decode cache; also
  seals short-lived tokens for other purposes (the login-state cookie).
- :class:`SessionError`: every reason a cookie or sealed token is refused, as a short
  machine-readable ``reason``. Messages never contain cookie or token bytes.
- :func:`parse_cookie_header`: a strict, fast reader of the request ``Cookie`` header
  that keeps only the cookies this proxy owns.

Token format (cookie values and sealed tokens alike), URL-safe base64 without padding::

    version (1 byte) | key id (4 bytes) | nonce (12 bytes) | AES-GCM ciphertext + tag

The key id is the first 4 bytes of SHA-256 of the purpose subkey, so decryption picks
the key in O(1) and a token sealed for one purpose is refused by every other purpose.
Each configured secret yields one HKDF subkey per purpose; the first secret encrypts,
all secrets decrypt, which lets operators rotate secrets without signing users out.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
import re
import secrets as _secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "MAX_CHUNKS",
    "Session",
    "SessionCodec",
    "SessionError",
    "parse_cookie_header",
]

SESSION_PURPOSE: Final = "session"
LOGIN_STATE_PURPOSE: Final = "login-state"
MAX_CHUNKS: Final = 8

_VERSION: Final = 1
_KID_LEN: Final = 4
_NONCE_LEN: Final = 12
_TAG_LEN: Final = 16
_HEADER_LEN: Final = 1 + _KID_LEN + _NONCE_LEN
_SECRET_LEN: Final = 32
# Browsers cap a cookie at 4096 bytes, so no honest chunk is longer; checked before any
# base64 or AES work so oversized input costs nothing.
_MAX_COOKIE_VALUE: Final = 4096
_MAX_SEALED_TOKEN: Final = 8192
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_PURPOSE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_HKDF_SALT: Final = b"clawgate/v1/hkdf"


class SessionError(Exception):
    """A session cookie or sealed token was refused.

    ``reason`` is one of ``malformed``, ``bad_key_or_tampered``, ``expired``,
    ``wrong_host``, ``chunks_inconsistent``, ``too_large``; it is safe to log.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


_KEEP: Any = object()


@dataclass(frozen=True, slots=True)
class Session:
    """One sign-in.

    ``host`` binds the session to the route host it was issued for; the empty string
    means "not host-bound" (used when a cookie domain shares the cookie between hosts).
    Times are Unix seconds. ``expires_at`` is the hard end of the session; ``refresh_at``
    is when the identity provider's tokens expire and a refresh is due.
    """

    sid: str
    sub: str
    email: str | None
    email_verified: bool | None
    groups: tuple[str, ...]
    claims: Mapping[str, Any]
    host: str
    issued_at: int
    expires_at: int
    refresh_at: int
    refresh_token: str | None
    id_token: str | None
    csrf: str
    # The provider's session this sign-in belongs to (the ID token's ``sid``): what a
    # back-channel logout names.
    provider_sid: str | None = None

    @classmethod
    def create(
        cls,
        *,
        sub: str,
        email: str | None,
        email_verified: bool | None,
        groups: Sequence[str],
        claims: Mapping[str, Any],
        host: str,
        now: int,
        lifetime: int,
        refresh_at: int,
        refresh_token: str | None,
        id_token: str | None,
        provider_sid: str | None = None,
    ) -> Session:
        """A new session with fresh random ``sid`` and ``csrf``, ending at now + lifetime."""
        return cls(
            sid=_secrets.token_urlsafe(16),
            sub=sub,
            email=email,
            email_verified=email_verified,
            groups=tuple(groups),
            claims=MappingProxyType(dict(claims)),
            host=host,
            issued_at=now,
            expires_at=now + lifetime,
            refresh_at=refresh_at,
            refresh_token=refresh_token,
            id_token=id_token,
            csrf=_secrets.token_urlsafe(16),
            provider_sid=provider_sid,
        )

    @property
    def host_bound(self) -> bool:
        return self.host != ""

    def is_expired(self, now: int) -> bool:
        return now >= self.expires_at

    def needs_refresh(self, now: int, leeway: int = 0) -> bool:
        """True when the provider tokens have expired (or will within ``leeway`` s)."""
        return now + leeway >= self.refresh_at

    def with_refreshed(
        self,
        *,
        refresh_at: int,
        id_token: str | None = _KEEP,
        refresh_token: str | None = _KEEP,
        email: str | None = _KEEP,
        email_verified: bool | None = _KEEP,
        groups: Sequence[str] = _KEEP,
        claims: Mapping[str, Any] = _KEEP,
    ) -> Session:
        """The session after a token refresh; ``sid``, ``csrf`` and ``expires_at`` stay.

        Omitted arguments keep their old value, because providers often answer a refresh
        without a new refresh token or ID token.
        """
        changes: dict[str, Any] = {"refresh_at": refresh_at}
        if id_token is not _KEEP:
            changes["id_token"] = id_token
        if refresh_token is not _KEEP:
            changes["refresh_token"] = refresh_token
        if email is not _KEEP:
            changes["email"] = email
        if email_verified is not _KEEP:
            changes["email_verified"] = email_verified
        if groups is not _KEEP:
            changes["groups"] = tuple(groups)
        if claims is not _KEEP:
            changes["claims"] = MappingProxyType(dict(claims))
        return dataclasses.replace(self, **changes)


def _session_to_json(session: Session) -> bytes:
    # Short keys: the cookie travels with every request. ASCII-only JSON so that any
    # string the provider sent (even a lone surrogate) round-trips instead of raising.
    doc = {
        "v": 1,
        "sid": session.sid,
        "sub": session.sub,
        "em": session.email,
        "ev": session.email_verified,
        "g": list(session.groups),
        "c": dict(session.claims),
        "h": session.host,
        "iat": session.issued_at,
        "exp": session.expires_at,
        "rat": session.refresh_at,
        "rt": session.refresh_token,
        "it": session.id_token,
        "csrf": session.csrf,
    }
    if session.provider_sid is not None:
        doc["psid"] = session.provider_sid  # absent from sessions without one
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()


def session_to_text(session: Session) -> str:
    """The session as JSON text, to be sealed (``SessionCodec.seal``) before it is
    kept anywhere, e.g. the SSH door's grants in the shared store."""
    return _session_to_json(session).decode("ascii")


def session_from_text(text: str) -> Session:
    """The inverse of :func:`session_to_text`; :class:`SessionError` if malformed."""
    return _session_from_json(text.encode("ascii", "replace"))


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_opt_str(value: object) -> bool:
    return value is None or type(value) is str


def _session_from_json(raw: bytes) -> Session:
    """Rebuild a session, checking every field's type: the key proves who wrote the
    payload, but a future format change must fail closed rather than half-parse."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise SessionError("malformed", "payload is not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise SessionError("malformed", "unknown payload version")
    groups = doc.get("g")
    claims = doc.get("c")
    ev = doc.get("ev")
    ok = (
        type(doc.get("sid")) is str
        and type(doc.get("sub")) is str
        and _is_opt_str(doc.get("em"))
        and (ev is None or type(ev) is bool)
        and isinstance(groups, list)
        and all(type(g) is str for g in groups)
        and isinstance(claims, dict)
        and type(doc.get("h")) is str
        and _is_int(doc.get("iat"))
        and _is_int(doc.get("exp"))
        and _is_int(doc.get("rat"))
        and _is_opt_str(doc.get("rt"))
        and _is_opt_str(doc.get("it"))
        and type(doc.get("csrf")) is str
        and _is_opt_str(doc.get("psid"))
    )
    if not ok:
        raise SessionError("malformed", "payload fields have wrong types")
    assert isinstance(groups, list) and isinstance(claims, dict)  # for the type checker
    return Session(
        sid=doc["sid"],
        sub=doc["sub"],
        email=doc["em"],
        email_verified=ev,
        groups=tuple(groups),
        claims=MappingProxyType(claims),
        host=doc["h"],
        issued_at=doc["iat"],
        expires_at=doc["exp"],
        refresh_at=doc["rat"],
        refresh_token=doc["rt"],
        id_token=doc["it"],
        csrf=doc["csrf"],
        provider_sid=doc.get("psid"),
    )


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d_strict(text: str) -> bytes:
    """URL-safe base64 without padding; anything else is refused rather than skipped
    (the stdlib decoder silently drops characters outside the alphabet)."""
    if len(text) % 4 == 1 or _B64URL.fullmatch(text) is None:
        raise SessionError("malformed", "not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SessionError("malformed", "not base64url") from None
    # The last character can carry unused low bits: without this, several different
    # strings decode to the same token, so an altered cookie would still be accepted.
    if _b64e(raw) != text:
        raise SessionError("malformed", "not canonical base64url")
    return raw


def _b64_len(n_bytes: int) -> int:
    """Length of unpadded base64 for ``n_bytes`` bytes."""
    return (n_bytes * 4 + 2) // 3


def _derive(secret: bytes, purpose: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=_HKDF_SALT,
        info=b"clawgate/v1/" + purpose.encode("ascii"),
    ).derive(secret)


class _PurposeKeys:
    """The subkeys of all secrets for one purpose: the first encrypts, all decrypt."""

    __slots__ = ("by_kid", "encrypt_aead", "encrypt_kid")

    def __init__(self, secrets: Sequence[bytes], purpose: str) -> None:
        self.by_kid: dict[bytes, AESGCM] = {}
        first: tuple[bytes, AESGCM] | None = None
        for secret in secrets:
            subkey = _derive(secret, purpose)
            kid = hashlib.sha256(subkey).digest()[:_KID_LEN]
            aead = AESGCM(subkey)
            # A repeated secret is harmless; the first occurrence wins.
            self.by_kid.setdefault(kid, aead)
            if first is None:
                first = (kid, aead)
        assert first is not None
        self.encrypt_kid, self.encrypt_aead = first


class SessionCodec:
    """Encrypts sessions into cookies and back; seals short-lived tokens.

    ``secrets`` are 32-byte keys (see :meth:`parse_secret`); the first encrypts and all
    decrypt. ``cookie_name`` is the session cookie's name; chunks of a large session are
    named ``<cookie_name>_1`` ... ``<cookie_name>_7``. The name is bound into every
    token, so a token cannot be replayed under another cookie name or deployment.

    Not thread-safe: it is meant for one event loop.
    """

    def __init__(
        self,
        secrets: Sequence[bytes],
        cookie_name: str,
        *,
        max_chunk: int = 3800,
        cache_size: int = 10000,
    ) -> None:
        if not secrets:
            raise ValueError("at least one session secret is required")
        for secret in secrets:
            if not isinstance(secret, bytes) or len(secret) != _SECRET_LEN:
                raise ValueError("each session secret must be exactly 32 bytes")
        if not cookie_name or not re.fullmatch(r"[A-Za-z0-9_.-]+", cookie_name):
            raise ValueError("cookie name must be a non-empty token of [A-Za-z0-9_.-]")
        if not 256 <= max_chunk <= _MAX_COOKIE_VALUE:
            raise ValueError(f"max_chunk must be between 256 and {_MAX_COOKIE_VALUE}")
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._secrets = tuple(secrets)
        self.cookie_name = cookie_name
        self._max_chunk = max_chunk
        self._cache_size = cache_size
        self._cache: OrderedDict[str, Session] = OrderedDict()
        self._keys: dict[str, _PurposeKeys] = {
            SESSION_PURPOSE: _PurposeKeys(self._secrets, SESSION_PURPOSE),
            LOGIN_STATE_PURPOSE: _PurposeKeys(self._secrets, LOGIN_STATE_PURPOSE),
        }
        self._chunk_names = (cookie_name, *(f"{cookie_name}_{i}" for i in range(1, MAX_CHUNKS)))

    # -- secrets ---------------------------------------------------------------------

    @staticmethod
    def parse_secret(value: str) -> bytes:
        """Decode a configured secret: base64 (standard or URL-safe, padding optional)
        of exactly 32 bytes. The error never repeats the value."""
        text = "".join(value.split())
        text = text.rstrip("=")
        if not text or re.fullmatch(r"[A-Za-z0-9+/_-]+", text) is None or len(text) % 4 == 1:
            raise ValueError(
                "session secret must be base64 of 32 random bytes "
                "(generate one with `clawgate secret`)"
            )
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4))
        if len(raw) != _SECRET_LEN:
            raise ValueError(
                f"session secret must decode to exactly 32 bytes, got {len(raw)} "
                "(generate one with `clawgate secret`)"
            )
        return raw

    @staticmethod
    def new_secret() -> str:
        """A fresh secret in the form :meth:`parse_secret` reads."""
        return base64.b64encode(os.urandom(_SECRET_LEN)).decode("ascii")

    # -- low-level tokens --------------------------------------------------------------

    def _aad(self, purpose: str, chunks: int) -> bytes:
        return b"clawgate/v1|%s|%s|%d" % (
            purpose.encode("ascii"),
            self.cookie_name.encode("ascii"),
            chunks,
        )

    def _purpose_keys(self, purpose: str) -> _PurposeKeys:
        keys = self._keys.get(purpose)
        if keys is None:
            if _PURPOSE.fullmatch(purpose) is None:
                raise ValueError("purpose must match [a-z0-9][a-z0-9-]{0,31}")
            keys = self._keys[purpose] = _PurposeKeys(self._secrets, purpose)
        return keys

    def _encrypt(self, purpose: str, plaintext: bytes, aad: bytes) -> str:
        keys = self._purpose_keys(purpose)
        nonce = os.urandom(_NONCE_LEN)
        ct = keys.encrypt_aead.encrypt(nonce, plaintext, aad)
        return _b64e(bytes((_VERSION,)) + keys.encrypt_kid + nonce + ct)

    def _decrypt(self, purpose: str, token: str, aad: bytes) -> bytes:
        raw = _b64d_strict(token)
        if len(raw) < _HEADER_LEN + _TAG_LEN:
            raise SessionError("malformed", "token too short")
        if raw[0] != _VERSION:
            raise SessionError("malformed", "unknown token version")
        aead = self._purpose_keys(purpose).by_kid.get(raw[1 : 1 + _KID_LEN])
        if aead is None:
            raise SessionError("bad_key_or_tampered", "unknown key id")
        try:
            return aead.decrypt(raw[1 + _KID_LEN : _HEADER_LEN], raw[_HEADER_LEN:], aad)
        except InvalidTag:
            raise SessionError("bad_key_or_tampered", "authentication failed") from None

    # -- sessions --------------------------------------------------------------------

    def encode(self, session: Session) -> list[tuple[str, str]]:
        """Cookie ``(name, value)`` pairs for ``session``.

        A value longer than ``max_chunk`` is split over ``<name>``, ``<name>_1``, ...;
        the first value then starts with ``"<count>."``. The count is part of the
        authenticated data, so dropping, adding, reordering or mixing chunks fails
        decryption. Callers should expire names from :meth:`chunk_names` that the new
        pairs do not set. Raises ``SessionError("too_large")`` past 8 chunks.
        """
        plaintext = _session_to_json(session)
        token_len = _b64_len(_HEADER_LEN + len(plaintext) + _TAG_LEN)
        if token_len <= self._max_chunk:
            token = self._encrypt(SESSION_PURPOSE, plaintext, self._aad(SESSION_PURPOSE, 1))
            return [(self.cookie_name, token)]
        piece = self._max_chunk - 2  # room for the "<count>." prefix on the first chunk
        count = -(-token_len // piece)
        if count > MAX_CHUNKS:
            raise SessionError(
                "too_large", f"session needs {count} cookies, at most {MAX_CHUNKS} allowed"
            )
        token = self._encrypt(SESSION_PURPOSE, plaintext, self._aad(SESSION_PURPOSE, count))
        parts = [token[i : i + piece] for i in range(0, len(token), piece)]
        assert len(parts) == count
        pairs = [(self.cookie_name, f"{count}.{parts[0]}")]
        pairs.extend((f"{self.cookie_name}_{i}", parts[i]) for i in range(1, count))
        return pairs

    def chunk_names(self, cookies: Mapping[str, str]) -> list[str]:
        """Names of this codec's cookies present in ``cookies`` (to clear stale chunks)."""
        return [name for name in self._chunk_names if name in cookies]

    def _reassemble(self, first: str, cookies: Mapping[str, str]) -> tuple[int, str]:
        if len(first) > 2 and first[1] == "." and "2" <= first[0] <= str(MAX_CHUNKS):
            count = ord(first[0]) - 48
            parts = [first[2:]]
            for i in range(1, count):
                part = cookies.get(self._chunk_names[i])
                if not part:
                    raise SessionError("chunks_inconsistent", f"chunk {i} of {count} missing")
                if len(part) > _MAX_COOKIE_VALUE:
                    raise SessionError("too_large", "cookie value too long")
                parts.append(part)
            return count, "".join(parts)
        return 1, first

    def decode(self, cookies: Mapping[str, str], *, host: str, now: int) -> Session | None:
        """The session in ``cookies``, or None when there is no session cookie.

        ``host`` is the normalized (lower-case, port-less) host of the request; a
        host-bound session issued for another host is refused. Raises
        :class:`SessionError` for anything else that is wrong, including expiry.
        Results are cached by cookie value; expiry and host are checked on every call.
        """
        first = cookies.get(self.cookie_name)
        if not first:
            return None
        if len(first) > _MAX_COOKIE_VALUE:
            raise SessionError("too_large", "cookie value too long")
        count, token = self._reassemble(first, cookies)
        key = token if count == 1 else f"{count}.{token}"
        session = self._cache.get(key)
        if session is None:
            plaintext = self._decrypt(SESSION_PURPOSE, token, self._aad(SESSION_PURPOSE, count))
            session = _session_from_json(plaintext)
            if self._cache_size and not session.is_expired(now):
                self._cache[key] = session
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        if now >= session.expires_at:
            self._cache.pop(key, None)
            raise SessionError("expired", "session ended")
        if session.host and session.host != host:
            raise SessionError("wrong_host", "session was issued for another host")
        return session

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- sealed short-lived tokens ---------------------------------------------------

    def seal(self, purpose: str, payload: Mapping[str, Any], *, ttl: int, now: int) -> str:
        """Encrypt ``payload`` (JSON-able) for ``purpose``, valid for ``ttl`` seconds.

        ``purpose`` is a short lower-case name such as ``"login-state"``; it selects its
        own subkey, so a token sealed for one purpose never opens under another. The
        ``"session"`` purpose is reserved for :meth:`encode`.
        """
        if purpose == SESSION_PURPOSE:
            raise ValueError("the 'session' purpose is reserved for session cookies")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        doc = {"exp": now + ttl, "d": dict(payload)}
        plaintext = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()
        return self._encrypt(purpose, plaintext, self._aad(purpose, 1))

    def unseal(self, purpose: str, token: str, *, now: int) -> dict[str, Any]:
        """The payload of a token from :meth:`seal` for the same purpose.

        Raises :class:`SessionError` when the token is malformed, forged, sealed for
        another purpose or with an unknown key, or expired.
        """
        if purpose == SESSION_PURPOSE:
            raise ValueError("the 'session' purpose is reserved for session cookies")
        if len(token) > _MAX_SEALED_TOKEN:
            raise SessionError("too_large", "token too long")
        plaintext = self._decrypt(purpose, token, self._aad(purpose, 1))
        try:
            doc = json.loads(plaintext)
        except (ValueError, UnicodeDecodeError):
            raise SessionError("malformed", "payload is not JSON") from None
        if not isinstance(doc, dict) or not _is_int(doc.get("exp")):
            raise SessionError("malformed", "payload has no expiry")
        data = doc.get("d")
        if not isinstance(data, dict):
            raise SessionError("malformed", "payload is not an object")
        if now >= doc["exp"]:
            raise SessionError("expired", "token expired")
        return data


def parse_cookie_header(header: str, wanted_prefix: str) -> dict[str, str]:
    """Cookies from a ``Cookie`` request header whose name starts with ``wanted_prefix``.

    Strict about structure and lenient about input: pairs without ``=``, with an empty
    or space-containing name, or with stray quotes are skipped, never raised on. A
    quoted value loses its quotes. When a name repeats, the first wins: browsers list
    the cookie with the most specific path first.
    """
    if not header or wanted_prefix not in header:
        return {}
    found: dict[str, str] = {}
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        if not sep:
            continue
        name = name.strip()
        if not name.startswith(wanted_prefix) or name in found:
            continue
        if not name or " " in name or "\t" in name or '"' in name:
            continue
        value = value.strip()
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                continue
            value = value[1:-1]
        if '"' in value:
            continue
        found[name] = value
    return found
