"""``clawgate sessions revoke`` with the memory store: a signed request to the running
process group's health listener, which signs the user out as a sign-out made there
(its workers learn it through proxy/peers.py).

The health listener may be reachable by more than the operator (``0.0.0.0`` in a pod
for the kubelet), so the request carries an HMAC made with a key derived from the
configured cookie secret, which only whoever can read the config (and its secret
files) has; it is accepted for a minute. Replaying one within that minute repeats a
sign-out, which changes nothing. Only sign-outs can be asked this way: the worst a
forged request could do is sign people out, and it cannot be forged.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from proxy.store import Revocation

__all__ = ["PATH", "SIGNATURE_HEADER", "RevokeRequestError", "read", "sign"]

PATH = "/sessions/revoke"
SIGNATURE_HEADER = "X-Clawgate-Signature"
_MAX_SKEW = 60
_MAX_BODY = 4096


class RevokeRequestError(ValueError):
    pass


def _key(cookie_secret: str) -> bytes:
    return hashlib.sha256(b"clawgate sessions revoke\0" + cookie_secret.encode()).digest()


def sign(revocation: Revocation, cookie_secret: str, now: int) -> tuple[bytes, str]:
    """The request body and its signature header value."""
    body = json.dumps(
        {
            "kind": revocation.kind,
            "subject": revocation.subject,
            "not_before": revocation.not_before,
            "until": revocation.until,
            "at": now,
        }
    ).encode()
    return body, hmac.new(_key(cookie_secret), body, hashlib.sha256).hexdigest()


def read(body: bytes, signature: str, cookie_secrets: list[str], now: int) -> Revocation:
    """The revocation a request asks for; RevokeRequestError says why not."""
    if len(body) > _MAX_BODY:
        raise RevokeRequestError("body too large")
    if not any(
        hmac.compare_digest(hmac.new(_key(s), body, hashlib.sha256).hexdigest(), signature)
        for s in cookie_secrets
    ):
        raise RevokeRequestError("bad signature")
    try:
        doc = json.loads(body)
        kind, subject = doc["kind"], doc["subject"]
        not_before, until, at = doc["not_before"], doc["until"], doc["at"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RevokeRequestError("malformed") from exc
    if kind not in ("user", "all") or not isinstance(subject, str):
        raise RevokeRequestError("malformed")
    if not all(type(v) is int for v in (not_before, until, at)):
        raise RevokeRequestError("malformed")
    if abs(now - at) > _MAX_SKEW:
        raise RevokeRequestError("stale")
    return Revocation(kind, subject, not_before, until)
