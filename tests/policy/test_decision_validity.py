"""Decision.valid_until: how long a decision holds, so caches never serve one past it.

Every test passes an explicit ``now``; none reads the wall clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.engine import Policy
from policy.model import Decision, Identity
from policy.parse import compile_route_policy
from tests.policy.policy_fixtures import ALICE, CAROL, facts

US = timedelta(microseconds=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def compile_rules(*rules: dict[str, Any]) -> Policy:
    return compile_route_policy({"policy": list(rules)})


def allow(*criteria: Any, op: str = "or") -> dict[str, Any]:
    return {"allow": {op: list(criteria)}}


def deny(*criteria: Any, op: str = "or") -> dict[str, Any]:
    return {"deny": {op: list(criteria)}}


def decide(policy: Policy, now: datetime, who: Identity | None = ALICE) -> Decision:
    return policy.decide(facts(now=now), who)


def same(a: Decision, b: Decision) -> bool:
    return (a.allow, a.reason) == (b.allow, b.reason)


def holds(policy: Policy, now: datetime, who: Identity | None = ALICE) -> Decision:
    """The decision at ``now``, checked to be UTC, later than now, and unchanged one
    microsecond before its end."""
    decision = decide(policy, now, who)
    until = decision.valid_until
    if until is not None:
        assert until.tzinfo is UTC
        assert until > now
        assert same(decide(policy, until - US, who), decision)
        assert same(decide(policy, now, who), decision)
    return decision


# ---------------------------------------------------------------- no clock involved


@pytest.mark.parametrize(
    "route",
    [
        {},
        {"policy": [allow({"accept": True})]},
        {"policy": [allow({"email": "alice@example.com"}, {"groups": {"has": "eng"}})]},
        {"policy": [allow({"source_ip": "192.0.2.0/24"}), deny({"http_path": "/admin"})]},
        {"allowed_users": ["alice@example.com"], "allowed_domains": ["other.org"]},
        {"allow_any_authenticated_user": True},
        {"policy": [allow({"day_of_week": "*"})]},
        {"policy": [allow({"day_of_week": {"days": "*", "timezone": "Europe/Paris"}})]},
    ],
)
@pytest.mark.parametrize("who", [ALICE, CAROL, None])
def test_no_time_criteria_means_no_bound(route: dict[str, Any], who: Identity | None) -> None:
    policy = compile_route_policy(route)
    assert decide(policy, utc(2026, 5, 6, 12), who).valid_until is None


def test_existing_decisions_keep_two_field_construction() -> None:
    assert Decision(True, "x") == Decision(True, "x", None)
    assert Decision(True, "x").valid_until is None


# ---------------------------------------------------------------- date

A = utc(2026, 6, 1)
B = utc(2026, 7, 1)
AFTER_A = allow({"date": {"after": "2026-06-01T00:00:00Z"}})
BEFORE_B = allow({"date": {"before": "2026-07-01T00:00:00Z"}})


@pytest.mark.parametrize(
    ("rule", "now", "allowed", "until"),
    [
        # after is exclusive: still false at A, true from A + 1 us (datetime's resolution).
        (AFTER_A, A - timedelta(days=3), False, A + US),
        (AFTER_A, A - US, False, A + US),
        (AFTER_A, A, False, A + US),
        (AFTER_A, A + US, True, None),
        (AFTER_A, A + timedelta(days=3), True, None),
        # before is exclusive: true until B - 1 us, false from B on.
        (BEFORE_B, B - timedelta(days=3), True, B),
        (BEFORE_B, B - US, True, B),
        (BEFORE_B, B, False, None),
        (BEFORE_B, B + US, False, None),
    ],
)
def test_date_bounds(
    rule: dict[str, Any], now: datetime, allowed: bool, until: datetime | None
) -> None:
    policy = compile_rules(rule)
    decision = holds(policy, now)
    assert decision.allow is allowed
    assert decision.valid_until == until
    if until is not None:
        # Exact for a single criterion: the decision really changes at valid_until.
        assert decide(policy, until).allow is not allowed


def test_date_window_walks_through_both_bounds() -> None:
    policy = compile_rules(
        allow({"date": {"after": "2026-06-01T00:00:00Z", "before": "2026-07-01T00:00:00Z"}})
    )
    now = A - timedelta(hours=5)
    seen = []
    while True:
        decision = holds(policy, now)
        seen.append((decision.allow, decision.valid_until))
        if decision.valid_until is None:
            break
        now = decision.valid_until
    assert seen == [(False, A + US), (True, B), (False, None)]


def test_date_bound_with_offset_is_reported_in_utc() -> None:
    policy = compile_rules(allow({"date": {"before": "2026-06-01T02:00:00+02:00"}}))
    assert holds(policy, utc(2026, 5, 31, 12)).valid_until == utc(2026, 6, 1)  # UTC: holds()


def test_now_in_another_zone() -> None:
    policy = compile_rules(BEFORE_B)
    now = (B - timedelta(hours=1)).astimezone(ZoneInfo("America/Los_Angeles"))
    decision = holds(policy, now)
    assert decision.allow
    assert decision.valid_until == B


# ---------------------------------------------------------------- rules and operators


def test_deny_rule_with_a_time_criterion() -> None:
    freeze = utc(2026, 12, 20)
    policy = compile_rules(
        allow({"domain": "example.com"}), deny({"date": {"after": "2026-12-20T00:00:00Z"}})
    )
    before = holds(policy, freeze - timedelta(days=1))
    assert before.allow
    assert before.valid_until == freeze + US
    after = holds(policy, freeze + US)
    assert not after.allow
    assert after.reason.startswith("deny: rule 1 deny.or[0] date after")
    assert after.valid_until is None
    # A user the allow rule rejects is still bounded: the deny rule was tested first.
    assert decide(policy, freeze - timedelta(days=1), CAROL).valid_until == freeze + US


def test_deny_outside_business_hours_with_not() -> None:
    hours = {"time_of_day": {"timezone": "Europe/Paris", "after": "8:00", "before": "18:00"}}
    policy = compile_rules(allow({"accept": True}), deny(hours, op="not"))
    # 2026-05-06 is a Wednesday; Paris is UTC+2.
    night = holds(policy, utc(2026, 5, 6, 5))  # 07:00 in Paris
    assert not night.allow
    assert night.reason == (
        "deny: rule 1 deny.not matched (none of: "
        "time_of_day timezone Europe/Paris after 08:00:00 before 18:00:00)"
    )
    assert night.valid_until == utc(2026, 5, 6, 6) + US
    day = holds(policy, utc(2026, 5, 6, 6) + US)
    assert day.allow
    assert day.valid_until == utc(2026, 5, 6, 16)


def test_not_of_a_date() -> None:
    policy = compile_rules(allow({"date": {"before": "2026-07-01T00:00:00Z"}}, op="not"))
    early = holds(policy, B - timedelta(days=1))
    assert not early.allow
    assert early.valid_until == B
    late = holds(policy, B)
    assert late.allow
    assert late.valid_until is None


def test_nor_of_time_criteria() -> None:
    policy = compile_rules(
        allow(
            {"date": {"before": "2026-07-01T00:00:00Z"}},
            {"day_of_week": "mon-fri"},
            op="nor",
        )
    )
    # Wednesday before B: both children true (both tested), nor false. The weekday bound is
    # the next midnight, which comes before B.
    decision = holds(policy, utc(2026, 6, 3, 12))
    assert not decision.allow
    assert decision.valid_until == utc(2026, 6, 4)
    # Saturday: the weekday child is false, so nor matches; the date was tested on the way.
    saturday = holds(policy, utc(2026, 6, 6, 12))
    assert saturday.allow
    assert saturday.reason == "allow: rule 0 allow.nor[1] was false (day_of_week mon-fri (UTC))"
    assert saturday.valid_until == utc(2026, 6, 7)


def test_or_reason_changes_when_an_earlier_time_child_turns_true() -> None:
    policy = compile_rules(
        allow({"date": {"after": "2026-06-01T00:00:00Z"}}, {"email": ALICE.email})
    )
    early = holds(policy, A - timedelta(hours=1))
    assert early.allow
    assert early.reason == "allow: rule 0 allow.or[1] email is alice@example.com"
    assert early.valid_until == A + US
    late = decide(policy, A + US)
    assert late.allow
    assert late.reason.startswith("allow: rule 0 allow.or[0] date after")


def test_time_child_tested_only_while_explaining_still_counts() -> None:
    # The emails merge into one lookup that sits first, so test() stops at it and never
    # reaches the date; explain() then tries every child to name the first one as written,
    # and the date (position 1) beats alice (position 2) once it is true.
    policy = compile_rules(
        allow(
            {"email": "bob@example.com"},
            {"date": {"after": "2026-06-01T00:00:00Z"}},
            {"email": ALICE.email},
        )
    )
    early = holds(policy, A - timedelta(hours=1))
    assert early.reason == "allow: rule 0 allow.or[2] email is alice@example.com"
    assert early.valid_until == A + US
    late = decide(policy, A + US)
    assert late.reason.startswith("allow: rule 0 allow.or[1] date after")


def test_short_circuited_time_criteria_do_not_bound() -> None:
    later = {"date": {"before": "2026-07-01T00:00:00Z"}}
    now = B - timedelta(days=1)
    # and: the email is false for alice, so the date is never looked at.
    policy = compile_rules(allow({"email": CAROL.email}, later, op="and"))
    decision = holds(policy, now)
    assert not decision.allow
    assert decision.valid_until is None
    # ...but carol gets past the email and reaches it.
    assert decide(policy, now, CAROL).valid_until == B
    # A later allow rule is not evaluated once an earlier one matched.
    policy = compile_rules(allow({"email": ALICE.email}), allow(later))
    assert decide(policy, now).valid_until is None
    assert decide(policy, now, CAROL).valid_until == B
    # A matching deny rule ends the evaluation before any allow rule.
    policy = compile_rules(allow(later), deny({"email": ALICE.email}))
    assert decide(policy, now).valid_until is None


def test_earliest_bound_wins() -> None:
    policy = compile_rules(
        allow(
            {"date": {"before": "2026-07-01T00:00:00Z"}},
            {"time_of_day": {"timezone": "UTC", "after": "9:00", "before": "17:00"}},
            {"day_of_week": "mon-fri"},
            op="and",
        )
    )
    assert holds(policy, utc(2026, 6, 30, 10)).valid_until == utc(2026, 6, 30, 17)
    assert holds(policy, utc(2026, 6, 30, 16, 59, 59)).valid_until == utc(2026, 6, 30, 17)
    # At 23:00 time_of_day is false and ends the "and" before day_of_week; its next edge is
    # 09:00 tomorrow, so the date's B comes first.
    assert holds(policy, utc(2026, 6, 30, 23)).valid_until == B


# ---------------------------------------------------------------- day_of_week


def test_day_of_week_across_midnight_utc() -> None:
    policy = compile_rules(allow({"day_of_week": "mon-fri"}))
    friday_end = utc(2026, 5, 8, 23, 59, 59, 999999)
    decision = holds(policy, friday_end)
    assert decision.allow
    assert decision.valid_until == utc(2026, 5, 9)
    assert not decide(policy, utc(2026, 5, 9)).allow
    saturday = holds(policy, utc(2026, 5, 9))
    assert saturday.valid_until == utc(2026, 5, 10)
    # Only to the next midnight, even where the answer is the same the day after.
    assert holds(policy, utc(2026, 5, 4, 10)).valid_until == utc(2026, 5, 5)


@pytest.mark.parametrize(
    ("zone", "now", "until"),
    [
        # UTC+14: Tuesday 23:59 local is Tuesday 09:59 UTC.
        ("Pacific/Kiritimati", utc(2026, 5, 5, 9, 59), utc(2026, 5, 5, 10)),
        ("Pacific/Kiritimati", utc(2026, 5, 4, 10), utc(2026, 5, 5, 10)),
        # UTC-7 in May (PDT): Tuesday starts at 07:00 UTC.
        ("America/Los_Angeles", utc(2026, 5, 6, 6, 59), utc(2026, 5, 6, 7)),
        # UTC-8 in January (PST).
        ("America/Los_Angeles", utc(2026, 1, 7, 7, 59), utc(2026, 1, 7, 8)),
    ],
)
def test_day_of_week_in_zones_far_from_utc(zone: str, now: datetime, until: datetime) -> None:
    policy = compile_rules(allow({"day_of_week": {"days": "tue", "timezone": zone}}))
    decision = holds(policy, now)
    assert decision.allow
    assert decision.valid_until == until
    assert not decide(policy, until).allow


def test_day_of_week_when_midnight_is_skipped() -> None:
    # Havana springs forward at midnight: Saturday 23:59:59 CST is followed by Sunday 01:00
    # CDT, at 05:00 UTC.
    policy = compile_rules(allow({"day_of_week": {"days": "sat", "timezone": "America/Havana"}}))
    decision = holds(policy, utc(2026, 3, 8, 1))
    assert decision.allow
    assert decision.valid_until == utc(2026, 3, 8, 5)
    assert not decide(policy, utc(2026, 3, 8, 5)).allow


def test_day_of_week_when_midnight_repeats_the_day_before() -> None:
    # Santiago falls back at Sunday 00:00 -03 (03:00 UTC) to Saturday 23:00 -04, so Sunday
    # really begins at 04:00 UTC. The bound stops at the offset change (conservative), and
    # the next decision runs to the real start of Sunday.
    policy = compile_rules(allow({"day_of_week": {"days": "sat", "timezone": "America/Santiago"}}))
    first = holds(policy, utc(2026, 4, 5, 1))
    assert first.allow
    assert first.valid_until == utc(2026, 4, 5, 3)
    second = holds(policy, utc(2026, 4, 5, 3))
    assert second.allow
    assert second.valid_until == utc(2026, 4, 5, 4)
    assert not decide(policy, utc(2026, 4, 5, 4)).allow


# ---------------------------------------------------------------- time_of_day


def tod(zone: str, after: str | None = None, before: str | None = None) -> Policy:
    spec: dict[str, Any] = {"timezone": zone}
    if after is not None:
        spec["after"] = after
    if before is not None:
        spec["before"] = before
    return compile_rules(allow({"time_of_day": spec}))


def test_time_of_day_paris_working_day() -> None:
    policy = tod("Europe/Paris", "9:00", "17:00")
    # CEST (UTC+2): 09:00 local is 07:00 UTC.
    morning = holds(policy, utc(2026, 5, 6, 6))
    assert not morning.allow
    assert morning.valid_until == utc(2026, 5, 6, 7) + US
    assert not decide(policy, utc(2026, 5, 6, 7)).allow  # 09:00 itself is excluded
    assert decide(policy, utc(2026, 5, 6, 7) + US).allow
    day = holds(policy, utc(2026, 5, 6, 10))
    assert day.allow
    assert day.valid_until == utc(2026, 5, 6, 15)
    evening = holds(policy, utc(2026, 5, 6, 15))
    assert not evening.allow
    assert evening.valid_until == utc(2026, 5, 7, 7) + US


@pytest.mark.parametrize(
    ("after", "before", "now", "allowed", "until"),
    [
        # One bound only: the value also flips when the clock wraps at midnight (04:00 UTC
        # in EDT).
        (None, "9:00AM", utc(2026, 5, 7, 0), False, utc(2026, 5, 7, 4)),
        (None, "9:00AM", utc(2026, 5, 7, 4), True, utc(2026, 5, 7, 13)),
        ("5:00PM", None, utc(2026, 5, 6, 22), True, utc(2026, 5, 7, 4)),
        ("5:00PM", None, utc(2026, 5, 7, 4), False, utc(2026, 5, 7, 21) + US),
        # EST in January: UTC-5.
        ("9:00", "17:00", utc(2026, 1, 7, 13), False, utc(2026, 1, 7, 14) + US),
        ("9:00", "17:00", utc(2026, 1, 7, 14) + US, True, utc(2026, 1, 7, 22)),
    ],
)
def test_time_of_day_new_york(
    after: str | None, before: str | None, now: datetime, allowed: bool, until: datetime
) -> None:
    policy = tod("America/New_York", after, before)
    decision = holds(policy, now)
    assert decision.allow is allowed
    assert decision.valid_until == until
    assert decide(policy, until).allow is not allowed


# Spring forward 2026: New York 02:00 EST -> 03:00 EDT at 07:00 UTC on March 8, Paris 02:00
# CET -> 03:00 CEST at 01:00 UTC on March 29. A bound of 02:30 never shows on the clock: the
# clock passes it at the jump (zoneinfo alone would place 02:30 an hour after the jump).
# Fall back 2026: New York 02:00 EDT -> 01:00 EST at 06:00 UTC on November 1, Paris
# 03:00 CEST -> 02:00 CET at 01:00 UTC on October 25; the clock goes back over the bound.
DST_CASES = [
    # spring forward, New York
    ("America/New_York", "2:30", None, utc(2026, 3, 8, 5), False, utc(2026, 3, 8, 7)),
    ("America/New_York", None, "2:30", utc(2026, 3, 8, 5), True, utc(2026, 3, 8, 7)),
    ("America/New_York", "2:30", None, utc(2026, 3, 8, 7), True, utc(2026, 3, 9, 4)),
    ("America/New_York", "1:00", "2:30", utc(2026, 3, 8, 6, 30), True, utc(2026, 3, 8, 7)),
    # spring forward, Paris
    ("Europe/Paris", "2:30", None, utc(2026, 3, 28, 23), False, utc(2026, 3, 29, 1)),
    ("Europe/Paris", None, "2:30", utc(2026, 3, 28, 23), True, utc(2026, 3, 29, 1)),
    # fall back, New York: 01:45 EDT becomes 01:00 EST at the change, then 01:30 EST
    ("America/New_York", "1:30", None, utc(2026, 11, 1, 5, 45), True, utc(2026, 11, 1, 6)),
    ("America/New_York", "1:30", None, utc(2026, 11, 1, 6), False, utc(2026, 11, 1, 6, 30) + US),
    ("America/New_York", None, "1:30", utc(2026, 11, 1, 5, 45), False, utc(2026, 11, 1, 6)),
    ("America/New_York", None, "1:30", utc(2026, 11, 1, 6), True, utc(2026, 11, 1, 6, 30)),
    # 01:15 EDT: the bound 01:30 comes first (first pass), before the change
    (
        "America/New_York",
        "1:30",
        None,
        utc(2026, 11, 1, 5, 15),
        False,
        utc(2026, 11, 1, 5, 30) + US,
    ),
    # fall back, Paris: 02:45 CEST; at 01:00 UTC the clock shows 02:00 CET
    ("Europe/Paris", "2:30", None, utc(2026, 10, 25, 0, 45), True, utc(2026, 10, 25, 1)),
    ("Europe/Paris", "2:30", None, utc(2026, 10, 25, 1), False, utc(2026, 10, 25, 1, 30) + US),
    ("Europe/Paris", "2:30", "2:45", utc(2026, 10, 25, 0, 40), True, utc(2026, 10, 25, 0, 45)),
]


@pytest.mark.parametrize(("zone", "after", "before", "now", "allowed", "until"), DST_CASES)
def test_time_of_day_on_dst_nights(
    zone: str,
    after: str | None,
    before: str | None,
    now: datetime,
    allowed: bool,
    until: datetime,
) -> None:
    policy = tod(zone, after, before)
    decision = holds(policy, now)
    assert decision.allow is allowed
    assert decision.valid_until == until
    assert decide(policy, until).allow is not allowed


def test_walk_a_fall_back_night_step_by_step() -> None:
    # Following valid_until from decision to decision never skips a change: compare with a
    # minute-by-minute scan over the whole night.
    policy = tod("America/New_York", "1:30", "1:50")
    start, end = utc(2026, 11, 1, 4), utc(2026, 11, 1, 8)
    now = start
    bounds = []
    while now < end:
        decision = holds(policy, now)
        assert decision.valid_until is not None
        bounds.append(decision.valid_until)
        now = decision.valid_until
    changes = []
    t = start
    previous = decide(policy, t).allow
    while t < end:
        t += timedelta(minutes=1)
        value = decide(policy, t).allow
        if value != previous:
            changes.append(t)
        previous = value
    # The scan sees each change up to a minute late; some bound must lie in that minute.
    assert changes == [
        utc(2026, 11, 1, 5, 31),
        utc(2026, 11, 1, 5, 50),
        utc(2026, 11, 1, 6, 31),
        utc(2026, 11, 1, 6, 50),
    ]
    for change in changes:
        assert any(change - timedelta(minutes=1) < b <= change for b in bounds)


# ---------------------------------------------------------------- property

# Zones with DST at 02:00 (Europe, US), at midnight (Havana, Santiago), by 30 minutes
# (Lord Howe), at 02:45 (Chatham), and without DST (far from UTC or half an hour off).
ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Los_Angeles",
    "America/Havana",
    "America/Santiago",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Asia/Kolkata",
]
START, END = utc(2025, 1, 1), utc(2028, 1, 1)


def offset_changes(name: str) -> list[datetime]:
    """The zone's offset changes in 2025-2027, to the second."""
    zone = ZoneInfo(name)
    found = []
    t = START
    offset = t.astimezone(zone).utcoffset()
    while t < END:
        step = t + timedelta(hours=6)
        if step.astimezone(zone).utcoffset() != offset:
            lo, hi = t, step
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) // 2
                if mid.astimezone(zone).utcoffset() == offset:
                    lo = mid
                else:
                    hi = mid
            found.append(hi)
            offset = step.astimezone(zone).utcoffset()
        t = step
    return found


