"""Header match rules: CLI syntax, JSON form, matching semantics, W3C baggage members."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from innerloop.router.match import HeaderRule, matches, parse_baggage, parse_rule, rules_collide

# -- parse_rule ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("x-dev=alice", HeaderRule("x-dev", "exact", "alice")),
        ("X-Dev=Alice", HeaderRule("x-dev", "exact", "Alice")),
        ("x-dev^=al", HeaderRule("x-dev", "prefix", "al")),
        ("x-dev~=al(ice|ex)", HeaderRule("x-dev", "regex", "al(ice|ex)")),
        ("x-token=a=b==", HeaderRule("x-token", "exact", "a=b==")),
        ("x-dev=", HeaderRule("x-dev", "exact", "")),
        ("baggage[user]=alice", HeaderRule("baggage", "exact", "alice", baggage_member="user")),
        ("Baggage[user]^=al", HeaderRule("baggage", "prefix", "al", baggage_member="user")),
        ("baggage[user]~=a.*", HeaderRule("baggage", "regex", "a.*", baggage_member="user")),
        ("baggage=raw", HeaderRule("baggage", "exact", "raw")),
    ],
)
def test_parse_rule(text: str, rule: HeaderRule) -> None:
    parsed = parse_rule(text)
    assert parsed == rule
    assert parsed.header == parsed.header.lower()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x", "expected NAME=VALUE, NAME^=PREFIX or NAME~=REGEX (baggage[MEMBER]=VALUE for a baggage member), got 'x'"),
        ("=alice", "header name is empty"),
        ("^=alice", "header name is empty"),
        ("x dev=alice", "not a valid HTTP header name"),
        ("x:dev=alice", "not a valid HTTP header name"),
        ("x-dev~=(", "invalid regex '(' for x-dev: missing )"),
        ("baggage[]=x", "baggage member ''"),
        ("baggage[a b]=x", "baggage member 'a b'"),
        ("baggage[user]", "expected NAME=VALUE"),
    ],
)
def test_parse_rule_errors_say_what_is_expected(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_rule(text)
    assert fragment in str(caught.value)


def test_constructor_validates_and_normalizes() -> None:
    assert HeaderRule("X-DEV", "exact", "v").header == "x-dev"
    with pytest.raises(ValueError, match="not one of"):
        HeaderRule("x", "glob", "v")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'baggage' header"):
        HeaderRule("x-dev", "exact", "v", baggage_member="user")
    with pytest.raises(ValueError, match="invalid regex"):
        HeaderRule("x", "regex", "[")


@given(
    header=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_.0123456789ABC", min_size=1, max_size=12),
    op=st.sampled_from(["exact", "prefix", "regex"]),
    value=st.text(max_size=20),
    member=st.none() | st.text(alphabet="abcdefgh-_0123", min_size=1, max_size=6),
)
def test_str_round_trips_through_parse_rule(header: str, op: str, value: str, member: str | None) -> None:
    if header[-1] in "^~":  # cannot be spelled (documented)
        return
    if member is not None:
        header = "baggage"
    try:
        rule = HeaderRule(header, op, value, baggage_member=member)  # type: ignore[arg-type]
    except ValueError:
        return  # an invalid regex
    assert parse_rule(str(rule)) == rule
    assert HeaderRule.from_dict(rule.to_dict()) == rule


# -- dict form ------------------------------------------------------------------


def test_dict_round_trip() -> None:
    rule = parse_rule("baggage[user]~=al.*")
    data = rule.to_dict()
    assert data == {"header": "baggage", "op": "regex", "value": "al.*", "baggageMember": "user"}
    assert HeaderRule.from_dict(data) == rule
    assert parse_rule("x-dev=a").to_dict() == {"header": "x-dev", "op": "exact", "value": "a"}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"op": "exact", "value": "a"}, "missing field 'header'"),
        ({"header": "x", "op": "exact", "value": 3}, "'value' must be a string, got int"),
        ({"header": "x", "op": "like", "value": "a"}, "op 'like' is not one of"),
        ({"header": "x", "op": "regex", "value": "("}, "invalid regex"),
        ({"header": "x y", "op": "exact", "value": "a"}, "not a valid HTTP header name"),
        ({"header": "x", "op": "exact", "value": "a", "negate": "yes"}, "unknown field(s) 'negate'"),
        ({"header": "baggage", "op": "exact", "value": "a", "baggageMember": 1}, "'baggageMember' must be a string"),
    ],
)
def test_from_dict_errors(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        HeaderRule.from_dict(data)
    assert fragment in str(caught.value)


# -- matching --------------------------------------------------------------------


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in pairs]


def test_exact_prefix_and_regex() -> None:
    headers = h(("Host", "shop"), ("X-Dev", "alice"))
    assert matches([parse_rule("x-dev=alice")], headers)
    assert not matches([parse_rule("x-dev=Alice")], headers)  # values are case-sensitive
    assert not matches([parse_rule("x-dev=alic")], headers)
    assert matches([parse_rule("x-dev^=ali")], headers)
    assert not matches([parse_rule("x-dev^=lic")], headers)
    assert matches([parse_rule("x-dev~=a.*e")], headers)


def test_regex_must_match_the_whole_value() -> None:
    assert not matches([parse_rule("x-dev~=alice")], h(("x-dev", "malice")))
    assert not matches([parse_rule("x-dev~=alice")], h(("x-dev", "alice2")))
    assert matches([parse_rule("x-dev~=.*alice.*")], h(("x-dev", "malice2")))


def test_header_names_match_in_any_case() -> None:
    rule = parse_rule("X-DEV=alice")
    for name in ("x-dev", "X-Dev", "X-DEV", "x-DeV"):
        assert matches([rule], h((name, "alice")))
    assert not matches([rule], h(("x-devs", "alice")))


def test_all_rules_must_match_and_no_rules_match_nothing() -> None:
    rules = [parse_rule("x-dev=alice"), parse_rule("x-tenant^=eu-")]
    assert matches(rules, h(("x-dev", "alice"), ("x-tenant", "eu-west")))
    assert not matches(rules, h(("x-dev", "alice"), ("x-tenant", "us-east")))
    assert not matches(rules, h(("x-dev", "alice")))
    assert not matches([], h(("x-dev", "alice")))
    assert not matches([], [])


def test_any_occurrence_of_a_repeated_header_matches() -> None:
    headers = h(("x-dev", "bob"), ("X-Dev", "alice"))
    assert matches([parse_rule("x-dev=alice")], headers)
    assert matches([parse_rule("x-dev=bob")], headers)
    assert not matches([parse_rule("x-dev=carol")], headers)


def test_non_ascii_values() -> None:
    assert matches([parse_rule("x-dev=jörg")], [(b"x-dev", "jörg".encode())])
    assert matches([parse_rule("x-dev~=j.rg")], [(b"x-dev", "jörg".encode())])
    assert not matches([parse_rule("x-dev~=j.rg")], [(b"x-dev", b"j\xffrg\xff")])


# -- baggage -----------------------------------------------------------------------


def test_parse_baggage_members() -> None:
    value = b" user = alice ; prop=1;flag , tenant=eu%2Cwest,,bad, =x, k%20ey=v%3Dx ; p "
    assert parse_baggage(value) == [("user", b"alice"), ("tenant", b"eu,west"), ("k ey", b"v=x")]


def test_baggage_member_rules() -> None:
    rule = parse_rule("baggage[user]=alice smith")
    assert matches([rule], h(("baggage", "tenant=eu,user=alice%20smith;ttl=3")))
    assert matches([rule], h(("Baggage", "a=b"), ("BAGGAGE", "  user =\talice%20smith  ")))
    assert not matches([rule], h(("baggage", "user=bob"), ("x-user", "alice smith")))
    assert not matches([rule], h(("baggage", "xuser=alice%20smith")))
    assert not matches([rule], h(("user", "alice smith")))
    assert matches([parse_rule("baggage[user]^=ali")], h(("baggage", "user=alice")))
    assert matches([parse_rule("baggage[user]~=a.*e")], h(("baggage", "user=alice;p")))
    assert matches([parse_rule("baggage[user]=jörg")], h(("baggage", "user=j%C3%B6rg")))


def test_baggage_member_and_header_rules_combine() -> None:
    rules = [parse_rule("baggage[user]=alice"), parse_rule("x-canary=1")]
    assert matches(rules, h(("baggage", "user=alice"), ("x-canary", "1")))
    assert not matches(rules, h(("baggage", "user=alice")))


# -- overlap -----------------------------------------------------------------------


def _collide(a: list[str], b: list[str]) -> bool:
    """Collision is symmetric: checked both ways every time."""
    left, right = [parse_rule(t) for t in a], [parse_rule(t) for t in b]
    assert rules_collide(left, right) == rules_collide(right, left)
    return rules_collide(left, right)


def test_the_same_value_on_the_same_header_collides_whatever_the_case_of_its_name() -> None:
    """The attack: a teammate registers alice's very header value (or a broader rule catching it); before
    this only the very same rule list was refused, so `X-Dev^=al` or `x-dev~=.*` took alice's requests."""
    assert _collide(["x-dev=alice"], ["X-DEV=alice"])
    assert _collide(["x-dev=alice", "baggage[t]^=eu"], ["baggage[t]^=eu", "X-Dev=alice"])
    assert _collide(["x-dev=alice"], ["x-dev^=al"])
    assert _collide(["x-dev=alice"], ["x-dev^="])
    assert _collide(["x-dev=alice"], ["x-dev~=.*"])
    assert _collide(["x-dev=alice"], ["x-dev~=a.*e"])
    assert _collide(["x-dev^=al"], ["x-dev^=alice"])
    # A broader list still collides: every request of the narrower one matches it.
    assert _collide(["x-dev=alice", "x-canary=1"], ["x-dev=alice"])
    # Patterns against anything but an exact value are assumed to meet: not provably disjoint.
    assert _collide(["x-dev~=al.*"], ["x-dev~=bo.*"])
    assert _collide(["x-dev~=al.*"], ["x-dev^=bo"])


