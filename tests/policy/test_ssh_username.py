"""The ``ssh_username`` criterion: the login name asked for at the SSH door."""

from __future__ import annotations

import pytest

from policy.parse import PolicyError, compile_route_policy
from tests.policy.policy_fixtures import WHO, facts


def policy(criterion: object) -> object:
    return compile_route_policy(
        {"policy": [{"allow": {"and": [{"email": {"is": "alice@example.com"}}, criterion]}}]}
    )


@pytest.mark.parametrize(
    ("criterion", "login", "allowed"),
    [
        ({"ssh_username": {"is": "claw"}}, "claw", True),
        ({"ssh_username": {"is": "claw"}}, "root", False),
        ({"ssh_username": {"in": ["claw", "ops"]}}, "ops", True),
        ({"ssh_username": {"not_in": ["root"]}}, "root", False),
        ({"ssh_username": {"not_in": ["root"]}}, "claw", True),
        ({"ssh_username": {"starts_with": "claw"}}, "claw-admin", True),
        ({"ssh_username": "claw"}, "claw", True),
    ],
)
def test_matches_the_login_asked_for(criterion: object, login: str, allowed: bool) -> None:
    decision = policy(criterion).decide(
        facts(method="SSH", path="", ssh_username=login), WHO["alice"]
    )  # type: ignore[attr-defined]
    assert decision.allow is allowed, decision.reason


def test_never_matches_an_http_request() -> None:
    compiled = policy({"ssh_username": {"not_in": ["root"]}})
    decision = compiled.decide(facts(), WHO["alice"])  # type: ignore[attr-defined]
    assert decision.allow is False


def test_unknown_operator_is_refused_with_its_location() -> None:
    with pytest.raises(PolicyError) as info:
        policy({"ssh_username": {"matches": "x"}})
    assert "ssh_username" in str(info.value.loc) or "matches" in info.value.message
