"""Fixtures for the SSH door: a CA, a user key, a fake Gate, the door, the real sshd and ssh.

Only the Gate is fake; it approves or refuses on cue. Both SSH ends are OpenSSH.
"""

from __future__ import annotations

import asyncio
import getpass
import io
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pexpect
import pytest
import structlog

from proxy.ssh import (
    Attempt,
    Grant,
    Refusal,
    SshDoor,
    SshRoute,
    UserCA,
    _ca,
    _door,
    _hostkeys,
    _relay,
    init_ca,
)
from tests.support.sshd import Sshd, keygen

LOGIN = "claw"
PRINCIPAL = getpass.getuser()  # the upstream login; its AuthorizedPrincipalsFile lists it


@pytest.fixture(autouse=True)
def fresh_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loggers not yet bound: an earlier test that ran clawgate (structlog configured,
    loggers cached on first use) would otherwise keep ``capture_logs`` from seeing the
    door's lines."""
    for module in (_ca, _door, _hostkeys, _relay):
        monkeypatch.setattr(module, "log", structlog.get_logger("clawgate.ssh"))


def grant_for(
    attempt: Attempt | None = None, user: str = "alice@example.com", principal: str = PRINCIPAL
) -> Grant:
    return Grant(
        user=user,
        session_ref="ab12cd34",
        principal=principal,
        key_id=f"clawgate:{user}:session=ab12cd34",
        reason="allowed by policy",
    )


