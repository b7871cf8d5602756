"""The key file: YAML the CLI writes and a person may edit, holding hashes only.

Loading is strict. Any defect (an unknown field, a duplicate name or hash, a hash that
is not 64 hex digits, a rate or time that does not parse) refuses the whole file with
the file, line and key named, rather than dropping the entry: skipping a line could
silently remove a restriction (``routes``, ``expires``) from a key that stays valid.

Saving is atomic (a private temporary file in the same directory, then ``os.replace``)
and the file is left at mode 0600, so a crash or a concurrent reader never sees half a
file and nobody else on the host can add a key by editing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

import yaml

from proxy.apikeys._model import (
    ApiKey,
    KeyFileError,
    check_group,
    check_name,
    format_rate,
    normalize_route,
    parse_rate,
)
from proxy.private_file import write_private
from proxy.yamlsource import LocatedYaml, YamlError, load_located

__all__ = ["load_key_file", "render_key_file", "save_key_file"]

HEADER = (
    "# Written by `clawgate apikey`. Holds hashes only; the keys themselves were shown once.\n"
    "# Hand edits are fine, but the command rewrites the whole file: other comments go.\n"
)
FIELDS = ("name", "sha256", "groups", "created", "expires", "rate", "routes")
_REQUIRED = ("name", "sha256", "created")


def load_key_file(path: Path) -> list[ApiKey]:
    """The keys in ``path``, in file order; a missing file holds none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the API key file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise KeyFileError(f"{path}:{line}: the file is not UTF-8 text") from None
    return _parse(str(path), text)


def _parse(source: str, text: str) -> list[ApiKey]:
    try:
        located = load_located(text)
    except YamlError as exc:
        where = f"{source}:{exc.line}" if exc.line else source
        raise KeyFileError(f"{where}: {exc.message}") from None
    data = located.data
    if data is None:
        return []
    if not isinstance(data, dict):
        raise KeyFileError(f"{source}:1: the file must be a mapping with a `keys:` list")
    for top in data:
        if top != "keys":
            raise KeyFileError(
                f"{source}:{located.line_of((str(top),))}: unknown top-level key {top!r} "
                "(the file holds only `keys:`)"
            )
    entries = data.get("keys")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise KeyFileError(
            f"{source}:{located.line_of(('keys',))}: `keys:` must be a list of entries"
        )
    keys: list[ApiKey] = []
    name_lines: dict[str, int | None] = {}
    hashes: dict[str, tuple[str, int | None]] = {}
    for index, entry in enumerate(entries):
        key = _entry(source, located, index, entry)
        line = located.line_of(("keys", index))
        if key.name in name_lines:
            raise KeyFileError(
                f"{source}:{line}: key {key.name!r} is listed twice (lines "
                f"{name_lines[key.name]} and {line}); remove one so it is clear which applies"
            )
        if key.key_hash in hashes:
            other, other_line = hashes[key.key_hash]
            raise KeyFileError(
                f"{source}:{located.line_of(('keys', index, 'sha256'))}: key {key.name!r}: "
                f"sha256: the same hash as key {other!r} (line {other_line}); one key cannot "
                "be two service accounts"
            )
        name_lines[key.name] = line
        hashes[key.key_hash] = (key.name, line)
        keys.append(key)
    return keys


