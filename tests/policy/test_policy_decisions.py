"""Decision table: route policy + identity + request -> allow/deny (and the reason)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from policy.parse import compile_route_policy
from tests.policy.policy_fixtures import WHO, facts


def allow(*criteria: Any, op: str = "or") -> dict[str, Any]:
    return {"allow": {op: list(criteria)}}


def deny(*criteria: Any, op: str = "or") -> dict[str, Any]:
    return {"deny": {op: list(criteria)}}


def route(*rules: dict[str, Any], **keys: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(keys)
    if rules:
        out["policy"] = list(rules)
    return out


A = {"domain": "example.com"}  # true for alice, bob; false for carol, dave
B = {"groups": {"has": "admins"}}  # true for alice, dave; false for bob, carol

# (id, route, who, request overrides, expected allow, reason fragment or None)
CASES: list[tuple[str, dict[str, Any], str, dict[str, Any], bool, str | None]] = [
    # ---- actions, default deny, deny wins
    ("no-policy", route(), "alice", {}, False, "deny: route has no allow rule"),
    ("accept-anon", route(allow({"accept": True})), "anon", {}, True, "allow.or[0] accept"),
    ("reject", route(allow({"reject": True})), "alice", {}, False, "no allow rule matched"),
    ("authn-alice", route(allow({"authenticated_user": True})), "alice", {}, True, None),
    ("authn-svc", route(allow({"authenticated_user": True})), "svc", {}, True, None),
    ("authn-anon", route(allow({"authenticated_user": True})), "anon", {}, False, "(anonymous)"),
    (
        "deny-wins",
        route(allow({"accept": True}), deny({"email": "alice@example.com"})),
        "alice",
        {},
        False,
        "deny: rule 1 deny.or[0] email is alice@example.com",
    ),
    (
        "deny-other-user",
        route(allow({"accept": True}), deny({"email": "alice@example.com"})),
        "bob",
        {},
        True,
        "allow: rule 0 allow.or[0] accept",
    ),
    (
        "one-rule-allow-and-deny-bob",
        route({"allow": {"or": [A]}, "deny": {"or": [{"email": "bob@example.com"}]}}),
        "bob",
        {},
        False,
        "deny: rule 0 deny.or[0]",
    ),
    (
        "one-rule-allow-and-deny-alice",
        route({"allow": {"or": [A]}, "deny": {"or": [{"email": "bob@example.com"}]}}),
        "alice",
        {},
        True,
        "allow: rule 0 allow.or[0] domain is example.com",
    ),
    (
        "second-allow-rule",
        route(allow({"email": "x@y.z"}), allow({"groups": "contractors"})),
        "carol",
        {},
        True,
        "allow: rule 1 allow.or[0] groups has contractors",
    ),
    (
        "several-operators-or-ed-and",
        route({"allow": {"and": [{"claim/department": "sales"}], "or": [{"domain": "other.org"}]}}),
        "bob",
        {},
        True,
        "allow.and matched (claim/department has sales)",
    ),
    (
        "several-operators-or-ed-or",
        route({"allow": {"and": [{"claim/department": "sales"}], "or": [{"domain": "other.org"}]}}),
        "carol",
        {},
        True,
        "allow.or[0] domain is other.org",
    ),
    (
        "several-operators-none",
        route({"allow": {"and": [{"claim/department": "sales"}], "or": [{"domain": "other.org"}]}}),
        "alice",
        {},
        False,
        None,
    ),
    (
        "single-rule-mapping",
        {"policy": {"allow": {"and": [{"email": "alice@example.com"}]}}},
        "alice",
        {},
        True,
        "allow: rule 0 allow.and matched (email is alice@example.com)",
    ),
    # ---- truth tables: A = domain example.com, B = groups has admins
    ("and-TT", route(allow(A, B, op="and")), "alice", {}, True, "and matched"),
    ("and-TF", route(allow(A, B, op="and")), "bob", {}, False, None),
    ("and-FT", route(allow(A, B, op="and")), "dave", {}, False, None),
    ("and-FF", route(allow(A, B, op="and")), "carol", {}, False, None),
    ("or-TT", route(allow(A, B, op="or")), "alice", {}, True, "or[0] domain is example.com"),
    ("or-TF", route(allow(A, B, op="or")), "bob", {}, True, None),
    ("or-FT", route(allow(A, B, op="or")), "dave", {}, True, "or[1] groups has admins"),
    ("or-FF", route(allow(A, B, op="or")), "carol", {}, False, None),
    # not = none of them (not A and not B)
    ("not-TT", route(allow(A, B, op="not")), "alice", {}, False, None),
    ("not-TF", route(allow(A, B, op="not")), "bob", {}, False, None),
    ("not-FT", route(allow(A, B, op="not")), "dave", {}, False, None),
    ("not-FF", route(allow(A, B, op="not")), "carol", {}, True, "not matched (none of:"),
    # nor = not all of them (not A or not B)
    ("nor-TT", route(allow(A, B, op="nor")), "alice", {}, False, None),
    ("nor-TF", route(allow(A, B, op="nor")), "bob", {}, True, "nor[1] was false (groups has"),
    ("nor-FT", route(allow(A, B, op="nor")), "dave", {}, True, "nor[0] was false (domain is"),
    ("nor-FF", route(allow(A, B, op="nor")), "carol", {}, True, "nor[0] was false"),
    (
        "nested-and-in-or",
        route(allow({"and": [A, B]}, {"email": "carol@other.org"})),
        "alice",
        {},
        True,
        "or[0] and matched (domain is example.com; groups has admins)",
    ),
    ("nested-and-in-or-bob", route(allow({"and": [A, B]})), "bob", {}, False, None),
    (
        "nested-not-in-and",
        route(allow(A, {"not": [B]}, op="and")),
        "bob",
        {},
        True,
        "and matched (domain is example.com; not matched (none of: groups has admins))",
    ),
    ("nested-not-in-and-alice", route(allow(A, {"not": [B]}, op="and")), "alice", {}, False, None),
    # ---- email
    ("email-bare", route(allow({"email": "alice@example.com"})), "alice", {}, True, None),
    ("email-bare-other", route(allow({"email": "alice@example.com"})), "bob", {}, False, None),
    ("email-case-config", route(allow({"email": "BOB@example.com"})), "bob", {}, True, None),
    (
        "email-case-identity",
        route(allow({"email": {"is": "bob@example.com"}})),
        "bob",
        {},
        True,
        "email is bob@example.com",
    ),
    ("email-starts", route(allow({"email": {"starts_with": "alice@"}})), "alice", {}, True, None),
    ("email-ends", route(allow({"email": {"ends_with": "@EXAMPLE.com"}})), "bob", {}, True, None),
    ("email-contains", route(allow({"email": {"contains": "lic"}})), "alice", {}, True, None),
    ("email-contains-no", route(allow({"email": {"contains": "lic"}})), "bob", {}, False, None),
    (
        "email-in",
        route(allow({"email": {"in": ["x@y.z", "alice@example.com"]}})),
        "alice",
        {},
        True,
        "email is alice@example.com",
    ),
    (
        "email-not-in",
        route(allow({"email": {"not_in": ["alice@example.com"]}})),
        "alice",
        {},
        False,
        None,
    ),
    (
        "email-not-in-bob",
        route(allow({"email": {"not_in": ["alice@example.com"]}})),
        "bob",
        {},
        True,
        None,
    ),
    (
        "email-two-matchers-all-hold",
        route(allow({"email": {"starts_with": "alice", "ends_with": "@other.org"}})),
        "alice",
        {},
        False,
        None,
    ),
    (
        "email-two-matchers",
        route(allow({"email": {"starts_with": "alice", "ends_with": "@example.com"}})),
        "alice",
        {},
        True,
        "email starts_with alice and ends_with @example.com",
    ),
    (
        "email-unverified",
        route(allow({"email": "eve@example.com"})),
        "eve",
        {},
        False,
        "(email not verified)",
    ),
    (
        "email-unverified-allowed",
        route(allow({"email": "eve@example.com"}), allow_unverified_email=True),
        "eve",
        {},
        True,
        None,
    ),
    (
        "email-no-claim",
        route(allow({"email": {"ends_with": "example.com"}})),
        "svc",
        {},
        False,
        None,
    ),
    ("email-anon", route(allow({"email": {"ends_with": "example.com"}})), "anon", {}, False, None),
    ("email-verified-absent", route(allow({"email": "bob@example.com"})), "bob", {}, True, None),
    # ---- domain
    ("domain", route(allow({"domain": "example.com"})), "alice", {}, True, None),
    ("domain-case", route(allow({"domain": {"is": "EXAMPLE.com"}})), "bob", {}, True, None),
    ("domain-other", route(allow({"domain": "other.org"})), "alice", {}, False, None),
    ("domain-ends", route(allow({"domain": {"ends_with": ".org"}})), "carol", {}, True, None),
    (
        "domain-in",
        route(allow({"domain": {"in": ["foo.test", "other.org"]}})),
        "carol",
        {},
        True,
        None,
    ),
    ("domain-unverified", route(allow({"domain": "example.com"})), "eve", {}, False, None),
    (
        "domain-unverified-allowed",
        route(allow({"domain": "example.com"}), allow_unverified_email=True),
        "eve",
        {},
        True,
        None,
    ),
    ("domain-anon", route(allow({"domain": "example.com"})), "anon", {}, False, None),
    # ---- user (sub), case-sensitive
    ("user", route(allow({"user": "alice-sub"})), "alice", {}, True, "user is alice-sub"),
    ("user-case", route(allow({"user": "ALICE-SUB"})), "alice", {}, False, None),
    ("user-in", route(allow({"user": {"in": ["bob-sub"]}})), "bob", {}, True, None),
    ("user-starts", route(allow({"user": {"starts_with": "svc"}})), "svc", {}, True, None),
    ("user-anon", route(allow({"user": {"starts_with": "a"}})), "anon", {}, False, None),
    # ---- groups (list matcher; bare value = has)
    ("groups-bare", route(allow({"groups": "admins"})), "alice", {}, True, "groups has admins"),
    ("groups-has-no", route(allow({"groups": {"has": "admins"}})), "bob", {}, False, None),
    ("groups-is-single", route(allow({"groups": {"is": "eng"}})), "bob", {}, True, "groups is eng"),
    ("groups-is-two", route(allow({"groups": {"is": "eng"}})), "alice", {}, False, None),
    (
        "groups-exclude",
        route(allow({"groups": {"exclude": "contractors"}})),
        "alice",
        {},
        True,
        None,
    ),
    (
        "groups-exclude-no",
        route(allow({"groups": {"exclude": "contractors"}})),
        "carol",
        {},
        False,
        None,
    ),
    (
        "groups-exclude-anon",
        route(allow({"groups": {"exclude": "contractors"}})),
        "anon",
        {},
        False,
        None,
    ),
    (
        "groups-merged-or",
        route(allow({"groups": "x"}, {"email": "q@q.q"}, {"groups": {"has": "contractors"}})),
        "carol",
        {},
        True,
        "allow.or[2] groups has contractors",
    ),
    # ---- claims (list matcher over scalar or list claims)
    ("claim-bare", route(allow({"claim/department": "ops"})), "alice", {}, True, None),
    ("claim-bare-no", route(allow({"claim/department": "ops"})), "bob", {}, False, None),
    ("claim-list-has", route(allow({"claim/roles": "writer"})), "alice", {}, True, None),
    ("claim-is-scalar", route(allow({"claim/roles": {"is": "reader"}})), "bob", {}, True, None),
    (
        "claim-is-list-two",
        route(allow({"claim/roles": {"is": "reader"}})),
        "alice",
        {},
        False,
        None,
    ),
    ("claim-exclude", route(allow({"claim/roles": {"exclude": "writer"}})), "bob", {}, True, None),
    (
        "claim-exclude-no",
        route(allow({"claim/roles": {"exclude": "writer"}})),
        "alice",
        {},
        False,
        None,
    ),
    ("claim-nested-slash", route(allow({"claim/address/country": "DE"})), "alice", {}, True, None),
    ("claim-nested-dot", route(allow({"claim/address.city": "Berlin"})), "alice", {}, True, None),
    (
        "claim-literal-url-name",
        route(allow({"claim/https://example.com/tenant": "t1"})),
        "alice",
        {},
        True,
        None,
    ),
    ("claim-number", route(allow({"claim/level": 3})), "alice", {}, True, None),
    ("claim-number-vs-string", route(allow({"claim/level": "3"})), "alice", {}, False, None),
    ("claim-bool", route(allow({"claim/beta": True})), "alice", {}, True, "claim/beta has true"),
    ("claim-bool-vs-int", route(allow({"claim/beta": 1})), "alice", {}, False, None),
    ("claim-missing", route(allow({"claim/missing": "x"})), "alice", {}, False, None),
    (
        "claim-missing-exclude",
        route(allow({"claim/missing": {"exclude": "x"}})),
        "alice",
        {},
        True,
        None,
    ),
    ("claim-anon", route(allow({"claim/department": {"exclude": "x"}})), "anon", {}, False, None),
    (
        "claim-unverified-email-irrelevant",
        route(allow({"claim/department": "ops"})),
        "eve",
        {},
        True,
        None,
    ),
    # ---- request criteria (decidable for anonymous requests too)
    ("method", route(allow({"http_method": "GET"})), "anon", {}, True, "http_method is GET"),
    ("method-post", route(allow({"http_method": "GET"})), "anon", {"method": "POST"}, False, None),
    (
        "method-in",
        route(allow({"http_method": {"in": ["GET", "HEAD"]}})),
        "anon",
        {"method": "HEAD"},
        True,
        None,
    ),
    (
        "path-prefix",
        route(allow({"http_path": {"starts_with": "/public/"}})),
        "anon",
        {"path": "/public/x"},
        True,
        None,
    ),
    (
        "path-prefix-no",
        route(allow({"http_path": {"starts_with": "/public/"}})),
        "anon",
        {"path": "/app"},
        False,
        None,
    ),
    ("path-is", route(allow({"http_path": "/app"})), "alice", {}, True, None),
    (
        "path-ends",
        route(allow({"http_path": {"ends_with": ".css"}})),
        "anon",
        {"path": "/s/a.css"},
        True,
        None,
    ),
    (
        "path-deny-admin",
        route(
            allow({"authenticated_user": True}),
            deny({"http_path": {"starts_with": "/admin"}}, op="and"),
        ),
        "alice",
        {"path": "/admin/users"},
        False,
        "deny: rule 1 deny.and matched (http_path starts_with /admin)",
    ),
    (
        "path-deny-admin-other-path",
        route(
            allow({"authenticated_user": True}),
            deny({"http_path": {"starts_with": "/admin"}}, op="and"),
        ),
        "alice",
        {"path": "/app"},
        True,
        None,
    ),
    (
        "path-case-sensitive",
        route(allow({"accept": True}), deny({"http_path": {"starts_with": "/admin"}})),
        "anon",
        {"path": "/Admin"},
        True,
        None,
    ),
    (
        "ip-cidr",
        route(allow({"source_ip": "192.0.2.0/24"})),
        "anon",
        {},
        True,
        "source_ip 192.0.2.10 in 192.0.2.0/24",
    ),
    ("ip-list", route(allow({"source_ip": ["10.0.0.0/8", "192.0.2.10"]})), "anon", {}, True, None),
    ("ip-outside", route(allow({"source_ip": "10.0.0.0/8"})), "anon", {}, False, None),
    (
        "ip-v6",
        route(allow({"source_ip": "2001:db8::/32"})),
        "anon",
        {"source_ip": "2001:db8::1"},
        True,
        None,
    ),
    (
        "ip-v4-mapped",
        route(allow({"source_ip": "192.0.2.0/24"})),
        "anon",
        {"source_ip": "::ffff:192.0.2.10"},
        True,
        None,
    ),
    (
        "ip-garbage",
        route(allow({"source_ip": "0.0.0.0/0"})),
        "anon",
        {"source_ip": "garbage"},
        False,
        None,
    ),
    (
        "ip-garbage-deny-not",
        route(allow({"accept": True}), deny({"source_ip": "10.0.0.0/8"}, op="not")),
        "anon",
        {"source_ip": "garbage"},
        False,
        "deny: rule 1 deny.not matched",
    ),
    (
        "date-after",
        route(allow({"date": {"after": "2024-01-01T00:00:00"}})),
        "anon",
        {},
        True,
        None,
    ),
    ("date-after-future", route(allow({"date": {"after": "2025-01-01"}})), "anon", {}, False, None),
    (
        "date-before-past",
        route(allow({"date": {"before": "2024-05-06T11:00:00Z"}})),
        "anon",
        {},
        False,
        None,
    ),
    (
        "date-window-yaml-datetime",
        route(
            allow({"date": {"after": datetime(2024, 5, 6, 11), "before": datetime(2024, 5, 6, 13)}})
        ),
        "anon",
        {},
        True,
        None,
    ),
    (
        "date-offset",
        route(allow({"date": {"after": "2024-05-06T11:30:00-01:00"}})),
        "anon",
        {},
        False,
        None,
    ),
    (
        "dow-range",
        route(allow({"day_of_week": "mon-fri"})),
        "anon",
        {},
        True,
        "day_of_week mon-fri",
    ),
    ("dow-weekend", route(allow({"day_of_week": "sat,sun"})), "anon", {}, False, None),
    ("dow-star", route(allow({"day_of_week": "*"})), "anon", {}, True, None),
    ("dow-full-name", route(allow({"day_of_week": "Monday"})), "anon", {}, True, None),
    (
        "dow-timezone",
        route(allow({"day_of_week": {"days": "tue", "timezone": "Pacific/Kiritimati"}})),
        "anon",
        {},
        True,
        None,
    ),
    (
        "tod-utc",
        route(allow({"time_of_day": {"timezone": "UTC", "after": "9:00", "before": "17:00"}})),
        "anon",
        {},
        True,
        None,
    ),
    (
        "tod-pm",
        route(allow({"time_of_day": {"timezone": "UTC", "after": "1:00PM"}})),
        "anon",
        {},
        False,
        None,
    ),
    (
        "tod-zone-before-open",
        route(allow({"time_of_day": {"timezone": "America/New_York", "after": "9:00"}})),
        "anon",
        {},
        False,
        None,
    ),
    (
        "tod-zone-morning",
        route(allow({"time_of_day": {"timezone": "America/New_York", "before": "9:00AM"}})),
        "anon",
        {},
        True,
        None,
    ),
    # ---- anonymous identities and negation: unknown never helps an allow match
    (
        "anon-not-email",
        route(allow({"email": "bob@example.com"}, op="not")),
        "anon",
        {},
        False,
        None,
    ),
    ("anon-nor", route(allow({"email": "a@x.y"}, B, op="nor")), "anon", {}, False, None),
    (
        "anon-double-not",
        route(allow({"not": [{"email": "x@y.z"}]}, op="not")),
        "anon",
        {},
        False,
        None,
    ),
    (
        "anon-not-and-decided-by-request",
        route(allow({"and": [{"email": "bob@example.com"}, {"http_path": "/secret"}]}, op="not")),
        "anon",
        {},
        True,
        None,
    ),
    ("anon-not-method", route(allow({"http_method": "POST"}, op="not")), "anon", {}, True, None),
    (
        "anon-not-authenticated",
        route(allow({"authenticated_user": True}, op="not")),
        "anon",
        {},
        True,
        None,
    ),
    (
        "alice-not-authenticated",
        route(allow({"authenticated_user": True}, op="not")),
        "alice",
        {},
        False,
        None,
    ),
    (
        "anon-deny-not-domain",
        route(allow({"accept": True}), deny(A, op="not")),
        "anon",
        {},
        False,
        "deny: rule 1 deny.not matched (none of: domain is example.com)",
    ),
    (
        "alice-deny-not-domain",
        route(allow({"accept": True}), deny(A, op="not")),
        "alice",
        {},
        True,
        None,
    ),
    (
        "carol-deny-not-domain",
        route(allow({"accept": True}), deny(A, op="not")),
        "carol",
        {},
        False,
        None,
    ),
    (
        "unverified-not-email",
        route(allow({"email": "eve@example.com"}, op="not")),
        "eve",
        {},
        False,
        None,
    ),
    (
        "unverified-allowed-not-email",
        route(allow({"email": "eve@example.com"}, op="not"), allow_unverified_email=True),
        "eve",
        {},
        False,
        None,
    ),
    (
        "verified-not-email",
        route(allow({"email": "eve@example.com"}, op="not"), allow_unverified_email=True),
        "bob",
        {},
        True,
        None,
    ),
    # ---- shortcut keys
    (
        "users",
        route(allowed_users=["alice@example.com"]),
        "alice",
        {},
        True,
        "allow: allowed_users email is alice@example.com",
    ),
    ("users-other", route(allowed_users=["alice@example.com"]), "bob", {}, False, None),
    ("users-case", route(allowed_users=["bob@EXAMPLE.com"]), "bob", {}, True, None),
    (
        "users-unverified",
        route(allowed_users=["eve@example.com"]),
        "eve",
        {},
        False,
        "(email not verified)",
    ),
    (
        "users-unverified-allowed",
        route(allowed_users=["eve@example.com"], allow_unverified_email=True),
        "eve",
        {},
        True,
        None,
    ),
    (
        "domains",
        route(allowed_domains=["example.com"]),
        "bob",
        {},
        True,
        "allow: allowed_domains domain is example.com",
    ),
    ("domains-other", route(allowed_domains=["example.com"]), "carol", {}, False, None),
    ("domains-unverified", route(allowed_domains=["example.com"]), "eve", {}, False, None),
    ("domains-anon", route(allowed_domains=["example.com"]), "anon", {}, False, "(anonymous)"),
    (
        "idp-claims",
        route(allowed_idp_claims={"department": ["ops", "hr"]}),
        "alice",
        {},
        True,
        "allowed_idp_claims or[0] claim/department has ops",
    ),
    (
        "idp-claims-no",
        route(allowed_idp_claims={"department": ["ops", "hr"]}),
        "bob",
        {},
        False,
        None,
    ),
    ("idp-claims-anon", route(allowed_idp_claims={"department": ["ops"]}), "anon", {}, False, None),
    (
        "public",
        route(allow_public_unauthenticated_access=True),
        "anon",
        {},
        True,
        "allow: allow_public_unauthenticated_access",
    ),
    (
        "public-with-deny",
        route(
            deny({"http_path": {"starts_with": "/admin"}}), allow_public_unauthenticated_access=True
        ),
        "anon",
        {"path": "/admin"},
        False,
        None,
    ),
    (
        "any-user",
        route(allow_any_authenticated_user=True),
        "svc",
        {},
        True,
        "allow: allow_any_authenticated_user",
    ),
    ("any-user-anon", route(allow_any_authenticated_user=True), "anon", {}, False, None),
    (
        "shortcut-and-policy-deny",
        route(deny({"email": "bob@example.com"}), allowed_domains=["example.com"]),
        "bob",
        {},
        False,
        "deny: rule 0 deny.or[0] email is bob@example.com",
    ),
    (
        "false-flags",
        route(allow_public_unauthenticated_access=False, allow_any_authenticated_user=False),
        "alice",
        {},
        False,
        None,
    ),
    # ---- merged sets keep the index of the criterion as written
    (
        "merged-index",
        route(
            allow(
                {"email": "a@x.y"},
                {"email": "b@x.y"},
                {"email": "alice@example.com"},
                {"domain": "other.org"},
            )
        ),
        "alice",
        {},
        True,
        "allow.or[2] email is alice@example.com",
    ),
    (
        "merged-index-domain",
        route(
            allow(
                {"email": "a@x.y"},
                {"email": "b@x.y"},
                {"email": "alice@example.com"},
                {"domain": "other.org"},
            )
        ),
        "carol",
        {},
        True,
        "allow.or[3] domain is other.org",
    ),
    (
        "merged-duplicate-first",
        route(
            allow({"http_method": "PUT"}, {"user": "bob-sub"}, {"user": {"in": ["x", "bob-sub"]}})
        ),
        "bob",
        {},
        True,
        "allow.or[1] user is bob-sub",
    ),
    (
        "merged-not",
        route(allow({"email": "a@x.y"}, {"email": "alice@example.com"}, op="not")),
        "alice",
        {},
        False,
        None,
    ),
    (
        "merged-not-bob",
        route(allow({"email": "a@x.y"}, {"email": "alice@example.com"}, op="not")),
        "bob",
        {},
        True,
        None,
    ),
]


@pytest.mark.parametrize(
    ("route_spec", "who", "overrides", "expected", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_decision(
    route_spec: dict[str, Any],
    who: str,
    overrides: dict[str, Any],
    expected: bool,
    reason: str | None,
) -> None:
    policy = compile_route_policy(route_spec)
    decision = policy.decide(facts(**overrides), WHO[who])
    assert decision.allow is expected, decision.reason
    assert decision.reason.startswith("allow: " if expected else "deny: ")
    if reason is not None:
        assert reason in decision.reason


def test_table_is_large_and_ids_unique() -> None:
    ids = [case[0] for case in CASES]
    assert len(ids) >= 100
    assert len(set(ids)) == len(ids)


def test_large_lists_decide_like_small_ones() -> None:
    emails = [f"user{i}@example.net" for i in range(5000)]
    policy = compile_route_policy(
        route(allow(*({"email": e} for e in emails), {"email": "alice@example.com"}))
    )
    decision = policy.decide(facts(), WHO["alice"])
    assert decision.allow
    assert decision.reason == "allow: rule 0 allow.or[5000] email is alice@example.com"
    assert not policy.decide(facts(), WHO["bob"]).allow
