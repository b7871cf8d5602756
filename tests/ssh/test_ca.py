"""The User CA: init_ca, load, and the certificates it signs."""

from __future__ import annotations

import stat
import subprocess
import time
from pathlib import Path

import asyncssh
import pytest

from proxy.ssh import CertExtensions, SshRoute, SshSetupError, UserCA, init_ca

pytestmark = pytest.mark.timeout(30)


def test_init_ca_writes_0600_and_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "ca" / "user_ca"
    line = init_ca(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert line.startswith("ssh-ed25519 ")
    assert path.with_name("user_ca.pub").read_text().strip() == line
    # public_line() is what ssh-keygen derives from the private key.
    derived = subprocess.run(
        ["/usr/bin/ssh-keygen", "-y", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout.split()
    assert UserCA.load(path).public_line().split()[:2] == derived[:2]
    assert line.split()[:2] == derived[:2]

    original = path.read_bytes()
    with pytest.raises(SshSetupError, match="already exists"):
        init_ca(path)
    assert path.read_bytes() == original
    replaced = init_ca(path, force=True)
    assert replaced != line
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("problem", ["missing", "garbage", "public", "encrypted", "directory"])
def test_load_errors_name_file_and_reason(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "ca"
    if problem == "garbage":
        path.write_text("hello\n")
    elif problem == "public":
        init_ca(tmp_path / "real")
        path.write_text((tmp_path / "real.pub").read_text())
    elif problem == "encrypted":
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(path), passphrase="x")
    elif problem == "directory":
        path.mkdir()
    with pytest.raises(SshSetupError) as err:
        UserCA.load(path)
    message = str(err.value)
    assert str(path) in message
    expected = {
        "missing": "file not found",
        "directory": "is a directory",
    }.get(problem, "not a usable unencrypted private key")
    assert expected in message


def test_sign_validity_principal_extensions(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    ca = UserCA.load(tmp_path / "ca")
    key = asyncssh.generate_private_key("ssh-ed25519")
    now = time.time()
    route = SshRoute("r", "127.0.0.1", 22, allow_pty=False, allow_agent_forwarding=True)
    cert = ca.sign(
        key, principal="deploy", key_id="clawgate:bob@example.com:session=1", lifetime=120,
        extensions=CertExtensions.for_route(route), now=now,
    )  # fmt: skip
    path = tmp_path / "cert.pub"
    cert.write_certificate(str(path))
    out = subprocess.run(
        ["/usr/bin/ssh-keygen", "-L", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout
    assert 'Key ID: "clawgate:bob@example.com:session=1"' in out
    assert "Principals: \n                deploy\n" in out
    exts = {ln.strip() for ln in out.split("Extensions:")[1].splitlines() if ln.strip()}
    assert exts == {"permit-agent-forwarding"}
    assert "Type: ssh-ed25519-cert-v01@openssh.com user certificate" in out
    with pytest.raises(ValueError):
        ca.sign(key, principal="", key_id="x", extensions=CertExtensions())
