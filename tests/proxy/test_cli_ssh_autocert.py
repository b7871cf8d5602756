"""`clawgate ssh-ca init`, and what `check` and `audit` say about the SSH door and autocert
(no CA is contacted: the directory URL here answers nothing)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

from proxy.audit import audit_config
from proxy.snapshot import load_snapshot

ROOT = Path(__file__).resolve().parents[2]
SECRET = "8uXG7lJ9t1m1J3lq7h1a0kqB0Wm6o1Jb5zq4Jk2n1xQ="


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=60,
        cwd=cwd or ROOT,
    )  # fmt: skip


def config(tmp: Path, extra: str, ssh_policy: str = "allowed_users: [alice@example.com]") -> Path:
    path = tmp / "config.yaml"
    path.write_text(
        f"""address: 127.0.0.1:8443
cookie_secret: {SECRET}
idp_provider_url: https://idp.example.com
idp_client_id: c
idp_client_secret: s
data_dir: {tmp}/data
{extra}
routes:
  - from: https://gate.example.com
    to: http://127.0.0.1:18789
    allowed_users: [alice@example.com]
  - from: https://*.apps.example.com
    to: http://127.0.0.1:18789
    allowed_users: [alice@example.com]
  - from: ssh://openclaw
    to: ssh://openclaw-ssh:2222
    {ssh_policy}
"""
    )
    return path


SSH = "ssh_address: ':2200'\nssh_user_ca_key_file: user_ca\n"


def test_ssh_ca_init_writes_a_private_key_and_prints_the_public_line(tmp_path: Path) -> None:
    key = tmp_path / "ca"
    made = run("ssh-ca", "init", "--key-file", str(key))
    assert made.returncode == 0, made.stderr
    line = made.stdout.strip()
    assert line.startswith("ssh-ed25519 ")
    assert key.stat().st_mode & 0o777 == 0o600
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True
    ).stdout.split()[:2]
    assert line.split()[:2] == derived
    assert (tmp_path / "ca.pub").read_text().split()[:2] == derived
    assert "TrustedUserCAKeys" in made.stderr
    # Never replaced by accident; --force does.
    again = run("ssh-ca", "init", "--key-file", str(key))
    assert again.returncode != 0 and str(key) in again.stderr
    assert subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True,
                          text=True).stdout.split()[:2] == derived  # fmt: skip
    forced = run("ssh-ca", "init", "--key-file", str(key), "--force")
    assert forced.returncode == 0 and forced.stdout.split()[:2] != line.split()[:2]


def test_ssh_ca_init_writes_the_file_the_config_names(tmp_path: Path) -> None:
    path = config(tmp_path, SSH)
    made = run("ssh-ca", "init", "--config", str(path))
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "user_ca").exists()  # relative to the config file
    checked = run("check", "--config", str(path))
    assert checked.returncode == 0, checked.stderr
    assert "ssh:      :2200" in checked.stdout
    assert "ssh://openclaw -> ssh://openclaw-ssh:2222" in checked.stdout


def test_check_refuses_a_door_without_its_ca(tmp_path: Path) -> None:
    checked = run("check", "--config", str(config(tmp_path, SSH)))
    assert checked.returncode == 2
    assert "ssh_user_ca_key_file" in checked.stderr and "user_ca" in checked.stderr


def test_check_explains_autocert_without_contacting_the_ca(tmp_path: Path) -> None:
    extra = (
        "autocert: true\n"
        "autocert_ca: https://127.0.0.1:9/dir\n"  # the discard port: nothing answers
        "autocert_email: ops@example.com\n"
        "http_redirect_addr: 127.0.0.1:8080\n"
    )
    started = time.monotonic()
    checked = run("check", "--config", str(config(tmp_path, extra, "")))
    assert time.monotonic() - started < 30
    # The ssh:// route without its door is refused; drop it for this check.
    assert checked.returncode == 2 and "ssh_address" in checked.stderr
    path = tmp_path / "config.yaml"
    path.write_text(path.read_text().split("  - from: ssh://")[0])
    checked = run("check", "--config", str(path))
    assert checked.returncode == 0, checked.stderr
    out = checked.stdout
    assert "https://127.0.0.1:9/dir" in out
    assert "ops@example.com" in out
    assert "gate.example.com" in out and "tls-alpn-01" in out and "http-01" in out
    assert "*.apps.example.com" in out and "DNS-01" in out


def test_audit_findings_for_the_door_and_autocert(tmp_path: Path) -> None:
    extra = SSH + "autocert: true\nautocert_ca: https://127.0.0.1:9/dir\n"
    path = config(tmp_path, extra, "allow_any_authenticated_user: true")
    assert run("ssh-ca", "init", "--config", str(path)).returncode == 0
    os.chmod(tmp_path / "user_ca", 0o644)
    snap = load_snapshot(path)
    findings = audit_config(snap, path, now=dt.datetime.now(dt.UTC))
    by_key = {(f.key, f.severity): f.message for f in findings}
    assert ("ssh_user_ca_key_file", "high") in by_key
    assert ("routes[2] (ssh://openclaw)", "high") in by_key
    assert "root included" in by_key[("routes[2] (ssh://openclaw)", "high")]
    assert ("ssh_upstream_known_hosts_file", "low") in by_key
    assert ("autocert (gate.example.com)", "medium") in by_key
    refused = [f for f in findings if f.key == "autocert" and "*.apps.example.com" in f.message]
    assert refused and "DNS-01" in refused[0].message


def test_audit_is_quiet_about_a_tight_door(tmp_path: Path) -> None:
    (tmp_path / "known_hosts").write_text("[openclaw-ssh]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA\n")
    extra = SSH + f"ssh_upstream_known_hosts_file: {tmp_path}/known_hosts\n"
    path = config(tmp_path, extra)
    assert run("ssh-ca", "init", "--config", str(path)).returncode == 0
    findings = audit_config(load_snapshot(path), path)
    assert not [f for f in findings if "ssh" in f.key.lower()], findings


def test_check_names_a_bad_host_key_and_a_missing_known_hosts_file(tmp_path: Path) -> None:
    (tmp_path / "host_key").write_text("not a key\n")
    extra = (
        SSH
        + "ssh_host_key_files: [host_key]\n"
        + "ssh_upstream_known_hosts_file: missing_known_hosts\n"
    )
    path = config(tmp_path, extra)
    assert run("ssh-ca", "init", "--config", str(path)).returncode == 0
    checked = run("check", "--config", str(path))
    assert checked.returncode == 2
    err = checked.stderr
    assert "ssh_host_key_files[0]" in err and "host_key" in err and "not a usable" in err
    assert "ssh_upstream_known_hosts_file" in err and "missing_known_hosts" in err
    assert "not a key" not in err  # the file's content is never echoed