@dataclass
class FakeGate:
    """Routes by name; remembers keys it approved; approvals answered on cue."""

    routes: dict[str, SshRoute]
    # Answer every approval at once with this (a Grant factory or a Refusal); None: wait
    # for approve()/refuse().
    auto: Callable[[Attempt], Grant | Refusal] | None = None
    remember_approved: bool = True
    begun: list[Attempt] = field(default_factory=list)
    remembered_calls: list[Attempt] = field(default_factory=list)
    remembered_keys: dict[tuple[str, str], Grant | Refusal] = field(default_factory=dict)
    _pending: dict[str, asyncio.Future[Grant | Refusal]] = field(default_factory=dict)

    def route(self, requested: str | None) -> SshRoute | Refusal:
        if requested is None:
            if len(self.routes) == 1:
                return next(iter(self.routes.values()))
            return Refusal("name a route: ssh LOGIN@ROUTE@host", "no route named")
        route = self.routes.get(requested)
        if route is None:
            return Refusal(f"no SSH route named {requested}", "unknown route")
        return route

    async def remembered(self, attempt: Attempt) -> Grant | Refusal | None:
        self.remembered_calls.append(attempt)
        return self.remembered_keys.get((attempt.key_fingerprint, attempt.route.name))

    async def begin_approval(self, attempt: Attempt) -> str:
        self.begun.append(attempt)
        self._pending[attempt.attempt_id] = asyncio.get_running_loop().create_future()
        return f"https://clawgate.test/.clawgate/ssh/{attempt.attempt_id}"

    async def wait_approval(self, attempt: Attempt, timeout: float) -> Grant | Refusal:
        if self.auto is not None:
            answer = self.auto(attempt)
        else:
            try:
                answer = await asyncio.wait_for(self._pending[attempt.attempt_id], timeout)
            except TimeoutError:
                return Refusal("the approval expired", "expired")
        if isinstance(answer, Grant) and self.remember_approved:
            self.remembered_keys[(attempt.key_fingerprint, attempt.route.name)] = answer
        return answer

    async def next_attempt(self, timeout: float = 20.0) -> Attempt:
        """The next attempt waiting for approval (polls; never depends on speed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for attempt in self.begun:
                fut = self._pending.get(attempt.attempt_id)
                if fut is not None and not fut.done():
                    return attempt
            await asyncio.sleep(0.05)
        raise AssertionError(f"no approval was asked for within {timeout} s")

    def approve(self, attempt: Attempt, grant: Grant | None = None) -> None:
        self._pending[attempt.attempt_id].set_result(grant or grant_for(attempt))

    def refuse(self, attempt: Attempt, refusal: Refusal) -> None:
        self._pending[attempt.attempt_id].set_result(refusal)


@pytest.fixture
def ca_path(tmp_path: Path) -> Path:
    path = tmp_path / "ca" / "user_ca"
    init_ca(path)
    return path


@pytest.fixture
def ca(ca_path: Path) -> UserCA:
    return UserCA.load(ca_path)


@pytest.fixture
def user_key(tmp_path: Path) -> Path:
    path = tmp_path / "client" / "id_ed25519"
    path.parent.mkdir(parents=True)
    keygen(path, comment="alice")
    return path


@pytest.fixture
async def sshd(tmp_path: Path, ca: UserCA) -> AsyncIterator[Sshd]:
    async with Sshd(tmp_path / "sshd", ca.public_line(), principals=[PRINCIPAL]) as server:
        yield server


def route_to(sshd: Sshd, name: str = "openclaw", **flags: bool) -> SshRoute:
    return SshRoute(name=name, upstream_host="127.0.0.1", upstream_port=sshd.port, **flags)


@pytest.fixture
def gate(sshd: Sshd) -> FakeGate:
    return FakeGate(routes={"openclaw": route_to(sshd)})


@dataclass
class RunningDoor:
    door: SshDoor
    port: int
    state_dir: Path


@pytest.fixture
async def door(tmp_path: Path, gate: FakeGate, ca: UserCA) -> AsyncIterator[RunningDoor]:
    state = tmp_path / "door-state"
    d = SshDoor(gate, ca, state_dir=state, approval_timeout=60)
    port = await d.start("127.0.0.1", 0)
    yield RunningDoor(d, port, state)
    await d.close()


class SshClient:
    """The real OpenSSH client, driven with pexpect (without blocking the event loop)."""

    def __init__(self, tmp: Path, key: Path, port: int) -> None:
        self.key = key
        self.port = port
        self.known_hosts = tmp / "client" / "known_hosts"
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)

    def argv(self, user: str, *args: str, strict: str = "accept-new") -> list[str]:
        return [
            "-F", "/dev/null",
            "-p", str(self.port),
            "-o", f"StrictHostKeyChecking={strict}",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-i", str(self.key),
            "-o", "PreferredAuthentications=publickey,keyboard-interactive",
            "-o", "BatchMode=no",
            "-o", "ConnectTimeout=20",
            f"{user}@127.0.0.1",
            *args,
        ]  # fmt: skip

    def spawn(self, user: str, *args: str, strict: str = "accept-new") -> pexpect.spawn:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
        env["LANG"] = "C.UTF-8"
        env["TERM"] = "xterm"
        child = pexpect.spawn(
            "/usr/bin/ssh",
            self.argv(user, *args, strict=strict),
            env=env,
            timeout=30,
            encoding="utf-8",
            codec_errors="replace",
            dimensions=(40, 120),
        )
        # The whole transcript, whatever expect() consumed of it.
        child.logfile_read = io.StringIO()
        return child


async def expect(child: pexpect.spawn, pattern: object, timeout: float = 30) -> int:
    return int(await child.expect(pattern, timeout=timeout, async_=True))


async def finish(child: pexpect.spawn, timeout: float = 30) -> tuple[str, int | None]:
    """Everything the client still prints, and its exit status."""
    await expect(child, pexpect.EOF, timeout)
    child.close()
    return transcript(child), child.exitstatus


def transcript(child: pexpect.spawn) -> str:
    log = child.logfile_read
    assert isinstance(log, io.StringIO)
    return log.getvalue()


async def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


@pytest.fixture
def client(tmp_path: Path, user_key: Path, door: RunningDoor) -> SshClient:
    return SshClient(tmp_path, user_key, door.port)


async def sign_in(gate: FakeGate, client: SshClient, user: str = "claw@openclaw") -> Attempt:
    """One approved sign-in with the real client (``true``), so the key is remembered."""
    child = client.spawn(user, "true")
    attempt = await gate.next_attempt()
    gate.approve(attempt)
    out, status = await finish(child)
    assert status == 0, out
    return attempt


class KbdIntClient(asyncssh.SSHClient):
    """An asyncssh client that answers keyboard-interactive rounds and keeps banners."""

    def __init__(self) -> None:
        self.banners: list[str] = []
        self.instructions: list[str] = []

    def auth_banner_received(self, msg: str, lang: str) -> None:
        self.banners.append(msg)

    def kbdint_auth_requested(self) -> str:
        return ""

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: object
    ) -> list[str]:
        self.instructions.append(instructions)
        return []


@dataclass
class Ran:
    stdout: bytes
    stderr: str
    status: int


async def run_ssh(
    client: SshClient,
    user: str,
    *args: str,
    stdin: bytes = b"",
    options: tuple[str, ...] = (),
    timeout: float = 60,
) -> Ran:
    """ssh without a terminal and without prompts (BatchMode): for remembered keys."""
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/ssh",
        "-o", "BatchMode=yes",
        *options,
        *client.argv(user, *args),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("SSH_")},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return Ran(out, err.decode(errors="replace"), proc.returncode)
