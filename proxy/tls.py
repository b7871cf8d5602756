"""Server-side TLS: the SSL context, certificate hot reload, self-signed certificates.

Certificates are renewed on disk by tools such as certbot; reloading the chain into
the same :class:`ssl.SSLContext` makes every new handshake use the new certificate
while established connections keep theirs, so no restart is needed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = structlog.get_logger("clawgate.tls")

# Forward-secret AEAD suites only for TLS 1.2; TLS 1.3 suites are fixed by OpenSSL.
_TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


@dataclass(frozen=True)
class SelfSigned:
    cert_pem: bytes
    key_pem: bytes
    sha256_fingerprint: str


def generate_self_signed(hosts: list[str], days: int = 365) -> SelfSigned:
    """An EC P-256 certificate for ``hosts`` (DNS names or IP addresses)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts or ["localhost"]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clawgate self-signed")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SelfSigned(cert_pem, key_pem, fingerprint(cert))


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def certificate_not_after(path: Path) -> dt.datetime:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.not_valid_after_utc


class DirectSSLObject(ssl.SSLObject):
    """An :class:`ssl.SSLObject` whose ``read``, ``write`` and ``pending`` are the C
    object's own methods.

    uvloop's TLS transport calls these several times per request, and the Python
    wrappers in the ssl module only pass the arguments on: a call frame each, a few
    percent of a busy server's CPU. ``SSLContext.sslobject_class`` is the documented
    hook for a custom class; where the interpreter's ssl module does not look as
    expected, the wrappers stay.
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        self: DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        inner: Any = getattr(self, "_sslobj", None)
        names = ("read", "write", "pending")
        if all(callable(getattr(inner, name, None)) for name in names):
            self.__dict__.update({name: getattr(inner, name) for name in names})
        return self


def new_server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sslobject_class = DirectSSLObject
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class CertificateStore:
    """Owns the server SSL context and keeps it in step with the files on disk."""

    def __init__(self, cert_file: Path | None, key_file: Path | None, hosts: list[str]) -> None:
        self.context = new_server_context()
        self._cert_file = cert_file
        self._key_file = key_file
        self._stamp: tuple[float, float] | None = None
        if cert_file is None or key_file is None:
            self._load_self_signed(hosts)
        else:
            self._load_files(cert_file, key_file)

    def _load_self_signed(self, hosts: list[str]) -> None:
        made = generate_self_signed(hosts)
        # ssl can only load chains from files; keep them private and short-lived.
        with tempfile.TemporaryDirectory(prefix="clawgate-tls-") as tmp:
            cert = Path(tmp, "cert.pem")
            key = Path(tmp, "key.pem")
            cert.write_bytes(made.cert_pem)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(made.key_pem)
            self.context.load_cert_chain(cert, key)
        log.warning(
            "tls_self_signed",
            detail="no certificate_file given: serving a self-signed certificate; "
            "browsers will warn. Use real certificates in production.",
            sha256=made.sha256_fingerprint,
            hosts=hosts,
        )

    def _load_files(self, cert_file: Path, key_file: Path) -> None:
        self.context.load_cert_chain(cert_file, key_file)
        self._stamp = self._mtimes()
        log.info("tls_certificate_loaded", certificate_file=str(cert_file))

    def _mtimes(self) -> tuple[float, float] | None:
        if self._cert_file is None or self._key_file is None:
            return None
        try:
            return (self._cert_file.stat().st_mtime, self._key_file.stat().st_mtime)
        except OSError:
            return None

    def reload_if_changed(self) -> bool:
        """Reload when the files changed; keep the old pair if the new one is broken."""
        if self._cert_file is None or self._key_file is None:
            return False
        stamp = self._mtimes()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            self.context.load_cert_chain(self._cert_file, self._key_file)
        except (OSError, ssl.SSLError) as exc:
            # Half-written renewals are common (cert written before key): retry next tick.
            log.error("tls_reload_failed", error=str(exc), certificate_file=str(self._cert_file))
            return False
        self._stamp = stamp
        log.info("tls_certificate_reloaded", certificate_file=str(self._cert_file))
        return True

    async def watch(self, interval: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
