"""The User CA: short-lived OpenSSH user certificates for the upstream sshd.

The upstream trusts the CA (``TrustedUserCAKeys``) and maps principals to logins
(``AuthorizedPrincipalsFile``). clawgate signs one certificate per upstream connection,
for a fresh ephemeral key that never leaves the process, valid for minutes: a leaked
certificate is useless without that key and dies soon anyway. The extensions carry only
what the route allows, so the upstream enforces the route's limits too.
"""

from __future__ import annotations

import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import structlog

from proxy.private_file import write_private
from proxy.ssh._types import SshRoute, SshSetupError

log = structlog.get_logger("clawgate.ssh")

# How far back a certificate's validity starts: the upstream's clock may lag ours.
CLOCK_SKEW = 30.0
# How long a certificate is valid: it is only presented once, when the upstream
# connection authenticates; the connection itself outlives it.
CERT_LIFETIME = 300.0


@dataclass(frozen=True)
class CertExtensions:
    """The OpenSSH certificate extensions granted; ``permit-user-rc`` is never granted."""

    pty: bool = False
    port_forwarding: bool = False
    agent_forwarding: bool = False
    x11_forwarding: bool = False

    @classmethod
    def for_route(cls, route: SshRoute) -> CertExtensions:
        return cls(
            pty=route.allow_pty,
            port_forwarding=route.allow_port_forwarding,
            agent_forwarding=route.allow_agent_forwarding,
            x11_forwarding=route.allow_x11_forwarding,
        )


class UserCA:
    """The CA private key, loaded once; signs user certificates."""

    def __init__(self, key: asyncssh.SSHKey, source: str = "<memory>") -> None:
        self._key = key
        self._source = source

    @classmethod
    def load(cls, path: Path) -> UserCA:
        """Read an unencrypted OpenSSH private key; SshSetupError names file and reason."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SshSetupError(f"SSH user CA key {path}: file not found") from None
        except PermissionError:
            raise SshSetupError(f"SSH user CA key {path}: permission denied") from None
        except IsADirectoryError:
            raise SshSetupError(f"SSH user CA key {path}: is a directory") from None
        except OSError as exc:
            raise SshSetupError(f"SSH user CA key {path}: {exc.strerror}") from None
        try:
            key = asyncssh.import_private_key(data)
        except asyncssh.KeyImportError as exc:
            # The reason from asyncssh says what was wrong (encrypted, unknown format),
            # never the key bytes.
            raise SshSetupError(
                f"SSH user CA key {path}: not a usable unencrypted private key ({exc})"
            ) from None
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = 0
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            # Not fatal: secrets mounted by orchestrators are often 0444; but say so.
            log.warning(
                "ssh_ca_key_permissions",
                file=str(path),
                mode=oct(stat.S_IMODE(mode)),
                hint="chmod 600",
            )
        return cls(key, str(path))

    def public_line(self) -> str:
        """The CA's public key line, for the upstream's ``TrustedUserCAKeys``."""
        return self._key.export_public_key("openssh").decode("ascii").strip()

    def sign(
        self,
        public_key: asyncssh.SSHKey,
        *,
        principal: str,
        key_id: str,
        lifetime: float = CERT_LIFETIME,
        extensions: CertExtensions,
        now: float | None = None,
    ) -> asyncssh.SSHCertificate:
        """A user certificate for ``public_key``: one principal, minutes of validity."""
        if not principal:
            raise ValueError("a certificate needs a principal")
        if lifetime <= 0:
            raise ValueError("a certificate lifetime must be positive")
        at = time.time() if now is None else now
        return self._key.generate_user_certificate(
            public_key,
            key_id,
            # A random serial makes each certificate identifiable in the upstream's log
            # and revocable by serial if it ever came to that.
            serial=secrets.randbits(63),
            principals=[principal],
            valid_after=int(at - CLOCK_SKEW),
            valid_before=int(at + lifetime),
            permit_pty=extensions.pty,
            permit_port_forwarding=extensions.port_forwarding,
            permit_agent_forwarding=extensions.agent_forwarding,
            permit_x11_forwarding=extensions.x11_forwarding,
            permit_user_rc=False,
        )


def init_ca(path: Path, *, force: bool = False) -> str:
    """Write a new Ed25519 CA key (0600) and ``<path>.pub``; return the public line.

    Refuses to replace an existing key unless ``force``: every upstream trusting the
    old CA would stop accepting clawgate's certificates.
    """
    pub_path = path.with_name(path.name + ".pub")
    if path.exists() and not force:
        raise SshSetupError(f"SSH user CA key {path}: already exists (use force to replace)")
    key = asyncssh.generate_private_key("ssh-ed25519", comment="clawgate-user-ca")
    private = key.export_private_key("openssh")
    public_line = key.export_public_key("openssh").decode("ascii").strip()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not write_private(path, private, replace=force):
            raise FileExistsError(path)
        pub_path.write_text(public_line + "\n", encoding="ascii")
    except FileExistsError:
        raise SshSetupError(
            f"SSH user CA key {path}: already exists (use force to replace)"
        ) from None
    except OSError as exc:
        raise SshSetupError(f"SSH user CA key {path}: cannot write ({exc.strerror})") from None
    return public_line
