"""The intercept registry: who holds what, who may resume or end it, and which intercept a request goes to."""

from __future__ import annotations

import pytest

from innerloop.router.intercepts import InterceptRefused, Registry
from innerloop.router.match import HeaderRule

SECRET_A = "a" * 32
SECRET_B = "b" * 32


def rule(value: str, header: str = "x-dev") -> HeaderRule:
    return HeaderRule(header=header, op="exact", value=value)


def hdrs(**values: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in values.items()]


def registry() -> Registry:
    return Registry(grace=10)


def test_personal_intercepts_each_get_their_own_requests() -> None:
    reg = registry()
    reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice")], ports=[], now=0)
    reg.register(name="b", secret=SECRET_B, owner="bob", mode="personal", rules=[rule("bob")], ports=[], now=0)
    assert reg.personal_for(80, hdrs(x_dev="alice")) == "a"
    assert reg.personal_for(80, hdrs(x_dev="bob")) == "b"
    assert reg.personal_for(80, hdrs(x_dev="carol")) is None
    assert reg.personal_for(80, []) is None
    assert reg.global_for(80) is None
    assert reg.has_personal(80)


def test_the_first_registered_wins_when_rules_overlap() -> None:
    reg = registry()
    prefix = HeaderRule(header="x-dev", op="prefix", value="al")
    reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice")], ports=[], now=0)
    reg.register(name="p", secret=SECRET_B, owner="pat", mode="personal", rules=[prefix], ports=[], now=1)
    assert reg.personal_for(80, hdrs(x_dev="alice")) == "a"
    assert reg.personal_for(80, hdrs(x_dev="alfred")) == "p"


def test_the_very_same_rules_are_refused_to_a_second_developer() -> None:
    reg = registry()
    reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice")], ports=[], now=0)
    with pytest.raises(InterceptRefused, match="already intercepts requests with these very headers"):
        reg.register(name="b", secret=SECRET_B, owner="bob", mode="personal", rules=[rule("alice")], ports=[], now=0)


def test_global_excludes_every_other_intercept_on_its_ports() -> None:
    reg = registry()
    reg.register(name="g", secret=SECRET_A, owner="alice", mode="global", rules=[], ports=[80], now=0)
    assert reg.global_for(80) == "g"
    assert reg.global_for(443) is None
    with pytest.raises(InterceptRefused, match="global intercept"):
        reg.register(name="p", secret=SECRET_B, owner="bob", mode="personal", rules=[rule("bob")], ports=[80], now=0)
    # Another port is free.
    reg.register(name="p", secret=SECRET_B, owner="bob", mode="personal", rules=[rule("bob")], ports=[443], now=0)
    with pytest.raises(InterceptRefused, match="personal intercept"):
        reg.register(name="g2", secret="c" * 32, owner="carol", mode="global", rules=[], ports=[443], now=0)


def test_a_personal_intercept_needs_a_rule() -> None:
    with pytest.raises(InterceptRefused, match="at least one header rule"):
        registry().register(name="a", secret=SECRET_A, owner="a", mode="personal", rules=[], ports=[], now=0)


def test_short_secrets_are_refused() -> None:
    with pytest.raises(InterceptRefused, match="at least 16"):
        registry().register(name="a", secret="short", owner="a", mode="global", rules=[], ports=[], now=0)


def test_only_the_secret_resumes_or_ends_an_intercept() -> None:
    reg = registry()
    reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice")], ports=[], now=0)
    with pytest.raises(InterceptRefused, match="held by another session"):
        reg.register(name="a", secret=SECRET_B, owner="mallory", mode="global", rules=[], ports=[], now=1)
    with pytest.raises(InterceptRefused, match="no intercept 'a' held with this secret"):
        reg.leave("a", SECRET_B, now=1)
    # The same refusal for a name that does not exist: no probing for names.
    with pytest.raises(InterceptRefused, match="no intercept 'zz' held with this secret"):
        reg.leave("zz", SECRET_B, now=1)
    assert reg.personal_for(80, hdrs(x_dev="alice")) == "a"
    _, resumed = reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[], ports=[], now=2)
    assert resumed
    reg.leave("a", SECRET_A, now=3)
    assert len(reg) == 0
    assert reg.empty_since == 3


def test_a_detached_intercept_sends_its_traffic_to_the_cluster_then_expires() -> None:
    reg = registry()
    reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice")], ports=[], now=0)
    reg.detach("a", now=5)
    assert reg.personal_for(80, hdrs(x_dev="alice")) is None  # the pods serve it meanwhile
    assert reg.expire(now=14.9) == []
    _, resumed = reg.register(
        name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[], ports=[], now=14.9, resume=True
    )
    assert resumed
    assert reg.personal_for(80, hdrs(x_dev="alice")) == "a"
    reg.detach("a", now=20)
    assert [i.name for i in reg.expire(now=30)] == ["a"]
    assert reg.empty_since == 30
    with pytest.raises(InterceptRefused, match="no longer exists"):
        reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[], ports=[], now=31, resume=True)


def test_describe_never_shows_the_secret() -> None:
    reg = registry()
    intercept, _ = reg.register(
        name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice")], ports=[80], now=0
    )
    shown = intercept.describe()
    assert SECRET_A not in repr(shown)
    assert shown["rules"] == [rule("alice").to_dict()]
    assert shown["attached"] is True
    assert "digest" not in shown
