"""Shared identities and request facts for the policy tests."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from policy.model import Identity, RequestFacts

# Monday 2024-05-06, 12:00 UTC.
NOON_MONDAY = datetime(2024, 5, 6, 12, 0, tzinfo=UTC)

ALICE = Identity(
    sub="alice-sub",
    email="alice@example.com",
    email_verified=True,
    groups=frozenset({"eng", "admins"}),
    claims={
        "department": "ops",
        "roles": ["reader", "writer"],
        "address": {"country": "DE", "city": "Berlin"},
        "level": 3,
        "beta": True,
        "https://example.com/tenant": "t1",
    },
)
# Mixed-case address and no email_verified claim at all (treated as verified).
BOB = Identity(
    sub="bob-sub",
    email="Bob@Example.COM",
    email_verified=None,
    groups=frozenset({"eng"}),
    claims={"department": "sales", "roles": "reader"},
)
EVE_UNVERIFIED = Identity(
    sub="eve-sub",
    email="eve@example.com",
    email_verified=False,
    groups=frozenset(),
    claims={"department": "ops"},
)
CAROL = Identity(
    sub="carol-sub",
    email="carol@other.org",
    email_verified=True,
    groups=frozenset({"contractors"}),
    claims={},
)
# Outside example.com but in the admins group (the "A false, B true" row of the truth tables).
DAVE = Identity(
    sub="dave-sub",
    email="dave@other.org",
    email_verified=True,
    groups=frozenset({"admins"}),
)
SERVICE_NO_EMAIL = Identity(sub="svc-sub", email=None, email_verified=None)

WHO: dict[str, Identity | None] = {
    "alice": ALICE,
    "bob": BOB,
    "eve": EVE_UNVERIFIED,
    "carol": CAROL,
    "dave": DAVE,
    "svc": SERVICE_NO_EMAIL,
    "anon": None,
}


def facts(**overrides: Any) -> RequestFacts:
    base = RequestFacts(method="GET", path="/app", source_ip="192.0.2.10", now=NOON_MONDAY)
    return dataclasses.replace(base, **overrides)
