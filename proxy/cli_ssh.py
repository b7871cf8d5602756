"""``clawgate ssh-ca init``: the User CA the SSH door signs upstream certificates with."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _key_file(args: argparse.Namespace) -> Path | None:
    """--key-file, else the config's ssh_user_ca_key_file (relative to the config)."""
    if args.key_file:
        return Path(args.key_file)
    from proxy.cli import configured_file

    return configured_file(
        args.config, "ssh_user_ca_key_file", "name the file with it or with --key-file"
    )


def cmd_ssh_ca_init(args: argparse.Namespace) -> int:
    from proxy.ssh import SshSetupError, init_ca

    key_file = _key_file(args)
    if key_file is None:
        return 2
    try:
        line = init_ca(key_file, force=args.force)
    except SshSetupError as exc:
        print(f"clawgate: {exc}", file=sys.stderr)
        return 1
    print(line)
    print(
        f"# private key: {key_file} (0600); public key: {key_file}.pub\n"
        "# give the line above to the upstream sshd: TrustedUserCAKeys",
        file=sys.stderr,
    )
    return 0


def add_ssh_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ssh-ca", help="the SSH door's User CA")
    ca = p.add_subparsers(dest="ssh_ca_command", required=True)
    init = ca.add_parser(
        "init", help="write a new User CA key pair and print the TrustedUserCAKeys line"
    )
    init.add_argument("--config", help="config whose ssh_user_ca_key_file to write")
    init.add_argument("--key-file", help="where to write the private key (PATH.pub beside it)")
    init.add_argument("--force", action="store_true", help="replace an existing key")
    init.set_defaults(func=cmd_ssh_ca_init)
