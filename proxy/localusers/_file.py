"""The Apache ``.htpasswd`` file: read it, write it, hash passwords for it. bcrypt only.

The file stays one that Apache, nginx and Debian's ``htpasswd`` read and write, so an
administrator can keep using the tools they know (``htpasswd -B -C 12 FILE NAME``) or
``clawgate passwd``, and move the file between servers. Only bcrypt is accepted: the
other hashes Apache allows (MD5-crypt, SHA-1, DES crypt, plain text) are fast enough to
brute-force from a leaked file, and refusing them at load, naming the line, is the way
to get them replaced rather than silently tolerated. Costs below 10 (``htpasswd -B``
alone writes 5) are refused for the same reason; above 15 a sign-in would cost seconds
of CPU per attempt, a denial of service.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from proxy.private_file import write_private

__all__ = [
    "DEFAULT_COST",
    "MAX_COST",
    "MAX_PASSWORD_BYTES",
    "MIN_COST",
    "Line",
    "LocalUser",
    "PasswordFileError",
    "bcrypt_form",
    "edit_entry",
    "file_form",
    "hash_password",
    "hash_problem",
    "load_htpasswd",
    "name_problem",
    "read_lines",
    "save_htpasswd",
    "write_atomically",
]

DEFAULT_COST = 12
MIN_COST = 10
MAX_COST = 15
# bcrypt reads at most 72 bytes of the password; Apache silently ignores the rest.
MAX_PASSWORD_BYTES = 72

_BCRYPT = re.compile(rb"\$(2[aby])\$(\d\d)\$[./A-Za-z0-9]{53}")
_DES = re.compile(rb"[./A-Za-z0-9]{13}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
# What Apache writes and reads; the bcrypt package reads it too, but writes $2b$.
_FILE_PREFIX = b"$2y$"


class PasswordFileError(ValueError):
    """The file cannot be used. ``problems`` holds one ``path:LINE: user NAME: what`` per
    defect, all of them, so one run shows every line to fix."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class LocalUser:
    name: str
    password_hash: bytes

    @property
    def subject(self) -> str:
        # Prefixed so a local name can never equal a subject the identity provider issues.
        return f"local:{self.name}"

    @property
    def email(self) -> str | None:
        return self.name if _EMAIL.fullmatch(self.name) else None

    def __repr__(self) -> str:  # the hash stays out of logs and tracebacks
        return f"LocalUser(name={self.name!r})"


@dataclass(frozen=True)
class Line:
    """One line of the file as written, and what it holds. ``name`` is None for blank
    lines, comments and lines that are not ``user:hash``."""

    number: int
    raw: str
    name: str | None = None
    password_hash: bytes = b""
    problem: str | None = None


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a user in the file (None if it can)."""
    if not name:
        return "the user name is empty"
    if ":" in name:
        return "a user name cannot contain ':' (it separates the name from the hash)"
    if name != name.strip():
        return "a user name cannot start or end with white space (Apache strips it)"
    if name.startswith("#"):
        return "a user name cannot start with '#' (the line would be a comment)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a user name cannot contain control characters"
    if len(name.encode()) > 255:
        return "a user name can have at most 255 bytes (htpasswd's limit)"
    return None


def _refit(path: object, name: str) -> str:
    return (
        f"re-create the entry with `htpasswd -B -C {DEFAULT_COST} {path} {name}` "
        f"or `clawgate passwd add {name}`"
    )


def hash_problem(password_hash: bytes, path: object, name: str) -> str | None:
    """Why the hash cannot be used (None if it can). Never quotes the hash: a "plain"
    entry is the password itself."""
    found = _BCRYPT.fullmatch(password_hash)
    if found is not None:
        cost = int(found.group(2))
        if not MIN_COST <= cost <= MAX_COST:
            return (
                f"bcrypt cost {cost} is outside {MIN_COST}..{MAX_COST} "
                f"(`htpasswd -B` alone uses 5); {_refit(path, name)}"
            )
        return None
    if password_hash.startswith((b"$apr1$", b"$1$")):
        kind = "an MD5-crypt hash ($apr1$, `htpasswd -m`, Apache's default)"
    elif password_hash.startswith(b"{SHA}"):
        kind = "an unsalted SHA-1 hash ({SHA}, `htpasswd -s`)"
    elif password_hash.startswith((b"$5$", b"$6$")):
        kind = "a SHA-256/512-crypt hash ($5$/$6$)"
    elif password_hash.startswith(b"$2"):
        kind = "a malformed or unsupported bcrypt hash (only $2y$, $2b$ and $2a$)"
    elif not password_hash:
        kind = "no password hash"
    elif _DES.fullmatch(password_hash):
        kind = "a DES crypt hash (`htpasswd -d`; or a 13-character plain password)"
    else:
        kind = "a plain-text password or an unknown hash (`htpasswd -p`)"
    return f"{kind}; only bcrypt is accepted: {_refit(path, name)}"


def read_lines(path: Path) -> list[Line]:
    """Every line of the file, each with its problem if it has one (duplicates are not
    looked for here). OSError when it cannot be read; PasswordFileError if not UTF-8."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PasswordFileError([f"{path}:{line}: the file is not UTF-8 text"]) from None
    raws = text.split("\n")
    if raws and raws[-1] == "":
        raws.pop()  # the final newline ends the last line, it does not start another
    lines: list[Line] = []
    for number, raw in enumerate(raws, start=1):
        # As Apache reads it (ap_cfg_getline): surrounding white space is not part of it.
        content = raw.strip()
        if not content or content.startswith("#"):
            lines.append(Line(number, raw))
            continue
        name, colon, rest = content.partition(":")
        where = f"{path}:{number}"
        if not colon:
            lines.append(Line(number, raw, problem=f"{where}: not a 'user:hash' line"))
            continue
        problem = name_problem(name)
        shown = name if problem is None else repr(name)
        if problem is None and ":" in rest:
            problem = "unexpected ':' after the hash (one 'user:hash' per line)"
        if problem is None:
            problem = hash_problem(rest.encode(), path, name)
        lines.append(
            Line(
                number,
                raw,
                name=name,
                password_hash=rest.encode(),
                problem=None if problem is None else f"{where}: user {shown}: {problem}",
            )
        )
    return lines


