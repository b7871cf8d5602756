"""The key file: round trip, hand-written files, atomic private writes, and errors that
name the file, the line and the key."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proxy.apikeys import (
    ApiKey,
    KeyFileError,
    RateLimit,
    hash_key,
    load_key_file,
    new_key,
    save_key_file,
)

CREATED = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
HASH_A = "a" * 64
HASH_B = "b" * 64

SPEC_EXAMPLE = """\
# Written by `clawgate apikey`. Holds hashes only; the keys themselves were shown once.
keys:
  - name: ci-bot
    sha256: {hash}
    groups: [bots]
    created: 2026-12-05T08:00:00Z
    expires: 2027-03-05T08:00:00Z     # optional
    rate: 10/s                         # optional
    routes: [openclaw.example.com]     # optional
"""


def key(name: str, digest: str, **fields: object) -> ApiKey:
    values: dict[str, object] = {
        "name": name,
        "key_hash": digest,
        "groups": (),
        "created": CREATED,
        "expires": None,
        "rate": None,
        "routes": (),
    }
    values.update(fields)
    return ApiKey(**values)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.yaml"
    keys = [
        key(
            "ci-bot",
            hash_key(new_key()),
            groups=("bots", "team a", "o'brien", "yes"),
            expires=CREATED + timedelta(days=90),
            rate=RateLimit(5.0, 20),
            routes=("openclaw.example.com", "*.apps.example.com", "h.example.com:8443"),
        ),
        key("minimal", hash_key(new_key())),
        # Names and hashes that YAML would read as something else unless quoted.
        key("on", "0123456789" * 6 + "0123"),
        key("123", HASH_A, rate=RateLimit(1 / 60, 1)),
        key("1.5", HASH_B, created=CREATED.replace(microsecond=250)),
        key("null", "1e10" + "0" * 60),
    ]
    save_key_file(path, keys)
    assert load_key_file(path) == keys
    save_key_file(path, [])
    assert load_key_file(path) == []


def test_the_written_file_reads_like_the_documented_format(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.yaml"
    save_key_file(
        path,
        [
            key(
                "ci-bot",
                HASH_A,
                groups=("bots",),
                expires=datetime(2027, 3, 5, 8, 0, tzinfo=UTC),
                rate=RateLimit(10.0, 10),
                routes=("openclaw.example.com",),
            )
        ],
    )
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# Written by `clawgate apikey`.")
    assert "keys:" in lines
    body = lines[lines.index("keys:") + 1 :]
    assert body == [
        "  - name: ci-bot",
        f"    sha256: {HASH_A}",
        "    groups: [bots]",
        "    created: 2026-12-05T08:00:00Z",
        "    expires: 2027-03-05T08:00:00Z",
        "    rate: 10/s",
        "    routes: [openclaw.example.com]",
    ]


def test_a_hand_written_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.yaml"
    path.write_text(SPEC_EXAMPLE.format(hash=HASH_A.upper()))
    [loaded] = load_key_file(path)
    assert loaded == key(
        "ci-bot",
        HASH_A,  # upper-case hex is read as the same hash
        groups=("bots",),
        expires=datetime(2027, 3, 5, 8, 0, tzinfo=UTC),
        rate=RateLimit(10.0, 10),
        routes=("openclaw.example.com",),
    )
    path.write_text(
        "keys:\n"
        "  - name: x\n"
        f"    sha256: '{HASH_B}'\n"
        "    created: '2026-12-05T10:00:00+02:00'\n"
        "    expires: 2027-01-01\n"
        "    routes: [OpenClaw.Example.com:443]\n"
        "    groups: [a, a, b]\n"
    )
    [loaded] = load_key_file(path)
    assert loaded.created == CREATED
    assert loaded.expires == datetime(2027, 1, 1, tzinfo=UTC)
    assert loaded.routes == ("openclaw.example.com",) and loaded.groups == ("a", "b")


def test_no_file_empty_file_and_no_keys_mean_no_keys(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.yaml"
    assert load_key_file(path) == []
    for text in ["", "# nothing yet\n", "keys:\n", "keys: []\n"]:
        path.write_text(text)
        assert load_key_file(path) == [], text


def test_saved_private_whatever_the_umask_and_the_old_mode(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.yaml"
    path.write_text("keys: []\n")
    path.chmod(0o644)
    old = os.umask(0)
    try:
        save_key_file(path, [key("ci-bot", HASH_A)])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api_keys.yaml"]  # no temp left
    save_key_file(tmp_path / "new.yaml", [])
    assert stat.S_IMODE((tmp_path / "new.yaml").stat().st_mode) == 0o600


def test_a_failed_save_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "api_keys.yaml"
    save_key_file(path, [key("ci-bot", HASH_A)])
    before = path.read_bytes()

    def broken(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("proxy.private_file.os.replace", broken)
    with pytest.raises(OSError, match="No space"):
        save_key_file(path, [])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api_keys.yaml"]


def entry(name: str = "ci-bot", digest: str = HASH_A, extra: str = "") -> str:
    return f"  - name: {name}\n    sha256: {digest}\n    created: 2026-12-05T08:00:00Z\n{extra}"


@pytest.mark.parametrize(
    ("text", "line", "names"),
    [
        # duplicate name: the second entry's line, both lines named
        ("keys:\n" + entry() + entry(digest=HASH_B), 5, ["'ci-bot'", "listed twice", "2 and 5"]),
        # bad sha256
        ("keys:\n" + entry("ci-bot", "abc"), 3, ["'ci-bot'", "sha256", "64 hex"]),
        ("keys:\n" + entry("ci-bot", "g" * 64), 3, ["'ci-bot'", "sha256"]),
        ("keys:\n" + entry("ci-bot", "1" * 64), 3, ["'ci-bot'", "sha256", "quotes"]),
        # the same hash for two names
        ("keys:\n" + entry("a") + entry("b"), 6, ["'b'", "same hash", "'a'"]),
        # bad rate
        ("keys:\n" + entry(extra="    rate: 10/x\n"), 5, ["'ci-bot'", "rate", "10/x"]),
        ("keys:\n" + entry(extra="    rate: 10\n"), 5, ["'ci-bot'", "rate"]),
        # unknown field (a typo of expires)
        ("keys:\n" + entry(extra="    expire: 2027-01-01\n"), 5, ["'ci-bot'", "expire", "unknown"]),
        # missing field: the entry's line
        ("keys:\n  - name: ci-bot\n    sha256: " + HASH_A + "\n", 2, ["'ci-bot'", "created"]),
        ("keys:\n  - sha256: " + HASH_A + "\n", 2, ["entry 1", "name"]),
        # times
        ("keys:\n" + entry(extra="    expires: 2027-01-01 08:00:00\n"), 5, ["time zone"]),
        ("keys:\n" + entry(extra="    expires: soon\n"), 5, ["'ci-bot'", "expires", "soon"]),
        ("keys:\n" + entry(extra="    expires: 2026-01-01T00:00:00Z\n"), 5, ["after created"]),
        # shapes
        ("keys:\n" + entry(extra="    routes: openclaw.example.com\n"), 5, ["routes", "list"]),
        ("keys:\n" + entry(extra="    routes: [https://x.example.com]\n"), 5, ["routes"]),
        ("keys:\n" + entry(extra="    groups: [[a]]\n"), 5, ["groups"]),
        ("keys:\n" + entry("Bad Name"), 2, ["name"]),
        ("keys:\n" + entry("yes"), 2, ["name", "quotes"]),
        ("keys:\n  - just a string\n", 2, ["entry 1", "mapping"]),
        ("keys: {ci-bot: x}\n", 1, ["list"]),
        ("# header\nkey:\n" + entry(), 2, ["unknown top-level key 'key'"]),
        ("- a\n", 1, ["mapping"]),
        # YAML itself
        ("keys:\n" + entry() + "    sha256: " + HASH_B + "\n", 5, ["sha256", "twice"]),
        ("keys:\n  - name: [unclosed\n", 3, []),
    ],
)
def test_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int, names: list[str]
) -> None:
    path = tmp_path / "api_keys.yaml"
    path.write_text(text)
    with pytest.raises(KeyFileError) as caught:
        load_key_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    for part in names:
        assert part in message, (part, message)


def test_a_file_that_is_not_text_or_not_readable(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.yaml"
    path.write_bytes(b"keys:\n  - name: \xff\n")
    with pytest.raises(KeyFileError, match=rf"^{path}:2: .*UTF-8"):
        load_key_file(path)
    with pytest.raises(KeyFileError, match=rf"^{tmp_path}: cannot read"):
        load_key_file(tmp_path)  # a directory
