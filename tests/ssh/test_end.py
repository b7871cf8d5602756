"""Continuous authorization: the integrator ends a live connection with a reason."""

from __future__ import annotations

import re

import pytest
import structlog

from tests.ssh.conftest import FakeGate, RunningDoor, SshClient, expect, finish, wait_until
from tests.support.sshd import Sshd

pytestmark = pytest.mark.timeout(60)

PROMPT = re.compile(r"[#$] $")


async def test_end_while_a_shell_runs(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd
) -> None:
    child = client.spawn("claw@openclaw")
    attempt = await gate.next_attempt()
    gate.approve(attempt)
    await expect(child, PROMPT)
    # Something long-running in the foreground, as a user would have.
    child.sendline("echo started-$((1+1)); sleep 600")
    await expect(child, "started-2")

    live = door.door.connections()
    assert len(live) == 1
    conn = live[0]
    assert conn.attempt.attempt_id == attempt.attempt_id
    assert conn.grant.user == "alice@example.com"
    assert conn.opened > 0

    with structlog.testing.capture_logs() as logs:
        await conn.end("signed out")
        out, status = await finish(child)
    assert "clawgate: signed out" in out
    assert status == 255
    assert door.door.connections() == []
    assert door.door.stats.ended == 1
    end = [e for e in logs if e["event"] == "ssh"]
    assert end and end[0]["ended"] == "signed out"
    assert end[0]["bytes_out"] > 0
    # The upstream session ended with it (sshd logged the disconnect).
    await wait_until(lambda: "Disconnected from user" in sshd.log(), what="upstream disconnect")
    # end() again, after the fact: harmless.
    await conn.end("signed out")


async def test_close_ends_connections_waiting_for_approval(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd
) -> None:
    child = client.spawn("claw@openclaw", "true")
    await gate.next_attempt()
    await door.door.close()
    out, status = await finish(child)
    assert status == 255
    assert "clawgate: clawgate is shutting down" in out
    assert sshd.connections() == 0
