"""Refused sign-ins: a clear line on the terminal, a non-zero exit, nothing upstream."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from proxy.ssh import Refusal, SshDoor, UserCA
from tests.ssh.conftest import FakeGate, RunningDoor, SshClient, expect, finish, run_ssh
from tests.support.sshd import Sshd

pytestmark = pytest.mark.timeout(60)

POLICY = Refusal("not allowed by policy for route openclaw", "no rule matched")


async def test_policy_refusal_after_approval_page(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd
) -> None:
    with structlog.testing.capture_logs() as logs:
        child = client.spawn("claw@openclaw", "echo should-never-run")
        await expect(child, "Waiting for the approval")
        attempt = await gate.next_attempt()
        gate.refuse(attempt, POLICY)
        out, status = await finish(child)
    assert "clawgate: not allowed by policy for route openclaw" in out
    assert "should-never-run" not in out
    assert status == 255
    assert door.door.stats.refused == 1
    assert door.door.stats.authenticated == 0
    # The upstream never saw a connection.
    assert sshd.connections() == 0
    refused = [e for e in logs if e["event"] == "ssh_refused"]
    assert refused and refused[0]["reason"] == "no rule matched"
    assert refused[0]["key_fingerprint"] == attempt.key_fingerprint
    end = [e for e in logs if e["event"] == "ssh"]
    assert end and end[0]["outcome"] == "refused" and end[0]["user"] is None
    # The sign-in URL (it names the attempt) is not in any log line.
    assert not any(attempt.attempt_id in repr(e) for e in logs)


async def test_remembered_key_refused_now(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd
) -> None:
    # The key is known, but the policy now says no: no approval page, a clear message.
    gate.auto = lambda attempt: POLICY
    child = client.spawn("claw@openclaw", "true")
    out, status = await finish(child)
    assert "clawgate: not allowed by policy for route openclaw" in out
    assert status == 255
    fp = gate.begun[0].key_fingerprint
    gate.remembered_keys[(fp, "openclaw")] = POLICY
    ran = await run_ssh(client, "claw@openclaw", "true")
    assert ran.status == 255
    assert "clawgate: not allowed by policy for route openclaw" in ran.stderr
    assert len(gate.begun) == 1
    assert sshd.connections() == 0


async def test_unknown_route_and_missing_route(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd
) -> None:
    ran = await run_ssh(client, "claw@nowhere", "true")
    assert ran.status == 255
    assert "clawgate: no SSH route named nowhere" in ran.stderr
    gate.routes["second"] = gate.routes["openclaw"]
    ran = await run_ssh(client, "claw", "true")
    assert ran.status == 255
    assert "clawgate: name a route" in ran.stderr
    assert gate.begun == [] and gate.remembered_calls == []
    assert sshd.connections() == 0
    assert door.door.stats.refused == 2


async def test_no_key_offered(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd
) -> None:
    # The client, but no key at all: keyboard-interactive alone cannot sign in.
    child = client.spawn("claw@openclaw", "-o", "PubkeyAuthentication=no", "true")
    out, status = await finish(child)
    assert status == 255
    assert "clawgate: sign in with an SSH key" in out
    assert gate.begun == []
    assert sshd.connections() == 0


async def test_approval_timeout(
    gate: FakeGate, client: SshClient, sshd: Sshd, tmp_path: Path, ca: UserCA
) -> None:
    door = SshDoor(gate, ca, state_dir=tmp_path / "state", approval_timeout=1.0)
    port = await door.start("127.0.0.1", 0)
    try:
        client.port = port
        child = client.spawn("claw@openclaw", "true")
        out, status = await finish(child)
        assert status == 255
        assert "clawgate: the approval expired" in out
        assert sshd.connections() == 0
    finally:
        await door.close()