def _entry(source: str, located: LocatedYaml, index: int, entry: Any) -> ApiKey:
    loc = ("keys", index)
    if not isinstance(entry, dict):
        raise KeyFileError(
            f"{source}:{located.line_of(loc)}: entry {index + 1} of keys: must be a mapping "
            f"of {', '.join(FIELDS)}"
        )
    name = entry.get("name")
    label = f"key {name!r}" if isinstance(name, str) and name else f"entry {index + 1} of keys"

    def fail(field: str | None, message: str) -> NoReturn:
        line = located.line_of((*loc, field) if field else loc)
        where = f"{label}: {field}: " if field else f"{label}: "
        raise KeyFileError(f"{source}:{line}: {where}{message}")

    for field in entry:
        if field not in FIELDS:
            fail(str(field), f"unknown field (expected {', '.join(FIELDS)})")
    for field in _REQUIRED:
        if entry.get(field) is None:
            fail(None, f"`{field}` is missing")

    def checked(field: str, convert: Callable[[Any], Any]) -> Any:
        try:
            return convert(entry.get(field))
        except ValueError as exc:
            fail(field, str(exc))

    record: dict[str, Any] = {
        "name": checked("name", _name),
        "key_hash": checked("sha256", _sha256),
        "groups": checked("groups", lambda v: _strings(v, _group)),
        "created": checked("created", _when),
        "expires": checked("expires", lambda v: None if v is None else _when(v)),
        "rate": checked("rate", _rate),
        "routes": checked("routes", lambda v: _strings(v, normalize_route)),
    }
    try:
        return ApiKey(**record)
    except ValueError as exc:  # what only the whole record shows (expires before created)
        fail("expires" if "expires" in str(exc) else None, str(exc))


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be text; put {value!r} in quotes")
    check_name(value)
    return value


def _sha256(value: Any) -> str:
    if not isinstance(value, str):
        # An all-digit hash reads as a number in YAML; the writer quotes those.
        raise ValueError("must be text (64 hex digits); put it in quotes")
    digest = value.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("must be the 64 hex digits of the key's SHA-256 (never the key itself)")
    return digest


def _group(text: str) -> str:
    check_group(text)
    return text


def _strings(value: Any, normalize: Callable[[str], str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("must be a list, e.g. [a, b]")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} must be text; put it in quotes")
        text = normalize(item)
        if text not in out:
            out.append(text)
    return tuple(out)


def _when(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a time: write it as 2027-03-05T08:00:00Z") from None
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(
                f"{value.isoformat()} has no time zone: add one, e.g. 2027-03-05T08:00:00Z"
            )
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise ValueError(f"{value!r} is not a time: write it as 2027-03-05T08:00:00Z")


def _rate(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a rate: write it as e.g. 10/s, 600/m or 5/s:20")
    return parse_rate(value)


def render_key_file(keys: Sequence[ApiKey]) -> str:
    """The file's text for ``keys``; checked to read back as exactly ``keys``."""
    lines = [HEADER.rstrip("\n"), "keys:" if keys else "keys: []"]
    for key in keys:
        lines.append(f"  - name: {_scalar(key.name)}")
        lines.append(f"    sha256: {_scalar(key.key_hash)}")
        if key.groups:
            lines.append(f"    groups: [{', '.join(_scalar(g) for g in key.groups)}]")
        lines.append(f"    created: {_time(key.created)}")
        if key.expires is not None:
            lines.append(f"    expires: {_time(key.expires)}")
        if key.rate is not None:
            lines.append(f"    rate: {_scalar(format_rate(key.rate))}")
        if key.routes:
            lines.append(f"    routes: [{', '.join(_scalar(r) for r in key.routes)}]")
    text = "\n".join(lines) + "\n"
    # A writer bug must never corrupt the file the proxy trusts: refuse to write a text
    # that does not read back as what was asked.
    try:
        same = _parse("<new key file>", text) == list(keys)
    except KeyFileError as exc:
        raise ValueError(f"the API key file would not read back ({exc}); not saved") from None
    if not same:
        raise ValueError("the API key file would not read back as written; not saved")
    return text


def _scalar(text: str) -> str:
    """``text`` plain when YAML reads it back as that string in block and flow
    context, else single-quoted (``yes``, ``1.5``, ``null`` and the like)."""
    try:
        plain = yaml.safe_load(f"a: {text}\nb: [{text}]\n") == {"a": text, "b": [text]}
    except yaml.YAMLError:
        plain = False
    return text if plain else "'" + text.replace("'", "''") + "'"


def _time(when: datetime) -> str:
    spec = "seconds" if when.microsecond == 0 else "microseconds"
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def save_key_file(path: Path, keys: Sequence[ApiKey]) -> None:
    """Replace ``path`` with ``keys``, atomically, leaving it at mode 0600."""
    write_private(path, render_key_file(keys).encode("utf-8"))
