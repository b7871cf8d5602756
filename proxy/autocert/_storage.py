"""autocert's state directory: the layout, private atomic writes, and cross-process locks.

Layout (directories 0700, files 0600)::

    accounts/<sha256(directory)[:16]>/account.key   the account's private key (PEM)
    accounts/<sha256(directory)[:16]>/account.json  its URL at the CA, contact, directory
    certificates/<host>/cert.pem                    leaf + chain as the CA sent it
    certificates/<host>/key.pem                     the certificate's private key
    certificates/<host>/meta.json                   which directory issued it, how
    challenges/http-01/<token>                      key authorizations being validated
    challenges/tls-alpn-01/<host>.pem               challenge certificate + key
    tmp/                                            keys on their way into an SSL context
    locks/<name>.lock                               flock(2) targets

Several processes (workers, replicas on a shared volume) use one state directory:
every file is replaced by rename, so a reader sees the old or the new file, never half
of one; and whoever orders a certificate holds ``locks/<host>.lock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from proxy import private_file
from proxy.autocert._config import AutocertError

log = structlog.get_logger("clawgate.autocert")

_PRIVATE_DIR = 0o700
_PRIVATE_FILE = 0o600


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it 0700: it holds private keys."""
    path.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode != _PRIVATE_DIR:
        try:
            path.chmod(_PRIVATE_DIR)
        except OSError as exc:
            # A volume mounted by someone else: say so, do not pretend it is private.
            log.warning(
                "autocert_state_dir_not_private", path=str(path), mode=oct(mode), error=str(exc)
            )


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as a 0600 file, atomically (proxy/private_file.py)."""
    private_file.write_private(path, data)


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def read_json(path: Path) -> dict[str, Any] | None:
    data = read_bytes(path)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        log.warning("autocert_state_unreadable", path=str(path))
        return None
    return value if isinstance(value, dict) else None


def stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when ``path`` is replaced: inode, size, mtime."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@contextlib.asynccontextmanager
async def file_lock(path: Path, wait: float, poll: float = 0.1) -> AsyncIterator[None]:
    """Hold an exclusive ``flock`` on ``path`` without blocking the event loop.

    Non-blocking attempts with short sleeps: a thread blocked in flock(2) could not be
    cancelled and would take the lock after its waiter had gone. The lock belongs to
    the open file description, so two holders in one process exclude each other too,
    and it is released when the descriptor is closed, also if the process dies. A
    holder that is alive but stuck (stopped, hung on a disk) is waited for ``wait``
    seconds at most.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _PRIVATE_FILE)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() > deadline:
                raise AutocertError(f"another process has held {path.name} for over {wait:.0f} s")
            await asyncio.sleep(poll)
        yield
    finally:
        os.close(fd)


class StateDir:
    """Paths inside the state directory; :meth:`prepare` creates the directories."""

    def __init__(self, root: Path, directory_url: str) -> None:
        self.root = root
        digest = hashlib.sha256(directory_url.encode()).hexdigest()[:16]
        self.account_dir = root / "accounts" / digest
        self.account_id = digest
        self.certificates = root / "certificates"
        self.locks = root / "locks"
        self.http01_dir = root / "challenges" / "http-01"
        self.tls_alpn01_dir = root / "challenges" / "tls-alpn-01"
        # Where keys pass through on their way into an SSL context (see _certs).
        self.scratch = root / "tmp"

    def prepare(self) -> None:
        for path in (
            self.root,
            self.root / "accounts",
            self.account_dir,
            self.certificates,
            self.locks,
            self.root / "challenges",
            self.http01_dir,
            self.tls_alpn01_dir,
            self.scratch,
        ):
            ensure_private_dir(path)

    @property
    def account_key(self) -> Path:
        return self.account_dir / "account.key"

    @property
    def account_json(self) -> Path:
        return self.account_dir / "account.json"

    @property
    def account_lock(self) -> Path:
        return self.locks / f"account-{self.account_id}.lock"

    def host_dir(self, host: str) -> Path:
        # Hosts reach here only after refusal() accepted them: no '/', no '..'.
        return self.certificates / host

    def cert_file(self, host: str) -> Path:
        return self.host_dir(host) / "cert.pem"

    def key_file(self, host: str) -> Path:
        return self.host_dir(host) / "key.pem"

    def meta_file(self, host: str) -> Path:
        return self.host_dir(host) / "meta.json"

    def host_lock(self, host: str) -> Path:
        return self.locks / f"{host}.lock"

    def stored_hosts(self) -> list[str]:
        try:
            return sorted(entry.name for entry in os.scandir(self.certificates) if entry.is_dir())
        except FileNotFoundError:
            return []

    def save_certificate(self, host: str, chain_pem: bytes, key_pem: bytes, meta: bytes) -> None:
        """meta, key, then certificate: the certificate's rename is the commit. A reader
        that sees the new certificate also sees its key; one that sees the new key with
        the old certificate finds they do not match and looks again later."""
        ensure_private_dir(self.host_dir(host))
        write_private(self.meta_file(host), meta)
        write_private(self.key_file(host), key_pem)
        write_private(self.cert_file(host), chain_pem)