CHANGES = {name: offset_changes(name) for name in ZONES}
# Wall times near the jumps of DST nights and midnights in the zones above.
CLOCKS = [
    *("0:00", "0:15", "0:30", "1:00", "1:30", "1:45", "1:59:59", "2:00", "2:15", "2:30"),
    *("2:45", "3:00", "3:30", "3:45", "23:15", "23:30", "23:59:59"),
]

clocks = st.one_of(
    st.sampled_from(CLOCKS),
    st.builds(
        lambda h, m, s: f"{h}:{m:02}:{s:02}",
        st.integers(0, 23),
        st.integers(0, 59),
        st.integers(0, 59),
    ),
)


def clock(text: str) -> time:
    h, m, s = (int(part) for part in (text + ":0").split(":")[:3])
    return time(h, m, s)


instants = st.datetimes(
    min_value=START.replace(tzinfo=None),
    max_value=END.replace(tzinfo=None) - timedelta(days=9),
    timezones=st.just(UTC),
)


@st.composite
def date_criteria(draw: st.DrawFn, moments: st.SearchStrategy[datetime]) -> dict[str, Any]:
    a, b = sorted(draw(st.lists(moments, min_size=2, max_size=2, unique=True)))
    which = draw(st.sampled_from(["after", "before", "both"]))
    spec: dict[str, Any] = {}
    if which != "before":
        spec["after"] = a.isoformat()
    if which != "after":
        spec["before"] = b.isoformat()
    return {"date": spec}


