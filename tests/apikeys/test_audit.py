"""What ``clawgate audit`` reports about API keys and their file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proxy.apikeys import ApiKey, hash_key, key_findings, new_key, save_key_file

NOW = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


def key(name: str, created: datetime, expires: datetime | None) -> ApiKey:
    return ApiKey(name, hash_key(new_key()), (), created, expires, None, ())


def test_a_healthy_file_has_no_findings(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.yaml"
    keys = [key("ci-bot", NOW - timedelta(days=30), NOW + timedelta(days=60))]
    save_key_file(path, keys)
    assert key_findings(path, keys, NOW) == []
    assert key_findings(tmp_path / "missing.yaml", [], NOW) == []


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620, 0o604, 0o602, 0o660])
def test_a_file_others_can_read_or_write_is_high(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "api_keys.yaml"
    save_key_file(path, [])
    path.chmod(mode)
    [(severity, subject, message, fix)] = key_findings(path, [], NOW)
    assert severity == "high" and subject == "api_keys_file"
    assert str(path) in message and f"{mode:o}" in message
    assert fix == f"chmod 600 {path}"


def test_keys_without_expiry_old_keys_and_expired_keys(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.yaml"
    keys = [
        key("forever", NOW - timedelta(days=10), None),
        key("ancient", NOW - timedelta(days=400), NOW + timedelta(days=10)),
        key("ancient-forever", NOW - timedelta(days=366), None),
        key("done", NOW - timedelta(days=800), NOW - timedelta(days=1)),
        key("fine", NOW - timedelta(days=364), NOW + timedelta(days=1)),
    ]
    save_key_file(path, keys)
    found = key_findings(path, keys, NOW)
    summary = sorted((severity, subject) for severity, subject, _, _ in found)
    assert summary == [
        ("low", "apikey:done"),  # expired: only that, the rest would repeat it
        ("medium", "apikey:ancient"),
        ("medium", "apikey:ancient-forever"),
        ("medium", "apikey:ancient-forever"),
        ("medium", "apikey:forever"),
    ]
    for severity, subject, message, fix in found:
        name = subject.removeprefix("apikey:")
        assert name in message and fix
        if severity == "low":
            assert "expired" in message and fix == f"clawgate apikey revoke {name}"
        else:
            assert "--expires" in fix