def load_htpasswd(path: Path) -> dict[str, LocalUser]:
    """The users of the file by name, or PasswordFileError naming every defect."""
    try:
        lines = read_lines(path)
    except OSError as exc:
        raise PasswordFileError(
            [f"{path}: cannot read the password file: {exc.strerror or exc}"]
        ) from None
    users: dict[str, LocalUser] = {}
    first: dict[str, int] = {}
    problems: list[str] = []
    for line in lines:
        if line.problem is not None:
            problems.append(line.problem)
        if line.name is None:
            continue
        if line.name in first:
            # Apache uses the first and ignores the rest: a trap when changing a password.
            problems.append(
                f"{path}:{line.number}: user {line.name}: listed again "
                f"(first on line {first[line.name]}); keep one"
            )
            continue
        first[line.name] = line.number
        if line.problem is None:
            users[line.name] = LocalUser(line.name, line.password_hash)
    if problems:
        raise PasswordFileError(problems)
    return users


def hash_password(password: str, cost: int = DEFAULT_COST) -> bytes:
    """A bcrypt hash of ``password`` as ``htpasswd -B`` writes it ($2y$). ValueError for
    a password bcrypt would not hash whole, or a cost bcrypt does not have (4..31; the
    file accepts only MIN_COST..MAX_COST, lower costs are for tests)."""
    secret = password.encode("utf-8")
    if not secret:
        raise ValueError("the password is empty")
    if len(secret) > MAX_PASSWORD_BYTES:
        raise ValueError(
            f"the password is longer than {MAX_PASSWORD_BYTES} bytes (UTF-8): bcrypt "
            "would ignore the rest"
        )
    if b"\0" in secret:
        raise ValueError("the password contains a NUL character, which Apache cannot read")
    if not 4 <= cost <= 31:
        raise ValueError(f"bcrypt cost {cost} is outside 4..31")
    return file_form(bcrypt.hashpw(secret, bcrypt.gensalt(cost)))


def file_form(password_hash: bytes) -> bytes:
    """$2b$ (the bcrypt package's) as $2y$ (Apache's; the same algorithm). $2a$ stays:
    crypt_blowfish reads its own old $2a$ hashes in a compatibility mode."""
    if password_hash.startswith(b"$2b$"):
        return _FILE_PREFIX + password_hash[4:]
    return password_hash


def bcrypt_form(password_hash: bytes) -> bytes:
    """$2y$ as $2b$, the name the bcrypt package is sure to know."""
    if password_hash.startswith(_FILE_PREFIX):
        return b"$2b$" + password_hash[4:]
    return password_hash


def save_htpasswd(path: Path, users: Mapping[str, LocalUser]) -> None:
    """Write the file anew, atomically and 0600, one Apache-readable line per user.
    ValueError (before anything is written) for a user the file could not hold or
    load_htpasswd would refuse."""
    out: list[str] = []
    for key, user in users.items():
        if key != user.name:
            raise ValueError(f"user {user.name!r} is filed under {key!r}")
        problem = name_problem(user.name) or hash_problem(user.password_hash, path, user.name)
        if problem is not None:
            raise ValueError(f"user {user.name!r}: {problem}")
        out.append(f"{user.name}:{file_form(user.password_hash).decode()}")
    write_atomically(path, out)


def edit_entry(path: Path, name: str, password_hash: bytes | None) -> bool:
    """Set (or, with None, remove) ``name``'s entry, keeping every other line as it is,
    as ``htpasswd`` does: comments stay, and an entry clawgate refuses can be replaced
    one user at a time. Later duplicates of ``name`` go. A missing file is created.
    Whether ``name`` was in the file."""
    try:
        lines = read_lines(path)
    except FileNotFoundError:
        lines = []
    out: list[str] = []
    found = False
    for line in lines:
        if line.name != name:
            out.append(line.raw)
        elif not found:
            found = True
            if password_hash is not None:
                out.append(f"{name}:{file_form(password_hash).decode()}")
    if not found and password_hash is not None:
        out.append(f"{name}:{file_form(password_hash).decode()}")
    write_atomically(path, out)
    return found


def write_atomically(path: Path, lines: Iterable[str]) -> None:
    """Replace the file with ``lines`` in one step: a reader (the running clawgate,
    Apache) sees the old file or the new one, never half of one. Mode 0600; the owner
    and group of the file replaced are kept when we may, so a root-run ``clawgate
    passwd`` leaves the file readable by the service user that owned it."""
    # Through a symbolic link to the file itself, not replacing the link.
    target = Path(os.path.realpath(path))
    try:
        before: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        before = None
    text = "".join(f"{line}\n" for line in lines)
    owner = None if before is None else (before.st_uid, before.st_gid)
    write_private(target, text.encode("utf-8"), owner=owner)
