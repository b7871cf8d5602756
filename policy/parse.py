"""Compiling a route's policy settings into a :class:`policy.engine.Policy`.

The input is the route mapping as loaded from the configuration file. Only the ``policy`` key
(Pomerium Policy Language: one rule or a list of rules) and the shortcut keys are read; other
route keys belong to the settings layer. Every mistake is reported as a :class:`PolicyError`
whose ``loc`` is the key path inside the route mapping; nothing is guessed or skipped.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, tzinfo
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policy.engine import (
    DAY_NAMES,
    And,
    Authenticated,
    Child,
    ClaimKey,
    Const,
    Context,
    DateRange,
    DayOfWeek,
    GroupSet,
    IPNetwork,
    ListCriterion,
    Node,
    Nor,
    Not,
    Or,
    Policy,
    Rule,
    SourceIP,
    StringCheck,
    StringCriterion,
    StringSet,
    Subject,
    TimeOfDay,
    ascii_lower,
    claim_key,
    claim_subject,
    format_claim_value,
    string_check,
)
from policy.paths import UnsafePathError, normalize_path

__all__ = ["SHORTCUT_KEYS", "Loc", "PolicyError", "compile_route_policy", "format_loc"]

Loc = tuple[str | int, ...]

SHORTCUT_KEYS: Final = (
    "allowed_users",
    "allowed_domains",
    "allowed_idp_claims",
    "allow_public_unauthenticated_access",
    "allow_any_authenticated_user",
    "allow_unverified_email",
)

OPERATORS: Final = ("and", "or", "not", "nor")
STRING_MATCHERS: Final = ("is", "contains", "starts_with", "ends_with", "in", "not_in")
LIST_MATCHERS: Final = ("has", "is", "exclude")
_STANDARD_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def format_loc(loc: Loc) -> str:
    """``("policy", 0, "allow", "or", 1, "emial")`` -> ``policy[0].allow.or[1].emial``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "<route>"


