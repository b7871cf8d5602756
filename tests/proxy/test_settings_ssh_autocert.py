"""The SSH door's and autocert's keys: what a config may say, and errors that name the
key and line at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.settings import ConfigError, parse_settings

HTTPS = "  - from: https://gate.example.com\n    to: http://127.0.0.1:18789\n    allow_any_authenticated_user: true\n"
SSH = "  - from: ssh://openclaw\n    to: ssh://openclaw-ssh:22\n    allowed_users: [alice@example.com]\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "cfg.yaml")
    return info.value.problems


def test_an_ssh_route_loads_with_the_door() -> None:
    settings, _ = parse_settings(
        "ssh_address: ':2200'\nssh_user_ca_key_file: ca\nroutes:\n" + HTTPS + SSH, "cfg.yaml"
    )
    assert [r.from_ for r in settings.ssh_routes()] == ["ssh://openclaw"]
    assert [r.from_ for r in settings.http_routes()] == ["https://gate.example.com"]
    ssh = settings.ssh_routes()[0]
    assert ssh.ssh_allow_pty and not ssh.ssh_allow_port_forwarding


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("routes:\n" + HTTPS + SSH, "cfg.yaml:1: routes: ssh:// routes need ssh_address"),
        (
            "ssh_address: ':2200'\nroutes:\n" + HTTPS + SSH,
            "ssh_address: the SSH door needs ssh_user_ca_key_file",
        ),
        (
            "ssh_address: ':2200'\nssh_user_ca_key_file: ca\nroutes:\n" + HTTPS,
            "needs a route from ssh://NAME",
        ),
        (
            "ssh_address: ':2200'\nssh_user_ca_key_file: ca\nroutes:\n" + SSH,
            "add an https:// route",
        ),
        ("ssh_address: 'nope'\n", "ssh_address"),
        (
            "ssh_address: ':2200'\nssh_user_ca_key_file: ca\nroutes:\n"
            + HTTPS
            + SSH
            + "    prefix: /x\n",
            "cfg.yaml:10: routes[1].prefix: prefix has no meaning on an ssh:// route",
        ),
        (
            "ssh_address: ':2200'\nssh_user_ca_key_file: ca\nroutes:\n"
            + HTTPS
            + "  - from: ssh://bad name\n    to: ssh://x:22\n",
            "routes[1].from: 'ssh://bad name': expected ssh://NAME",
        ),
        (
            "routes:\n  - from: https://gate.example.com\n    to: ssh://x:22\n",
            "routes[0].to: an ssh:// upstream needs a route from ssh://NAME",
        ),
        (
            "ssh_address: ':2200'\nssh_user_ca_key_file: ca\nroutes:\n"
            + HTTPS
            + "  - from: ssh://a\n    to: http://x\n",
            "routes[1].to: an ssh:// route goes to an ssh:// upstream",
        ),
        (
            "ssh_address: ':2200'\nssh_user_ca_key_file: ca\nroutes:\n"
            + HTTPS
            + SSH
            + "    ssh_principal: claw\n    ssh_principal_claim: logins\n",
            "set ssh_principal or ssh_principal_claim, not both",
        ),
    ],
)
def test_ssh_mistakes_are_named(text: str, fragment: str) -> None:
    found = problems(text)
    assert any(fragment in p for p in found), found


def test_autocert_keys_load(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    mac = tmp_path / "mac"
    mac.write_text("c2VjcmV0\n")
    settings, _ = parse_settings(
        "autocert: true\n"
        f"autocert_dir: {tmp_path}/state\n"
        "autocert_ca: https://ca.internal/dir\n"
        "autocert_email: ops@example.com\n"
        f"autocert_trusted_ca: {ca}\n"
        "autocert_eab_key_id: kid-1\n"
        f"autocert_eab_mac_key_file: {mac}\n",
        "cfg.yaml",
    )
    assert settings.autocert_path() == tmp_path / "state"
    assert settings.autocert_eab_mac_key is not None
    assert settings.autocert_eab_mac_key.get_secret_value() == "c2VjcmV0"


def test_autocert_dir_defaults_under_the_data_dir(tmp_path: Path) -> None:
    settings, _ = parse_settings(f"data_dir: {tmp_path}\n", "cfg.yaml")
    assert settings.autocert_path() == tmp_path / "autocert"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "autocert_eab_key_id: k\n",
            "autocert_eab_key_id: autocert_eab_key_id and autocert_eab_mac_key go together",
        ),
        ("autocert_ca: ftp://x\n", "autocert_ca: expected the ACME directory's https URL"),
        ("autocert_ca: http://ca.example.com/dir\n", "must use https"),
        ("autocert_ca: https://x/d\nautocert_use_staging: true\n", "autocert_use_staging"),
        ("autocert: true\ninsecure_server: true\n", "autocert: autocert needs TLS"),
        (
            "autocert_trusted_ca: /nonexistent/ca.pem\n",
            "autocert_trusted_ca: /nonexistent/ca.pem is not a readable file",
        ),
    ],
)
def test_autocert_mistakes_are_named(text: str, fragment: str) -> None:
    found = problems(text)
    assert any(fragment in p for p in found), found


def test_eab_mac_key_never_appears_in_errors() -> None:
    found = problems("autocert_eab_mac_key: s3cr3t-mac\n")
    assert not any("s3cr3t-mac" in p for p in found)
