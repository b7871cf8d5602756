"""An approved user's sessions through the door, with OpenSSH on both sides."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

import asyncssh
import pytest

from proxy.ssh import SshRoute, UserCA
from tests.ssh.conftest import (
    FakeGate,
    KbdIntClient,
    RunningDoor,
    SshClient,
    expect,
    finish,
    grant_for,
    run_ssh,
    sign_in,
    transcript,
)
from tests.support.sshd import Sshd, ensure_test_user

pytestmark = pytest.mark.timeout(90)

PROMPT = re.compile(r"[#$] $")


async def test_shell_with_pty_exec_and_remembered_key(
    gate: FakeGate, door: RunningDoor, client: SshClient
) -> None:
    # A shell on a pty: the sign-in URL is shown, the client waits for the approval.
    child = client.spawn("claw@openclaw")
    await expect(child, "Waiting for the approval")
    attempt = await gate.next_attempt()
    assert f"https://clawgate.test/.clawgate/ssh/{attempt.attempt_id}" in transcript(child)
    assert attempt.login == "claw"
    assert attempt.route.name == "openclaw"
    assert attempt.key_fingerprint.startswith("SHA256:")
    assert attempt.key_fingerprint in transcript(child)
    assert attempt.key_openssh == " ".join(client.key.with_suffix(".pub").read_text().split()[:2])
    gate.approve(attempt)
    await expect(child, PROMPT)

    # The terminal is a real pty of the size the client has; resizing reaches it.
    child.sendline("tty; stty size")
    await expect(child, r"/dev/pts/\d+")
    await expect(child, r"40 120")
    child.setwinsize(33, 101)
    await asyncio.sleep(0.2)  # the window-change goes out asynchronously (SIGWINCH)
    for _ in range(50):
        child.sendline("stty size")
        if await expect(child, [r"\b33 101\r\n", r"\b40 120\r\n"]) == 0:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the window change never reached the upstream pty")
    child.sendline("echo hi-$((40+2)); exit 3")
    out, status = await finish(child)
    assert "hi-42" in out
    assert status == 3
    assert len(gate.begun) == 1

    # exec: output and exit status come back; the key is remembered, no new approval.
    ran = await run_ssh(client, "claw@openclaw", "printf ok; exit 7")
    assert ran.stdout == b"ok"
    assert ran.status == 7
    assert "approve" not in ran.stderr
    assert len(gate.begun) == 1
    assert door.door.stats.remembered == 1
    assert door.door.stats.authenticated == 2


@pytest.fixture
def env_for_sendenv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_CLAWGATE", "lc-value")
    monkeypatch.setenv("SECRET_VAR", "must-not-pass")


@pytest.mark.usefixtures("env_for_sendenv")
async def test_exec_stdin_eof_stderr_and_env(
    gate: FakeGate, door: RunningDoor, client: SshClient
) -> None:
    await sign_in(gate, client)
    ran = await run_ssh(
        client,
        "claw@openclaw",
        'cat; echo "done:$LC_CLAWGATE:${SECRET_VAR-unset}"; echo to-stderr >&2; exit 0',
        stdin=b"from-stdin\n",
        options=("-o", "SendEnv=LC_CLAWGATE SECRET_VAR"),
    )
    assert ran.status == 0, ran.stderr
    # stdin reached the command, its EOF ended cat; LC_* passed, anything else not.
    assert ran.stdout == b"from-stdin\ndone:lc-value:unset\n"
    assert "to-stderr" in ran.stderr


async def test_bulk_data_both_ways_and_byte_counts(
    gate: FakeGate, door: RunningDoor, client: SshClient
) -> None:
    await sign_in(gate, client)
    before_in, before_out = door.door.stats.bytes_in, door.door.stats.bytes_out
    payload = hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32)  # 8 MiB
    ran = await run_ssh(client, "claw@openclaw", "cat", stdin=payload)
    assert ran.status == 0, ran.stderr
    assert hashlib.sha256(ran.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert door.door.stats.bytes_in - before_in >= len(payload)
    assert door.door.stats.bytes_out - before_out >= len(payload)


async def test_signals_and_sftp_subsystem(
    gate: FakeGate, door: RunningDoor, client: SshClient, tmp_path: Path
) -> None:
    await sign_in(gate, client)
    # The upstream kills the command with a signal: the client learns it (ssh exits 255
    # and says so only with -v; the exit-signal travels as a request, not a status).
    ran = await run_ssh(client, "claw@openclaw", "kill -TERM $$", options=("-v",))
    assert "Exit signal TERM" in ran.stderr or "exit-signal" in ran.stderr, ran.stderr

    # sftp: a subsystem, binary-safe.
    src = tmp_path / "upload.bin"
    src.write_bytes(bytes(range(256)) * 4096)
    dst = tmp_path / "downloaded.bin"
    remote = tmp_path / "remote.bin"
    batch = tmp_path / "batch"
    batch.write_text(f"put {src} {remote}\nget {remote} {dst}\n")
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/sftp",
        "-b", str(batch),
        "-P", str(client.port),
        "-F", "/dev/null",
        "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={client.known_hosts}",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-i", str(client.key),
        "-o", "User=claw@openclaw",
        "127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert dst.read_bytes() == src.read_bytes()


async def test_single_route_needs_no_route_name(
    gate: FakeGate, door: RunningDoor, client: SshClient
) -> None:
    child = client.spawn("claw", "printf plain-login")
    attempt = await gate.next_attempt()
    assert attempt.login == "claw"
    assert attempt.route.name == "openclaw"
    gate.approve(attempt)
    out, status = await finish(child)
    assert status == 0
    assert "plain-login" in out


async def test_login_with_at_sign_splits_at_last_at(
    gate: FakeGate, door: RunningDoor, client: SshClient
) -> None:
    child = client.spawn("me@corp@openclaw", "true")
    attempt = await gate.next_attempt()
    assert (attempt.login, attempt.route.name) == ("me@corp", "openclaw")
    gate.approve(attempt)
    out, status = await finish(child)
    assert status == 0, out


async def test_signal_request_and_exit_signal_relayed(
    gate: FakeGate, door: RunningDoor, client: SshClient, ca: UserCA, tmp_path: Path
) -> None:
    # OpenSSH's client never sends "signal" requests; asyncssh's can. sshd honours them
    # only for non-root logins, so this upstream logs in a local test account.
    user = ensure_test_user()
    async with Sshd(tmp_path / "sshd-user", ca.public_line(), user=user, principals=[user]) as up:
        gate.routes["user"] = SshRoute("user", "127.0.0.1", up.port)
        gate.auto = lambda attempt: grant_for(attempt, principal=user)
        async with asyncssh.connect(
            "127.0.0.1",
            door.port,
            username="claw@user",
            client_keys=[asyncssh.read_private_key(str(client.key))],
            known_hosts=None,
            config=None,
            agent_path=None,
            preferred_auth="publickey,keyboard-interactive",
            client_factory=KbdIntClient,
        ) as conn:
            whoami = await conn.run("id -un", encoding=None)
            assert whoami.stdout == f"{user}\n".encode()
            proc = await conn.create_process("echo started; exec sleep 600", encoding=None)
            assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"started\n"
            proc.send_signal("TERM")
            result = await asyncio.wait_for(proc.wait(), 20)
            assert result.exit_signal is not None
            assert result.exit_signal[0] == "TERM"
            assert result.returncode == -15
    assert door.door.stats.upstream_failed == 0
