"""Certificates as autocert serves them: checked, and loaded into an SSL context.

A chain is only served after checking it is what was asked for (the leaf names the
host and carries the public half of the key stored with it), so a tampered or
half-replaced state directory ends in the self-signed fallback and an error, never in
a wrong certificate.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.autocert._config import AutocertError
from proxy.autocert._storage import StateDir, read_bytes, read_json, stamp
from proxy.tls import new_server_context

# Renew once this share of the lifetime has passed (Let's Encrypt: day 60 of 90).
RENEW_FRACTION = 2 / 3


@dataclass(frozen=True)
class Served:
    """One host's certificate, loaded and ready for the SNI callback."""

    context: ssl.SSLContext
    chain_pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    # (inode, size, mtime) of cert.pem when read; None when not from disk.
    stamp: tuple[int, int, int] | None
    directory: str | None

    @property
    def renew_at(self) -> dt.datetime:
        return self.not_before + (self.not_after - self.not_before) * RENEW_FRACTION

    def expired(self, now: dt.datetime) -> bool:
        return now >= self.not_after


def new_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def check_chain(host: str, chain_pem: bytes, key_pem: bytes) -> x509.Certificate:
    """The leaf of ``chain_pem``, after checking it is for ``host`` and ``key_pem``."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise AutocertError("the certificate chain is not PEM") from None
    leaf = chain[0]
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise AutocertError("the certificate names no host (no subjectAltName)") from None
    dns_names = [name.lower() for name in names.get_values_for_type(x509.DNSName)]
    if host not in dns_names:
        raise AutocertError(f"the certificate is for {', '.join(dns_names)}, not {host}")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise AutocertError("the certificate's private key is not a PEM key") from None
    if key.public_key() != leaf.public_key():
        raise AutocertError("the certificate does not match its private key")
    return leaf


def context_from_pem(
    chain_pem: bytes, key_pem: bytes, scratch: Path, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """A server context serving this chain and key.

    The ssl module loads chains only from files: they go through a private temporary
    directory under the (0700) state directory, and are gone when this returns.
    """
    context = new_server_context()
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    tmp = Path(tempfile.mkdtemp(prefix="load-", dir=scratch))
    try:
        cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
        for path, data in ((cert_file, chain_pem), (key_file, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        context.load_cert_chain(cert_file, key_file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return context


def served_from_pem(
    host: str,
    chain_pem: bytes,
    key_pem: bytes,
    scratch: Path,
    *,
    file_stamp: tuple[int, int, int] | None,
    directory: str | None,
) -> Served:
    leaf = check_chain(host, chain_pem, key_pem)
    try:
        context = context_from_pem(chain_pem, key_pem, scratch)
    except ssl.SSLError as exc:
        raise AutocertError(f"the certificate cannot be loaded: {exc.reason}") from None
    return Served(
        context=context,
        chain_pem=chain_pem,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        serial=leaf.serial_number,
        stamp=file_stamp,
        directory=directory,
    )


def load_stored(state: StateDir, host: str, scratch: Path) -> Served | None:
    """The stored certificate of ``host``; None when there is none. Raises
    AutocertError when what is stored cannot be served (broken, or mid-replacement)."""
    cert_file = state.cert_file(host)
    before = stamp(cert_file)
    if before is None:
        return None
    chain_pem = read_bytes(cert_file)
    key_pem = read_bytes(state.key_file(host))
    if chain_pem is None or key_pem is None:
        raise AutocertError("the stored certificate or its key is missing")
    meta = read_json(state.meta_file(host)) or {}
    directory = meta.get("directory")
    return served_from_pem(
        host,
        chain_pem,
        key_pem,
        scratch,
        file_stamp=before,
        directory=directory if isinstance(directory, str) else None,
    )


def meta_json(directory: str, challenge: str) -> bytes:
    return json.dumps(
        {
            "directory": directory,
            "challenge": challenge,
            "obtained": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    ).encode()
