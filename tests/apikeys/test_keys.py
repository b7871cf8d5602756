"""The key string (format, checksum, hash), the records and the index that finds them."""

from __future__ import annotations

import hashlib
import string
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from proxy.apikeys import (
    PREFIX,
    ApiKey,
    KeyIndex,
    RateLimit,
    format_rate,
    hash_key,
    new_key,
    parse_duration,
    parse_rate,
    well_formed,
)

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
NOW = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


def record(key: str, name: str = "ci-bot", **fields: object) -> ApiKey:
    values: dict[str, object] = {
        "name": name,
        "key_hash": hash_key(key),
        "groups": ("bots",),
        "created": NOW - timedelta(days=1),
        "expires": None,
        "rate": None,
        "routes": (),
    }
    values.update(fields)
    return ApiKey(**values)  # type: ignore[arg-type]


def test_new_keys_have_the_documented_shape() -> None:
    keys = {new_key() for _ in range(200)}
    assert len(keys) == 200  # random, not a counter
    for key in keys:
        assert key.startswith(PREFIX) and PREFIX == "cgk_"
        assert len(key) == 4 + 32 + 6
        assert set(key[4:]) <= set(ALPHABET)
        assert well_formed(key)


def test_the_checksum_is_the_crc32_of_the_random_part_in_base62() -> None:
    key = new_key()
    value = zlib.crc32(key[4:36].encode())
    digits = ""
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits = ALPHABET[digit] + digits
    assert key[36:] == digits


def test_every_one_character_typo_is_refused() -> None:
    key = new_key()
    for position in range(len(key)):
        for char in ALPHABET + "_-":
            if char != key[position]:
                typo = key[:position] + char + key[position + 1 :]
                assert not well_formed(typo), (position, char)


def test_swapped_neighbours_and_lost_or_extra_characters_are_refused() -> None:
    key = new_key()
    for i in range(len(PREFIX), len(key) - 1):
        if key[i] != key[i + 1]:
            swapped = key[:i] + key[i + 1] + key[i] + key[i + 2 :]
            assert not well_formed(swapped), i
    for bad in [
        key[:-1],
        key + "a",
        key[1:],
        "CGK_" + key[4:],
        "cgk-" + key[4:],
        key[:10] + "é" + key[11:],
        key + "\n",
        " " + key,
        "",
        "cgk_",
        "cgk_short",
    ]:
        assert not well_formed(bad), bad


def test_the_hash_is_the_sha256_of_the_whole_key() -> None:
    key = "cgk_" + "A" * 32 + "000000"
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert hash_key(key) == hash_key(key)  # the same every time: no salt, no pepper
    assert len(hash_key(key)) == 64 and hash_key(key) != hash_key(new_key())
    assert key not in hash_key(key)


def test_lookup_answers_with_the_key_or_the_reason() -> None:
    good, old, unlisted = new_key(), new_key(), new_key()
    index = KeyIndex(
        [
            record(good, "ci-bot", expires=NOW + timedelta(hours=1)),
            record(old, "old-bot", expires=NOW - timedelta(seconds=1)),
        ]
    )
    found, reason = index.lookup(good, NOW)
    assert found is not None and found.name == "ci-bot" and reason == ""
    assert found.subject == "apikey:ci-bot"
    assert index.lookup(old, NOW) == (None, "expired")
    assert index.lookup(unlisted, NOW) == (None, "unknown")
    assert index.lookup(good[:-1] + ("a" if good[-1] != "a" else "b"), NOW) == (None, "malformed")
    assert index.lookup("cgk_short", NOW) == (None, "malformed")
    assert index.lookup(hash_key(good), NOW) == (None, "malformed")  # the hash is no key


def test_expiry_is_exact_and_none_means_never() -> None:
    key, forever = new_key(), new_key()
    expires = NOW + timedelta(days=90)
    index = KeyIndex([record(key, "a", expires=expires), record(forever, "b")])
    assert index.lookup(key, expires - timedelta(microseconds=1))[1] == ""
    assert index.lookup(key, expires) == (None, "expired")
    assert index.lookup(forever, NOW + timedelta(days=36500))[1] == ""


