"""``clawgate passwd add/remove/list``: the file it writes Apache reads back
(``htpasswd -v``), and a file Apache's tools wrote it edits line by line."""

from __future__ import annotations

import argparse
import io
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli_passwd import add_passwd_commands
from proxy.localusers import Verifier, load_htpasswd

ROUTE = """routes:
  - from: https://app.example.com
    to: http://127.0.0.1:9
    allow_public_unauthenticated_access: true
"""


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="clawgate")
    add_passwd_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def htpasswd(*args: str) -> int:
    found = shutil.which("htpasswd")
    if found is None:
        pytest.fail("htpasswd not found: `apt-get install apache2-utils` provides it")
    return subprocess.run([found, *args], capture_output=True, check=False).returncode


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "config.yaml"
    path.write_text("htpasswd_file: users.htpasswd\n" + ROUTE)
    # Elsewhere: the relative htpasswd_file is taken from the config's directory.
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return path


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def test_add_list_remove_and_apache_reads_it(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = config.parent / "users.htpasswd"
    stdin(monkeypatch, "s3cret with spaces \nnext line\n")
    assert run("passwd", "add", "alice", "--cost", "10", "--password-stdin",
               "--config", str(config)) == 0
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert not (config.parent.parent / "cwd" / "users.htpasswd").exists()
    assert users.read_text().startswith("alice:$2y$10$")
    assert htpasswd("-v", "-b", str(users), "alice", "s3cret with spaces ") == 0
    assert htpasswd("-v", "-b", str(users), "alice", "s3cret with spaces") == 3

    stdin(monkeypatch, "pässwörd\r\n")
    assert run("passwd", "add", "bob@example.com", "--cost", "11", "--password-stdin",
               "--config", str(config)) == 0
    assert htpasswd("-v", "-b", str(users), "bob@example.com", "pässwörd") == 0
    capsys.readouterr()

    assert run("passwd", "list", "--config", str(config)) == 0
    assert capsys.readouterr().out == "alice\nbob@example.com\n"

    # A new password replaces the hash, in place.
    stdin(monkeypatch, "changed\n")
    assert run("passwd", "add", "alice", "--cost", "10", "--password-stdin",
               "--config", str(config)) == 0
    assert "changed the password of alice" in capsys.readouterr().out
    assert [line.partition(":")[0] for line in users.read_text().splitlines()] == [
        "alice", "bob@example.com"]
    assert htpasswd("-v", "-b", str(users), "alice", "changed") == 0
    assert htpasswd("-v", "-b", str(users), "alice", "s3cret with spaces ") == 3

    assert run("passwd", "remove", "alice", "--config", str(config)) == 0
    assert htpasswd("-v", "-b", str(users), "alice", "changed") == 6  # no such user
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    capsys.readouterr()
    assert run("passwd", "remove", "alice", "--config", str(config)) == 1
    assert "no user alice" in capsys.readouterr().err
    assert run("passwd", "list", "--config", str(config)) == 0
    assert capsys.readouterr().out == "bob@example.com\n"
    assert list(load_htpasswd(users)) == ["bob@example.com"]


def test_add_asks_twice_on_the_terminal(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = config.parent / "users.htpasswd"
    answers = iter(["first", "second"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert run("passwd", "add", "alice", "--cost", "10", "--config", str(config)) == 1
    assert "do not match" in capsys.readouterr().err
    assert not users.exists()
    answers = iter(["same", "same"])
    assert run("passwd", "add", "alice", "--cost", "10", "--config", str(config)) == 0
    assert Verifier(load_htpasswd(users)).check("alice", "same") is not None


def test_edits_a_file_htpasswd_wrote(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = config.parent / "users.htpasswd"
    assert htpasswd("-c", "-B", "-C", "10", "-b", str(users), "alice", "secret") == 0
    assert htpasswd("-m", "-b", str(users), "bob", "md5pass") == 0
    assert htpasswd("-s", "-b", str(users), "carol", "shapass") == 0
    users.write_text("# managed by hand\n" + users.read_text())
    # list names everyone and says what clawgate refuses.
    assert run("passwd", "list", "--config", str(config)) == 1
    out, err = capsys.readouterr()
    assert out == "alice\nbob\ncarol\n"
    assert f"{users}:3: user bob: an MD5-crypt" in err
    assert f"{users}:4: user carol: an unsalted SHA-1" in err
    # Replacing one weak entry works while another is still there.
    stdin(monkeypatch, "better\n")
    assert run("passwd", "add", "bob", "--cost", "10", "--password-stdin",
               "--config", str(config)) == 0
    err = capsys.readouterr().err
    assert "user carol" in err and "user bob" not in err
    assert run("passwd", "remove", "carol", "--config", str(config)) == 0
    assert users.read_text().splitlines()[0] == "# managed by hand"
    verifier = Verifier(load_htpasswd(users))
    assert verifier.check("alice", "secret") is not None
    assert verifier.check("bob", "better") is not None
    assert htpasswd("-v", "-b", str(users), "bob", "better") == 0


def test_setting_missing_or_bad_input(
    tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    unset = tmp_path / "unset.yaml"
    unset.write_text(ROUTE)
    for argv in (("add", "alice", "--password-stdin"), ("remove", "alice"), ("list",)):
        stdin(monkeypatch, "pw\n")
        assert run("passwd", *argv, "--config", str(unset)) == 2
        assert "htpasswd_file" in capsys.readouterr().err
    # No file yet: list says so, remove has nobody to remove.
    assert run("passwd", "list", "--config", str(config)) == 0
    assert "does not exist" in capsys.readouterr().err
    assert run("passwd", "remove", "alice", "--config", str(config)) == 1
    # Names and passwords the file cannot hold.
    for name in ("al:ice", "#alice", " alice", "ali\nce"):
        stdin(monkeypatch, "pw\n")
        assert run("passwd", "add", name, "--password-stdin", "--config", str(config)) == 2
    for password in ("", "x" * 73):
        stdin(monkeypatch, password + "\n")
        assert run("passwd", "add", "alice", "--cost", "10", "--password-stdin",
                   "--config", str(config)) == 1
    stdin(monkeypatch, "")
    assert run("passwd", "add", "alice", "--password-stdin", "--config", str(config)) == 1
    assert not (config.parent / "users.htpasswd").exists()
    for cost in ("9", "16", "twelve"):
        with pytest.raises(SystemExit) as exited:
            run("passwd", "add", "alice", "--cost", cost, "--config", str(config))
        assert exited.value.code == 2
