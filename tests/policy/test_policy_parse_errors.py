"""Invalid route policies are refused with the exact key path of the mistake."""

from __future__ import annotations

from typing import Any

import pytest

from policy.parse import PolicyError, compile_route_policy, format_loc


def in_or(*criteria: Any) -> dict[str, Any]:
    return {"policy": [{"allow": {"or": list(criteria)}}]}


AT = ("policy", 0, "allow", "or")

# (id, route, expected loc, fragment of the message)
ERRORS: list[tuple[str, Any, tuple[str | int, ...], str]] = [
    ("route-not-mapping", ["x"], (), "route must be a mapping"),
    ("policy-wrong-type", {"policy": "yes"}, ("policy",), "rule or a list of rules"),
    ("rule-not-mapping", {"policy": ["x"]}, ("policy", 0), "a rule must be a mapping"),
    ("rule-empty", {"policy": [{}]}, ("policy", 0), "needs allow and/or deny"),
    ("unknown-action", {"policy": [{"permit": {}}]}, ("policy", 0, "permit"), "unknown action"),
    ("action-empty", {"policy": [{"allow": {}}]}, ("policy", 0, "allow"), "needs one of"),
    ("action-not-mapping", {"policy": [{"deny": ["x"]}]}, ("policy", 0, "deny"), "mapping"),
    (
        "unknown-operator",
        {"policy": [{"allow": {"xor": []}}]},
        ("policy", 0, "allow", "xor"),
        "unknown operator 'xor'",
    ),
    (
        "operator-not-list",
        {"policy": [{"allow": {"and": {"email": "a@b.c"}}}]},
        ("policy", 0, "allow", "and"),
        "must be a list",
    ),
    ("operator-empty", {"policy": [{"allow": {"or": []}}]}, AT, "must not be empty"),
    ("typo-criterion", in_or({"email": "a@b.c"}, {"emial": "x"}), (*AT, 1, "emial"), "'email'?"),
    ("two-keys", in_or({"email": "a@b.c", "domain": "b.c"}), (*AT, 0), "exactly one criterion"),
    ("item-not-mapping", in_or("email"), (*AT, 0), "must be a mapping"),
    ("non-string-key", in_or({1: "x"}), (*AT, 0), "name must be a string"),
    (
        "nested-typo",
        {"policy": [{"allow": {"and": [{"or": [{"email": "a@b.c"}, {"emial": "x"}]}]}}]},
        ("policy", 0, "allow", "and", 0, "or", 1, "emial"),
        "unknown criterion",
    ),
    (
        "single-rule-form",
        {"policy": {"allow": {"or": [{"domian": "x"}]}}},
        ("policy", "allow", "or", 0, "domian"),
        "'domain'?",
    ),
    ("email-int", in_or({"email": 5}), (*AT, 0, "email"), "got number"),
    (
        "unknown-string-matcher",
        in_or({"email": {"starts_wth": "a"}}),
        (*AT, 0, "email", "starts_wth"),
        "'starts_with'?",
    ),
    ("matcher-empty", in_or({"email": {}}), (*AT, 0, "email"), "must not be empty"),
    ("in-not-list", in_or({"email": {"in": "a@b.c"}}), (*AT, 0, "email", "in"), "must be a list"),
    ("in-entry-type", in_or({"email": {"in": ["a@b.c", 7]}}), (*AT, 0, "email", "in", 1), "string"),
    ("email-without-at", in_or({"email": "alice"}), (*AT, 0, "email"), "not an email address"),
    (
        "domain-with-at",
        in_or({"domain": {"is": "@x.com"}}),
        (*AT, 0, "domain", "is"),
        "without '@'",
    ),
    ("method-lowercase", in_or({"http_method": "get"}), (*AT, 0, "http_method"), "write 'GET'"),
    ("method-not-token", in_or({"http_method": "G T"}), (*AT, 0, "http_method"), "not an HTTP"),
    (
        "path-not-normalized",
        in_or({"http_path": {"starts_with": "/a/../admin"}}),
        (*AT, 0, "http_path", "starts_with"),
        "write '/admin'",
    ),
    ("path-encoded", in_or({"http_path": "/%61dmin"}), (*AT, 0, "http_path"), "write '/admin'"),
    ("path-relative", in_or({"http_path": "admin"}), (*AT, 0, "http_path"), "start with '/'"),
    ("path-unsafe", in_or({"http_path": "/a%2fb"}), (*AT, 0, "http_path"), "not valid"),
    ("empty-string", in_or({"user": ""}), (*AT, 0, "user"), "must not be empty"),
    (
        "groups-string-matcher",
        in_or({"groups": {"contains": "adm"}}),
        (*AT, 0, "groups", "contains"),
        "unknown list matcher",
    ),
    ("groups-list", in_or({"groups": ["a", "b"]}), (*AT, 0, "groups"), "group must be a string"),
    ("claim-no-name", in_or({"claim": "x"}), (*AT, 0, "claim"), "claim/<name>"),
    ("claim-empty-name", in_or({"claim/": "x"}), (*AT, 0, "claim/"), "invalid claim name"),
    ("claim-list-value", in_or({"claim/roles": ["a"]}), (*AT, 0, "claim/roles"), "string, number"),
    ("claim-null", in_or({"claim/roles": {"has": None}}), (*AT, 0, "claim/roles", "has"), "null"),
    ("accept-false", in_or({"accept": False}), (*AT, 0, "accept"), "takes the value true"),
    ("authn-string", in_or({"authenticated_user": "yes"}), (*AT, 0, "authenticated_user"), "true"),
    ("ip-bad", in_or({"source_ip": "10.0.0.300"}), (*AT, 0, "source_ip"), "not an IP address"),
    (
        "ip-host-bits",
        in_or({"source_ip": ["10.0.0.0/8", "10.1.2.3/8"]}),
        (*AT, 0, "source_ip", 1),
        "did you mean 10.0.0.0/8?",
    ),
    ("ip-empty-list", in_or({"source_ip": []}), (*AT, 0, "source_ip"), "must not be empty"),
    ("date-bad", in_or({"date": {"after": "yesterday"}}), (*AT, 0, "date", "after"), "ISO-8601"),
    ("date-no-bounds", in_or({"date": {}}), (*AT, 0, "date"), "after and/or before"),
    (
        "date-unknown-key",
        in_or({"date": {"since": "2024-01-01"}}),
        (*AT, 0, "date", "since"),
        "date",
    ),
    (
        "date-reversed",
        in_or({"date": {"after": "2025-01-01", "before": "2024-01-01"}}),
        (*AT, 0, "date"),
        "earlier than before",
    ),
    ("dow-bad", in_or({"day_of_week": "funday"}), (*AT, 0, "day_of_week"), "invalid day_of_week"),
    ("dow-backwards", in_or({"day_of_week": "fri-mon"}), (*AT, 0, "day_of_week"), "backwards"),
    (
        "dow-bad-zone",
        in_or({"day_of_week": {"days": "mon", "timezone": "Mars/Olympus"}}),
        (*AT, 0, "day_of_week", "timezone"),
        "unknown timezone",
    ),
    (
        "tod-no-zone",
        in_or({"time_of_day": {"after": "9:00"}}),
        (*AT, 0, "time_of_day"),
        "needs a timezone",
    ),
    (
        "tod-sexagesimal",
        in_or({"time_of_day": {"timezone": "UTC", "after": 8400}}),
        (*AT, 0, "time_of_day", "after"),
        "quoted strings",
    ),
    (
        "tod-bad-time",
        in_or({"time_of_day": {"timezone": "UTC", "before": "25:00"}}),
        (*AT, 0, "time_of_day", "before"),
        "invalid time",
    ),
    (
        "tod-13pm",
        in_or({"time_of_day": {"timezone": "UTC", "before": "13:00PM"}}),
        (*AT, 0, "time_of_day", "before"),
        "1-12",
    ),
    (
        "tod-across-midnight",
        in_or({"time_of_day": {"timezone": "UTC", "after": "22:00", "before": "6:00"}}),
        (*AT, 0, "time_of_day"),
        "across midnight",
    ),
    ("users-not-list", {"allowed_users": "a@b.c"}, ("allowed_users",), "must be a list"),
    ("users-entry", {"allowed_users": ["a@b.c", "bob"]}, ("allowed_users", 1), "not an email"),
    ("users-entry-type", {"allowed_users": [None]}, ("allowed_users", 0), "string"),
    ("domains-entry", {"allowed_domains": ["@x.com"]}, ("allowed_domains", 0), "without '@'"),
    ("claims-not-mapping", {"allowed_idp_claims": ["x"]}, ("allowed_idp_claims",), "mapping"),
    (
        "claims-values",
        {"allowed_idp_claims": {"dept": "ops"}},
        ("allowed_idp_claims", "dept"),
        "must be a list",
    ),
    (
        "claims-value-type",
        {"allowed_idp_claims": {"dept": ["ops", {"x": 1}]}},
        ("allowed_idp_claims", "dept", 1),
        "string, number",
    ),
    (
        "flag-string",
        {"allow_any_authenticated_user": "true"},
        ("allow_any_authenticated_user",),
        "true or false",
    ),
    (
        "flag-unverified-int",
        {"allow_unverified_email": 1},
        ("allow_unverified_email",),
        "true or false",
    ),
    (
        "public-and-users",
        {"allow_public_unauthenticated_access": True, "allowed_users": ["a@b.c"]},
        ("allow_public_unauthenticated_access",),
        "allowed_users",
    ),
]


