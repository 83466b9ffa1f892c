"""`innerloop demo --check` waits for the whole chain, not the first answer of its entry."""

from __future__ import annotations

from innerloop.cli.demo import _broken_hop


def test_a_chain_where_every_hop_answered_is_complete() -> None:
    chain = {"service": "frontend", "via": [{"service": "api", "via": [{"service": "backend", "via": []}]}]}
    assert _broken_hop(chain) is None


def test_a_hop_that_could_not_reach_the_next_is_named() -> None:
    chain = {"service": "frontend", "via": [{"service": "api", "via": [{"error": "reviews unreachable"}]}]}
    assert _broken_hop(chain) == "reviews unreachable"
    assert _broken_hop({"service": "api", "error": "backend unreachable"}) == "backend unreachable"