class PolicyError(ValueError):
    """A route's policy settings are invalid.

    ``loc`` is the key path inside the route mapping, ``message`` says what is wrong.
    """

    def __init__(self, loc: Loc, message: str) -> None:
        self.loc: Loc = tuple(loc)
        self.message: str = message
        super().__init__(f"{format_loc(self.loc)}: {message}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _want_str(loc: Loc, value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(loc, f"{what} must be a string, got {_type_name(value)}")
    if value == "":
        raise PolicyError(loc, f"{what} must not be empty")
    return value


def _want_list(loc: Loc, value: Any, what: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise PolicyError(loc, f"{what} must be a list, got {_type_name(value)}")
    if not value:
        raise PolicyError(loc, f"{what} must not be empty")
    return list(value)


def _want_mapping(loc: Loc, value: Any, what: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(loc, f"{what} must be a mapping, got {_type_name(value)}")
    return value


def _want_true(loc: Loc, value: Any, name: str) -> None:
    # Pomerium accepts any value here; `authenticated_user: false` would then still match
    # every user, so only `true` is accepted.
    if value is not True:
        raise PolicyError(loc, f"{name} takes the value true (got {value!r})")


# ---------------------------------------------------------------- string matchers


def _string_checks(
    loc: Loc,
    value: Any,
    *,
    normalize: Callable[[Loc, str, str], str],
) -> tuple[StringCheck, ...]:
    """Parse a string matcher: a bare string (``is``) or a mapping of matcher -> value."""
    if isinstance(value, str):
        return (string_check("is", normalize(loc, "is", _want_str(loc, value, "value"))),)
    if not isinstance(value, Mapping):
        raise PolicyError(
            loc,
            f"expected a string or a mapping of string matchers ({', '.join(STRING_MATCHERS)}),"
            f" got {_type_name(value)}",
        )
    if not value:
        raise PolicyError(loc, "string matcher must not be empty")
    checks: list[StringCheck] = []
    for op, arg in value.items():
        op_loc = (*loc, str(op))
        if op not in STRING_MATCHERS:
            raise PolicyError(
                op_loc,
                f"unknown string matcher {op!r} (expected one of "
                f"{', '.join(STRING_MATCHERS)}){_suggest(str(op), STRING_MATCHERS)}",
            )
        if op in ("in", "not_in"):
            items = _want_list(op_loc, arg, f"{op}")
            values = frozenset(
                normalize((*op_loc, i), op, _want_str((*op_loc, i), item, f"{op} entry"))
                for i, item in enumerate(items)
            )
            checks.append(string_check(op, values))
        else:
            checks.append(string_check(op, normalize(op_loc, op, _want_str(op_loc, arg, op))))
    return tuple(checks)


def _plain(loc: Loc, op: str, value: str) -> str:
    return value


def _lower(loc: Loc, op: str, value: str) -> str:
    return ascii_lower(value)


def _email_value(loc: Loc, op: str, value: str) -> str:
    if op in ("is", "in", "not_in") and "@" not in value:
        raise PolicyError(loc, f"{value!r} is not an email address")
    return ascii_lower(value)


def _domain_value(loc: Loc, op: str, value: str) -> str:
    if op in ("is", "in", "not_in") and "@" in value:
        raise PolicyError(loc, f"{value!r}: a domain is written without '@'")
    return ascii_lower(value)


def _method_value(loc: Loc, op: str, value: str) -> str:
    if op in ("is", "in", "not_in"):
        if not _TOKEN.fullmatch(value):
            raise PolicyError(loc, f"{value!r} is not an HTTP method")
        if value.upper() in _STANDARD_METHODS and value != value.upper():
            raise PolicyError(
                loc, f"HTTP methods are case-sensitive; write {value.upper()!r}, not {value!r}"
            )
    return value


def _path_value(loc: Loc, op: str, value: str) -> str:
    # Requests are compared in normalized form, so a value that is not normalized could
    # never match (e.g. "/%61dmin" or "/admin/./x"): refuse it instead of silently failing.
    if op in ("is", "in", "not_in", "starts_with"):
        if not value.startswith("/"):
            raise PolicyError(loc, f"path {value!r} must start with '/'")
        try:
            canonical = normalize_path(value)
        except UnsafePathError as exc:
            raise PolicyError(loc, f"path {value!r} is not valid: {exc}") from None
        if canonical != value:
            raise PolicyError(loc, f"path {value!r} is not normalized; write {canonical!r}")
    return value


_STRING_SUBJECTS: Final[dict[str, tuple[Subject, Callable[[Loc, str, str], str]]]] = {
    "email": (Context.email, _email_value),
    "domain": (Context.domain, _domain_value),
    "user": (Context.user, _plain),
    "http_method": (Context.method, _method_value),
    "http_path": (Context.path, _path_value),
    "ssh_username": (Context.ssh_username, _plain),
}

# Subjects whose plain is/in criteria are merged into one lookup inside or/not.
_SET_SUBJECTS: Final = ("email", "domain", "user")


# ---------------------------------------------------------------- list matchers


def _list_checks(
    loc: Loc, value: Any, convert: Callable[[Loc, Any], tuple[Any, str]]
) -> tuple[tuple[str, Any, str], ...]:
    """Parse a list matcher: a bare value (``has``) or a mapping of has/is/exclude."""
    if not isinstance(value, Mapping):
        key, text = convert(loc, value)
        return (("has", key, text),)
    if not value:
        raise PolicyError(loc, "list matcher must not be empty")
    checks = []
    for op, arg in value.items():
        op_loc = (*loc, str(op))
        if op not in LIST_MATCHERS:
            raise PolicyError(
                op_loc,
                f"unknown list matcher {op!r} (expected one of {', '.join(LIST_MATCHERS)})"
                f"{_suggest(str(op), LIST_MATCHERS)}",
            )
        key, text = convert(op_loc, arg)
        checks.append((str(op), key, text))
    return tuple(checks)


def _group_value(loc: Loc, value: Any) -> tuple[str, str]:
    text = _want_str(loc, value, "group")
    return text, text


def _claim_value(loc: Loc, value: Any) -> tuple[ClaimKey, str]:
    key = claim_key(value)
    if key is None or (isinstance(value, float) and value != value):
        raise PolicyError(
            loc, f"claim value must be a string, number or boolean, got {_type_name(value)}"
        )
    return key, format_claim_value(key)


# ---------------------------------------------------------------- other criteria


def _source_ip(loc: Loc, value: Any) -> Node:
    items: list[tuple[Loc, Any]]
    if isinstance(value, str):
        items = [(loc, value)]
    else:
        items = [((*loc, i), v) for i, v in enumerate(_want_list(loc, value, "source_ip"))]
    networks: list[IPNetwork] = []
    for item_loc, item in items:
        text = _want_str(item_loc, item, "source_ip")
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            hint = ""
            with contextlib.suppress(ValueError):
                hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
            raise PolicyError(
                item_loc, f"{text!r} is not an IP address or CIDR ({exc}){hint}"
            ) from None
    return SourceIP(tuple(networks))


def _zone(loc: Loc, value: Any) -> tzinfo:
    name = _want_str(loc, value, "timezone")
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PolicyError(
            loc, f"unknown timezone {name!r} (use an IANA name like Europe/Paris)"
        ) from None


def _date_value(loc: Loc, value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise PolicyError(loc, f"{value!r} is not an ISO-8601 date") from None
    else:
        raise PolicyError(loc, f"expected an ISO-8601 date, got {_type_name(value)}")
    # A date without an offset is read as UTC, never as the host's local time.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _bounds(loc: Loc, value: Any, what: str, allowed: Sequence[str]) -> Mapping[Any, Any]:
    spec = _want_mapping(loc, value, what)
    for key in spec:
        if key not in allowed:
            raise PolicyError(
                (*loc, str(key)),
                f"unknown {what} key {key!r} (expected {', '.join(allowed)})"
                f"{_suggest(str(key), allowed)}",
            )
    if "after" not in spec and "before" not in spec:
        raise PolicyError(loc, f"{what} needs after and/or before")
    return spec


def _date(loc: Loc, value: Any) -> Node:
    spec = _bounds(loc, value, "date", ("after", "before"))
    after = _date_value((*loc, "after"), spec["after"]) if "after" in spec else None
    before = _date_value((*loc, "before"), spec["before"]) if "before" in spec else None
    if after is not None and before is not None and after >= before:
        raise PolicyError(loc, "date after must be earlier than before")
    return DateRange(after, before)


_DAY_LOOKUP: Final = {
    **{name: i for i, name in enumerate(DAY_NAMES)},
    **{
        name: i
        for i, name in enumerate(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        )
    },
}


def _days(loc: Loc, value: Any) -> frozenset[int]:
    text = _want_str(loc, value, "day_of_week")
    spec = text.strip().lower()
    if spec == "*":
        return frozenset(range(7))
    days: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        ends = [p.strip() for p in part.split("-")]
        if len(ends) > 2 or any(e not in _DAY_LOOKUP for e in ends):
            raise PolicyError(
                loc,
                f"invalid day_of_week {text!r}: use '*', day names (mon or monday), "
                "comma lists (mon,wed) or ranges (mon-fri)",
            )
        first, last = _DAY_LOOKUP[ends[0]], _DAY_LOOKUP[ends[-1]]
        if first > last:
            raise PolicyError(
                loc,
                f"day range {part!r} runs backwards; weeks start on monday, so write e.g. "
                "'fri-sun,mon'",
            )
        days.update(range(first, last + 1))
    return frozenset(days)


def _day_of_week(loc: Loc, value: Any) -> Node:
    if isinstance(value, Mapping):
        spec = value
        for key in spec:
            if key not in ("days", "timezone"):
                raise PolicyError((*loc, str(key)), f"unknown day_of_week key {key!r}")
        if "days" not in spec:
            raise PolicyError(loc, "day_of_week needs days")
        zone = _zone((*loc, "timezone"), spec["timezone"]) if "timezone" in spec else UTC
        days = _days((*loc, "days"), spec["days"])
        return DayOfWeek(days, zone, f"{spec['days']} ({zone})")
    return DayOfWeek(_days(loc, value), UTC, f"{value} (UTC)")


_CLOCK: Final = re.compile(r"(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?\s*(?P<ampm>[AaPp][Mm])?")


def _clock(loc: Loc, value: Any) -> time:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 2:20:00 as the sexagesimal number 8400.
        raise PolicyError(loc, "write times as quoted strings, e.g. '2:20:00' or '4:30PM'")
    text = _want_str(loc, value, "time")
    match = _CLOCK.fullmatch(text.strip())
    if match is None:
        raise PolicyError(loc, f"invalid time {text!r} (use 14:30, 14:30:00 or 2:30PM)")
    hour, minute = int(match["h"]), int(match["m"])
    second = int(match["s"] or 0)
    if match["ampm"]:
        if not 1 <= hour <= 12:
            raise PolicyError(loc, f"invalid time {text!r}: 12-hour clock hours are 1-12")
        hour = hour % 12 + (12 if match["ampm"].lower() == "pm" else 0)
    if hour > 23 or minute > 59 or second > 59:
        raise PolicyError(loc, f"invalid time {text!r}")
    return time(hour, minute, second)


def _time_of_day(loc: Loc, value: Any) -> Node:
    spec = _bounds(loc, value, "time_of_day", ("timezone", "after", "before"))
    if "timezone" not in spec:
        raise PolicyError(loc, "time_of_day needs a timezone (e.g. UTC or Europe/Paris)")
    zone = _zone((*loc, "timezone"), spec["timezone"])
    after = _clock((*loc, "after"), spec["after"]) if "after" in spec else None
    before = _clock((*loc, "before"), spec["before"]) if "before" in spec else None
    if after is not None and before is not None and after >= before:
        raise PolicyError(
            loc,
            "time_of_day after must be earlier than before (both must hold); for a window "
            "across midnight use an 'or' of two time_of_day criteria",
        )
    return TimeOfDay(zone, str(spec["timezone"]), after, before)


# ---------------------------------------------------------------- criteria and operators

CRITERIA: Final = (
    "accept",
    "reject",
    "authenticated_user",
    "email",
    "domain",
    "user",
    "groups",
    "claim/<name>",
    "http_method",
    "http_path",
    "ssh_username",
    "source_ip",
    "date",
    "day_of_week",
    "time_of_day",
)


def _criterion(loc: Loc, name: str, value: Any) -> Node:
    if name in _STRING_SUBJECTS:
        subject, normalize = _STRING_SUBJECTS[name]
        return StringCriterion(name, subject, _string_checks(loc, value, normalize=normalize))
    if name in ("accept", "reject", "authenticated_user"):
        _want_true(loc, value, name)
        if name == "authenticated_user":
            return Authenticated()
        return Const(name == "accept", name)
    if name == "groups":
        return ListCriterion("groups", Context.groups, _list_checks(loc, value, _group_value))
    if name.startswith("claim/"):
        path = name[len("claim/") :]
        # Empty segments are allowed: a literal claim name such as
        # "https://example.com/tenant" is looked up first, the split form only as fallback.
        segments = tuple(re.split(r"[/.]", path))
        if not path:
            raise PolicyError(loc, f"invalid claim name {name!r}")
        return ListCriterion(
            name, claim_subject(path, segments), _list_checks(loc, value, _claim_value)
        )
    if name == "source_ip":
        return _source_ip(loc, value)
    if name == "date":
        return _date(loc, value)
    if name == "day_of_week":
        return _day_of_week(loc, value)
    if name == "time_of_day":
        return _time_of_day(loc, value)
    if name == "claim":
        raise PolicyError(loc, "claim needs a name: claim/<name>, e.g. claim/groups")
    choices = [*(c for c in CRITERIA if c != "claim/<name>"), *OPERATORS]
    raise PolicyError(loc, f"unknown criterion {name!r}{_suggest(name, choices)}")


def _item(loc: Loc, item: Any) -> Node:
    entry = _want_mapping(loc, item, "a criterion")
    if len(entry) != 1:
        keys = ", ".join(repr(k) for k in entry) or "nothing"
        raise PolicyError(
            loc, f"each list item holds exactly one criterion or operator (found {keys})"
        )
    ((name, value),) = entry.items()
    if not isinstance(name, str):
        raise PolicyError(loc, f"criterion name must be a string, got {_type_name(name)}")
    item_loc = (*loc, name)
    if name in OPERATORS:
        return _operator(item_loc, name, value)
    return _criterion(item_loc, name, value)


def _merge_sets(children: list[tuple[int, Node]]) -> tuple[Child, ...]:
    """Merge plain email/domain/user ``is``/``in`` and ``groups has`` children of an
    or/not into hash lookups; the result is independent of how many entries are listed."""
    sets: dict[str, dict[str, int]] = {}
    out: list[Child] = []
    placeholder: dict[str, int] = {}
    for position, node in children:
        key: str | None = None
        values: list[str] = []
        if (
            isinstance(node, StringCriterion)
            and node.name in _SET_SUBJECTS
            and len(node.checks) == 1
        ):
            op, _, _, configured = node.checks[0]
            if op == "is" and isinstance(configured, str):
                key, values = node.name, [configured]
            elif op == "in" and isinstance(configured, frozenset):
                key, values = node.name, sorted(configured)
        elif (
            isinstance(node, ListCriterion)
            and node.name == "groups"
            and len(node.checks) == 1
            and node.checks[0][0] == "has"
        ):
            key, values = "groups", [node.checks[0][1]]
        if key is None:
            out.append((position, node))
            continue
        index = sets.setdefault(key, {})
        for value in values:
            index.setdefault(value, position)
        if key not in placeholder:
            placeholder[key] = len(out)
            out.append((None, Const(False, "")))  # replaced below, keeps first position
    for key, slot in placeholder.items():
        if key == "groups":
            out[slot] = (None, GroupSet(sets[key]))
        else:
            subject = _STRING_SUBJECTS[key][0]
            out[slot] = (None, StringSet(key, subject, sets[key]))
    return tuple(out)


def _operator(loc: Loc, op: str, value: Any) -> Node:
    items = _want_list(loc, value, f"{op!r} operator")
    children = [(i, _item((*loc, i), item)) for i, item in enumerate(items)]
    if op == "and":
        return And(tuple(node for _, node in children))
    if op == "nor":
        return Nor(tuple(node for _, node in children))
    merged = _merge_sets(children)
    return Or(merged) if op == "or" else Not(merged)


def _action(loc: Loc, value: Any) -> tuple[Node, ...]:
    spec = _want_mapping(loc, value, "an action")
    if not spec:
        raise PolicyError(loc, f"needs one of the operators {', '.join(OPERATORS)}")
    operators = []
    for op, body in spec.items():
        if op not in OPERATORS:
            raise PolicyError(
                (*loc, str(op)),
                f"unknown operator {op!r} (expected {', '.join(OPERATORS)})"
                f"{_suggest(str(op), OPERATORS)}",
            )
        operators.append(_operator((*loc, op), op, body))
    return tuple(operators)


def _rule(loc: Loc, index: int, value: Any) -> list[Rule]:
    spec = _want_mapping(loc, value, "a rule")
    if not spec:
        raise PolicyError(loc, "a rule needs allow and/or deny")
    rules = []
    for action, body in spec.items():
        if action not in ("allow", "deny"):
            raise PolicyError(
                (*loc, str(action)),
                f"unknown action {action!r} (expected allow or deny)"
                f"{_suggest(str(action), ('allow', 'deny'))}",
            )
        act: Literal["allow", "deny"] = "allow" if action == "allow" else "deny"
        operators = _action((*loc, action), body)
        rules.append(Rule(act, f"rule {index} {act}.", operators))
    return rules


# ---------------------------------------------------------------- shortcuts


def _flag(route: Mapping[str, Any], key: str) -> bool:
    value = route.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise PolicyError((key,), f"{key} must be true or false, got {_type_name(value)}")
    return value


def _shortcut_rules(route: Mapping[str, Any]) -> list[Rule]:
    rules: list[Rule] = []
    public = _flag(route, "allow_public_unauthenticated_access")
    any_user = _flag(route, "allow_any_authenticated_user")
    if public:
        others = [
            k for k in ("allowed_users", "allowed_domains", "allowed_idp_claims") if route.get(k)
        ] + (["allow_any_authenticated_user"] if any_user else [])
        if others:
            raise PolicyError(
                ("allow_public_unauthenticated_access",),
                f"a public route cannot also restrict access ({', '.join(others)}); remove one",
            )
        rules.append(Rule("allow", "", (Const(True, "allow_public_unauthenticated_access"),)))
    if any_user:
        rules.append(Rule("allow", "", (Authenticated("allow_any_authenticated_user"),)))

    users = route.get("allowed_users")
    if users is not None:
        index: dict[str, int] = {}
        for i, item in enumerate(_want_list(("allowed_users",), users, "allowed_users")):
            email = _email_value(
                ("allowed_users", i), "is", _want_str(("allowed_users", i), item, "entry")
            )
            index.setdefault(email, i)
        rules.append(Rule("allow", "allowed_users ", (StringSet("email", Context.email, index),)))

    domains = route.get("allowed_domains")
    if domains is not None:
        index = {}
        for i, item in enumerate(_want_list(("allowed_domains",), domains, "allowed_domains")):
            entry_loc: Loc = ("allowed_domains", i)
            entry = _want_str(entry_loc, item, "entry")
            index.setdefault(_domain_value(entry_loc, "is", entry), i)
        rules.append(
            Rule("allow", "allowed_domains ", (StringSet("domain", Context.domain, index),))
        )

    claims = route.get("allowed_idp_claims")
    if claims is not None:
        spec = _want_mapping(("allowed_idp_claims",), claims, "allowed_idp_claims")
        children: list[Child] = []
        for name, values in spec.items():
            loc: Loc = ("allowed_idp_claims", str(name))
            claim = _want_str(loc, name, "claim name")
            for i, raw in enumerate(_want_list(loc, values, f"allowed_idp_claims {claim}")):
                checks = (("has", *_claim_value((*loc, i), raw)),)
                segments = tuple(re.split(r"[/.]", claim))
                node = ListCriterion(f"claim/{claim}", claim_subject(claim, segments), checks)
                children.append((len(children), node))
        if not children:
            raise PolicyError(("allowed_idp_claims",), "allowed_idp_claims must not be empty")
        rules.append(Rule("allow", "allowed_idp_claims ", (Or(tuple(children)),)))
    return rules


def compile_route_policy(route: Mapping[str, Any]) -> Policy:
    """Compile the policy of one route mapping; raises :class:`PolicyError`.

    Rules from ``policy`` come first (numbered from 0 in reasons), then one allow rule per
    shortcut key that is set.
    """
    if not isinstance(route, Mapping):
        raise PolicyError((), f"a route must be a mapping, got {_type_name(route)}")
    allow_unverified = _flag(route, "allow_unverified_email")
    rules: list[Rule] = []
    raw = route.get("policy")
    if isinstance(raw, Mapping):
        rules.extend(_rule(("policy",), 0, raw))
    elif isinstance(raw, list | tuple):
        for i, item in enumerate(raw):
            rules.extend(_rule(("policy", i), i, item))
    elif raw is not None:
        raise PolicyError(
            ("policy",), f"policy must be a rule or a list of rules, got {_type_name(raw)}"
        )
    rules.extend(_shortcut_rules(route))
    return Policy(rules, allow_unverified_email=allow_unverified)
