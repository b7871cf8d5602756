"""What autocert is told: the CA, where to keep its state, how it may prove control.

Pure: no I/O. :func:`refused_hosts` is what both ``clawgate check`` and the running
manager use to decide which hosts autocert leaves to the self-signed fallback.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"

TLS_ALPN_01 = "tls-alpn-01"
HTTP_01 = "http-01"
CHALLENGE_TYPES = (TLS_ALPN_01, HTTP_01)

# One DNS label as CAs accept it: letters, digits, inner hyphens, at most 63 octets.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class AutocertError(Exception):
    """Why autocert could not do something; the message is safe to log and show."""


@dataclass(frozen=True)
class AutocertConfig:
    """Settings of the ACME client.

    ``challenges`` is the order in which challenge types are tried; ``http01`` and
    ``tls_alpn01`` say which of them clawgate can answer (a type that is disabled is
    skipped wherever it appears). Validity is checked at construction so a bad value
    fails at ``clawgate check``, not at the first renewal weeks later.
    """

    directory_url: str
    state_dir: Path
    email: str | None = None
    trusted_ca: Path | None = None
    eab_key_id: str | None = None
    # A secret: kept out of repr() so it never reaches a log line or a traceback.
    eab_mac_key: str | None = field(default=None, repr=False)
    http01: bool = True
    tls_alpn01: bool = True
    challenges: tuple[str, ...] = CHALLENGE_TYPES
    # Failure backoff: the first retry after retry_min seconds, doubling up to retry_max.
    retry_min: float = 10.0
    retry_max: float = 3600.0

    def __post_init__(self) -> None:
        url = urlsplit(self.directory_url)
        # ACME messages are signed, but the directory tells the client where to send
        # them and which terms it agrees to: only ever fetched over verified TLS.
        if url.scheme != "https" or not url.hostname:
            raise ValueError(
                f"the ACME directory must be an https:// URL, not {self.directory_url!r}"
            )
        unknown = [c for c in self.challenges if c not in CHALLENGE_TYPES]
        if unknown:
            raise ValueError(
                f"unknown ACME challenge type(s) {', '.join(unknown)}; "
                f"autocert offers {', '.join(CHALLENGE_TYPES)}"
            )
        if not self.enabled_challenges:
            raise ValueError(
                "autocert has no challenge it can answer: enable the HTTP listener "
                "(HTTP-01) or TLS-ALPN-01 on the TLS listener"
            )
        if (self.eab_key_id is None) != (self.eab_mac_key is None):
            raise ValueError("external account binding needs both the key id and the MAC key")
        if self.eab_mac_key is not None:
            try:
                decode_b64url(self.eab_mac_key)
            except ValueError:
                # Never echo the value: it is the account's HMAC secret.
                raise ValueError("the external account MAC key is not base64url") from None
        if self.email is not None and (
            "@" not in self.email or any(c.isspace() or c == "," for c in self.email)
        ):
            raise ValueError(f"not an e-mail address for the ACME account: {self.email!r}")
        if not 0 < self.retry_min <= self.retry_max:
            raise ValueError("retry_min must be positive and at most retry_max")

    @property
    def enabled_challenges(self) -> tuple[str, ...]:
        """The challenge types to try, in order, that clawgate can answer."""
        enabled = {TLS_ALPN_01: self.tls_alpn01, HTTP_01: self.http01}
        order: list[str] = []
        for kind in self.challenges:
            if enabled.get(kind) and kind not in order:
                order.append(kind)
        return tuple(order)


def decode_b64url(value: str) -> bytes:
    """Decode base64url with or without padding; ValueError when it is not."""
    text = value.strip()
    if not text or not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def normalize_host(host: str) -> str:
    """Host names compare case-insensitively and without a final dot."""
    return host.strip().lower().rstrip(".")


def refusal(host: str) -> str | None:
    """Why autocert will not get a certificate for ``host`` (normalized), or None."""
    if not host:
        return "empty host name"
    if "*" in host:
        return "a wildcard needs DNS-01, which autocert does not offer"
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return "an IP address: autocert only gets certificates for DNS names"
    if not host.isascii():
        try:
            a_label = host.encode("idna").decode()
        except UnicodeError:
            return "not a valid DNS name"
        return f"an internationalized name: write it as {a_label!r}"
    if "." not in host:
        return "a name without a dot (like localhost) cannot get a public certificate"
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        return "not a valid DNS name (letters, digits, hyphens and dots only, no port)"
    return None


def refused_hosts(hosts: Iterable[str]) -> dict[str, str]:
    """host -> why autocert will not get a certificate for it (the others it will)."""
    refused: dict[str, str] = {}
    for host in hosts:
        why = refusal(normalize_host(host))
        if why is not None:
            refused[host] = why
    return refused
