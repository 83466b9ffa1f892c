"""Header match rules: which HTTP requests belong to which developer's intercept.

A personal intercept says "requests carrying ``x-dev: alice`` go to Alice's
laptop". The router evaluates the rules of every active intercept on every
request of a shared Service, so this module is built for that hot path: a rule
is parsed and validated once (CLI syntax or the JSON the CLI sends), keeps its
header name and value pre-encoded as bytes and its regex pre-compiled, and
``matches`` is a few byte comparisons over the parsed request headers.

Semantics, chosen for least surprise:

- all rules of an intercept must match (AND); an empty rule list matches
  nothing, so a personal intercept can never swallow a whole Service;
- a header sent several times matches if any occurrence does;
- ``~=`` is a Python regex that must match the **whole** value
  (``re.fullmatch``): ``x-dev~=alice`` does not catch ``malice``; write
  ``x-dev~=alice.*`` to mean "starts with";
- ``baggage[member]`` matches one member of the W3C ``baggage`` header
  (``key=value;props`` list members, percent-decoded, properties ignored), so
  a tracing-propagated identity reaches services deep in a call chain.

Header values are compared as bytes against the rule value encoded as UTF-8;
regexes see the value decoded as UTF-8 (undecodable bytes become surrogates,
so they never match a literal but do not break the request).

Standard library only: the in-pod router imports this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias
from urllib.parse import unquote_to_bytes

Op: TypeAlias = Literal["exact", "prefix", "regex"]
OPS: tuple[Op, ...] = ("exact", "prefix", "regex")
BAGGAGE = "baggage"

# RFC 9110 tchar: what a header name (and a W3C baggage key) may contain.
_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SYNTAX = "expected NAME=VALUE, NAME^=PREFIX or NAME~=REGEX (baggage[MEMBER]=VALUE for a baggage member)"
_BAGGAGE_SYNTAX = re.compile(r"baggage\[([^\]]*)\](\^|~)?=(.*)", re.IGNORECASE | re.DOTALL)
_OP_BY_MARK: dict[str, Op] = {"": "exact", "^": "prefix", "~": "regex"}
_MARK_BY_OP: dict[Op, str] = {op: mark for mark, op in _OP_BY_MARK.items()}


def _is_token(text: str) -> bool:
    return bool(text) and not text.strip(_TCHARS)


@dataclass(frozen=True)
class HeaderRule:
    """One condition on a request: a header (or baggage member) compared by exact value, prefix or regex."""

    header: str
    op: Op
    value: str
    baggage_member: str | None = None
    # Derived once in __post_init__ for the hot path; not part of the rule's identity.
    _name: bytes = field(default=b"", init=False, repr=False, compare=False)
    _value: bytes = field(default=b"", init=False, repr=False, compare=False)
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.header, str) or not _is_token(self.header):
            raise ValueError(f"header name {self.header!r} is not a valid HTTP header name")
        if self.op not in OPS:
            raise ValueError(f"match operator {self.op!r} is not one of {', '.join(OPS)}")
        if not isinstance(self.value, str):
            raise ValueError(f"match value for {self.header!r} must be a string, got {type(self.value).__name__}")
        header = self.header.lower()
        if self.baggage_member is not None:
            if header != BAGGAGE:
                raise ValueError(f"a baggage member rule must use the 'baggage' header, not {self.header!r}")
            if not isinstance(self.baggage_member, str) or not _is_token(self.baggage_member):
                raise ValueError(f"baggage member {self.baggage_member!r} is not a valid W3C baggage key")
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "_name", header.encode("ascii"))
        object.__setattr__(self, "_value", self.value.encode("utf-8"))
        if self.op == "regex":
            try:
                pattern = re.compile(self.value)
            except re.error as error:
                raise ValueError(f"invalid regex {self.value!r} for {self.describe_target()}: {error}") from None
            object.__setattr__(self, "_pattern", pattern)

    def describe_target(self) -> str:
        """``x-dev`` or ``baggage[user]``: what the rule looks at, for messages."""
        return self.header if self.baggage_member is None else f"{BAGGAGE}[{self.baggage_member}]"

    def __str__(self) -> str:
        """The CLI spelling, which ``parse_rule`` reads back."""
        return f"{self.describe_target()}{_MARK_BY_OP[self.op]}={self.value}"

    def to_dict(self) -> dict[str, str]:
        data = {"header": self.header, "op": self.op, "value": self.value}
        if self.baggage_member is not None:
            data["baggageMember"] = self.baggage_member
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> HeaderRule:
        """The rule ``to_dict`` wrote; ``ValueError`` naming the problem otherwise.

        Unknown keys are refused rather than ignored: a rule feature this
        agent does not understand would otherwise silently widen the match.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a header rule must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"header", "op", "value", "baggageMember"})
        if unknown:
            raise ValueError(f"header rule has unknown field(s) {', '.join(map(repr, unknown))}")
        for key in ("header", "op", "value"):
            if key not in data:
                raise ValueError(f"header rule is missing field {key!r}")
            if not isinstance(data[key], str):
                raise ValueError(f"header rule field {key!r} must be a string, got {type(data[key]).__name__}")
        op = data["op"]
        if op not in OPS:
            raise ValueError(f"header rule op {op!r} is not one of {', '.join(OPS)}")
        member = data.get("baggageMember")
        if member is not None and not isinstance(member, str):
            raise ValueError(f"header rule field 'baggageMember' must be a string, got {type(member).__name__}")
        return cls(header=str(data["header"]), op=op, value=str(data["value"]), baggage_member=member)

    def matches_value(self, value: bytes) -> bool:
        """Whether one header value (or decoded baggage member value) satisfies the rule."""
        if self.op == "exact":
            return value == self._value
        if self.op == "prefix":
            return value.startswith(self._value)
        assert self._pattern is not None
        return self._pattern.fullmatch(value.decode("utf-8", "surrogateescape")) is not None


