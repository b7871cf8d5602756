"""Credentials a request may carry besides the session cookie: an API key
(``Authorization: Bearer cgk_...``, proxy/apikeys/) or a local user's password
(``Authorization: Basic``, proxy/localusers/).

One parse for both request paths: the front hands every request that carries one to
the handler (``for_clawgate``), which is the only place they are checked. An
``Authorization`` header that is neither (the upstream's own bearer token, say) is not
clawgate's and passes through as before.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Ambiguous", "ApiKeyCredential", "BasicCredential", "for_clawgate", "presented"]

_KEY_PREFIX = "cgk_"


@dataclass(frozen=True)
class ApiKeyCredential:
    key: str


@dataclass(frozen=True)
class BasicCredential:
    user: str
    password: str


@dataclass(frozen=True)
class Ambiguous:
    """More than one Authorization header, or a Basic one that does not decode."""

    reason: str


def for_clawgate(value: bytes) -> bool:
    """Whether an Authorization header value is a credential clawgate checks itself."""
    scheme, _, rest = value.strip().partition(b" ")
    scheme = scheme.lower()
    return scheme == b"basic" or (scheme == b"bearer" and rest.strip().startswith(b"cgk_"))


def presented(
    values: Sequence[str],
) -> ApiKeyCredential | BasicCredential | Ambiguous | None:
    """The clawgate credential in a request's Authorization header values, if any."""
    ours = [v for v in values if for_clawgate(v.encode("latin-1", "replace"))]
    if not ours:
        return None
    if len(values) > 1:
        return Ambiguous("more than one Authorization header")
    scheme, _, rest = ours[0].strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer":
        return ApiKeyCredential(rest)
    try:
        decoded = base64.b64decode(rest, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return Ambiguous("Basic credentials that do not decode")
    user, colon, password = decoded.partition(":")
    if not colon or not user:
        return Ambiguous("Basic credentials without a user name")
    return BasicCredential(user, password)
