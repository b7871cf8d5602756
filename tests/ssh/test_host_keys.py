"""The door's host keys: generated once, kept across restarts; configured files checked."""

from __future__ import annotations

import stat
from pathlib import Path

import asyncssh
import pytest

from proxy.ssh import SshDoor, SshSetupError, UserCA
from tests.ssh.conftest import FakeGate, SshClient, run_ssh, sign_in
from tests.support.sshd import keygen

pytestmark = pytest.mark.timeout(60)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_generated_host_keys_persist_across_restarts(
    gate: FakeGate, ca: UserCA, tmp_path: Path, user_key: Path
) -> None:
    state = tmp_path / "fresh-state"
    first = SshDoor(gate, ca, state_dir=state)
    port = await first.start("127.0.0.1", 0)
    client = SshClient(tmp_path, user_key, port)
    try:
        await sign_in(gate, client)  # accept-new writes the client's known_hosts
    finally:
        await first.close()
    assert mode(state) == 0o700
    keys = sorted(p.name for p in state.iterdir() if p.name.startswith("ssh_host_"))
    assert keys == ["ssh_host_ed25519_key", "ssh_host_rsa_key"]
    for name in keys:
        assert mode(state / name) == 0o600
    before = {name: (state / name).read_bytes() for name in keys}

    second = SshDoor(gate, ca, state_dir=state)
    assert await second.start("127.0.0.1", port) == port
    try:
        # Strict checking this time: a changed host key would be fatal.
        ran = await run_ssh(
            client, "claw@openclaw", "printf again", options=("-o", "StrictHostKeyChecking=yes")
        )
        assert ran.status == 0, ran.stderr
        assert ran.stdout == b"again"
        assert "HOST IDENTIFICATION HAS CHANGED" not in ran.stderr
    finally:
        await second.close()
    assert {name: (state / name).read_bytes() for name in keys} == before


async def test_configured_host_key_files(
    gate: FakeGate, ca: UserCA, tmp_path: Path, user_key: Path
) -> None:
    key = tmp_path / "configured_host_key"
    keygen(key)
    door = SshDoor(gate, ca, state_dir=tmp_path / "st", host_key_files=[key])
    port = await door.start("127.0.0.1", 0)
    try:
        known = tmp_path / "known"
        fields = key.with_name(key.name + ".pub").read_text().split()
        known.write_text(f"[127.0.0.1]:{port} {fields[0]} {fields[1]}\n")
        client = SshClient(tmp_path, user_key, port)
        client.known_hosts = known
        child = client.spawn("claw@openclaw", "true", strict="yes")
        attempt = await gate.next_attempt()  # got past host key checking
        gate.approve(attempt)
        child.close()
    finally:
        await door.close()
    # No key was generated next to the configured one.
    assert not (tmp_path / "st" / "ssh_host_ed25519_key").exists()


@pytest.mark.parametrize("problem", ["missing", "garbage", "directory", "encrypted"])
async def test_bad_host_key_file_is_a_clear_error(
    gate: FakeGate, ca: UserCA, tmp_path: Path, problem: str
) -> None:
    path = tmp_path / "host_key"
    if problem == "garbage":
        path.write_text("not a key\n")
    elif problem == "directory":
        path.mkdir()
    elif problem == "encrypted":
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(path), passphrase="pw")
    door = SshDoor(gate, ca, state_dir=tmp_path / "st", host_key_files=[path])
    with pytest.raises(SshSetupError) as err:
        await door.start("127.0.0.1", 0)
    assert str(path) in str(err.value)
    assert "BEGIN" not in str(err.value)


async def test_corrupt_generated_key_is_not_replaced(
    gate: FakeGate, ca: UserCA, tmp_path: Path
) -> None:
    state = tmp_path / "st"
    state.mkdir(mode=0o700)
    (state / "ssh_host_ed25519_key").write_text("truncated\n")
    door = SshDoor(gate, ca, state_dir=state)
    with pytest.raises(SshSetupError, match="ssh_host_ed25519_key"):
        await door.start("127.0.0.1", 0)
    assert (state / "ssh_host_ed25519_key").read_text() == "truncated\n"


async def test_missing_known_hosts_file_is_a_clear_error(
    gate: FakeGate, ca: UserCA, tmp_path: Path
) -> None:
    door = SshDoor(gate, ca, state_dir=tmp_path / "st", known_hosts=tmp_path / "nope")
    with pytest.raises(SshSetupError, match=r"known_hosts .*nope: file not found"):
        await door.start("127.0.0.1", 0)