@st.composite
def time_criteria(draw: st.DrawFn, zones: st.SearchStrategy[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"timezone": draw(zones)}
    a, b = draw(clocks), draw(clocks)
    which = draw(st.sampled_from(["after", "before", "both"]))
    if which == "both" and clock(a) != clock(b):
        spec["after"], spec["before"] = (a, b) if clock(a) < clock(b) else (b, a)
    elif which == "before":
        spec["before"] = b
    else:
        spec["after"] = a
    return {"time_of_day": spec}


def day_criteria(zones: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda days, zone: {"day_of_week": {"days": days, "timezone": zone}},
        st.sampled_from(["mon", "sat", "sun", "mon-fri", "sat,sun", "tue,thu,sat", "*"]),
        zones,
    )


email_criteria = st.sampled_from(
    [{"email": "alice@example.com"}, {"email": "carol@other.org"}, {"domain": "example.com"}]
)


def operator(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda op, items: {op: items},
        st.sampled_from(["and", "or", "not", "nor"]),
        st.lists(children, min_size=1, max_size=2),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], datetime]:
    """Rules and a ``now``. Most draws centre on one zone: ``now`` within the day before
    one of its offset changes and criteria in that zone, where mistakes would show."""
    focus = draw(st.sampled_from(ZONES))
    changes = CHANGES[focus]
    near_change: bool = draw(st.booleans())
    if changes and near_change:
        # Mostly the last hours before the change: wall-clock bounds on that night are the
        # next edge then.
        shift = st.one_of(
            st.timedeltas(min_value=timedelta(hours=-3), max_value=timedelta(hours=1)),
            st.timedeltas(min_value=timedelta(hours=-30), max_value=timedelta(hours=6)),
        )
        now = draw(st.sampled_from(changes)) + draw(shift)
    else:
        now = draw(instants)
    zones = st.one_of(st.just(focus), st.sampled_from(ZONES))
    near = st.builds(
        lambda d: now + d, st.timedeltas(min_value=timedelta(days=-2), max_value=timedelta(days=9))
    )
    moments = st.one_of(instants, near, st.sampled_from([now - US, now, now + US]))
    leaves = st.one_of(
        date_criteria(moments),
        time_criteria(zones),
        time_criteria(zones),
        day_criteria(zones),
        email_criteria,
    )
    rule = st.builds(
        lambda action, op, items: {action: {op: items}},
        st.sampled_from(["allow", "allow", "deny"]),
        st.sampled_from(["and", "or", "not", "nor"]),
        st.lists(st.recursive(leaves, operator, max_leaves=4), min_size=1, max_size=2),
    )
    return draw(st.lists(rule, min_size=1, max_size=2)), now


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scenario=scenarios(),
    now_zone=st.sampled_from([UTC, ZoneInfo("Europe/Paris"), ZoneInfo("Pacific/Kiritimati")]),
    who=st.sampled_from([ALICE, CAROL, None]),
    fractions=st.lists(st.floats(0, 1, exclude_max=True), min_size=18, max_size=18),
)
def test_decision_holds_until_valid_until(
    scenario: tuple[list[dict[str, Any]], datetime],
    now_zone: Any,
    who: Identity | None,
    fractions: list[float],
) -> None:
    rules, now = scenario
    policy = compile_route_policy({"policy": rules})
    # ``now`` as the proxy may pass it, in any zone; the samples are computed in UTC, as
    # arithmetic on a zoned datetime would follow the wall clock.
    decision = decide(policy, now.astimezone(now_zone), who)
    until = decision.valid_until
    if until is not None:
        assert until.tzinfo is UTC
        assert until > now
    end = until if until is not None else now + timedelta(days=8)
    samples = [now, end - US, *(now + (end - now) * f for f in fractions)]
    # Plus the hour after each offset change in the window: a bound computed too late
    # (a DST jump missed) shows there.
    after_change = [timedelta(0), timedelta(minutes=1), timedelta(minutes=15)]
    after_change += [timedelta(minutes=30), timedelta(minutes=59)]
    for changes in CHANGES.values():
        for change in changes:
            if now < change < end:
                samples += [change - US, *(change + d for d in after_change)]
    for t in samples:
        t = min(max(t, now), end - US)
        later = decide(policy, t, who)
        assert same(later, decision), (t, decision, later)
