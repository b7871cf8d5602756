"""How clawgate authenticates itself to the provider's token endpoint (RFC 6749 2.3,
OpenID Connect Core 9): ``client_secret_basic``, ``client_secret_post`` or
``private_key_jwt`` (a short-lived JWT signed with the client's own key, which the
provider knows by its public half; no shared secret at all).

``idp_token_endpoint_auth_method`` picks one; unset, clawgate uses ``private_key_jwt``
when a key is configured, else the first of basic and post the provider lists in
``token_endpoint_auth_methods_supported`` (basic when it lists none, as the spec's
default). A method the provider does not list is refused before any request.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = ["METHODS", "ClientAuth", "ClientAuthError", "load_private_key"]

METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
# How long a client assertion is valid: one token request, with clock skew.
_ASSERTION_LIFETIME = 60

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class ClientAuthError(ValueError):
    """The configured method cannot be used (the message names what to change)."""


def load_private_key(path: Path) -> PrivateKey:
    """An RSA (2048 bits or more) or EC P-256/384/521 private key from a PEM file."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ClientAuthError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ClientAuthError(f"{path} is not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ClientAuthError(f"{path}: an RSA key needs 2048 bits or more")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _EC_ALGS:
        return key
    raise ClientAuthError(f"{path}: use an RSA or an EC P-256/P-384/P-521 key")


_EC_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def _algorithm(key: PrivateKey) -> str:
    return "RS256" if isinstance(key, rsa.RSAPrivateKey) else _EC_ALGS[key.curve.name]


@dataclass(frozen=True)
class ClientAuth:
    client_id: str
    client_secret: str
    method: str | None = None  # idp_token_endpoint_auth_method; None: chosen (above)
    private_key: PrivateKey | None = None

    def choose(self, supported: tuple[str, ...] | None) -> str:
        """The method to use with a provider that lists ``supported`` (None: lists none)."""
        if self.method is not None:
            wanted = self.method
        elif self.private_key is not None:
            wanted = "private_key_jwt"
        else:
            offered = supported or ("client_secret_basic",)
            wanted = next(
                (m for m in ("client_secret_basic", "client_secret_post") if m in offered),
                "client_secret_basic",
            )
        if supported is not None and wanted not in supported:
            raise ClientAuthError(
                f"the identity provider does not accept {wanted} "
                f"(it lists {', '.join(supported) or 'nothing'})"
            )
        if wanted == "private_key_jwt" and self.private_key is None:
            raise ClientAuthError("private_key_jwt needs idp_client_private_key_file")
        return wanted

    def apply(
        self, method: str, body: str, token_endpoint: str, now: int
    ) -> tuple[str, dict[str, str]]:
        """The request body and headers for one token request."""
        if method == "client_secret_basic":
            # RFC 6749 2.3.1: both halves are form-encoded before going into Basic auth.
            pair = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
            return body, {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        if method == "client_secret_post":
            extra = {"client_id": self.client_id, "client_secret": self.client_secret}
            return _join(body, extra), {}
        assert self.private_key is not None
        assertion = jwt.encode(
            {
                "iss": self.client_id,
                "sub": self.client_id,
                "aud": token_endpoint,
                "jti": secrets.token_urlsafe(24),
                "iat": now,
                "exp": now + _ASSERTION_LIFETIME,
            },
            self.private_key,
            algorithm=_algorithm(self.private_key),
            # No kid: providers try every key registered for the client (a kid they
            # do not know, such as the key's RFC 7638 thumbprint, fails the match).
        )
        extra = {
            "client_id": self.client_id,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
        return _join(body, extra), {}


def _join(body: str, extra: dict[str, str]) -> str:
    return f"{body}&{urlencode(extra)}" if body else urlencode(extra)
