"""Host keys on both sides of the door.

The door's own host keys: configured files, or keys generated once into the state
directory and reused on every start, so users never see a host-key-changed warning.

The upstream's host key: checked against a configured known_hosts file, or trusted on
first use and pinned in ``state_dir/upstream_known_hosts``; a changed key is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import asyncssh
import structlog

from proxy.private_file import write_private
from proxy.ssh._types import SshSetupError

log = structlog.get_logger("clawgate.ssh")

# Generated when no host key files are configured: Ed25519 for every current client,
# RSA for old ones that know nothing else.
_GENERATED: tuple[tuple[str, str, dict[str, int]], ...] = (
    ("ssh_host_ed25519_key", "ssh-ed25519", {}),
    ("ssh_host_rsa_key", "ssh-rsa", {"key_size": 3072}),
)

PINNED_FILE = "upstream_known_hosts"


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state directory 0700 if it does not exist."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SshSetupError(f"SSH state directory {state_dir}: {exc.strerror}") from None
    if not state_dir.is_dir():
        raise SshSetupError(f"SSH state directory {state_dir}: not a directory")


def read_host_key(path: Path) -> asyncssh.SSHKey:
    """A configured host key file (SshSetupError naming the file and the reason)."""
    return _read_key(path, "SSH host key")


def load_host_keys(files: Sequence[Path], state_dir: Path) -> list[asyncssh.SSHKey]:
    """The door's host keys: ``files`` when given, else generated once in ``state_dir``."""
    if files:
        return [read_host_key(path) for path in files]
    ensure_state_dir(state_dir)
    keys = []
    for name, alg, params in _GENERATED:
        path = state_dir / name
        if not path.exists():
            _generate(path, alg, params)
        keys.append(_read_key(path, "generated SSH host key"))
    return keys


def _read_key(path: Path, what: str) -> asyncssh.SSHKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SshSetupError(f"{what} {path}: file not found") from None
    except PermissionError:
        raise SshSetupError(f"{what} {path}: permission denied") from None
    except OSError as exc:
        raise SshSetupError(f"{what} {path}: {exc.strerror}") from None
    try:
        return asyncssh.import_private_key(data)
    except asyncssh.KeyImportError as exc:
        # A corrupt generated key is an error too, never silently replaced: a new key
        # would look like an attack to every user's client.
        raise SshSetupError(
            f"{what} {path}: not a usable unencrypted private key ({exc})"
        ) from None


def _generate(path: Path, alg: str, params: dict[str, int]) -> None:
    """Generate a key into ``path`` (0600); if another process got there first, keep theirs."""
    key = asyncssh.generate_private_key(alg, comment="clawgate", **params)
    try:
        # Not replacing: two workers starting at once end up with the one key written
        # first, and nobody ever reads a half-written file.
        if write_private(path, key.export_private_key("openssh"), replace=False):
            log.info("ssh_host_key_generated", file=str(path), fingerprint=key.get_fingerprint())
    except OSError as exc:
        raise SshSetupError(f"SSH host key {path}: cannot write ({exc.strerror})") from None


def _pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class PinnedHosts:
    """Trust-on-first-use pins of upstream host keys, in OpenSSH known_hosts format."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def pinned(self, host: str, port: int) -> list[asyncssh.SSHKey]:
        """The keys pinned for host:port (empty when it was never seen)."""
        wanted = _pattern(host, port)
        keys = []
        for line in self._lines():
            fields = line.split()
            if len(fields) < 3 or fields[0] != wanted:
                continue
            try:
                keys.append(asyncssh.import_public_key(" ".join(fields[1:3])))
            except asyncssh.KeyImportError:
                raise SshSetupError(f"{self.path}: unreadable key line for {wanted}") from None
        return keys

    def pin(self, host: str, port: int, key: asyncssh.SSHKey) -> bool:
        """Pin ``key`` unless host:port already has pins; True when it matches them after."""
        with self._locked():
            current = self.pinned(host, port)
            if current:
                return key in current
            line = (
                f"{_pattern(host, port)} {key.export_public_key('openssh').decode('ascii').strip()}"
            )
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="ascii") as out:
                out.write(line + "\n")
            log.info(
                "ssh_upstream_host_key_pinned",
                upstream=f"{host}:{port}",
                fingerprint=key.get_fingerprint(),
                file=str(self.path),
            )
            return True

    def _lines(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise SshSetupError(f"{self.path}: cannot read ({exc})") from None
        return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Workers of one machine share the file: first use must pin one key, not two.
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
