"""The .htpasswd file: what Debian's ``htpasswd -B`` writes loads and verifies; every
weaker hash it can write is refused, naming file, line and user; what clawgate writes
Apache reads back (``htpasswd -v``)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from proxy.localusers import (
    LocalUser,
    PasswordFileError,
    Verifier,
    hash_password,
    load_htpasswd,
    save_htpasswd,
)


def htpasswd(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("htpasswd")
    if found is None:
        pytest.fail("htpasswd not found: `apt-get install apache2-utils` provides it")
    return subprocess.run([found, *args], capture_output=True, text=True, check=False)


def apache_accepts(path: Path, user: str, password: str) -> bool:
    result = htpasswd("-v", "-b", str(path), user, password)
    assert result.returncode in (0, 3), result.stderr  # 3: wrong password
    return result.returncode == 0


def problems_of(path: Path) -> tuple[str, ...]:
    with pytest.raises(PasswordFileError) as caught:
        load_htpasswd(path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def test_htpasswd_bcrypt_file_loads_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "users"
    assert htpasswd("-c", "-B", "-C", "10", "-b", str(path), "alice", "secret").returncode == 0
    assert htpasswd("-B", "-C", "11", "-b", str(path), "bob@example.com", "hunter2").returncode == 0
    users = load_htpasswd(path)
    assert list(users) == ["alice", "bob@example.com"]
    assert users["alice"].password_hash.startswith(b"$2y$10$")
    verifier = Verifier(users)
    assert verifier.check("alice", "secret") == users["alice"]
    assert verifier.check("alice", "Secret") is None
    assert verifier.check("alice", "hunter2") is None
    assert verifier.check("bob@example.com", "hunter2") == users["bob@example.com"]
    assert verifier.check("nobody", "secret") is None
    assert users["alice"].subject == "local:alice"
    assert users["alice"].email is None
    assert users["bob@example.com"].email == "bob@example.com"


def test_comments_blank_lines_and_crlf(tmp_path: Path) -> None:
    alice = hash_password("secret", cost=10).decode()
    path = tmp_path / "users"
    path.write_bytes(f"# local users\r\n\r\n  alice:{alice}  \r\n   # indented comment\n".encode())
    users = load_htpasswd(path)
    assert list(users) == ["alice"]
    assert Verifier(users).check("alice", "secret") is not None


@pytest.mark.parametrize(
    ("flag", "what"),
    [
        ("-m", "MD5-crypt"),
        ("-s", "SHA-1"),
        ("-d", "DES crypt"),
        ("-p", "plain-text password"),
        ("-5", "SHA-256/512-crypt"),
    ],
)
def test_weaker_hashes_refused(tmp_path: Path, flag: str, what: str) -> None:
    path = tmp_path / "users"
    assert htpasswd("-c", "-B", "-C", "10", "-b", str(path), "alice", "secret").returncode == 0
    made = htpasswd(flag, "-b", str(path), "carol", "pass1234")
    assert made.returncode == 0, made.stderr
    if flag != "-p":  # plain text "might just not work" on Linux, htpasswd warns
        assert apache_accepts(path, "carol", "pass1234")  # Apache would take it; we do not
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:2: user carol: "), problem
    assert what in problem
    assert "htpasswd -B" in problem
    assert "clawgate passwd add carol" in problem
    assert "pass1234" not in problem  # a plain entry is the password itself
    secret_part = path.read_text().splitlines()[1].partition(":")[2]
    assert secret_part not in problem


def test_every_defect_is_named(tmp_path: Path) -> None:
    good = hash_password("secret", cost=10).decode()
    path = tmp_path / "users"
    path.write_text(
        f"alice:{good}\n"
        "no colon here\n"
        f"alice:{good}\n"
        ":nothing\n"
        "dave:\n"
        f"erin:{good}:extra\n"
        f"frank:{good[:-1]}\n"
        f"gina:$2x${good[4:]}\n"
    )
    problems = problems_of(path)
    assert problems == (
        f"{path}:2: not a 'user:hash' line",
        f"{path}:3: user alice: listed again (first on line 1); keep one",
        f"{path}:4: user '': the user name is empty",
        problems[3],
        problems[4],
        problems[5],
        problems[6],
    )
    assert problems[3].startswith(f"{path}:5: user dave: no password hash")
    assert problems[4].startswith(f"{path}:6: user erin: unexpected ':'")
    assert problems[5].startswith(f"{path}:7: user frank: a malformed or unsupported bcrypt")
    assert problems[6].startswith(f"{path}:8: user gina: a malformed or unsupported bcrypt")


def test_duplicate_user_refused(tmp_path: Path) -> None:
    path = tmp_path / "users"
    htpasswd("-c", "-B", "-C", "10", "-b", str(path), "alice", "one")
    line = path.read_text()
    path.write_text(line + "bob:" + line.partition(":")[2] + line)
    assert problems_of(path) == (
        f"{path}:3: user alice: listed again (first on line 1); keep one",
    )


@pytest.mark.parametrize(("cost", "ok"), [(4, False), (5, False), (9, False), (10, True),
                                          (15, True), (16, False), (17, False)])
def test_bcrypt_cost_bounds(tmp_path: Path, cost: int, ok: bool) -> None:
    path = tmp_path / "users"
    if cost <= 12:
        assert htpasswd("-c", "-B", "-C", str(cost), "-b", str(path), "alice", "s").returncode == 0
    else:  # htpasswd would take seconds to minutes: only the cost field matters here
        made = hash_password("s", cost=10)
        path.write_bytes(b"alice:" + made[:4] + b"%02d" % cost + made[6:] + b"\n")
    if ok:
        assert list(load_htpasswd(path)) == ["alice"]
        return
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:1: user alice: bcrypt cost {cost} is outside 10..15")
    assert "htpasswd -B" in problem


@pytest.mark.parametrize("prefix", [b"$2a$", b"$2b$", b"$2y$"])
def test_bcrypt_variants_accepted(tmp_path: Path, prefix: bytes) -> None:
    made = hash_password("secret", cost=10)
    path = tmp_path / "users"
    path.write_bytes(b"alice:" + prefix + made[4:] + b"\n")
    users = load_htpasswd(path)
    assert users["alice"].password_hash.startswith(prefix)
    assert Verifier(users).check("alice", "secret") is not None
    assert Verifier(users).check("alice", "secreT") is None


def test_not_utf8_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"# ok\n\xff\xfe:x\n")
    assert problems_of(path) == (f"{path}:2: the file is not UTF-8 text",)
    (problem,) = problems_of(tmp_path / "absent")
    assert problem.startswith(f"{tmp_path / 'absent'}: cannot read the password file")


def test_saved_file_is_0600_and_read_by_apache(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("old\n")
    path.chmod(0o644)
    users = {
        "alice": LocalUser("alice", hash_password("secret", cost=10)),
        "bob@example.com": LocalUser("bob@example.com", hash_password("pässwörd", cost=10)),
    }
    old = os.umask(0o022)
    try:
        save_htpasswd(path, users)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["users"]  # no temporary left behind
    text = path.read_text()
    assert all(line.split(":")[1].startswith("$2y$10$") for line in text.splitlines())
    assert apache_accepts(path, "alice", "secret")
    assert not apache_accepts(path, "alice", "Secret")
    assert apache_accepts(path, "bob@example.com", "pässwörd")
    assert load_htpasswd(path) == users


def test_save_keeps_2b_hashes_readable_by_apache(tmp_path: Path) -> None:
    import bcrypt

    raw = bcrypt.hashpw(b"secret", bcrypt.gensalt(10))
    assert raw.startswith(b"$2b$")
    path = tmp_path / "users"
    save_htpasswd(path, {"alice": LocalUser("alice", raw)})
    assert path.read_bytes().startswith(b"alice:$2y$10$")
    assert apache_accepts(path, "alice", "secret")


def test_save_refuses_what_load_would(tmp_path: Path) -> None:
    path = tmp_path / "users"
    good = hash_password("s", cost=10)
    for users in (
        {"al:ice": LocalUser("al:ice", good)},
        {"#alice": LocalUser("#alice", good)},
        {"alice": LocalUser("bob", good)},
        {"alice": LocalUser("alice", hash_password("s", cost=4))},
        {"alice": LocalUser("alice", b"$apr1$abc$def")},
    ):
        with pytest.raises(ValueError):
            save_htpasswd(path, users)
        assert not path.exists()


def test_hash_password_limits() -> None:
    assert hash_password("x" * 72, cost=4).startswith(b"$2y$04$")
    for password in ("", "x" * 73, "é" * 37, "a\0b"):
        with pytest.raises(ValueError):
            hash_password(password, cost=4)
    with pytest.raises(ValueError):
        hash_password("s", cost=3)


def test_long_password_from_htpasswd(tmp_path: Path) -> None:
    # htpasswd hashes the first 72 bytes of a longer password, and Apache checks those.
    path = tmp_path / "users"
    htpasswd("-c", "-B", "-C", "10", "-b", str(path), "alice", "p" * 80)
    verifier = Verifier(load_htpasswd(path))
    assert verifier.check("alice", "p" * 80) is not None
    assert verifier.check("alice", "p" * 71) is None


def test_repr_hides_the_hash() -> None:
    user = LocalUser("alice", hash_password("s", cost=4))
    assert user.password_hash.decode() not in repr(user)
    assert "alice" in repr(user)
