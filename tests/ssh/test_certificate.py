"""The certificate the upstream sees, and the route's limits on forwarding."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from proxy.ssh import SshRoute
from tests.ssh.conftest import (
    PRINCIPAL,
    FakeGate,
    RunningDoor,
    SshClient,
    expect,
    finish,
    run_ssh,
    sign_in,
)
from tests.support.sshd import Sshd, free_port

pytestmark = pytest.mark.timeout(90)


def describe_cert(auth_info: bytes, tmp: Path) -> str:
    """``ssh-keygen -L`` of the certificate in an $SSH_USER_AUTH file."""
    line = auth_info.decode().strip()
    assert line.startswith("publickey ssh-ed25519-cert-v01@openssh.com "), line
    cert = tmp / "seen-cert.pub"
    cert.write_text(line.split(" ", 1)[1] + "\n")
    return subprocess.run(
        ["/usr/bin/ssh-keygen", "-L", "-f", str(cert)], check=True, capture_output=True, text=True
    ).stdout


def extensions(description: str) -> set[str]:
    block = description.split("Extensions:", 1)[1]
    return {ln.strip() for ln in block.splitlines() if ln.strip().startswith("permit-")}


async def test_certificate_principal_key_id_validity_extensions(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd, tmp_path: Path
) -> None:
    await sign_in(gate, client)
    ran = await run_ssh(client, "claw@openclaw", 'cat "$SSH_USER_AUTH"')
    assert ran.status == 0, ran.stderr
    text = describe_cert(ran.stdout, tmp_path)
    assert re.search(r"Key ID: \"clawgate:alice@example.com:session=ab12cd34\"", text), text
    principals = text.split("Principals:", 1)[1].split("Critical Options:", 1)[0].split()
    assert principals == [PRINCIPAL]
    valid = re.search(r"Valid: from (\S+) to (\S+)", text)
    assert valid, text
    start, end = (datetime.fromisoformat(v).timestamp() for v in valid.groups())
    now = time.time()
    # Validity of minutes: starts a little in the past (clock skew), ends within 5 min.
    assert now - 120 < start <= now
    assert now < end <= now + 301
    assert end - start <= 331
    # The default route: a pty and nothing else; never user rc.
    assert extensions(text) == {"permit-pty"}
    assert "Critical Options: (none)" in text
    # sshd's own log agrees about whom it let in.
    assert any(
        'ID "clawgate:alice@example.com:session=ab12cd34"' in line
        for line in sshd.accepted_certificates()
    )


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


async def forward_locally(client: SshClient, user: str, echo_port: int) -> tuple[bytes, str]:
    """``ssh -N -L``: send a line through the client's listener; what came back, ssh's stderr."""
    local = free_port()
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/ssh", "-o", "BatchMode=yes", "-N", "-L", f"{local}:127.0.0.1:{echo_port}",
        *client.argv(user),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", local)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        writer.write(b"ping\n")
        await writer.drain()
        try:
            got = await asyncio.wait_for(reader.readline(), 20)
        except ConnectionResetError:
            got = b""
        finally:
            writer.close()
    finally:
        proc.terminate()
        _, err = await proc.communicate()
    return got, err.decode(errors="replace")


async def test_port_forwarding_refused_by_default(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd, echo_port: int
) -> None:
    await sign_in(gate, client)
    # -W (stdio forwarding): refused by the door, with its reason.
    ran = await run_ssh(client, "claw@openclaw", "-W", f"127.0.0.1:{echo_port}", stdin=b"ping\n")
    assert ran.status == 255
    assert ran.stdout == b""
    assert "port forwarding is not allowed on route openclaw" in ran.stderr, ran.stderr
    # -L: the client listens, but nothing it accepts gets through.
    got, err = await forward_locally(client, "claw@openclaw", echo_port)
    assert got == b""
    assert "port forwarding is not allowed on route openclaw" in err, err


async def test_port_forwarding_when_route_allows(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd, tmp_path: Path, echo_port: int
) -> None:
    gate.routes["fwd"] = SshRoute(
        name="fwd", upstream_host="127.0.0.1", upstream_port=sshd.port, allow_port_forwarding=True
    )
    await sign_in(gate, client, "claw@fwd")
    ran = await run_ssh(client, "claw@fwd", 'cat "$SSH_USER_AUTH"')
    assert extensions(describe_cert(ran.stdout, tmp_path)) == {
        "permit-pty",
        "permit-port-forwarding",
    }

    # -W: stdin/stdout of ssh become a TCP connection the upstream sshd makes.
    payload = b"ping through the upstream\n" * 4000
    ran = await run_ssh(client, "claw@fwd", "-W", f"127.0.0.1:{echo_port}", stdin=payload)
    assert ran.stdout == payload, ran.stderr
    # -L as well.
    got, err = await forward_locally(client, "claw@fwd", echo_port)
    assert got == b"ping\n", err


async def test_remote_forwarding_when_route_allows(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd, echo_port: int
) -> None:
    gate.routes["fwd"] = SshRoute(
        name="fwd", upstream_host="127.0.0.1", upstream_port=sshd.port, allow_port_forwarding=True
    )
    await sign_in(gate, client, "claw@fwd")
    remote = free_port()
    # The upstream listens on `remote`; a connection to it comes back through the door
    # and the client to the echo server; the command on the upstream uses it.
    ran = await run_ssh(
        client,
        "claw@fwd",
        f"exec 3<>/dev/tcp/127.0.0.1/{remote}; echo hello-remote >&3; head -n1 <&3",
        options=("-R", f"{remote}:127.0.0.1:{echo_port}", "-o", "ExitOnForwardFailure=yes"),
    )
    assert ran.stdout == b"hello-remote\n", ran.stderr
    assert ran.status == 0

    # Refused on a route without forwarding: the client is told the request failed.
    await sign_in(gate, client, "claw@openclaw")
    ran = await run_ssh(
        client,
        "claw@openclaw",
        "true",
        options=("-R", f"{free_port()}:127.0.0.1:{echo_port}", "-o", "ExitOnForwardFailure=yes"),
    )
    assert ran.status == 255
    assert "remote port forwarding failed" in ran.stderr.lower(), ran.stderr


async def test_no_pty_route_and_agent_x11_refused(
    gate: FakeGate, door: RunningDoor, client: SshClient, sshd: Sshd, tmp_path: Path
) -> None:
    gate.routes["batch"] = SshRoute(
        name="batch",
        upstream_host="127.0.0.1",
        upstream_port=sshd.port,
        allow_pty=False,
        allow_agent_forwarding=True,
        allow_x11_forwarding=True,
    )
    await sign_in(gate, client, "claw@batch")
    ran = await run_ssh(client, "claw@batch", 'cat "$SSH_USER_AUTH"')
    # The certificate carries what the route allows (agent, X11) and no pty...
    assert extensions(describe_cert(ran.stdout, tmp_path)) == {
        "permit-agent-forwarding",
        "permit-X11-forwarding",
    }
    # ...the door refuses the pty itself, before the upstream is asked...
    child = client.spawn("claw@batch")
    await expect(child, "PTY allocation request failed")
    child.sendline("tty; exit 4")
    out, status = await finish(child)
    assert "not a tty" in out
    assert status == 4
    # ...relays the user's agent (the route allows it), never X11 (no listener for it on
    # the clawgate host), and on a route that does not allow it, no agent either.
    gate.routes["plain"] = SshRoute(
        name="plain", upstream_host="127.0.0.1", upstream_port=sshd.port
    )
    agent = tmp_path / "agent.sock"
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/ssh-agent", "-a", str(agent), "-D",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            if agent.exists():
                break
            await asyncio.sleep(0.05)
        added = await asyncio.create_subprocess_exec(
            "/usr/bin/ssh-add", str(client.key),
            env={"SSH_AUTH_SOCK": str(agent)},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert await added.wait() == 0
        forwarding = ("-A", "-o", f"IdentityAgent={agent}", "-X")
        ran = await run_ssh(
            client,
            "claw@batch",
            'echo "display=${DISPLAY-none}"; ssh-add -l',
            options=forwarding,
        )
        await sign_in(gate, client, "claw@plain")
        refused = await run_ssh(
            client,
            "claw@plain",
            'echo "agent=${SSH_AUTH_SOCK-none}"',
            options=forwarding,
        )
    finally:
        proc.terminate()
        await proc.wait()
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", str(client.key)], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    lines = ran.stdout.decode().splitlines()
    assert lines[0] == "display=none", ran.stderr
    assert fingerprint in ran.stdout.decode(), ran  # the user's key, through the relay
    assert refused.stdout == b"agent=none\n", refused.stderr
