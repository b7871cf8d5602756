"""``clawgate policy explain`` and ``clawgate policy test``: decisions without a server.

Both load the configuration exactly as ``serve`` does and decide with the same
route table and compiled policies, so what they print is what the proxy would do.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from policy.model import Decision
from policy.paths import UnsafePathError
from policy.table import CaseError, PolicyCase, load_cases, run_cases
from proxy.settings import describe
from proxy.snapshot import Snapshot
from proxy.yamlsource import YamlError, load_located


def decide_case(snap: Snapshot, case: PolicyCase) -> tuple[str | None, Decision]:
    """(route name, decision) for one request, as the proxy would decide it."""
    try:
        facts = case.facts()
    except UnsafePathError as exc:
        return None, Decision(False, f"deny: path rejected with 400 ({exc})")
    route = snap.table.match(case.host, facts.path)
    if route is None:
        return None, Decision(False, "deny: no route matches (404)")
    return route.name, route.policy.decide(facts, case.identity())


def cmd_explain(args: argparse.Namespace) -> int:
    item: dict[str, Any] = {"method": args.method.upper(), "url": args.url, "expect": "allow"}
    if args.email:
        item["email"] = args.email
    if args.sub:
        item["sub"] = args.sub
    if args.groups:
        item["groups"] = [g for g in args.groups.split(",") if g]
    if args.claim:
        claims: dict[str, str] = {}
        for pair in args.claim:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                print(f"--claim {pair!r}: expected NAME=VALUE", file=sys.stderr)
                return 2
            claims[key] = value
        item["claims"] = claims
    if args.unverified:
        item["email_verified"] = False
    if args.ip:
        item["ip"] = args.ip
    if args.time:
        item["time"] = args.time
    from proxy.cli import load_or_report  # cli imports this module

    snap = load_or_report(args.config)
    if snap is None:
        return 2
    try:
        (case,) = load_cases([item])
    except CaseError as exc:
        print(f"invalid request: {exc.message}", file=sys.stderr)
        return 2
    route, decision = decide_case(snap, case)
    who = "anonymous" if case.anonymous else (case.email or case.sub)
    print("ALLOW" if decision.allow else "DENY")
    print(f"  request:  {case.method} {case.url} as {who}")
    print(f"  route:    {route or '(none)'}")
    print(f"  decision: {decision.reason}")
    # How long the proxy may reuse this answer (proxy/admission.py); a session's expiry
    # and refresh bound it further at run time.
    holds = (
        "no time rule applies"
        if decision.valid_until is None
        else (decision.valid_until.isoformat())
    )
    print(f"  holds until: {holds}")
    return 0 if decision.allow else 1


def cmd_test(args: argparse.Namespace) -> int:
    table = Path(args.file)
    from proxy.cli import load_or_report  # cli imports this module

    snap = load_or_report(args.config)
    if snap is None:
        return 2
    try:
        located = load_located(table.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"{table}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    except YamlError as exc:
        print(f"{table}:{exc.line or '?'}: {exc.message}", file=sys.stderr)
        return 2
    data = located.data
    if isinstance(data, dict) and "cases" in data:
        data = data["cases"]
        offset: tuple[str | int, ...] = ("cases",)
    else:
        offset = ()
    try:
        cases = load_cases(data, now=datetime.now(UTC))
    except CaseError as exc:
        print(describe(str(table), located, (*offset, *exc.loc), exc.message), file=sys.stderr)
        return 2
    results = run_cases(cases, lambda case: decide_case(snap, case)[1])
    failed = 0
    for result in results:
        case = result.case
        mark = "ok  " if result.passed else "FAIL"
        who = "anonymous" if case.anonymous else (case.email or case.sub)
        line = located.line_of((*offset, case.index))
        print(
            f"{mark} {table}:{line} {case.method} {case.url} as {who}: "
            f"expected {'allow' if case.expect_allow else 'deny'}, got {result.decision.reason}"
        )
        failed += not result.passed
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def add_policy_commands(sub: Any) -> None:
    policy = sub.add_parser("policy", help="explain or test policy decisions")
    commands = policy.add_subparsers(dest="policy_command", required=True)

    p = commands.add_parser("explain", help="decide one request and say why")
    p.add_argument("--config")
    p.add_argument("--email")
    p.add_argument("--sub", help="the user's subject (default: the email)")
    p.add_argument("--groups", help="comma-separated groups")
    p.add_argument("--claim", action="append", help="NAME=VALUE, repeatable")
    p.add_argument("--unverified", action="store_true", help="email_verified: false")
    p.add_argument("--ip", help="client address (default 127.0.0.1)")
    p.add_argument("--time", help="ISO-8601 time (default now)")
    p.add_argument("method")
    p.add_argument("url")
    p.set_defaults(func=cmd_explain)

    p = commands.add_parser("test", help="check a YAML table of expected decisions")
    p.add_argument("--config")
    p.add_argument("file")
    p.set_defaults(func=cmd_test)