def test_lookup_compares_the_stored_hash_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = new_key()
    index = KeyIndex([record(key)])
    compared: list[tuple[str, str]] = []

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr("proxy.apikeys._index.hmac.compare_digest", spy)
    assert index.lookup(key, NOW)[1] == ""
    assert compared == [(hash_key(key), hash_key(key))]


def test_the_index_refuses_a_name_or_hash_twice_and_reports_its_size() -> None:
    a, b = new_key(), new_key()
    index = KeyIndex([record(b, "zeta"), record(a, "alpha")])
    assert len(index) == 2 and index.names() == ("alpha", "zeta")
    assert len(KeyIndex([])) == 0
    with pytest.raises(ValueError, match="given twice"):
        KeyIndex([record(a, "x"), record(b, "x")])
    with pytest.raises(ValueError, match="same hash"):
        KeyIndex([record(a, "x"), record(a, "y")])


def test_records_refuse_what_the_file_would_refuse() -> None:
    key = new_key()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "CI-Bot"}, "name"),
        ({"name": "-bot"}, "name"),
        ({"name": "a" * 64}, "name"),
        ({"key_hash": "ab" * 31}, "sha256"),
        ({"key_hash": key}, "sha256"),
        ({"groups": ("",)}, "group"),
        ({"groups": ("a,b",)}, "group"),
        ({"routes": ("https://openclaw.example.com",)}, "route"),
        ({"routes": ("openclaw.example.com/x",)}, "route"),
        ({"routes": ("openclaw.example.com:443",)}, "443"),
        ({"created": datetime(2026, 1, 1)}, "time zone"),
        ({"expires": NOW - timedelta(days=2)}, "after created"),
    ]
    for fields, problem in cases:
        with pytest.raises(ValueError, match=problem):
            record(key, **fields)
    assert record(key, name="a").name == "a" and record(key, name="a" * 63)


def test_a_key_for_some_routes_only() -> None:
    key = new_key()
    anywhere = record(key)
    assert anywhere.allows_route("anything.example.com")
    some = record(key, routes=("openclaw.example.com", "*.apps.example.com", "h.example.com:8443"))
    assert some.allows_route("openclaw.example.com")
    assert some.allows_route("OpenClaw.example.com:443")
    assert not some.allows_route("openclaw.example.com:8443")
    assert not some.allows_route("other.example.com")
    assert some.allows_route("a.apps.example.com")
    assert not some.allows_route("apps.example.com")
    assert not some.allows_route("a.b.apps.example.com")
    assert some.allows_route("h.example.com:8443") and not some.allows_route("h.example.com")


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("90d", timedelta(days=90)),
        ("2w", timedelta(days=14)),
        ("1y", timedelta(days=365)),
        (" 3y ", timedelta(days=3 * 365)),
    ],
)
def test_parse_duration(text: str, wanted: timedelta) -> None:
    assert parse_duration(text) == wanted


@pytest.mark.parametrize("text", ["", "90", "0d", "-1d", "1.5d", "1mo", "d", "1d2h", "1 y s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "rate", "burst"),
    [
        ("10/s", 10.0, 10),
        ("600/m", 10.0, 10),
        ("5/s:20", 5.0, 20),
        ("0.5/s", 0.5, 1),
        ("1/m", 1 / 60, 1),
        ("7200/h", 2.0, 2),
        ("2.5/s", 2.5, 3),
    ],
)
def test_parse_rate(text: str, rate: float, burst: int) -> None:
    assert parse_rate(text) == RateLimit(rate, burst)


@pytest.mark.parametrize("text", ["", "10", "10/", "/s", "0/s", "10/x", "10/s:0", "a/s", "-1/s"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|burst"):
        parse_rate(text)


@pytest.mark.parametrize("text", ["10/s", "600/m", "5/s:20", "0.5/s", "1/m", "7/h", "0.1/h"])
def test_format_rate_reads_back(text: str) -> None:
    limit = parse_rate(text)
    assert parse_rate(format_rate(limit)) == limit
    assert format_rate(RateLimit(10.0, 10)) == "10/s"
    assert format_rate(RateLimit(10.0, 25)) == "10/s:25"
    assert format_rate(RateLimit(0.5, 1)) == "30/m"
