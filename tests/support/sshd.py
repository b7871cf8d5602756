"""A real OpenSSH sshd on 127.0.0.1 for the SSH door's tests.

It trusts one user CA (``TrustedUserCAKeys``) and maps the local login to principals
through ``AuthorizedPrincipalsFile``, with ``ExposeAuthInfo`` so a command can print the
certificate it was accepted with (``$SSH_USER_AUTH``). Its log is a file the test reads,
e.g. to assert that no connection ever reached it.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.lifecycle import AsyncStartClose

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, kind: str = "ed25519", comment: str = "test") -> str:
    """Generate an unencrypted key at ``path``; return its public line."""
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


class Sshd(AsyncStartClose):
    """``async with Sshd(dir, ca_line) as sshd``: a running sshd; ``sshd.port``, ``sshd.log()``."""

    def __init__(
        self,
        directory: Path,
        ca_public_line: str,
        *,
        principals: Sequence[str] = ("ops",),
        user: str | None = None,
        port: int | None = None,
        host_key: Path | None = None,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_public_line = ca_public_line
        self.principals = tuple(principals)
        self.user = user or getpass.getuser()
        self.port = port or free_port()
        self.host_key = host_key or self.dir / "ssh_host_ed25519_key"
        self.options = dict(options or {})
        self.log_path = self.dir / "sshd.log"
        self._proc: asyncio.subprocess.Process | None = None
        self._principals_dir: Path | None = None

    def host_key_line(self) -> str:
        """The public host key, as an OpenSSH known_hosts line for 127.0.0.1:port."""
        pub = self.host_key.with_name(self.host_key.name + ".pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}"

    def _config(self) -> Path:
        if not self.host_key.exists():
            keygen(self.host_key, comment="upstream-host")
        ca_file = self.dir / "trusted_user_ca.pub"
        ca_file.write_text(self.ca_public_line + "\n")
        # sshd reads the principals file as the user; the test's own directories are
        # 0700 root, so it lives in a directory anyone may traverse.
        principals_dir = Path(tempfile.mkdtemp(prefix="clawgate-sshd-principals-"))
        principals_dir.chmod(0o755)
        self._principals_dir = principals_dir
        entry = principals_dir / self.user
        entry.write_text("".join(p + "\n" for p in self.principals))
        entry.chmod(0o644)
        settings = {
            "ListenAddress": f"127.0.0.1:{self.port}",
            "HostKey": str(self.host_key),
            "PidFile": "none",
            "UsePAM": "no",
            "StrictModes": "no",
            "LogLevel": "VERBOSE",
            "PubkeyAuthentication": "yes",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "AuthorizedKeysFile": "none",
            "TrustedUserCAKeys": str(ca_file),
            "AuthorizedPrincipalsFile": f"{principals_dir}/%u",
            "PermitRootLogin": "prohibit-password",
            "PermitTTY": "yes",
            # Only the certificate's extensions decide about forwarding.
            "AllowTcpForwarding": "yes",
            "AllowAgentForwarding": "yes",
            "X11Forwarding": "no",
            "ExposeAuthInfo": "yes",
            "AcceptEnv": "LANG LC_*",
            "PrintMotd": "no",
            "PrintLastLog": "no",
            "Subsystem": "sftp internal-sftp",
        }
        settings.update(self.options)
        config = self.dir / "sshd_config"
        config.write_text("".join(f"{k} {v}\n" for k, v in settings.items()))
        return config

    async def start(self) -> Sshd:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        config = self._config()
        check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd config rejected: {check.stderr}")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = await asyncio.create_subprocess_exec(
            SSHD,
            "-D",
            "-f",
            str(config),
            "-E",
            str(self.log_path),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise RuntimeError(f"sshd exited: {self.log()[offset:]}")
            if f"Server listening on 127.0.0.1 port {self.port}" in self.log()[offset:]:
                return self
            await asyncio.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {self.log()[offset:]}")

    async def stop(self) -> None:
        if self._principals_dir is not None:
            shutil.rmtree(self._principals_dir, ignore_errors=True)
            self._principals_dir = None
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def close(self) -> None:
        await self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def connections(self) -> int:
        """How many TCP connections sshd has seen so far."""
        return len(re.findall(r"^Connection from ", self.log(), re.M))

    def accepted_certificates(self) -> list[str]:
        """sshd's "Accepted certificate ID ..." log lines."""
        return re.findall(r"Accepted certificate ID .*", self.log())


TEST_USER = "clawgate-ssh-test"


def ensure_test_user(name: str = TEST_USER) -> str:
    """A local non-root account (created once, kept): sshd signals sessions only for those."""
    if subprocess.run(["id", "-u", name], capture_output=True).returncode != 0:
        subprocess.run(
            ["/usr/sbin/useradd", "--create-home", "--shell", "/bin/sh", name],
            check=True,
            capture_output=True,
        )
    # useradd leaves the password locked ("!"), and sshd without PAM refuses locked
    # accounts even for certificates: "*" means no password, not locked.
    subprocess.run(["/usr/sbin/usermod", "-p", "*", name], check=True, capture_output=True)
    return name