def test_values_that_no_single_request_can_carry_together_do_not_collide() -> None:
    assert not _collide(["x-dev=alice"], ["x-dev=bob"])
    assert not _collide(["x-dev=alice"], ["x-dev=Alice"])  # values are compared exactly
    assert not _collide(["x-dev=alice"], ["x-dev^=bo"])
    assert not _collide(["x-dev=alice"], ["x-dev~=bob|carol"])
    assert not _collide(["x-dev^=al"], ["x-dev^=bo"])
    assert not _collide(["x-dev=alice", "x-canary=1"], ["x-dev=alice", "x-canary=2"])
    # Different headers (or baggage members) look at different things: they coexist.
    assert not _collide(["x-dev=alice"], ["baggage[dev]=alice"])
    assert not _collide(["x-dev=alice"], ["x-user=alice"])
    assert not _collide(["baggage[u]=a"], ["baggage[v]=a"])
    assert not _collide(["baggage[dev]=a"], ["baggage[Dev]=a"])  # W3C baggage keys are case-sensitive


def test_a_baggage_member_collides_with_a_rule_on_the_whole_baggage_header_that_can_carry_it() -> None:
    assert _collide(["baggage[dev]=bob"], ["baggage[dev]=bob"])
    assert _collide(["baggage[dev]=bob"], ["BAGGAGE[dev]^=b"])
    assert _collide(["baggage[dev]=bob"], ["baggage=tenant=acme, dev=bob;ttl=5"])
    assert _collide(["baggage[dev]=jörg"], ["baggage=dev=j%C3%B6rg"])
    assert _collide(["baggage[dev]=bob"], ["baggage^=tenant=acme"])  # a prefix can be followed by dev=bob
    assert _collide(["baggage[dev]=bob"], ["baggage~=.*"])
    assert not _collide(["baggage[dev]=bob"], ["baggage=dev=alice"])
    assert not _collide(["baggage[dev]=bob"], ["baggage=devx=bob"])
    assert len({parse_rule("x~=a+"), parse_rule("X~=a+")}) == 1
