"""Evaluation of compiled policies.

A :class:`Policy` is produced by :func:`policy.parse.compile_route_policy` and holds a tree of
small nodes per rule. :meth:`Policy.decide` is pure and allocation-light: plain ``is``/``in``
email, domain, user and group criteria are compiled into hash lookups, so the cost of a
decision does not grow with the number of listed entries.

Unknown values. A criterion about the user is *unknown* when there is no identity (anonymous
request), or, for ``email``/``domain``, when the address is missing or unverified. Inside an
``allow`` rule an unknown criterion can never help the rule match, whatever number of ``not``/
``nor`` surround it (so ``allow: {not: [{email: bob@x}]}`` does not let anonymous users in).
Inside a ``deny`` rule it is simply false, so negations of it do match: ``deny: {not:
[{domain: example.com}]}`` denies anonymous requests. Both choices fail closed.

How long a decision holds. ``date``, ``day_of_week`` and ``time_of_day`` criteria make a
decision depend on ``facts.now``, yet the proxy caches decisions and reuses them for later
requests. So :meth:`Policy.decide` also returns ``Decision.valid_until``: the first instant
after ``now`` at which a time criterion that the evaluation consulted could change value
(``None`` when it consulted none). Until then the same identity and request get the same
decision, so a cache may reuse it up to, never past, that instant. Criteria that short-
circuit evaluation skipped do not count: while the consulted ones keep their values, the
evaluation takes the same path. The instant may be earlier than the real change (around a
change of a zone's UTC offset), never later.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Final, Literal

from policy.model import Decision, Identity, RequestFacts

__all__ = ["Node", "Policy", "Rule"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ClaimKey = tuple[str, Any]

_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(value: str) -> str:
    """Lower-case ASCII letters only.

    ``str.lower`` maps some non-ASCII letters onto ASCII ones (KELVIN SIGN -> ``k``), which
    would let a look-alike address compare equal to a configured one.
    """
    return value.lower() if value.isascii() else value.translate(_ASCII_LOWER)


def claim_key(value: Any) -> ClaimKey | None:
    """Hashable, type-tagged form of a scalar claim value; ``None`` for other types.

    Tagging keeps ``True`` from equalling ``1`` and ``"3"`` from equalling ``3``.
    """
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    return None


def format_claim_value(key: ClaimKey) -> str:
    kind, value = key
    if kind == "b":
        return "true" if value else "false"
    return str(value)


class Context:
    """Per-decision state; derived values are computed once, on first use."""

    __slots__ = (
        "_domain",
        "_email",
        "_ip",
        "allow_unverified",
        "facts",
        "identity",
        "strict",
        "valid_until",
    )

    _UNSET: Final = object()

    def __init__(
        self, facts: RequestFacts, identity: Identity | None, allow_unverified: bool
    ) -> None:
        self.facts = facts
        self.identity = identity
        self.allow_unverified = allow_unverified
        # True while evaluating allow rules: unknown criteria must not help a match.
        self.strict = False
        self._email: object = Context._UNSET
        self._domain: object = Context._UNSET
        self._ip: object = Context._UNSET
        # Lowered by every time criterion that is tested; see Decision.valid_until.
        self.valid_until: datetime | None = None

    def expires(self, at: datetime) -> None:
        """Note that a criterion just tested may change value at ``at`` (UTC, after now)."""
        until = self.valid_until
        if until is None or at < until:
            self.valid_until = at

    def email(self) -> str | None:
        """The lower-cased address when it may be used for matching, else ``None``."""
        if self._email is Context._UNSET:
            ident = self.identity
            value: str | None = None
            if (
                ident is not None
                and ident.email
                and (ident.email_verified is not False or self.allow_unverified)
            ):
                value = ascii_lower(ident.email)
            self._email = value
        return self._email  # type: ignore[return-value]

    def domain(self) -> str | None:
        if self._domain is Context._UNSET:
            email = self.email()
            value: str | None = None
            if email is not None:
                local, at, dom = email.rpartition("@")
                if at and local and dom:
                    value = dom
            self._domain = value
        return self._domain  # type: ignore[return-value]

    def user(self) -> str | None:
        ident = self.identity
        return ident.sub if ident is not None and ident.sub else None

    def groups(self) -> frozenset[str] | None:
        ident = self.identity
        return ident.groups if ident is not None else None

    def method(self) -> str | None:
        return self.facts.method

    def path(self) -> str | None:
        return self.facts.path

    def ssh_username(self) -> str | None:
        return self.facts.ssh_username

    def ip(self) -> IPAddress | None:
        if self._ip is Context._UNSET:
            value: IPAddress | None
            try:
                value = ipaddress.ip_address(self.facts.source_ip)
            except ValueError:
                value = None
            if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped is not None:
                value = value.ipv4_mapped
            self._ip = value
        return self._ip  # type: ignore[return-value]

    def unknown(self, neg: bool) -> bool:
        """Raw value for a criterion that cannot be evaluated.

        ``neg`` is whether an odd number of negations surrounds the criterion. In allow rules
        the raw value is chosen so the negations above turn it into "no match"; in deny rules
        it is plain false.
        """
        return self.strict and neg


class Node:
    """One criterion or operator of a compiled rule."""

    __slots__ = ()

    def test(self, ctx: Context, neg: bool) -> bool:
        """Raw truth value; ``neg`` tells whether an odd number of negations surrounds it."""
        raise NotImplementedError

    def explain(self, ctx: Context) -> str:
        """Why the node is true for ``ctx``; only called when :meth:`test` returned true with
        no negation above."""
        return self.describe()

    def describe(self) -> str:
        """The node as written, for reasons that have to state what did not match."""
        raise NotImplementedError


def _short_list(values: Iterable[str], limit: int = 3) -> str:
    items = sorted(values)
    if len(items) <= limit:
        return "[" + ", ".join(items) + "]"
    return "[" + ", ".join(items[:limit]) + f", ... ({len(items)} values)]"


# ---------------------------------------------------------------- constant criteria


class Const(Node):
    __slots__ = ("text", "value")

    def __init__(self, value: bool, text: str) -> None:
        self.value = value
        self.text = text

    def test(self, ctx: Context, neg: bool) -> bool:
        return self.value

    def describe(self) -> str:
        return self.text


class Authenticated(Node):
    """True for any signed-in identity. Known even for anonymous requests (it is false)."""

    __slots__ = ("text",)

    def __init__(self, text: str = "authenticated_user") -> None:
        self.text = text

    def test(self, ctx: Context, neg: bool) -> bool:
        return ctx.identity is not None

    def describe(self) -> str:
        return self.text


# ---------------------------------------------------------------- string criteria

StringCheck = tuple[str, Callable[[str], bool], str, "str | frozenset[str]"]
"""(matcher, predicate, text for reasons, configured value)"""
Subject = Callable[[Context], str | None]


def string_check(op: str, value: str | frozenset[str]) -> StringCheck:
    """One compiled string matcher operation."""
    if isinstance(value, frozenset):
        shown = _short_list(value)
        if op == "in":
            return (op, value.__contains__, f"in {shown}", value)
        if op == "not_in":
            return (op, lambda s: s not in value, f"not_in {shown}", value)
        raise ValueError(op)
    if op == "is":
        return (op, value.__eq__, f"is {value}", value)
    if op == "contains":
        return (op, lambda s: value in s, f"contains {value}", value)
    if op == "starts_with":
        return (op, lambda s: s.startswith(value), f"starts_with {value}", value)
    if op == "ends_with":
        return (op, lambda s: s.endswith(value), f"ends_with {value}", value)
    raise ValueError(op)


class StringCriterion(Node):
    """A string subject (email, path, ...) against one or more matchers, all of which must
    hold (as in Pomerium when one matcher object has several keys)."""

    __slots__ = ("checks", "name", "subject")

    def __init__(self, name: str, subject: Subject, checks: tuple[StringCheck, ...]) -> None:
        self.name = name
        self.subject = subject
        self.checks = checks

    def test(self, ctx: Context, neg: bool) -> bool:
        value = self.subject(ctx)
        if value is None:
            return ctx.unknown(neg)
        return all(check[1](value) for check in self.checks)

    def explain(self, ctx: Context) -> str:
        value = self.subject(ctx)
        if len(self.checks) == 1 and self.checks[0][0] == "in":
            return f"{self.name} is {value} ({self.name} {self.checks[0][2]})"
        return self.describe()

    def describe(self) -> str:
        return f"{self.name} " + " and ".join(check[2] for check in self.checks)


class StringSet(Node):
    """Many ``is``/``in`` criteria on one subject inside an ``or``/``not``, merged into one
    dict lookup. ``index`` maps each value to the position of the first criterion naming it,
    so reasons still point at the criterion as written."""

    __slots__ = ("index", "name", "subject")

    def __init__(self, name: str, subject: Subject, index: Mapping[str, int]) -> None:
        self.name = name
        self.subject = subject
        self.index = dict(index)

    def test(self, ctx: Context, neg: bool) -> bool:
        value = self.subject(ctx)
        if value is None:
            return ctx.unknown(neg)
        return value in self.index

    def match_index(self, ctx: Context) -> int:
        value = self.subject(ctx)
        assert value is not None
        return self.index[value]

    def explain(self, ctx: Context) -> str:
        return f"{self.name} is {self.subject(ctx)}"

    def describe(self) -> str:
        if len(self.index) == 1:
            return f"{self.name} is {next(iter(self.index))}"
        return f"{self.name} in {_short_list(self.index)}"


# ---------------------------------------------------------------- list criteria

ListSubject = Callable[[Context], frozenset[Any] | None]
ListCheck = tuple[str, Any, str]


class ListCriterion(Node):
    """A set-valued subject (groups, a claim) against ``has``/``is``/``exclude`` matchers.

    ``is`` means the list holds exactly that one value, as in Pomerium.
    """

    __slots__ = ("checks", "name", "subject")

    def __init__(self, name: str, subject: ListSubject, checks: tuple[ListCheck, ...]) -> None:
        self.name = name
        self.subject = subject
        self.checks = checks

    def test(self, ctx: Context, neg: bool) -> bool:
        values = self.subject(ctx)
        if values is None:
            return ctx.unknown(neg)
        for op, key, _ in self.checks:
            if op == "has":
                if key not in values:
                    return False
            elif op == "is":
                if len(values) != 1 or key not in values:
                    return False
            elif key in values:  # exclude
                return False
        return True

    def describe(self) -> str:
        return f"{self.name} " + " and ".join(f"{op} {text}" for op, _, text in self.checks)


class GroupSet(Node):
    """Many ``groups has X`` criteria inside an ``or``/``not``, merged into one lookup."""

    __slots__ = ("index", "names")

    def __init__(self, index: Mapping[str, int]) -> None:
        self.index = dict(index)
        # Position -> group, so a reason names the match without scanning every group.
        self.names = {i: g for g, i in reversed(self.index.items())}

    def _first(self, groups: frozenset[str]) -> int | None:
        index = self.index
        if len(groups) <= len(index):
            hits = [index[g] for g in groups if g in index]
        else:
            hits = [i for g, i in index.items() if g in groups]
        return min(hits) if hits else None

    def test(self, ctx: Context, neg: bool) -> bool:
        groups = ctx.groups()
        if groups is None:
            return ctx.unknown(neg)
        index = self.index
        if len(groups) <= len(index):
            return any(g in index for g in groups)
        return any(g in groups for g in index)

    def match_index(self, ctx: Context) -> int:
        groups = ctx.groups()
        assert groups is not None
        found = self._first(groups)
        assert found is not None
        return found

    def explain(self, ctx: Context) -> str:
        return f"groups has {self.names[self.match_index(ctx)]}"

    def describe(self) -> str:
        if len(self.index) == 1:
            return f"groups has {next(iter(self.index))}"
        return f"groups has any of {_short_list(self.index)}"


def claim_values(claims: Mapping[str, Any], path: str, segments: tuple[str, ...]) -> Any:
    """Look a claim up like Pomerium: the literal name first, then as a nested path split on
    ``/`` and ``.``. Returns ``None`` when absent."""
    if path in claims:
        return claims[path]
    current: Any = claims
    for seg in segments:
        if not isinstance(current, Mapping) or seg not in current:
            return None
        current = current[seg]
    return current


def claim_subject(path: str, segments: tuple[str, ...]) -> ListSubject:
    def subject(ctx: Context) -> frozenset[ClaimKey] | None:
        ident = ctx.identity
        if ident is None:
            return None
        raw = claim_values(ident.claims, path, segments)
        items = raw if isinstance(raw, list | tuple) else (raw,)
        return frozenset(k for k in map(claim_key, items) if k is not None)

    return subject


# ---------------------------------------------------------------- request criteria


class SourceIP(Node):
    __slots__ = ("networks",)

    def __init__(self, networks: tuple[IPNetwork, ...]) -> None:
        self.networks = networks

    def test(self, ctx: Context, neg: bool) -> bool:
        ip = ctx.ip()
        if ip is None:
            return ctx.unknown(neg)
        return any(ip in net for net in self.networks)

    def explain(self, ctx: Context) -> str:
        ip = ctx.ip()
        net = next(n for n in self.networks if ip in n)
        return f"source_ip {ip} in {net}"

    def describe(self) -> str:
        return "source_ip in " + _short_list(str(n) for n in self.networks)


_MICROSECOND: Final = timedelta(microseconds=1)
_SECOND: Final = timedelta(seconds=1)
_DAY: Final = timedelta(days=1)
_MIDNIGHT: Final = time()


def _utc_or_none(moment: datetime | None, shift: timedelta) -> datetime | None:
    """``moment + shift`` in UTC; ``None`` when absent or outside what datetime can hold, as
    the clock can then never reach it."""
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC) + shift
    except OverflowError:
        return None


class DateRange(Node):
    """``after`` and ``before`` are both exclusive, as Pomerium documents them."""

    __slots__ = ("_after_edge", "_before_edge", "after", "before")

    def __init__(self, after: datetime | None, before: datetime | None) -> None:
        self.after = after
        self.before = before
        # The first instants with a new value. ``after`` itself is still outside the range
        # (exclusive), so the value turns true one microsecond (datetime's resolution) later;
        # at ``before`` it is already false.
        self._after_edge = _utc_or_none(after, _MICROSECOND)
        self._before_edge = _utc_or_none(before, timedelta(0))

    def test(self, ctx: Context, neg: bool) -> bool:
        now = ctx.facts.now
        after = self.after
        if after is not None and now <= after:
            if self._after_edge is not None:
                ctx.expires(self._after_edge)
            return False
        before = self.before
        if before is None:
            return True
        if now < before:
            if self._before_edge is not None:
                ctx.expires(self._before_edge)
            return True
        return False

    def describe(self) -> str:
        parts = []
        if self.after is not None:
            parts.append(f"after {self.after.isoformat()}")
        if self.before is not None:
            parts.append(f"before {self.before.isoformat()}")
        return "date " + " and ".join(parts)


def _offset_change(zone: tzinfo, lo: datetime, hi: datetime, offset: timedelta) -> datetime:
    """The first instant in ``(lo, hi]`` whose UTC offset in ``zone`` is not ``offset``, or
    an instant shortly before it; ``lo`` has ``offset`` and ``hi`` does not (both UTC)."""
    while hi - lo > _SECOND:
        mid = lo + (hi - lo) // 2
        if mid.astimezone(zone).utcoffset() == offset:
            lo = mid
        else:
            hi = mid
    # tzdata changes offsets on whole seconds, so the change is normally the one whole second
    # in (lo, hi]; confirm it, else fall back to the earliest instant the change can be at.
    second = lo.replace(microsecond=0) + _SECOND
    if (
        second <= hi
        and second.astimezone(zone).utcoffset() != offset
        and (second - _MICROSECOND).astimezone(zone).utcoffset() == offset
    ):
        return second
    return lo + _MICROSECOND


def wall_clock_edge(zone: tzinfo, local: datetime, at: time, tomorrow: bool) -> datetime | None:
    """The UTC instant at which the clock in ``zone``, showing ``local`` now, next shows ``at``
    (today's, which must be ahead, or tomorrow's); ``None`` when that is beyond what datetime
    can hold. Shared by the criteria that read a wall clock.

    The answer is never later than the real moment, but may be earlier. The clock only runs
    forward and steadily between changes of the zone's UTC offset, so with the offset of now
    the clock shows ``at`` at ``edge`` below. At a change the clock jumps: forward over times
    that never show (02:30 when 02:00 becomes 03:00, which zoneinfo would place *after* the
    jump, an hour late) or back over times already passed. So when the offset at ``edge`` is
    not the one of now, the answer is the change itself. That assumes at most one change
    between now and ``edge``, at most a day ahead: tzdata (checked 1970-2087) never has two
    changes of one zone within 6 days.
    """
    offset = local.utcoffset()
    assert offset is not None  # astimezone always gives an aware time
    try:
        day = local.date() + _DAY if tomorrow else local.date()
        edge = datetime.combine(day, at, UTC) - offset
        if edge.astimezone(zone).utcoffset() == offset:
            return edge
        return _offset_change(zone, local.astimezone(UTC), edge, offset)
    except OverflowError:
        return None


DAY_NAMES: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class DayOfWeek(Node):
    __slots__ = ("days", "text", "varies", "zone")

    def __init__(self, days: frozenset[int], zone: tzinfo, text: str) -> None:
        self.days = days
        self.zone = zone
        self.text = text
        self.varies = not days.isdisjoint(range(7)) and not days.issuperset(range(7))

    def test(self, ctx: Context, neg: bool) -> bool:
        local = ctx.facts.now.astimezone(self.zone)
        if self.varies:
            # Only up to the next midnight, even when the next days give the same answer:
            # looking further ahead would need an offset check per day (see wall_clock_edge),
            # and renewing a cached decision once a day costs nothing.
            edge = wall_clock_edge(self.zone, local, _MIDNIGHT, True)
            if edge is not None:
                ctx.expires(edge)
        return local.weekday() in self.days

    def describe(self) -> str:
        return f"day_of_week {self.text}"


class TimeOfDay(Node):
    """Wall-clock time in ``zone``; ``after`` and ``before`` are exclusive."""

    __slots__ = ("after", "before", "edges", "zone", "zone_name")

    def __init__(
        self, zone: tzinfo, zone_name: str, after: time | None, before: time | None
    ) -> None:
        self.zone = zone
        self.zone_name = zone_name
        self.after = after
        self.before = before
        # Wall times at which the value can change. As with dates, ``after`` is exclusive,
        # so the value turns true a microsecond later (never, after the day's last one).
        edges = []
        if after is not None and after != time.max:
            edges.append((datetime.combine(date.min, after) + _MICROSECOND).time())
        if before is not None:
            edges.append(before)
        if (after is None) != (before is None):
            # With one bound the value at 23:59:59.999999 is not the one at 00:00.
            edges.append(_MIDNIGHT)
        self.edges = tuple(edges)

    def test(self, ctx: Context, neg: bool) -> bool:
        local_now = ctx.facts.now.astimezone(self.zone)
        local = local_now.time().replace(tzinfo=None)
        # The edge the clock reaches first: today's if still ahead, else tomorrow's. Between
        # offset changes the clock only runs forward; wall_clock_edge covers the changes.
        today: time | None = None
        tomorrow: time | None = None
        for edge in self.edges:
            if edge > local:
                if today is None or edge < today:
                    today = edge
            elif tomorrow is None or edge < tomorrow:
                tomorrow = edge
        until = None
        if today is not None:
            until = wall_clock_edge(self.zone, local_now, today, False)
        elif tomorrow is not None:
            until = wall_clock_edge(self.zone, local_now, tomorrow, True)
        if until is not None:
            ctx.expires(until)
        return (self.after is None or local > self.after) and (
            self.before is None or local < self.before
        )

    def describe(self) -> str:
        parts = [f"timezone {self.zone_name}"]
        if self.after is not None:
            parts.append(f"after {self.after.isoformat()}")
        if self.before is not None:
            parts.append(f"before {self.before.isoformat()}")
        return "time_of_day " + " ".join(parts)


# ---------------------------------------------------------------- operators

Child = tuple[int | None, Node]  # position as written (None: a merged set knows its own)


def _position(child: Child, ctx: Context) -> int:
    pos, node = child
    if pos is not None:
        return pos
    assert isinstance(node, StringSet | GroupSet)
    return node.match_index(ctx)


class And(Node):
    __slots__ = ("children",)

    def __init__(self, children: tuple[Node, ...]) -> None:
        self.children = children

    def test(self, ctx: Context, neg: bool) -> bool:
        for child in self.children:  # noqa: SIM110 - see Or.test
            if not child.test(ctx, neg):
                return False
        return True

    def explain(self, ctx: Context) -> str:
        return "and matched (" + "; ".join(c.explain(ctx) for c in self.children) + ")"

    def describe(self) -> str:
        return "and(" + "; ".join(c.describe() for c in self.children) + ")"


class Or(Node):
    __slots__ = ("children",)

    def __init__(self, children: tuple[Child, ...]) -> None:
        self.children = children

    def test(self, ctx: Context, neg: bool) -> bool:
        # A plain loop: a generator inside any() costs a frame per call on the hot path.
        for _, child in self.children:  # noqa: SIM110
            if child.test(ctx, neg):
                return True
        return False

    def explain(self, ctx: Context) -> str:
        best: tuple[int, Node] | None = None
        for child in self.children:
            if child[1].test(ctx, False):
                position = _position(child, ctx)
                if best is None or position < best[0]:
                    best = (position, child[1])
        assert best is not None
        return f"or[{best[0]}] {best[1].explain(ctx)}"

    def describe(self) -> str:
        return "or(" + "; ".join(c.describe() for _, c in self.children) + ")"


class Not(Node):
    """Pomerium's ``not``: true when *none* of the children is true (not A and not B)."""

    __slots__ = ("children",)

    def __init__(self, children: tuple[Child, ...]) -> None:
        self.children = children

    def test(self, ctx: Context, neg: bool) -> bool:
        return not any(c.test(ctx, not neg) for _, c in self.children)

    def explain(self, ctx: Context) -> str:
        return "not matched (none of: " + "; ".join(c.describe() for _, c in self.children) + ")"

    def describe(self) -> str:
        return "not(" + "; ".join(c.describe() for _, c in self.children) + ")"