def parse_rule(text: str) -> HeaderRule:
    """A rule from its CLI spelling: ``x-dev=alice``, ``x-dev^=al``, ``x-dev~=al.*``, ``baggage[user]=alice``.

    The operator is read from the first ``=`` and the character before it, so
    values may contain ``=``; a header name ending in ``^`` or ``~`` (legal,
    never seen in practice) cannot be written in this syntax.
    """
    if not isinstance(text, str):
        raise ValueError(f"{_SYNTAX}, got {text!r}")
    baggage = _BAGGAGE_SYNTAX.fullmatch(text)
    if baggage is not None:
        member, mark, value = baggage.group(1), baggage.group(2) or "", baggage.group(3)
        if not _is_token(member):
            raise ValueError(f"baggage member {member!r} in {text!r} is not a valid W3C baggage key")
        return HeaderRule(header=BAGGAGE, op=_OP_BY_MARK[mark], value=value, baggage_member=member)
    name, eq, value = text.partition("=")
    if not eq:
        raise ValueError(f"{_SYNTAX}, got {text!r}")
    mark = name[-1:] if name[-1:] in ("^", "~") else ""
    name = name[: len(name) - len(mark)]
    if not name:
        raise ValueError(f"{_SYNTAX}, got {text!r}: the header name is empty")
    if not _is_token(name):
        raise ValueError(f"{_SYNTAX}, got {text!r}: {name!r} is not a valid HTTP header name")
    return HeaderRule(header=name, op=_OP_BY_MARK[mark], value=value)


