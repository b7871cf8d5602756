"""``clawgate passwd``: add, remove and list the local users of the ``htpasswd_file``.

The file is Apache's ``.htpasswd`` (proxy/localusers/): ``htpasswd -B -C 12`` edits it
as well, and Apache or nginx can read what this writes. Edits keep every other line as
it was, comments included, so an entry clawgate refuses (an MD5 hash, say) can be
replaced with ``add`` one user at a time. Each write replaces the file in one step,
mode 0600, and a running clawgate picks it up from there.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from proxy.localusers._file import (
    DEFAULT_COST,
    MAX_COST,
    MIN_COST,
    PasswordFileError,
    edit_entry,
    hash_password,
    load_htpasswd,
    name_problem,
    read_lines,
)

__all__ = ["add_passwd_commands"]


def _password_file(config: str | None) -> Path | None:
    """The configured file; None after saying why there is none."""
    from proxy.cli import configured_file

    return configured_file(
        config,
        "htpasswd_file",
        "name the file that keeps the local users (e.g. htpasswd_file: users.htpasswd)",
    )


def _cost(value: str) -> int:
    try:
        cost = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not MIN_COST <= cost <= MAX_COST:
        raise argparse.ArgumentTypeError(f"the cost must be {MIN_COST}..{MAX_COST}")
    return cost


def _read_password(name: str, from_stdin: bool) -> str | None:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            print("clawgate: no password on standard input", file=sys.stderr)
            return None
        # Only the line's end: spaces can be part of a password.
        return line.removesuffix("\n").removesuffix("\r")
    first = getpass.getpass(f"New password for {name}: ")
    if getpass.getpass("Again: ") != first:
        print("clawgate: the passwords do not match; nothing changed", file=sys.stderr)
        return None
    return first


def _report_unusable(path: Path) -> None:
    """What clawgate will still refuse in the file after an edit (the edit is done)."""
    try:
        load_htpasswd(path)
    except PasswordFileError as exc:
        print(f"clawgate: {path} is written, but clawgate refuses it until these are "
              "fixed:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)


def cmd_add(args: argparse.Namespace) -> int:
    name: str = args.user
    problem = name_problem(name)
    if problem is not None:
        print(f"clawgate: user {name!r}: {problem}", file=sys.stderr)
        return 2
    path = _password_file(args.config)
    if path is None:
        return 2
    password = _read_password(name, args.password_stdin)
    if password is None:
        return 1
    try:
        password_hash = hash_password(password, args.cost)
    except ValueError as exc:
        print(f"clawgate: {exc}; nothing changed", file=sys.stderr)
        return 1
    try:
        existed = edit_entry(path, name, password_hash)
    except PasswordFileError as exc:
        print(f"clawgate: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"clawgate: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{'changed the password of' if existed else 'added'} {name} in {path}")
    _report_unusable(path)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    name: str = args.user
    path = _password_file(args.config)
    if path is None:
        return 2
    if not path.exists():
        print(f"clawgate: no user {name} in {path} (there is no such file)", file=sys.stderr)
        return 1
    try:
        if not any(line.name == name for line in read_lines(path)):
            print(f"clawgate: no user {name} in {path}", file=sys.stderr)
            return 1
        edit_entry(path, name, None)
    except PasswordFileError as exc:
        print(f"clawgate: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"clawgate: cannot rewrite {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"removed {name} from {path}")
    _report_unusable(path)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    path = _password_file(args.config)
    if path is None:
        return 2
    try:
        lines = read_lines(path)
    except FileNotFoundError:
        print(f"clawgate: no local users yet ({path} does not exist)", file=sys.stderr)
        return 0
    except PasswordFileError as exc:
        print(f"clawgate: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"clawgate: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    listed: set[str] = set()
    for line in lines:
        if line.name is not None and line.name not in listed:
            listed.add(line.name)
            print(line.name)
    try:
        load_htpasswd(path)
    except PasswordFileError as exc:
        for problem in exc.problems:
            print(f"clawgate: {problem}", file=sys.stderr)
        return 1
    return 0


def add_passwd_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    passwd = sub.add_parser("passwd", help="local users of the htpasswd_file")
    commands = passwd.add_subparsers(dest="passwd_command", required=True)

    p = commands.add_parser("add", help="add a user, or set their new password")
    p.add_argument("user", metavar="USER")
    p.add_argument(
        "--cost",
        type=_cost,
        default=DEFAULT_COST,
        help=f"bcrypt cost, {MIN_COST}..{MAX_COST} (default {DEFAULT_COST})",
    )
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input, without asking",
    )
    p.add_argument("--config")
    p.set_defaults(func=cmd_add)

    p = commands.add_parser("remove", help="remove a user")
    p.add_argument("user", metavar="USER")
    p.add_argument("--config")
    p.set_defaults(func=cmd_remove)

    p = commands.add_parser("list", help="the users' names")
    p.add_argument("--config")
    p.set_defaults(func=cmd_list)
