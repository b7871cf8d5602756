"""What clawgate trusts upstream, and how it fails when the upstream is not that."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from proxy.ssh import SshDoor, UserCA, init_ca
from tests.ssh.conftest import FakeGate, RunningDoor, SshClient, finish, run_ssh, sign_in
from tests.support.sshd import Sshd, keygen

pytestmark = pytest.mark.timeout(60)


async def test_upstream_trusting_another_ca(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd, tmp_path: Path
) -> None:
    other_ca = init_ca(tmp_path / "other-ca" / "ca")
    await sshd.stop()
    async with Sshd(
        tmp_path / "sshd-other", other_ca, port=sshd.port, host_key=sshd.host_key
    ) as wrong:
        with structlog.testing.capture_logs() as logs:
            child_out = await _signed_in_run(gate, client, "echo never")
        assert (
            "clawgate: the upstream refused clawgate's certificate for route openclaw" in child_out
        )
        assert "never" not in child_out.replace("echo never", "")
        failed = [e for e in logs if e["event"] == "ssh_upstream_failed"]
        assert failed and failed[0]["kind"] == "auth"
        assert failed[0]["log_level"] == "error"
        assert door.door.stats.upstream_failed == 1
        assert wrong.accepted_certificates() == []


async def _signed_in_run(gate: FakeGate, client: SshClient, command: str) -> str:
    child = client.spawn("claw@openclaw", command)
    attempt = await gate.next_attempt()
    gate.approve(attempt)
    out, status = await finish(child)
    assert status == 255
    return out


async def test_upstream_host_key_pinned_on_first_use(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd, tmp_path: Path, ca: UserCA
) -> None:
    await sign_in(gate, client)
    pins = door.state_dir / "upstream_known_hosts"
    assert pins.read_text().strip() == sshd.host_key_line()
    assert pins.stat().st_mode & 0o777 == 0o600

    # Same address, new host key: refused before any certificate is shown to it.
    await sshd.stop()
    new_key = tmp_path / "new-host-key"
    keygen(new_key, comment="impostor")
    async with Sshd(
        tmp_path / "sshd-impostor", ca.public_line(), port=sshd.port, host_key=new_key
    ) as impostor:
        with structlog.testing.capture_logs() as logs:
            ran = await run_ssh(client, "claw@openclaw", "echo never")
        assert ran.status == 255
        assert ran.stdout == b""
        assert (
            "clawgate: the upstream's host key for route openclaw is not the one clawgate trusts"
            in ran.stderr
        ), ran.stderr
        assert impostor.accepted_certificates() == []
        failed = [e for e in logs if e["event"] == "ssh_upstream_failed"]
        assert failed and failed[0]["kind"] == "host_key"
        # The pin stays what it was.
        assert pins.read_text().strip() == sshd.host_key_line()


async def test_configured_known_hosts(
    gate: FakeGate, sshd: Sshd, client: SshClient, tmp_path: Path, ca: UserCA
) -> None:
    known = tmp_path / "upstream_known_hosts_configured"
    known.write_text(sshd.host_key_line() + "\n")
    door = SshDoor(gate, ca, state_dir=tmp_path / "s1", known_hosts=known)
    client.port = await door.start("127.0.0.1", 0)
    try:
        await sign_in(gate, client)
        ran = await run_ssh(client, "claw@openclaw", "printf trusted")
        assert ran.stdout == b"trusted"
        # Nothing is pinned when known_hosts is configured.
        assert not (tmp_path / "s1" / "upstream_known_hosts").exists()
        # Another key in known_hosts: refused.
        other = tmp_path / "other-host-key"
        keygen(other)
        fields = other.with_name(other.name + ".pub").read_text().split()
        known.write_text(f"[127.0.0.1]:{sshd.port} {fields[0]} {fields[1]}\n")
        ran = await run_ssh(client, "claw@openclaw", "printf trusted")
        assert ran.status == 255
        assert "is not the one clawgate trusts" in ran.stderr
    finally:
        await door.close()