@pytest.mark.parametrize(
    ("route_spec", "loc", "fragment"), [pytest.param(*e[1:], id=e[0]) for e in ERRORS]
)
def test_error_location(route_spec: Any, loc: tuple[str | int, ...], fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        compile_route_policy(route_spec)
    assert info.value.loc == loc
    assert fragment in info.value.message
    assert str(info.value) == f"{format_loc(loc)}: {info.value.message}"


def test_policy_error_is_value_error() -> None:
    with pytest.raises(ValueError, match=r"^policy\[0\]\.allow\.or\[1\]\.emial: "):
        compile_route_policy(in_or({"email": "a@b.c"}, {"emial": "x"}))


def test_format_loc() -> None:
    assert format_loc(("policy", 0, "allow", "or", 1, "emial")) == "policy[0].allow.or[1].emial"
    assert format_loc(("allowed_users", 2)) == "allowed_users[2]"
    assert format_loc(()) == "<route>"


def test_other_route_keys_are_ignored() -> None:
    policy = compile_route_policy(
        {
            "from": "https://app.example.com",
            "to": "http://upstream:18789",
            "preserve_host_header": "not our business",
            "allow_any_authenticated_user": True,
        }
    )
    assert len(policy.allow_rules) == 1


def test_valid_everything_compiles() -> None:
    policy = compile_route_policy(
        {
            "policy": [
                {
                    "allow": {
                        "and": [
                            {"domain": {"is": "example.com"}},
                            {"groups": {"has": "admins", "exclude": "contractors"}},
                            {"claim/address/country": {"is": "DE"}},
                            {"http_method": {"in": ["GET", "HEAD"]}},
                            {"http_path": {"starts_with": "/", "not_in": ["/admin"]}},
                            {"source_ip": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]},
                            {"date": {"after": "2020-01-02T16:20:00", "before": "2150-01-02"}},
                            {"day_of_week": "mon-wed,fri"},
                            {
                                "time_of_day": {
                                    "timezone": "UTC",
                                    "after": "2:20:00",
                                    "before": "4:30PM",
                                }
                            },
                        ]
                    },
                    "deny": {"nor": [{"user": {"contains": "x"}}, {"reject": True}]},
                }
            ],
            "allowed_idp_claims": {"level": [1, 2.5, True, "x"]},
            "allow_unverified_email": False,
        }
    )
    assert len(policy.allow_rules) == 2
    assert len(policy.deny_rules) == 1
