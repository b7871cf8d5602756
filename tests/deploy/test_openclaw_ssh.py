"""The sshd behind clawgate's SSH door: deploy/openclaw/ (target "ssh") and its files.

Three layers, each able to fail on its own:

* the Dockerfile's stages and the files the "ssh" stage copies, read as text
  (hadolint lints the whole Dockerfile in test_deploy_files.py);
* ``sshd_config`` as written, and as OpenSSH's own ``sshd -T`` reads it (a misspelt
  keyword or a bad value fails there, and the test shows it a broken copy to prove it);
* the sshd itself, started the way the image starts it (``openclaw-sshd``: host key on
  first start, then ``/usr/sbin/sshd -D -e``), unprivileged as uid 1000 "claw", with a
  read-only root, in a private mount namespace that stands in for the container; clawgate's
  own User CA code signs the certificates it is shown. What it must accept (clawgate's
  certificate for "claw", from a CA made by ``clawgate ssh-ca init`` or by Pomerium's
  ``ssh-keygen``) and refuse (another principal, another CA, a plain key, an expired
  certificate, root), and that the certificate's extensions decide pty and forwarding.

The live layer needs root (mount namespaces); without it the tests skip, and fail under
``CLAWGATE_E2E_REQUIRE=1`` as in CI. Missing tools (OpenSSH, util-linux) are failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.deploy.test_deploy_files import (
    OPENCLAW_DIR,
    TOOL_TIMEOUT,
    Instruction,
    exec_form,
    parse_dockerfile,
)

SSH_DIR = OPENCLAW_DIR / "ssh"
SSHD_CONFIG = SSH_DIR / "sshd_config"
PRINCIPALS_DIR = SSH_DIR / "auth_principals"
ENTRY_SCRIPT = SSH_DIR / "openclaw-sshd"
DOCKERFILE = OPENCLAW_DIR / "Dockerfile"
SSHD = "/usr/sbin/sshd"  # the absolute path sshd insists on, and openclaw-sshd execs
LOGIN = "claw"
LOGIN_UID = 1000
CA_PATH = "/etc/ssh/clawgate_user_ca.pub"
KEY_ID = "clawgate:alice@example.com:session=ab12cd34"


# --------------------------------------------------------------------------- helpers


def sshd_directives(path: Path = SSHD_CONFIG) -> dict[str, str]:
    """Keyword -> value as sshd uses them: the first occurrence of a keyword wins."""
    out: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        out.setdefault(keyword, value.strip())
    return out


def stages() -> dict[str, list[Instruction]]:
    """The Dockerfile's instructions by stage name (``FROM ... AS name``)."""
    instructions = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    names: dict[int, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            match = re.search(r"\s+AS\s+(\S+)$", ins.args, re.IGNORECASE)
            assert match, f"unnamed stage: FROM {ins.args}"
            names[ins.stage] = match.group(1)
    out: dict[str, list[Instruction]] = {name: [] for name in names.values()}
    for ins in instructions:
        out[names[ins.stage]].append(ins)
    return out


def need_tool(name: str) -> str:
    found = shutil.which(name) or (name if Path(name).is_file() else None)
    if found is None:
        pytest.fail(
            f"{name} not found: `apt-get install -y openssh-server openssh-client util-linux` "
            "(scripts/setup --full installs them)"
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_stages() -> None:
    by_name = stages()
    # The gateway stays the default target: last.
    assert list(by_name) == ["openclaw", "ssh", "gateway"]
    froms = {name: ins[0].args.split()[0] for name, ins in by_name.items()}
    assert froms["ssh"] == froms["gateway"] == "openclaw"
    assert re.fullmatch(r"node:\d+\.\d+\.\d+-bookworm-slim", froms["openclaw"])


def test_ssh_stage_installs_one_pinned_package_and_no_host_keys() -> None:
    runs = [i.args for i in stages()["ssh"] if i.keyword == "RUN"]
    installs = [r for r in runs if "apt-get install" in r]
    assert len(installs) == 1
    (run,) = installs
    packages = re.findall(r"(?<=\s)([a-z0-9.+-]+)=(\S+)", run.split("apt-get install", 1)[1])
    assert [p for p, _ in packages] == ["openssh-server"]
    (version,) = [v for _, v in packages]
    assert re.fullmatch(r"1:\d+\.\d+p\d+-\d+\+deb12u\d+", version), version
    assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run
    # Host keys Debian's postinst generates would be the same in every container.
    assert "rm -f /etc/ssh/ssh_host_*" in run
    # The login "claw" is the image's uid 1000, the owner of the gateway's state.
    assert "usermod --login claw node" in run and "groupmod --new-name claw node" in run


def test_ssh_stage_runs_the_entry_script_unprivileged() -> None:
    ssh = stages()["ssh"]
    by_kw: dict[str, list[str]] = {}
    for ins in ssh:
        by_kw.setdefault(ins.keyword, []).append(ins.args)
    assert by_kw["USER"][-1] == f"{LOGIN_UID}:{LOGIN_UID}"
    assert by_kw["EXPOSE"] == [sshd_directives()["Port"]]
    assert exec_form(by_kw["CMD"][-1]) == ["/bin/sh", "/usr/local/bin/openclaw-sshd"]
    _, _, health = by_kw["HEALTHCHECK"][-1].partition(" CMD ")
    assert f"connect({sshd_directives()['Port']}, '127.0.0.1')" in exec_form(health)[-1]
    # Every file the stage copies exists, lands where sshd_config and the script
    # expect it, and gets modes that do not depend on the checkout's umask.
    copies = {args.split()[-1]: args.split()[0] for args in by_kw["COPY"]}
    assert copies == {
        "/etc/ssh/sshd_config": "ssh/sshd_config",
        "/etc/ssh/auth_principals/": "ssh/auth_principals/",
        "/usr/local/bin/openclaw-sshd": "ssh/openclaw-sshd",
    }
    for source in copies.values():
        assert (OPENCLAW_DIR / source).exists(), source
    assert any("chmod 0644" in r and "auth_principals" in r for r in by_kw["RUN"])
    # The volume for the host key, owned by the login user.
    volumes = " ".join(by_kw["VOLUME"])
    key_dir = str(Path(sshd_directives()["HostKey"]).parent)
    assert key_dir in volumes
    assert any(f"chown {LOGIN_UID}:{LOGIN_UID} {key_dir}" in r for r in by_kw["RUN"])


def test_entry_script_execs_sshd_in_the_foreground() -> None:
    text = ENTRY_SCRIPT.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n") and "set -eu" in text
    assert re.search(r'^exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config "\$@"$', text, re.M)
    assert sshd_directives()["HostKey"] in text and CA_PATH in text
    subprocess.run(["sh", "-n", str(ENTRY_SCRIPT)], check=True, timeout=TOOL_TIMEOUT)


def test_gateway_stage_is_unchanged_by_the_ssh_stage() -> None:
    gateway = stages()["gateway"]
    assert not [i for i in gateway if i.keyword in ("RUN", "COPY", "ADD")]
    cmd = exec_form([i for i in gateway if i.keyword == "CMD"][-1].args)
    assert cmd[-4:] == ["gateway", "run", "--port", "18789"]


# --------------------------------------------------------------------------- sshd_config


def test_sshd_config_admits_only_clawgate_certificates() -> None:
    d = sshd_directives()
    expected = {
        "PubkeyAuthentication": "yes",
        "AuthenticationMethods": "publickey",
        "TrustedUserCAKeys": CA_PATH,
        "AuthorizedPrincipalsFile": "/etc/ssh/auth_principals/%u",
        "AuthorizedKeysFile": "none",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "HostbasedAuthentication": "no",
        "PermitRootLogin": "no",
        "AllowUsers": LOGIN,
        "UsePAM": "no",
        "ExposeAuthInfo": "yes",
        "LogLevel": "VERBOSE",
        "PermitUserEnvironment": "no",
        "PermitTunnel": "no",
        "GatewayPorts": "no",
        # The certificate's permit-* extensions decide these.
        "PermitTTY": "yes",
        "AllowTcpForwarding": "yes",
        "AllowAgentForwarding": "yes",
        "X11Forwarding": "yes",
    }
    assert {k: d.get(k) for k in expected} == expected
    assert int(d["Port"]) >= 1024, "an unprivileged sshd cannot bind a port below 1024"
    assert "Match" not in d, "a Match block could loosen any of the above"


def test_principals_file_admits_only_claw() -> None:
    files = sorted(p.name for p in PRINCIPALS_DIR.iterdir())
    assert files == [LOGIN]
    lines = (PRINCIPALS_DIR / LOGIN).read_text(encoding="utf-8").splitlines()
    principals = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    assert principals == [LOGIN]


def test_sshd_sessions_get_the_images_openclaw_environment() -> None:
    from tests.deploy.test_kubernetes import dockerfile_env

    image = dockerfile_env(DOCKERFILE)
    session = dict(pair.split("=", 1) for pair in sshd_directives()["SetEnv"].split())
    for key in ("OPENCLAW_CONFIG_PATH", "OPENCLAW_STATE_DIR", "XDG_CACHE_HOME",
                "OPENCLAW_NO_AUTO_UPDATE", "OPENCLAW_DISABLE_BONJOUR"):  # fmt: skip
        assert session[key] == image[key], key


def _sshd_t(config_text: str) -> subprocess.CompletedProcess[str]:
    """``sshd -T`` on ``config_text``: the effective configuration, or an error for a
    bad file. As root it runs as nobody: root's sshd also wants /run/sshd, which a test
    host may not have."""
    sshd = need_tool(SSHD)
    with tempfile.TemporaryDirectory(prefix="clawgate-sshd-t-") as scratch:
        tmp = Path(scratch)
        config = tmp / "sshd_config"
        config.write_text(config_text, encoding="utf-8")
        key = tmp / "hostkey"
        subprocess.run(
            [need_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
            timeout=TOOL_TIMEOUT,
        )
        argv = [sshd, "-T", "-f", str(config), "-h", str(key),
                "-C", f"user={LOGIN},host=clawgate,addr=172.30.0.10"]  # fmt: skip
        if os.geteuid() == 0:
            for path in (tmp, key, config):
                os.chown(path, 65534, 65534)
            setpriv = need_tool("setpriv")
            argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)


def test_sshd_reads_the_config_as_written() -> None:
    result = _sshd_t(SSHD_CONFIG.read_text(encoding="utf-8"))
    assert result.returncode == 0, result.stderr
    effective: dict[str, str] = {}
    for line in result.stdout.splitlines():
        keyword, _, value = line.partition(" ")
        effective.setdefault(keyword, value)
    assert effective["port"] == sshd_directives()["Port"]
    assert effective["trustedusercakeys"] == CA_PATH
    assert effective["authorizedprincipalsfile"] == "/etc/ssh/auth_principals/%u"
    assert effective["authorizedkeysfile"] == "none"
    assert effective["authenticationmethods"] == "publickey"
    for keyword in ("passwordauthentication", "kbdinteractiveauthentication",
                    "hostbasedauthentication", "permitrootlogin", "usepam",
                    "permittunnel", "gatewayports", "permituserenvironment"):  # fmt: skip
        assert effective[keyword] == "no", keyword
    assert effective["pubkeyauthentication"] == "yes"
    assert effective["exposeauthinfo"] == "yes"
    assert effective["loglevel"] == "VERBOSE"
    assert effective["allowusers"] == LOGIN


def test_sshd_refuses_a_broken_config() -> None:
    # The check above means something only if sshd -T rejects a bad file.
    text = SSHD_CONFIG.read_text(encoding="utf-8")
    result = _sshd_t(text.replace("TrustedUserCAKeys ", "TrustedUserCAKey ", 1))
    assert result.returncode != 0
    assert "TrustedUserCAKey" in result.stderr


# --------------------------------------------------------------------------- live sshd

# Stand-in for the container: a private mount namespace with the image's files in
# place, the login "claw" as uid 1000, a devpts like Docker's and Kubernetes' (gid 5,
# mode 620), a read-only root, and the process run as uid 1000 with no capabilities
# and no_new_privs, as docker-compose.yaml and the Pod spec run it. /etc is a copy
# (with "claw" in passwd and group) mounted over the host's: a bind mount on the file
# /etc/passwd would vanish whenever something on the host rewrites that file.
_INNER = r"""
set -eu
stage=$1; port=$2
mount --make-rprivate /
cp -a /etc/. "$stage/etc/"
cp "$stage/passwd" "$stage/etc/passwd"
cp "$stage/group" "$stage/etc/group"
mount --bind "$stage/etc" /etc
mount -t tmpfs -o mode=755 tmpfs /etc/ssh
cp "$stage/sshd_config" /etc/ssh/sshd_config
mkdir -m 755 /etc/ssh/auth_principals
cp "$stage/auth_principals/"* /etc/ssh/auth_principals/
chmod 644 /etc/ssh/sshd_config /etc/ssh/auth_principals/*
cp "$stage/ca.pub" /etc/ssh/clawgate_user_ca.pub
chmod 444 /etc/ssh/clawgate_user_ca.pub
mount -o remount,ro,bind /etc/ssh
mount -t tmpfs -o mode=755 tmpfs /usr/local/bin
cp "$stage/openclaw-sshd" /usr/local/bin/openclaw-sshd
mount -o remount,ro,bind /usr/local/bin
mount -t tmpfs -o mode=755 tmpfs /var/lib
mkdir -m 700 /var/lib/openclaw-ssh
chown 1000:1000 /var/lib/openclaw-ssh
mount -t tmpfs -o mode=755 tmpfs /home
mkdir -p /home/node/.openclaw
chown -R 1000:1000 /home/node
mount -t devpts -o newinstance,gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount --bind /dev/pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -o remount,ro,bind /
exec setpriv --reuid=1000 --regid=1000 --clear-groups --no-new-privs \
    --inh-caps=-all --bounding-set=-all \
    /bin/sh /usr/local/bin/openclaw-sshd -p "$port"
"""


@dataclass
class LiveSshd:
    port: int
    log: Path
    host_key: asyncssh.SSHKey
    ca: object  # proxy.ssh.UserCA made by `clawgate ssh-ca init`
    pomerium_ca: object  # proxy.ssh.UserCA loaded from an `ssh-keygen` key
    stray_ca: object  # trusted by nobody

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _require_root() -> None:
    if os.geteuid() != 0:
        reason = "the live sshd test needs root (a private mount namespace)"
        if os.environ.get("CLAWGATE_E2E_REQUIRE") == "1":
            pytest.fail(f"prerequisite missing (CLAWGATE_E2E_REQUIRE=1): {reason}")
        pytest.skip(reason)


def _passwd_with_claw(name: str, entry: str, key_field: int) -> str:
    lines = Path(f"/etc/{name}").read_text(encoding="utf-8").splitlines()
    kept = [
        ln for ln in lines
        if ln.split(":")[0] != LOGIN and ln.split(":")[key_field:key_field + 1] != [str(LOGIN_UID)]
    ]  # fmt: skip
    return "\n".join([*kept, entry]) + "\n"


@pytest.fixture(scope="module")
def live_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSshd]:
    _require_root()
    for tool in ("unshare", "setpriv", "mount", "ssh-keygen", SSHD):
        need_tool(tool)
    from proxy.ssh import UserCA, init_ca

    stage = tmp_path_factory.mktemp("openclaw-ssh")
    stage.chmod(0o755)
    (stage / "etc").mkdir(mode=0o755)
    shutil.copy(SSHD_CONFIG, stage / "sshd_config")
    shutil.copytree(PRINCIPALS_DIR, stage / "auth_principals")
    shutil.copy(ENTRY_SCRIPT, stage / "openclaw-sshd")
    (stage / "passwd").write_text(
        _passwd_with_claw("passwd", f"{LOGIN}:x:{LOGIN_UID}:{LOGIN_UID}::/home/node:/bin/bash", 2)
    )
    (stage / "group").write_text(_passwd_with_claw("group", f"{LOGIN}:x:{LOGIN_UID}:", 2))
    # Two CAs the sshd trusts (TrustedUserCAKeys may list several, e.g. while rotating):
    # one made by `clawgate ssh-ca init`, one the way Pomerium's guide makes its CA.
    clawgate_line = init_ca(stage / "ca" / "user_ca_key")
    subprocess.run(
        [need_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "Pomerium User CA",
         "-f", str(stage / "ca" / "pomerium_user_ca_key")],
        check=True, timeout=TOOL_TIMEOUT,
    )  # fmt: skip
    pomerium_line = (stage / "ca" / "pomerium_user_ca_key.pub").read_text().strip()
    (stage / "ca.pub").write_text(f"{clawgate_line}\n{pomerium_line}\n")
    init_ca(stage / "ca" / "stray_ca_key")
    inner = stage / "inner.sh"
    inner.write_text(_INNER)
    port = free_port()
    log = stage / "sshd.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", str(inner), str(stage), str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while "Server listening on 0.0.0.0" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start:\n{log.read_text()}")
            time.sleep(0.05)
        match = re.search(r"openclaw-sshd: host key (ssh-ed25519 \S+)", log.read_text())
        assert match, log.read_text()
        yield LiveSshd(
            port=port,
            log=log,
            host_key=asyncssh.import_public_key(match.group(1)),
            ca=UserCA.load(stage / "ca" / "user_ca_key"),
            pomerium_ca=UserCA.load(stage / "ca" / "pomerium_user_ca_key"),
            stray_ca=UserCA.load(stage / "ca" / "stray_ca_key"),
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        # The copy of the host's /etc (shadow included) does not outlive the test.
        shutil.rmtree(stage / "etc", ignore_errors=True)


def _cert(
    ca: object,
    key: asyncssh.SSHKey,
    *,
    principal: str = LOGIN,
    pty: bool = True,
    port_forwarding: bool = False,
    now: float | None = None,
) -> asyncssh.SSHCertificate:
    from proxy.ssh import CertExtensions, UserCA

    assert isinstance(ca, UserCA)
    extensions = CertExtensions(pty=pty, port_forwarding=port_forwarding)
    cert: asyncssh.SSHCertificate = ca.sign(
        key, principal=principal, key_id=KEY_ID, extensions=extensions, now=now
    )
    return cert


@contextlib.asynccontextmanager
async def _connect(
    sshd: LiveSshd,
    *,
    login: str = LOGIN,
    ca: object | None = None,
    plain_key: bool = False,
    principal: str = LOGIN,
    pty: bool = True,
    port_forwarding: bool = False,
    now: float | None = None,
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """Connect as clawgate does: a fresh key, a certificate, nothing from the host."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    cert = _cert(
        ca or sshd.ca, key, principal=principal, pty=pty, port_forwarding=port_forwarding, now=now
    )
    client_key: object = key if plain_key else (key, cert)
    conn = await asyncio.wait_for(
        asyncssh.connect(
            "127.0.0.1",
            sshd.port,
            username=login,
            known_hosts=([sshd.host_key], [], []),
            client_keys=[client_key],
            config=None,
            agent_path=None,
            password_auth=False,
            kbdint_auth=False,
            gss_auth=False,
            host_based_auth=False,
            preferred_auth="publickey",
        ),
        timeout=15,
    )
    try:
        yield conn
    finally:
        conn.close()
        await conn.wait_closed()


async def test_clawgate_certificate_logs_in_as_claw_on_the_state(live_sshd: LiveSshd) -> None:
    script = (
        'id -un; id -u; echo "$HOME"; echo "$OPENCLAW_STATE_DIR"; echo "$OPENCLAW_CONFIG_PATH"; '
        'touch "$OPENCLAW_STATE_DIR/written" && echo state-writable; '
        'touch /etc/x 2>/dev/null || echo root-read-only; cat "$SSH_USER_AUTH"'
    )
    async with _connect(live_sshd) as conn:
        result = await conn.run(script, check=True)
    out = str(result.stdout).splitlines()
    assert out[:5] == [
        LOGIN,
        str(LOGIN_UID),
        "/home/node",
        "/home/node/.openclaw",
        "/etc/openclaw/openclaw.json",
    ]
    assert out[5:7] == ["state-writable", "root-read-only"]
    # ExposeAuthInfo: the certificate is in the session for scripts to read.
    assert out[7].startswith("publickey ssh-ed25519-cert-v01@openssh.com ")
    # LogLevel VERBOSE: the gateway host's log names the person behind the connection.
    assert f'Accepted certificate ID "{KEY_ID}"' in live_sshd.log_text()


async def test_a_ca_made_with_ssh_keygen_works_too(live_sshd: LiveSshd) -> None:
    # Pomerium's guide makes its User CA with ssh-keygen; clawgate can sign with it.
    async with _connect(live_sshd, ca=live_sshd.pomerium_ca) as conn:
        result = await conn.run("id -un", check=True)
    assert str(result.stdout).strip() == LOGIN


async def test_pty_follows_the_certificate(live_sshd: LiveSshd) -> None:
    async with _connect(live_sshd, pty=True) as conn:
        result = await conn.run("tty", term_type="xterm", check=True)
    assert re.fullmatch(r"/dev/pts/\d+", str(result.stdout).strip())
    async with _connect(live_sshd, pty=False) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.run("tty", term_type="xterm")
        # Commands without a pty still run: only the pty is withheld.
        assert str((await conn.run("echo ok", check=True)).stdout).strip() == "ok"


async def test_port_forwarding_follows_the_certificate(live_sshd: LiveSshd) -> None:
    async with _connect(live_sshd) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", live_sshd.port)
    async with _connect(live_sshd, port_forwarding=True) as conn:
        reader, writer = await conn.open_connection("127.0.0.1", live_sshd.port)
        banner = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    assert banner.startswith(b"SSH-2.0-")


@pytest.mark.parametrize(
    "case",
    ["other-principal", "root-login", "untrusted-ca", "plain-key", "expired", "unknown-login"],
)
async def test_everything_else_is_refused(live_sshd: LiveSshd, case: str) -> None:
    cases: dict[str, dict[str, Any]] = {
        "other-principal": {"principal": "alice"},
        "root-login": {"login": "root", "principal": "root"},
        "untrusted-ca": {"ca": live_sshd.stray_ca},
        "plain-key": {"plain_key": True},
        # Valid for five minutes, an hour ago.
        "expired": {"now": time.time() - 3600},
        "unknown-login": {"login": "node", "principal": "node"},
    }
    options = cases[case]
    with pytest.raises(asyncssh.PermissionDenied):
        async with _connect(live_sshd, **options):
            pass


def test_known_hosts_line_from_the_log_is_what_clawgate_reads(
    live_sshd: LiveSshd, tmp_path: Path
) -> None:
    """The line openclaw-sshd logs, prefixed with [host]:port, is a known_hosts entry
    clawgate's client accepts (ssh_upstream_known_hosts_file, docs/ssh.md)."""
    line = re.search(r"openclaw-sshd: host key (.+)$", live_sshd.log_text(), re.M)
    assert line
    path = tmp_path / "upstream_known_hosts"
    path.write_text(f"[127.0.0.1]:{live_sshd.port} {line.group(1)}\n")
    known = asyncssh.read_known_hosts(str(path))
    trusted, *_ = known.match("127.0.0.1", "127.0.0.1", live_sshd.port)
    # (matched by name and by address: the same key twice)
    assert {k.public_data for k in trusted} == {live_sshd.host_key.public_data}
