"""The preview URL's headers: what makes a request match the developer's rules."""

from __future__ import annotations

from innerloop.intercept.preview import preview_headers
from innerloop.router.match import matches, parse_rule


def test_exact_prefix_and_baggage_rules_become_headers_that_match_them() -> None:
    rules = [parse_rule("x-dev=alice"), parse_rule("x-team^=pay"), parse_rule("baggage[user]=a b")]
    headers = preview_headers(rules)
    assert headers == {"x-dev": "alice", "x-team": "pay", "baggage": "user=a%20b"}
    assert matches(rules, [(k.encode(), v.encode()) for k, v in headers.items()])


def test_a_regex_rule_has_no_single_value_to_send() -> None:
    assert preview_headers([parse_rule("x-dev=alice"), parse_rule("x-dev~=al.*")]) is None


def test_a_global_intercept_needs_no_header() -> None:
    assert preview_headers([]) == {}
