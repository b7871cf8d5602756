"""Policy decision throughput against the number of listed entries.

Run: ``python bench/policy_bench.py [--seconds 1.0] [--rounds 5]``

For 10, 1,000 and 10,000 entries each of emails, domains and groups (written the usual PPL
way: one criterion per entry under ``or``), plus the same emails/domains as ``allowed_users``
/ ``allowed_domains`` shortcuts, it measures decisions per second for a user who matches
nothing (every rule is consulted) and for one who matches the last listed entry. Compiled
policies turn those lists into hash lookups, so the ratio against the 10-entry run should be
close to 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policy.engine import Policy
from policy.model import Identity, RequestFacts
from policy.parse import compile_route_policy

SIZES = (10, 1_000, 10_000)


def build(size: int) -> Policy:
    emails = [f"user{i}@corp{i % 97}.example" for i in range(size)]
    domains = [f"dept{i}.example.org" for i in range(size)]
    groups = [f"group-{i}" for i in range(size)]
    criteria: list[dict[str, Any]] = [
        *({"email": e} for e in emails),
        *({"domain": {"is": d}} for d in domains),
        *({"groups": {"has": g}} for g in groups),
    ]
    route = {
        "policy": [
            {"allow": {"or": criteria}},
            {"deny": {"or": [{"http_path": {"starts_with": "/admin"}}]}},
        ],
        "allowed_users": emails,
        "allowed_domains": domains,
    }
    return compile_route_policy(route)


def rate(policy: Policy, facts: RequestFacts, identity: Identity, seconds: float) -> float:
    decide = policy.decide
    count = 0
    batch = 500
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            decide(facts, identity)
        count += batch
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best kept)")
    args = parser.parse_args()

    facts = RequestFacts("GET", "/app/page", "192.0.2.10", datetime.now(UTC))
    outsider = Identity(
        sub="nobody",
        email="nobody@elsewhere.test",
        email_verified=True,
        groups=frozenset({"staff", "vpn-users"}),
    )
    cases = []
    for size in SIZES:
        policy = build(size)
        last = Identity(
            sub="last",
            email=f"user{size - 1}@corp{(size - 1) % 97}.example",
            email_verified=True,
            groups=frozenset({"staff"}),
        )
        assert not policy.decide(facts, outsider).allow
        assert policy.decide(facts, last).allow
        cases.append((size, policy, last))

    # The machine may be shared: measure the sizes interleaved, several rounds, and keep each
    # one's best round so a noisy neighbour does not masquerade as a size effect.
    best: dict[int, list[float]] = {size: [0.0, 0.0] for size in SIZES}
    for _ in range(args.rounds):
        for size, policy, last in cases:
            miss = rate(policy, facts, outsider, args.seconds / args.rounds)
            hit = rate(policy, facts, last, args.seconds / args.rounds)
            best[size][0] = max(best[size][0], miss)
            best[size][1] = max(best[size][1], hit)
    results = [(size, best[size][0], best[size][1]) for size in SIZES]

    base_miss, base_hit = results[0][1], results[0][2]
    header = ("entries", "no match /s", "ratio", "last match /s", "ratio")
    print("{:>8} | {:>12} | {:>5} | {:>13} | {:>5}".format(*header))
    print("-" * 58)
    for size, miss, hit in results:
        print(
            f"{size:>8,} | {miss:>12,.0f} | {miss / base_miss:>5.2f} | {hit:>13,.0f} | "
            f"{hit / base_hit:>5.2f}"
        )
    print("(entries = emails = domains = groups; ratio = rate / rate with 10 entries)")


if __name__ == "__main__":
    main()
