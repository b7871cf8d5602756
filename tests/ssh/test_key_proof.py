"""An approval is bound only to a key the client proved it holds.

asyncssh's ``SSHServer.validate_public_key`` runs before the signature is checked; the
door hooks the connection's ``validate_public_key`` instead (proxy/ssh/_door.py). These
tests pin that: a client offering someone else's public key, with a signature it cannot
make, never gets an attempt built for that key, remembered or not.
"""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from proxy.ssh import SshDoor, UserCA
from proxy.ssh._door import _UserConnection
from tests.ssh.conftest import FakeGate, KbdIntClient, RunningDoor, SshClient, finish, grant_for
from tests.support.sshd import Sshd

pytestmark = pytest.mark.timeout(60)


def forged(victim_public: asyncssh.SSHKey) -> asyncssh.SSHKeyPair:
    """A key pair that shows the victim's public key but signs with another key."""
    attacker = asyncssh.generate_private_key("ssh-ed25519")
    pair = asyncssh.load_keypairs([attacker])[0]
    pair.public_data = victim_public.public_data
    pair.key_public_data = victim_public.public_data
    return pair


async def connect(
    port: int, keys: list[asyncssh.SSHKeyPair], client: KbdIntClient
) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        port,
        username="claw@openclaw",
        client_factory=lambda: client,
        client_keys=keys,
        known_hosts=None,
        config=None,
        agent_path=None,
        password_auth=False,
        preferred_auth="publickey,keyboard-interactive",
    )


async def test_forged_signature_gets_no_attempt(
    gate: FakeGate, door: RunningDoor, user_key: Path, sshd: Sshd
) -> None:
    victim = asyncssh.read_public_key(str(user_key) + ".pub")
    client = KbdIntClient()
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(door.port, [forged(victim)], client)
    # The signature failed: no Attempt was ever built for the victim's key.
    assert gate.remembered_calls == []
    assert gate.begun == []
    assert client.instructions == []
    assert any("sign in with an SSH key" in b for b in client.banners)
    assert sshd.connections() == 0


async def test_forged_signature_cannot_use_a_remembered_key(
    gate: FakeGate, door: RunningDoor, user_key: Path, sshd: Sshd, ca: UserCA
) -> None:
    victim = asyncssh.read_public_key(str(user_key) + ".pub")
    fp = victim.get_fingerprint("sha256")
    # The victim has an approved session on the route: their key signs in at once...
    gate.remembered_keys[(fp, "openclaw")] = grant_for()
    owner_client = KbdIntClient()
    async with await connect(
        door.port, [asyncssh.read_private_key(str(user_key))], owner_client
    ) as conn:
        result = await conn.run("echo owner", check=True)
        assert result.stdout == b"owner\n" or result.stdout == "owner\n"
    assert len(gate.remembered_calls) == 1
    # ...but not for someone who only has the public key.
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(door.port, [forged(victim)], KbdIntClient())
    assert len(gate.remembered_calls) == 1
    assert gate.begun == []


async def test_genuine_key_then_approval_is_bound_to_it(
    gate: FakeGate, door: RunningDoor, sshd: Sshd
) -> None:
    # A forged key first, then a real one: the approval names the real one only.
    real = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    gate.auto = grant_for
    client = KbdIntClient()
    keys = [forged(other), *asyncssh.load_keypairs([real])]
    async with await connect(door.port, keys, client) as conn:
        result = await conn.run("echo bound", check=True)
        assert "bound" in str(result.stdout)
    assert [a.key_fingerprint for a in gate.begun] == [real.get_fingerprint("sha256")]
    assert len(client.instructions) == 1
    assert "Waiting for the approval" in client.instructions[0]


async def test_openssh_sees_partial_success(
    gate: FakeGate, door: RunningDoor, client: SshClient
) -> None:
    # The proof is answered with "partial success": OpenSSH says so (with -v) and
    # continues with keyboard-interactive, the only method still listed.
    child = client.spawn("claw@openclaw", "-v", "true")
    attempt = await gate.next_attempt()
    gate.approve(attempt)
    out, status = await finish(child)
    assert status == 0
    assert 'Authenticated using "publickey" with partial success.' in out
    assert 'using "keyboard-interactive"' in out


async def test_after_a_proof_no_other_key_is_accepted(
    gate: FakeGate, ca: UserCA, tmp_path: Path
) -> None:
    door = SshDoor(gate, ca, state_dir=tmp_path / "unstarted")
    conn = _UserConnection(door)
    assert conn.begin_auth("claw@openclaw") is True
    first = asyncssh.generate_private_key("ssh-ed25519")
    second = asyncssh.generate_private_key("ssh-ed25519")
    assert conn.validate_public_key("claw@openclaw", first) is True
    assert await conn.key_proven(first) is None  # not remembered: ask for an approval
    assert conn.public_key_auth_supported() is False
    assert conn.validate_public_key("claw@openclaw", second) is False
    assert conn.validate_public_key("claw@openclaw", first) is False
    assert await conn.key_proven(second) is False
    assert [a.key_fingerprint for a in gate.remembered_calls] == [first.get_fingerprint("sha256")]
    # A user name change mid sign-in ends it.
    conn.begin_auth("other@openclaw")
    assert conn.kbdint_auth_supported() is False