def parse_baggage(value: bytes) -> list[tuple[str, bytes]]:
    """The ``(key, value)`` members of one W3C ``baggage`` header value, percent-decoded, properties dropped.

    Malformed members (no ``=``, empty key) are skipped rather than failing the
    request: baggage is best-effort metadata from arbitrary tracers.
    """
    members: list[tuple[str, bytes]] = []
    for item in value.split(b","):
        member = item.split(b";", 1)[0]
        key, eq, raw = member.partition(b"=")
        if not eq:
            continue
        key = key.strip(b" \t")
        if not key:
            continue
        raw = raw.strip(b" \t")
        name = (unquote_to_bytes(key) if b"%" in key else key).decode("utf-8", "surrogateescape")
        decoded = unquote_to_bytes(raw) if b"%" in raw else raw
        members.append((name, decoded))
    return members


def _rule_matches(rule: HeaderRule, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    name = rule._name
    member = rule.baggage_member
    for key, value in headers:
        if len(key) != len(name) or key.lower() != name:
            continue
        if member is None:
            if rule.matches_value(value.strip(b" \t")):
                return True
            continue
        for found, member_value in parse_baggage(value):
            if found == member and rule.matches_value(member_value):
                return True
    return False


def matches(rules: Sequence[HeaderRule], headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a request with these headers (names in any case) satisfies every rule; never for no rules."""
    if not rules:
        return False
    return all(_rule_matches(rule, headers) for rule in rules)


def _one_value_matches_both(a: HeaderRule, b: HeaderRule) -> bool:
    """Whether one header value (or one baggage member's value) could satisfy both rules.

    Exact against anything is decided by testing the exact value; two
    prefixes overlap when one starts with the other. A regex against a
    prefix or another regex is assumed to overlap: whether two patterns can
    never match one value is not something to guess at on a developer's behalf.
    """
    if a.op == "exact":
        return b.matches_value(a._value)
    if b.op == "exact":
        return a.matches_value(b._value)
    if a.op == "prefix" and b.op == "prefix":
        return a._value.startswith(b._value) or b._value.startswith(a._value)
    return True


def _raw_baggage_meets_member(raw: HeaderRule, member: HeaderRule) -> bool:
    """A rule on the whole ``baggage`` header against one on a member of it: could one header satisfy both?"""
    if raw.op != "exact":
        return True  # a prefix or a pattern can be followed by any member
    return any(key == member.baggage_member and member.matches_value(value) for key, value in parse_baggage(raw._value))


def _rules_meet(a: HeaderRule, b: HeaderRule) -> bool:
    """Whether one request carrying a single value per header could satisfy both rules.

    Rules on different headers never meet here (a request can carry both,
    which :func:`rules_collide` leaves to the router's routing: a request
    matching two developers' intercepts goes to neither). Header names are
    compared without case, baggage members exactly (W3C keys are
    case-sensitive), and a rule on the raw ``baggage`` header meets a
    member rule when one baggage header could satisfy both.
    """
    if a.header != b.header:
        return False
    if a.baggage_member == b.baggage_member:
        return _one_value_matches_both(a, b)
    if a.baggage_member is None:
        return _raw_baggage_meets_member(a, b)
    if b.baggage_member is None:
        return _raw_baggage_meets_member(b, a)
    return False  # two different members of one baggage header


def rules_collide(a: Sequence[HeaderRule], b: Sequence[HeaderRule]) -> bool:
    """Whether two developers' rule lists claim the same requests: they look at a common header (or
    baggage member) and every such pair of conditions can be met by one value.

    Rule lists on disjoint headers do not collide: ``x-dev=alice`` and
    ``baggage[dev]=bob`` coexist, and a request crafted to carry both is
    routed to neither (:meth:`innerloop.router.intercepts.Registry.personal_for`).
    """
    related = [(x, y) for x in a for y in b if x.header == y.header and not _other_members(x, y)]
    return bool(related) and all(_rules_meet(x, y) for x, y in related)


def _other_members(a: HeaderRule, b: HeaderRule) -> bool:
    """Two rules on different members of a baggage header: they look at different things."""
    return a.baggage_member is not None and b.baggage_member is not None and a.baggage_member != b.baggage_member
