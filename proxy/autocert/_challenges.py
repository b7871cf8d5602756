"""Answering the CA's challenges, from whichever process its validation reaches.

The CA validates by connecting to the host: with several workers on one port (or
replicas behind one address) that connection lands on any of them, not necessarily
on the one that ordered. So the process that orders *publishes* each pending
challenge as a file under ``challenges/`` and every process running autocert picks
those files up (:class:`ChallengeBoard`, scanned a few times a second), next to the
challenges it published itself. Lookups on the request path are dictionary reads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.b64 import b64encode
from josepy.jwk import JWK

from proxy.autocert._certs import context_from_pem
from proxy.autocert._storage import StateDir, read_json, stamp, write_private

ACME_TLS_1 = "acme-tls/1"
# RFC 8737 section 6.1: id-pe-acmeIdentifier.
_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
# RFC 8555 tokens are base64url with at least 128 bits; also what keeps a token a
# safe file name.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,256}")
# A challenge file older than this is left over from a process that died while its
# challenge was pending (the publisher removes it otherwise): ignored and removed. Two
# validation timeouts: a leftover TLS-ALPN-01 file would otherwise keep answering
# ordinary handshakes for its host with the challenge certificate.
_STALE_AFTER = 180


def valid_token(token: str) -> bool:
    return _TOKEN.fullmatch(token) is not None


def key_authorization(token: str, account_key: JWK) -> str:
    """RFC 8555 section 8.1: token "." base64url(JWK thumbprint of the account key)."""
    thumbprint = account_key.public_key().thumbprint(hash_function=hashes.SHA256)
    return f"{token}.{b64encode(thumbprint).decode()}"


def tls_alpn01_certificate(host: str, key_authorization: str) -> tuple[bytes, bytes]:
    """RFC 8737 section 3: a self-signed certificate naming only ``host``, with the
    critical acmeIdentifier extension holding SHA-256 of the key authorization."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    # The extension's value is the DER of "OCTET STRING (SIZE (32))".
    extension = x509.UnrecognizedExtension(_ACME_IDENTIFIER, b"\x04\x20" + digest)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clawgate ACME challenge")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(extension, critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def alpn_context(cert_pem: bytes, key_pem: bytes, scratch: Path) -> ssl.SSLContext:
    """The context a TLS-ALPN-01 validation handshake is switched to: the challenge
    certificate, and ``acme-tls/1`` as the only protocol."""
    return context_from_pem(cert_pem, key_pem, scratch, alpn=[ACME_TLS_1])


def publish_http01(state: StateDir, token: str, key_authorization: str) -> None:
    if not valid_token(token):
        raise ValueError("the CA sent a malformed challenge token")
    write_private(state.http01_dir / token, key_authorization.encode())


def publish_tls_alpn01(state: StateDir, host: str, key_authorization: str) -> ssl.SSLContext:
    cert_pem, key_pem = tls_alpn01_certificate(host, key_authorization)
    payload = {"host": host, "cert": cert_pem.decode(), "key": key_pem.decode()}
    write_private(state.tls_alpn01_dir / f"{host}.json", json.dumps(payload).encode())
    return alpn_context(cert_pem, key_pem, state.scratch)


def read_http01(state: StateDir, token: str) -> str | None:
    """A token another process published and this one has not scanned yet (the CA's
    request can reach any worker at once): read from the disk, if fresh."""
    if not valid_token(token):
        return None
    path = state.http01_dir / token
    try:
        if time.time() - path.stat().st_mtime > _STALE_AFTER:
            return None
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None


def withdraw_http01(state: StateDir, token: str) -> None:
    if valid_token(token):
        with contextlib.suppress(FileNotFoundError):
            (state.http01_dir / token).unlink()


def withdraw_tls_alpn01(state: StateDir, host: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (state.tls_alpn01_dir / f"{host}.json").unlink()


_Stamp = tuple[int, int, int]


@dataclass(frozen=True)
class Published:
    """What other processes have published, as read from the disk."""

    http01: dict[str, str]
    tls_alpn01: dict[str, tuple[_Stamp, ssl.SSLContext]]


def read_published(state: StateDir, known: dict[str, tuple[_Stamp, ssl.SSLContext]]) -> Published:
    """Scan ``challenges/`` (blocking: run it in a thread). TLS-ALPN-01 contexts are
    only rebuilt for files that changed since ``known``."""
    now = time.time()
    http01: dict[str, str] = {}
    for path in _fresh_files(state.http01_dir, now):
        if not valid_token(path.name):
            continue
        try:
            value = path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if value.startswith(path.name + "."):
            http01[path.name] = value
    tls_alpn01: dict[str, tuple[_Stamp, ssl.SSLContext]] = {}
    for path in _fresh_files(state.tls_alpn01_dir, now):
        if not path.name.endswith(".json"):
            continue
        host = path.name[: -len(".json")]
        file_stamp = stamp(path)
        if file_stamp is None:
            continue
        previous = known.get(host)
        if previous is not None and previous[0] == file_stamp:
            tls_alpn01[host] = previous
            continue
        data = read_json(path)
        if data is None or data.get("host") != host:
            continue
        try:
            context = alpn_context(
                str(data["cert"]).encode(), str(data["key"]).encode(), state.scratch
            )
        except (KeyError, ssl.SSLError, OSError):
            continue
        tls_alpn01[host] = (file_stamp, context)
    return Published(http01, tls_alpn01)


def _fresh_files(directory: Path, now: float) -> list[Path]:
    files: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return files
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        if age > _STALE_AFTER:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
            continue
        files.append(Path(entry.path))
    return files


class ChallengeBoard:
    """The challenges this process answers: those it published, and those read from
    the disk. ``http01`` and ``tls_alpn01`` are replaced whole, never mutated, so a
    reader on the request path sees one consistent map."""

    def __init__(self) -> None:
        self.http01: dict[str, str] = {}
        self.tls_alpn01: dict[str, ssl.SSLContext] = {}
        self._own_http01: dict[str, str] = {}
        self._own_tls_alpn01: dict[str, ssl.SSLContext] = {}
        self._published = Published({}, {})

    @property
    def known_tls_alpn01(self) -> dict[str, tuple[_Stamp, ssl.SSLContext]]:
        return dict(self._published.tls_alpn01)

    def add_http01(self, token: str, key_authorization: str) -> None:
        self._own_http01[token] = key_authorization
        self._rebuild()

    def remove_http01(self, token: str) -> None:
        self._own_http01.pop(token, None)
        self._rebuild()

    def add_tls_alpn01(self, host: str, context: ssl.SSLContext) -> None:
        self._own_tls_alpn01[host] = context
        self._rebuild()

    def remove_tls_alpn01(self, host: str) -> None:
        self._own_tls_alpn01.pop(host, None)
        self._rebuild()

    def update(self, published: Published) -> None:
        self._published = published
        self._rebuild()

    def clear_published(self) -> None:
        self.update(Published({}, {}))

    def _rebuild(self) -> None:
        http01 = dict(self._published.http01)
        http01.update(self._own_http01)
        tls_alpn01 = {host: ctx for host, (_, ctx) in self._published.tls_alpn01.items()}
        tls_alpn01.update(self._own_tls_alpn01)
        self.http01 = http01
        self.tls_alpn01 = tls_alpn01
