"""The ``clawgate`` command: serve, check, secret, keygen, probe, policy, audit, sessions,
apikey, passwd, ssh-ca."""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.assertion import generate_signing_key
from proxy.session import SessionCodec
from proxy.settings import ConfigError, Settings, unknown_environment

if TYPE_CHECKING:
    from proxy.snapshot import Snapshot

DEFAULT_CONFIG = "config.yaml"
DEFAULT_PROBE_URL = "http://127.0.0.1:28080/healthz"


def _config_path(value: str | None) -> Path:
    return Path(value or os.environ.get("CLAWGATE_CONFIG") or DEFAULT_CONFIG)


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.server import serve

    path = _config_path(args.config)
    try:
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover - uvloop is optional off Linux
            pass
        asyncio.run(serve(path))
    except ConfigError as exc:
        print("clawgate: the configuration is not valid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"clawgate: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def load_or_report(config: str | None) -> Snapshot | None:
    """The compiled configuration, or None after printing every problem with its line."""
    from proxy.snapshot import load_snapshot

    path = _config_path(config)
    try:
        return load_snapshot(path)
    except ConfigError as exc:
        print(f"{path}: INVALID", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def configured_file(config: str | None, key: str, hint: str) -> Path | None:
    """The file the config's ``key`` names (relative to the config file); None after
    saying why there is none.

    The settings alone, not the whole snapshot (``load_or_report``), which also reads
    the file and refuses a missing or broken one: what the commands calling this are
    there to create or repair."""
    from proxy.settings import load_settings
    from proxy.snapshot import side_file

    source = _config_path(config)
    try:
        settings, _ = load_settings(source)
    except ConfigError as exc:
        print(f"{source}: INVALID", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
    named = getattr(settings, key)
    if named is None:
        print(f"clawgate: {source} does not set {key}: {hint}", file=sys.stderr)
        return None
    return side_file(str(source), named)


def cmd_check(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    snap = load_or_report(args.config)
    if snap is None:
        return 2
    s = snap.settings
    scheme = "http (insecure_server)" if s.insecure_server else "https"
    tls = (
        f"certificate {s.certificate_file}"
        if s.certificate_file
        else ("none" if s.insecure_server else "self-signed (generated at start)")
    )
    print(f"{path}: OK")
    print(f"  listen:   {s.address} ({scheme}), TLS: {tls}")
    if s.http_redirect_addr:
        print(f"  redirect: {s.http_redirect_addr} -> https")
    if s.health_address:
        print(f"  health:   {s.health_address} (/healthz, /readyz)")
    print(f"  idp:      {s.idp_provider_url or '(none)'} client {s.idp_client_id or '-'}")
    print(
        f"  cookie:   {snap.keys.cookie_name}, expires after {int(s.cookie_expire)}s, "
        f"secret {'GENERATED AT START' if snap.keys.ephemeral_cookie_secret else 'set'}"
    )
    print(
        f"  signing:  {'GENERATED AT START' if snap.keys.ephemeral_signing_key else 'set'} "
        f"(kid {snap.keys.signer.kid})"
    )
    print(f"  store:    {_store_summary(s)}")
    if s.ignored_pomerium_keys():
        print(
            f"  ignored:  {', '.join(s.ignored_pomerium_keys())} (Pomerium keys clawgate "
            "does not need; safe to delete)"
        )
    unknown = unknown_environment(os.environ)
    if unknown:
        print(f"  unknown:  {', '.join(unknown)} (CLAWGATE_* variables that name no setting)")
    if s.autocert:
        from proxy.autocert import Autocert
        from proxy.certificates import autocert_config, autocert_hosts

        print("  autocert: (nothing is sent to the CA by check)")
        plan = Autocert(autocert_config(s, str(path))).plan(autocert_hosts(snap))
        for line in plan:
            print(f"    {line}")
    if s.ssh_address:
        print(f"  ssh:      {s.ssh_address}, user CA {s.ssh_user_ca_key_file}")
        for ssh in snap.ssh_routes:
            print(f"    - ssh://{ssh.name} -> {ssh.settings.to}")
    print(f"  routes:   {len(snap.routes)}")
    for route in snap.routes:
        flags = [
            f
            for f, on in (
                ("websockets", route.settings.allow_websockets),
                ("identity headers", route.pass_identity),
                ("PUBLIC", route.public),
            )
            if on
        ]
        print(
            f"    - {route.name} -> {route.settings.to}"
            + (f" [{', '.join(flags)}]" if flags else "")
        )
    return 0


def _store_summary(s: Settings) -> str:
    """Where shared state goes, never with the connection string's password."""
    if s.databroker_storage_type == "memory":
        return "memory (this machine's processes only)"
    from urllib.parse import urlsplit

    secret = s.databroker_storage_connection_string
    parts = urlsplit(secret.get_secret_value() if secret is not None else "")
    where = parts.netloc.rpartition("@")[2]
    prefix = s.databroker_storage_key_prefix
    return f"redis {parts.scheme}://{where}{parts.path}, key prefix {prefix!r}"


def cmd_secret(args: argparse.Namespace) -> int:
    print(SessionCodec.new_secret())
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    sys.stdout.write(generate_signing_key())
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """GET each URL; exit 0 when all answer 2xx. For container health checks (no curl in
    slim images). ``--insecure`` is for probing clawgate's own TLS listener on 127.0.0.1,
    whose certificate names the public host, not the loopback address."""
    ctx = ssl.create_default_context()
    if args.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for url in args.url or [DEFAULT_PROBE_URL]:
        try:
            with urllib.request.urlopen(url, timeout=args.timeout, context=ctx) as resp:  # noqa: S310
                ok = 200 <= resp.status < 300
        except (urllib.error.URLError, OSError, ValueError) as exc:
            print(f"probe {url} failed: {exc}", file=sys.stderr)
            return 1
        if not ok:
            print(f"probe {url} answered {resp.status}", file=sys.stderr)
            return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clawgate", description="Identity-aware proxy for OpenClaw"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the proxy")
    p.add_argument("--config", help="config file (default ./config.yaml or $CLAWGATE_CONFIG)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate a config file and summarize it")
    p.add_argument("--config")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("secret", help="print a new random cookie_secret")
    p.set_defaults(func=cmd_secret)

    p = sub.add_parser("keygen", help="print a new EC P-256 signing_key (PEM)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("probe", help="GET URLs, exit 0 when all answer 2xx (health checks)")
    p.add_argument("--url", action="append", help=f"repeatable (default {DEFAULT_PROBE_URL})")
    p.add_argument("--insecure", action="store_true", help="accept any TLS certificate")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_probe)

    from proxy.cli_policy import add_policy_commands

    add_policy_commands(sub)

    from proxy.audit import add_audit_command

    add_audit_command(sub)

    from proxy.cli_sessions import add_sessions_commands

    add_sessions_commands(sub)

    from proxy.cli_apikeys import add_apikey_commands

    add_apikey_commands(sub)

    from proxy.cli_passwd import add_passwd_commands

    add_passwd_commands(sub)

    from proxy.cli_ssh import add_ssh_commands

    add_ssh_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
