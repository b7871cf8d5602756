"""``clawgate apikey create/list/revoke``: in process through the argument parser, and
end to end in a child process."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proxy.apikeys import (
    ApiKey,
    KeyIndex,
    RateLimit,
    hash_key,
    load_key_file,
    new_key,
    save_key_file,
    well_formed,
)
from proxy.cli_apikeys import add_apikey_commands

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
idp_provider_url: https://idp.example.com
idp_client_id: clawgate
idp_client_secret: s3cret
{extra}
routes:
  - from: https://openclaw.example.com
    to: http://openclaw-gateway:18789
    allow_api_keys: true
    policy:
      - allow: {{or: [{{groups: {{has: bots}}}}]}}
"""

# The commands alone, for a child process, until proxy/cli.py registers them.
RUNNER = """\
import argparse, sys
from proxy.cli_apikeys import add_apikey_commands
parser = argparse.ArgumentParser(prog="clawgate")
add_apikey_commands(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def parser() -> argparse.ArgumentParser:
    built = argparse.ArgumentParser(prog="clawgate")
    add_apikey_commands(built.add_subparsers(dest="command", required=True))
    return built


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = parser().parse_args(["apikey", *argv])
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path) -> Path:
    # Relative to the config file's directory, not to the working directory.
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "config.yaml"
    path.write_text(CONFIG.format(extra="api_keys_file: api_keys.yaml"))
    return path


def keys_of(config: Path) -> list[ApiKey]:
    return load_key_file(config.parent / "api_keys.yaml")


def test_create_prints_the_key_once_and_keeps_only_its_hash(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    code, out, err = run(
        capsys, "create", "ci-bot", "--groups", "bots, ops", "--expires", "90d",
        "--rate", "5/s:20", "--routes", "OpenClaw.example.com", "--config", str(config),
    )
    assert code == 0, err
    assert out.count("\n") == 1  # the key alone on its line, nothing else on stdout
    key = out.strip()
    assert well_formed(key)
    assert "only time" in err and key not in err
    file_text = (config.parent / "api_keys.yaml").read_text()
    assert key not in file_text and hash_key(key) in file_text
    assert stat.S_IMODE((config.parent / "api_keys.yaml").stat().st_mode) == 0o600
    [made] = keys_of(config)
    assert made.name == "ci-bot" and made.groups == ("bots", "ops")
    assert made.rate == RateLimit(5.0, 20) and made.routes == ("openclaw.example.com",)
    assert before <= made.created <= datetime.now(UTC)
    assert made.expires == made.created + timedelta(days=90)
    # The printed key works.
    found, reason = KeyIndex(keys_of(config)).lookup(key, datetime.now(UTC))
    assert found == made and reason == ""


def test_create_refuses_a_duplicate_name(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "create", "ci-bot", "--config", str(config))[0] == 0
    text = (config.parent / "api_keys.yaml").read_text()
    code, out, err = run(capsys, "create", "ci-bot", "--groups", "admins", "--config", str(config))
    assert code == 2 and out == ""
    assert "'ci-bot'" in err and "already" in err
    assert (config.parent / "api_keys.yaml").read_text() == text


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["Bad_Name"], "name"),
        (["ci-bot", "--expires", "3 months"], "duration"),
        (["ci-bot", "--rate", "10/day"], "rate"),
        (["ci-bot", "--routes", "https://openclaw.example.com"], "route"),
    ],
)
def test_create_refuses_bad_arguments_before_writing(
    config: Path, capsys: pytest.CaptureFixture[str], argv: list[str], problem: str
) -> None:
    code, out, err = run(capsys, "create", *argv, "--config", str(config))
    assert code == 2 and out == "" and problem in err
    assert not (config.parent / "api_keys.yaml").exists()


def test_create_notes_what_would_make_the_key_useless(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "create", "ci-bot", "--routes", "elsewhere.example.com", "--config", str(config)
    )
    assert code == 0
    assert "never expires" in err and "no route for elsewhere.example.com" in err
    code, _, err = run(
        capsys, "create", "ok-bot", "--expires", "1d", "--routes", "openclaw.example.com",
        "--config", str(config),
    )
    assert code == 0 and "note:" not in err


def test_list_shows_everything_but_keys_and_hashes(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "list", "--config", str(config))
    assert code == 0 and "no API keys" in out
    key = run(
        capsys, "create", "ci-bot", "--groups", "bots", "--expires", "90d", "--rate", "600/m",
        "--routes", "openclaw.example.com", "--config", str(config),
    )[1].strip()
    path = config.parent / "api_keys.yaml"
    old_key = new_key()
    created = datetime(2025, 1, 1, tzinfo=UTC)
    stale = ApiKey("old-bot", hash_key(old_key), (), created, created + timedelta(days=1), None, ())
    save_key_file(path, [*load_key_file(path), stale])
    code, out, err = run(capsys, "list", "--config", str(config))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "GROUPS", "CREATED", "EXPIRES", "RATE", "ROUTES"]
    [ci] = [line for line in lines if line.startswith("ci-bot")]
    [made] = [k for k in load_key_file(path) if k.name == "ci-bot"]
    assert ci.split() == [
        "ci-bot", "bots", made.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        made.expires.strftime("%Y-%m-%dT%H:%M:%SZ") if made.expires else "?", "10/s",
        "openclaw.example.com",
    ]
    [old] = [line for line in lines if line.startswith("old-bot")]
    assert old.split() == [
        "old-bot", "-", "2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z", "-", "any", "EXPIRED"
    ]
    for secret in (key, old_key, hash_key(key), hash_key(old_key)):
        assert secret not in out and secret[:16] not in out and secret not in err


def test_revoke_removes_the_key(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kept = run(capsys, "create", "keep", "--config", str(config))[1].strip()
    gone = run(capsys, "create", "ci-bot", "--config", str(config))[1].strip()
    code, out, err = run(capsys, "revoke", "ci-bot", "--config", str(config))
    assert code == 0 and "revoked" in out, err
    index = KeyIndex(keys_of(config))
    assert index.lookup(gone, datetime.now(UTC)) == (None, "unknown")
    assert index.lookup(kept, datetime.now(UTC))[1] == ""
    code, out, err = run(capsys, "revoke", "ci-bot", "--config", str(config))
    assert code == 1 and "no API key named 'ci-bot'" in err
    assert index.names() == ("keep",)


def test_every_command_needs_api_keys_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(extra=""))
    for argv in (["create", "ci-bot"], ["list"], ["revoke", "ci-bot"]):
        code, out, err = run(capsys, *argv, "--config", str(config))
        assert code == 2 and out == "", argv
        assert "api_keys_file" in err and str(config) in err, argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_broken_key_file_is_reported_with_its_line(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config.parent / "api_keys.yaml"
    path.write_text("keys:\n  - name: ci-bot\n    sha256: nope\n    created: 2026-01-01\n")
    code, out, err = run(capsys, "list", "--config", str(config))
    assert code == 2 and out == ""
    assert f"{path}:3:" in err and "'ci-bot'" in err


def clawgate(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    from proxy.cli import build_parser

    sub = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    # Through proxy.cli once it registers the commands; until then the same commands
    # on their own parser (the test then still checks stdout, stderr and exit codes).
    entry = ["-m", "proxy.cli"] if "apikey" in sub.choices else ["-c", RUNNER]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, *entry, *argv], capture_output=True, text=True, timeout=60,
        cwd=cwd, env=env,
    )


def test_end_to_end_in_a_child_process(config: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    made = clawgate(
        "apikey", "create", "ci-bot", "--groups", "bots", "--expires", "90d",
        "--config", str(config), cwd=elsewhere,
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert made.stdout == key + "\n" and "only time" in made.stderr
    assert list(elsewhere.iterdir()) == []  # relative to the config, not the cwd
    found, _ = KeyIndex(keys_of(config)).lookup(key, datetime.now(UTC))
    assert found is not None and found.subject == "apikey:ci-bot" and found.groups == ("bots",)
    again = clawgate("apikey", "create", "ci-bot", "--config", str(config), cwd=elsewhere)
    assert again.returncode == 2 and again.stdout == ""
    listed = clawgate("apikey", "list", "--config", str(config), cwd=elsewhere)
    assert listed.returncode == 0 and "ci-bot" in listed.stdout
    assert key not in listed.stdout and hash_key(key) not in listed.stdout
    revoked = clawgate("apikey", "revoke", "ci-bot", "--config", str(config), cwd=elsewhere)
    assert revoked.returncode == 0, revoked.stderr
    assert keys_of(config) == []
    unknown = clawgate("apikey", "revoke", "ci-bot", "--config", str(config), cwd=elsewhere)
    assert unknown.returncode == 1 and "ci-bot" in unknown.stderr
