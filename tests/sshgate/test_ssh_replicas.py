"""The SSH door with two replicas sharing a real Redis: the approval POST reaches the
replica without the connection (as a load balancer may send it), and a sign-out made
on that replica ends the SSH session held by the other.

Both replicas serve the same route host (the first one's port); the browser-like
client sends the approval and the sign-out to the second replica with that Host.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from proxy.assertion import generate_signing_key
from proxy.ssh import init_ca
from tests.ssh.conftest import SshClient, expect, finish
from tests.sshgate.test_ssh_sign_in import LOGIN, PROMPT, approval_url, browser, door_config
from tests.support.gate import GateProcess, register_client
from tests.support.idp import TestIdP, login
from tests.support.redis import RedisServer
from tests.support.sshd import Sshd, keygen
from tests.support.upstream import Upstream, free_port

pytestmark = [pytest.mark.timeout(180)]


async def test_approval_and_sign_out_through_the_other_replica(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    ca_line = init_ca(tmp_path / "user_ca")
    name_port = free_port()  # the route host clients use: the first replica's
    register_client(idp, name_port)
    key = tmp_path / "id_ed25519"
    keygen(key)
    signing_key = generate_signing_key()
    async with (
        RedisServer() as redis,
        Sshd(tmp_path / "sshd", ca_line, principals=(LOGIN,)) as sshd,
    ):
        gates: list[GateProcess] = []
        for index in range(2):
            directory = tmp_path / f"replica-{index}"
            directory.mkdir()
            ssh_port = free_port()
            config: dict[str, Any] = door_config(
                name_port, ssh_port, sshd, upstream, idp, directory
            )
            config.update(
                address=f"127.0.0.1:{name_port if index == 0 else free_port()}",
                health_address=f"127.0.0.1:{free_port()}",
                ssh_user_ca_key_file=str(tmp_path / "user_ca"),
                signing_key=signing_key,
                databroker_storage_type="redis",
                databroker_storage_connection_string=redis.url,
                log_format="json",
            )
            gate = GateProcess(config, directory)
            await asyncio.to_thread(gate.start)
            gates.append(gate)
        try:
            door_port = int(str(gates[0].config["ssh_address"]).rsplit(":", 1)[1])
            other = f"https://127.0.0.1:{gates[1].port}"
            name = f"https://127.0.0.1:{name_port}"
            client = SshClient(tmp_path, key, door_port)
            child = client.spawn(f"{LOGIN}@openclaw")
            url = await approval_url(child)
            code_path = url[len(name) :]
            async with browser() as http:
                # Signed in through the first replica (the redirect chain goes there) ...
                page = await login(http, url, "alice@example.com", "alice-password")
                csrf = re.search(r'name=csrf value="([^"]+)"', await page.text())
                assert csrf is not None
                # ... and the approval answered by the second.
                async with http.post(
                    other + code_path,
                    data={"csrf": csrf.group(1), "action": "approve"},
                    headers={"Host": f"127.0.0.1:{name_port}", "Origin": name},
                ) as done:
                    assert done.status == 200, await done.text()
                await expect(child, PROMPT)
                assert '"event":"ssh_approval"' in gates[1].log_text()
                assert '"event":"ssh_approval"' not in gates[0].log_text()
                child.sendline("echo through-$((2*21))")
                await expect(child, "through-42")

                # A sign-out made on the second replica ends the session on the first.
                async with http.get(
                    other + "/.clawgate/user",
                    headers={"Host": f"127.0.0.1:{name_port}", "Accept": "application/json"},
                ) as me:
                    token = (await me.json())["csrf"]
                async with http.post(
                    other + "/.clawgate/sign_out",
                    data={"csrf": token},
                    headers={"Host": f"127.0.0.1:{name_port}", "Origin": name},
                    allow_redirects=False,
                ) as out:
                    assert out.status == 302
            text, _ = await finish(child, timeout=30)
            assert "clawgate: signed out" in text
            # The approval code answers the sign-in: no log line of either replica has it.
            code = code_path.rsplit("/", 1)[1]
            assert "/.clawgate/ssh/<code>" in gates[1].log_text()
            assert all(code not in gate.log_text() for gate in gates)
        finally:
            for gate in gates:
                await asyncio.to_thread(gate.stop)