class Nor(Node):
    """Pomerium's ``nor``: true when *not all* of the children are true (not A or not B)."""

    __slots__ = ("children",)

    def __init__(self, children: tuple[Node, ...]) -> None:
        self.children = children

    def test(self, ctx: Context, neg: bool) -> bool:
        return not all(c.test(ctx, not neg) for c in self.children)

    def explain(self, ctx: Context) -> str:
        for position, child in enumerate(self.children):
            if not child.test(ctx, True):
                return f"nor[{position}] was false ({child.describe()})"
        raise AssertionError("explain called on a nor that did not match")

    def describe(self) -> str:
        return "nor(" + "; ".join(c.describe() for c in self.children) + ")"


# ---------------------------------------------------------------- rules and policy


class Rule:
    """One allow or deny action. ``operators`` are alternatives (Pomerium ORs several
    operators written under one action); ``label`` starts the reason text."""

    __slots__ = ("action", "label", "operators")

    def __init__(
        self, action: Literal["allow", "deny"], label: str, operators: tuple[Node, ...]
    ) -> None:
        self.action = action
        self.label = label
        self.operators = operators

    def first_match(self, ctx: Context) -> Node | None:
        for op in self.operators:
            if op.test(ctx, False):
                return op
        return None


class Policy:
    """A compiled route policy. Deny wins; access needs a matching allow rule and no
    matching deny rule; with no matching allow rule the answer is deny."""

    __slots__ = ("allow_rules", "allow_unverified_email", "deny_rules")

    def __init__(self, rules: Iterable[Rule], *, allow_unverified_email: bool = False) -> None:
        rules = tuple(rules)
        self.allow_rules = tuple(r for r in rules if r.action == "allow")
        self.deny_rules = tuple(r for r in rules if r.action == "deny")
        self.allow_unverified_email = allow_unverified_email

    def decide(self, facts: RequestFacts, identity: Identity | None) -> Decision:
        """Decide one request. Pure; never raises for any identity or facts.

        Time criteria note when they may change on ``ctx`` from inside ``test``, so the tests
        that ``explain`` runs to pick a reason (``or`` tries every child) count too; their
        own ``explain`` text is fixed and does not depend on the clock.
        """
        ctx = Context(facts, identity, self.allow_unverified_email)
        for rule in self.deny_rules:
            op = rule.first_match(ctx)
            if op is not None:
                reason = f"deny: {rule.label}{op.explain(ctx)}"
                return Decision(False, reason, ctx.valid_until)
        ctx.strict = True
        for rule in self.allow_rules:
            op = rule.first_match(ctx)
            if op is not None:
                reason = f"allow: {rule.label}{op.explain(ctx)}"
                return Decision(True, reason, ctx.valid_until)
        if not self.allow_rules:
            return Decision(False, "deny: route has no allow rule", ctx.valid_until)
        reason = "deny: no allow rule matched" + _hint(identity, ctx)
        return Decision(False, reason, ctx.valid_until)


def _hint(identity: Identity | None, ctx: Context) -> str:
    if identity is None:
        return " (anonymous)"
    if identity.email and identity.email_verified is False and not ctx.allow_unverified:
        return " (email not verified)"
    return ""
