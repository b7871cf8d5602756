"""Policy test tables: a list of request cases with the expected decision.

The caller parses the file (YAML or JSON) into plain data and passes it to :func:`load_cases`;
each item is a mapping::

    - method: GET
      url: https://app.example.com/admin/
      email: alice@example.com        # optional; no email/sub/groups/claims = anonymous
      email_verified: true            # optional (default: claim absent)
      sub: alice                      # optional (default: the email)
      groups: [admins]                # optional
      claims: {department: ops}       # optional
      ip: 192.0.2.10                  # optional (default 127.0.0.1)
      time: 2024-05-06T09:30:00Z      # optional (default: now); no offset = UTC
      expect: allow                   # allow | deny

:func:`run_cases` then decides every case with a callable (typically: route lookup, path
normalization and ``Policy.decide``) and reports which ones disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

from policy.model import Decision, Identity, RequestFacts
from policy.parse import Loc, PolicyError
from policy.paths import normalize_path

__all__ = ["CaseError", "CaseResult", "PolicyCase", "load_cases", "run_cases"]

_KEYS: Final = frozenset(
    {"method", "url", "email", "email_verified", "sub", "groups", "claims", "ip", "time", "expect"}
)


class CaseError(PolicyError):
    """A test case is malformed; ``loc`` is ``(case index, key, ...)``."""


@dataclass(frozen=True, slots=True)
class PolicyCase:
    """One request and the decision it should get."""

    index: int
    method: str
    url: str
    host: str
    raw_path: str
    expect_allow: bool
    ip: str
    time: datetime
    email: str | None = None
    email_verified: bool | None = None
    sub: str | None = None
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)
    anonymous: bool = True

    def identity(self) -> Identity | None:
        """The signed-in user of this case, or ``None`` for an anonymous case."""
        if self.anonymous:
            return None
        return Identity(
            sub=self.sub or self.email or "",
            email=self.email,
            email_verified=self.email_verified,
            groups=self.groups,
            claims=self.claims,
        )

    def facts(self) -> RequestFacts:
        """Request facts with the normalized path; raises ``UnsafePathError`` like the proxy
        would answer 400."""
        return RequestFacts(self.method, normalize_path(self.raw_path), self.ip, self.time)


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyCase
    decision: Decision

    @property
    def passed(self) -> bool:
        return self.decision.allow == self.case.expect_allow


def _str(loc: Loc, value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise CaseError(loc, f"{what} must be a non-empty string")
    return value


def _time(loc: Loc, value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise CaseError(loc, f"{value!r} is not an ISO-8601 time") from None
    else:
        raise CaseError(loc, "time must be an ISO-8601 string")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _case(index: int, item: Any, now: datetime) -> PolicyCase:
    loc: Loc = (index,)
    if not isinstance(item, Mapping):
        raise CaseError(loc, "each case must be a mapping")
    for key in item:
        if key not in _KEYS:
            raise CaseError((index, str(key)), f"unknown key {key!r}")
    for key in ("method", "url", "expect"):
        if key not in item:
            raise CaseError(loc, f"missing {key}")
    method = _str((index, "method"), item["method"], "method")
    url = _str((index, "url"), item["url"], "url")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc or "@" in parts.netloc:
        raise CaseError((index, "url"), "url must look like https://host[:port]/path")
    expect = item["expect"]
    if expect not in ("allow", "deny"):
        raise CaseError((index, "expect"), "expect must be allow or deny")

    email = item.get("email")
    if email is not None:
        email = _str((index, "email"), email, "email")
    verified = item.get("email_verified")
    if verified is not None and not isinstance(verified, bool):
        raise CaseError((index, "email_verified"), "email_verified must be true or false")
    sub = item.get("sub")
    if sub is not None:
        sub = _str((index, "sub"), sub, "sub")
    groups_raw = item.get("groups", [])
    if not isinstance(groups_raw, list | tuple):
        raise CaseError((index, "groups"), "groups must be a list of strings")
    groups = frozenset(_str((index, "groups", i), g, "group") for i, g in enumerate(groups_raw))
    claims = item.get("claims", {})
    if not isinstance(claims, Mapping):
        raise CaseError((index, "claims"), "claims must be a mapping")
    ip = _str((index, "ip"), item.get("ip", "127.0.0.1"), "ip")
    moment = _time((index, "time"), item["time"]) if "time" in item else now
    anonymous = not (email or sub or groups or claims)
    return PolicyCase(
        index=index,
        method=method,
        url=url,
        host=parts.netloc,
        raw_path=parts.path or "/",
        expect_allow=expect == "allow",
        ip=ip,
        time=moment,
        email=email,
        email_verified=verified,
        sub=sub,
        groups=groups,
        claims=dict(claims),
        anonymous=anonymous,
    )


def load_cases(data: Any, *, now: datetime | None = None) -> list[PolicyCase]:
    """Validate a parsed list of case mappings; raises :class:`CaseError`.

    ``now`` is used for cases without ``time`` (default: the current time).
    """
    if not isinstance(data, Sequence) or isinstance(data, str):
        raise CaseError((), "the test file must hold a list of cases")
    moment = now if now is not None else datetime.now(UTC)
    return [_case(i, item, moment) for i, item in enumerate(data)]


def run_cases(
    cases: Iterable[PolicyCase], decide: Callable[[PolicyCase], Decision]
) -> list[CaseResult]:
    """Decide every case; the results keep the input order."""
    return [CaseResult(case, decide(case)) for case in cases]
