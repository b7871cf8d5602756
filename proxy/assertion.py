"""The identity assertion: an ES256 JWT telling the upstream who is signed in.

Public surface:

- :func:`generate_signing_key` / :func:`load_signing_key`: the P-256 signing key
  (PKCS#8 PEM, or base64 of the PEM as Pomerium writes ``signing_key``).
- :class:`AssertionSigner`: signs one JWT per session and route host, reused until 80%
  of its lifetime has passed so the per-request cost is a dictionary lookup; publishes
  the public key as a JWKS document.
- :func:`verify_assertion`: the upstream's side of the contract, for tests and docs.

Claims: ``iss`` and ``aud`` are the route host; ``sub``, ``email`` (absent when the
provider gave none), ``groups`` (list), ``name`` (when the session carries it), ``iat``,
``exp`` (= ``iat`` + ttl) and a random ``jti``. The session id is deliberately not
included: it is the handle that ends a sign-in and has no business upstream.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections import OrderedDict
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.session import Session

__all__ = [
    "AssertionSigner",
    "generate_signing_key",
    "load_signing_key",
    "verify_assertion",
]

_ALG: Final = "ES256"
# Reuse a cached assertion until this fraction of its lifetime has passed, so the
# upstream never receives one with less than 20% of its lifetime left.
_REUSE_FRACTION: Final = 0.8
_PEM_PREFIX: Final = b"-----BEGIN"


def generate_signing_key() -> str:
    """A new EC P-256 private key as unencrypted PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def load_signing_key(value: str) -> ec.EllipticCurvePrivateKey:
    """Read a P-256 private key from PEM (PKCS#8 or SEC1) or from base64 of the PEM.

    Raises ValueError with a message that never contains the key material.
    """
    text = value.strip()
    if text.startswith(_PEM_PREFIX.decode()):
        pem = text.encode("ascii", "replace")
    else:
        compact = "".join(text.split())
        try:
            pem = base64.b64decode(
                compact.replace("-", "+").replace("_", "/") + "=" * (-len(compact) % 4),
                validate=True,
            )
        except (binascii.Error, ValueError):
            pem = b""
        if not pem.lstrip().startswith(_PEM_PREFIX):
            raise ValueError(
                "signing key is neither a PEM private key nor base64 of one "
                "(generate one with `clawgate keygen`)"
            )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        # Encrypted keys raise TypeError; the original message may quote the input.
        raise ValueError(
            "signing key could not be read as an unencrypted PEM private key "
            "(generate one with `clawgate keygen`)"
        ) from None
    except Exception:
        raise ValueError("signing key could not be read as a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(
            f"signing key must be an EC P-256 key, got {type(key).__name__.lstrip('_')}"
        )
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"signing key must be on curve P-256, got {key.curve.name}")
    return key


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64u(numbers.x.to_bytes(32, "big")),
        "y": _b64u(numbers.y.to_bytes(32, "big")),
    }
    # RFC 7638: required members only, lexicographic order, no whitespace.
    canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode()
    jwk["kid"] = _b64u(hashlib.sha256(canonical).digest())
    return jwk


def _cache_key(session: Session, audience: str) -> tuple[tuple[Any, ...], str | None]:
    """The signer's cache key for ``session`` at ``audience``, and the ``name`` claim.

    Everything the token states is part of the key: a refreshed session with the same
    sid but new groups must not get the old token back."""
    name = session.claims.get("name")
    if not isinstance(name, str):
        name = None
    return (session.sid, audience, session.sub, session.email, session.groups, name), name


class AssertionSigner:
    """Signs identity assertions with one P-256 key.

    Tokens are cached per (session, audience) and per identity content, so a refresh
    that changes the user's groups or email yields a new token at once. Not
    thread-safe: it is meant for one event loop.
    """

    def __init__(
        self, key: ec.EllipticCurvePrivateKey, *, ttl: int = 300, cache_size: int = 10000
    ) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("assertion signing key must be on curve P-256")
        if ttl < 5:
            raise ValueError("assertion ttl must be at least 5 seconds")
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._key = key
        self.ttl = ttl
        self._reuse_for = int(ttl * _REUSE_FRACTION)
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[Any, ...], tuple[str, int]] = OrderedDict()
        jwk = _public_jwk(key)
        self.kid: str = jwk["kid"]
        self._jwks: dict[str, Any] = {"keys": [{**jwk, "use": "sig", "alg": _ALG}]}
        self._headers = {"kid": self.kid}

    def sign(self, session: Session, *, audience: str, now: int) -> str:
        """The assertion for ``session`` at route host ``audience``.

        A cached token is returned while less than 80% of its lifetime has passed.
        """
        key, name = _cache_key(session, audience)
        hit = self._cache.get(key)
        if hit is not None:
            token, issued = hit
            if issued <= now < issued + self._reuse_for:
                self._cache.move_to_end(key)
                return token
        claims: dict[str, Any] = {
            "iss": audience,
            "aud": audience,
            "sub": session.sub,
            "groups": list(session.groups),
            "iat": now,
            "exp": now + self.ttl,
            "jti": secrets.token_urlsafe(12),
        }
        if session.email is not None:
            claims["email"] = session.email
        if name is not None:
            claims["name"] = name
        token = jwt.encode(claims, self._key, algorithm=_ALG, headers=self._headers)
        if self._cache_size:
            self._cache[key] = (token, now)
            self._cache.move_to_end(key)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return token

    def reused_until(self, session: Session, *, audience: str) -> int:
        """Until when (epoch seconds, exclusive) :meth:`sign` returns the token it has
        cached for ``session`` at ``audience``; 0 when it has none. The token stays
        valid past that (reuse ends at 80% of its lifetime)."""
        hit = self._cache.get(_cache_key(session, audience)[0])
        return 0 if hit is None else hit[1] + self._reuse_for

    def jwks(self) -> dict[str, Any]:
        """The public JWKS document (a fresh copy; callers may serialize or mutate it)."""
        return {"keys": [dict(k) for k in self._jwks["keys"]]}


def verify_assertion(token: str, jwks: dict[str, Any], audience: str) -> dict[str, Any]:
    """Verify an assertion as an upstream would: ES256 signature by a key in ``jwks``
    (chosen by ``kid``), ``iss`` and ``aud`` equal to ``audience``, not expired.

    Returns the claims; raises :class:`jwt.InvalidTokenError` otherwise.
    """
    header = jwt.get_unverified_header(token)
    kid = header.get("kid")
    for jwk in jwks.get("keys", []):
        if isinstance(jwk, dict) and jwk.get("kid") == kid:
            key = jwt.PyJWK(jwk, algorithm=_ALG)
            break
    else:
        raise jwt.InvalidTokenError("no key in the JWKS matches the token's kid")
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[_ALG],
        audience=audience,
        issuer=audience,
        options={"require": ["iss", "aud", "sub", "iat", "exp"]},
    )
    return claims
