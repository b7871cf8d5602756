"""Policy test tables: loading cases and running them against a decide callable."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from policy.model import Decision
from policy.parse import compile_route_policy
from policy.paths import UnsafePathError
from policy.table import CaseError, PolicyCase, load_cases, run_cases

NOW = datetime(2024, 5, 6, 12, tzinfo=UTC)

CASES: list[dict[str, Any]] = [
    {"method": "GET", "url": "https://app.example.com/", "expect": "deny"},
    {
        "method": "GET",
        "url": "https://app.example.com/admin/%2e%2e/x?q=1",
        "email": "alice@example.com",
        "groups": ["admins"],
        "expect": "allow",
    },
    {
        "method": "POST",
        "url": "https://app.example.com:8443/admin/",
        "email": "bob@example.com",
        "email_verified": False,
        "claims": {"department": "ops"},
        "ip": "10.1.2.3",
        "time": "2024-05-04T10:00:00",
        "expect": "deny",
    },
    {"method": "GET", "url": "https://app.example.com/", "sub": "svc", "expect": "allow"},
]


def test_load_cases() -> None:
    anon, alice, bob, svc = load_cases(CASES, now=NOW)
    assert anon.identity() is None
    assert anon.time == NOW
    assert anon.ip == "127.0.0.1"
    assert anon.facts().path == "/"
    assert alice.host == "app.example.com"
    assert alice.raw_path == "/admin/%2e%2e/x"
    assert alice.facts().path == "/x"
    identity = alice.identity()
    assert identity is not None
    assert identity.sub == "alice@example.com"
    assert identity.groups == frozenset({"admins"})
    assert alice.expect_allow
    assert bob.host == "app.example.com:8443"
    assert bob.time == datetime(2024, 5, 4, 10, tzinfo=UTC)
    bob_identity = bob.identity()
    assert bob_identity is not None
    assert bob_identity.email_verified is False
    assert bob_identity.claims == {"department": "ops"}
    assert bob.facts().source_ip == "10.1.2.3"
    svc_identity = svc.identity()
    assert svc_identity is not None
    assert svc_identity.sub == "svc"
    assert svc_identity.email is None


def test_unsafe_path_surfaces_like_the_proxy() -> None:
    (case,) = load_cases([{"method": "GET", "url": "https://a.test/%2fx", "expect": "deny"}])
    with pytest.raises(UnsafePathError):
        case.facts()


@pytest.mark.parametrize(
    ("data", "loc", "fragment"),
    [
        ({"method": "GET"}, (), "list of cases"),
        ("cases", (), "list of cases"),
        ([["GET"]], (0,), "mapping"),
        ([{"url": "https://a.test/", "expect": "allow"}], (0,), "missing method"),
        ([{"method": "GET", "expect": "allow"}], (0,), "missing url"),
        ([{"method": "GET", "url": "https://a.test/"}], (0,), "missing expect"),
        ([{**CASES[0], "expect": "yes"}], (0, "expect"), "allow or deny"),
        ([{**CASES[0], "url": "http://a.test/"}], (0, "url"), "https://"),
        ([{**CASES[0], "url": "https://u@a.test/"}], (0, "url"), "https://"),
        ([{**CASES[0], "emial": "x"}], (0, "emial"), "unknown key"),
        ([CASES[0], {**CASES[0], "groups": "admins"}], (1, "groups"), "list"),
        ([{**CASES[0], "groups": ["a", 3]}], (0, "groups", 1), "string"),
        ([{**CASES[0], "claims": ["x"]}], (0, "claims"), "mapping"),
        ([{**CASES[0], "email_verified": "no"}], (0, "email_verified"), "true or false"),
        ([{**CASES[0], "time": "noon"}], (0, "time"), "ISO-8601"),
        ([{**CASES[0], "method": ""}], (0, "method"), "non-empty"),
    ],
)
def test_load_errors(data: Any, loc: tuple[str | int, ...], fragment: str) -> None:
    with pytest.raises(CaseError) as info:
        load_cases(data, now=NOW)
    assert info.value.loc == loc
    assert fragment in info.value.message


def test_run_cases_reports_disagreements() -> None:
    policy = compile_route_policy(
        {
            "policy": [
                {"allow": {"or": [{"groups": "admins"}, {"authenticated_user": True}]}},
                {"deny": {"and": [{"http_method": "POST"}]}},
            ]
        }
    )

    def decide(case: PolicyCase) -> Decision:
        return policy.decide(case.facts(), case.identity())

    cases = load_cases([*CASES, {**CASES[0], "expect": "allow"}], now=NOW)
    results = run_cases(cases, decide)
    assert [r.case.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.passed for r in results] == [True, True, True, True, False]
    assert results[1].decision.reason == "allow: rule 0 allow.or[0] groups has admins"
    assert results[4].decision.reason == "deny: no allow rule matched (anonymous)"
