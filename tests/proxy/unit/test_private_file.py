"""proxy/private_file.py: 0600 whatever the umask, atomic, and "keep the existing file"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.private_file import write_private


def test_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "secret"
        assert write_private(path, b"one")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == b"one"


def test_replace_and_keep(tmp_path: Path) -> None:
    path = tmp_path / "key"
    assert write_private(path, b"first", replace=False)
    assert not write_private(path, b"second", replace=False)
    assert path.read_bytes() == b"first"
    assert write_private(path, b"third")
    assert path.read_bytes() == b"third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]  # no temporary left


def test_a_failed_rename_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state"
    write_private(path, b"good")

    def broken(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("proxy.private_file.os.replace", broken)
    with pytest.raises(OSError, match="No space"):
        write_private(path, b"half")
    assert path.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
