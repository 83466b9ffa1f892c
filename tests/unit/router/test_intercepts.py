"""The intercept registry: who holds what, who may resume or end it, and which intercept a request goes to."""

from __future__ import annotations

import pytest

from innerloop.router.intercepts import DEFAULT_HEADER, InterceptRefused, Registry
from innerloop.router.match import HeaderRule, Op

SECRET_A = "a" * 32
SECRET_B = "b" * 32


def rule(value: str, header: str = "x-dev", op: Op = "exact") -> HeaderRule:
    return HeaderRule(header=header, op=op, value=value)


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


def test_a_rule_that_would_catch_another_developers_requests_is_refused_to_whoever_comes_second() -> None:
    """The attack: mallory registers a prefix (or a pattern) that alice's value matches; first-registered-wins
    gave mallory alice's requests when mallory came first, and pat's `al` prefix every `al...` after alice's."""
    reg = registry()
    reg.register(name="m", secret=SECRET_B, owner="mallory", mode="personal", rules=[rule("al", op="prefix")],
                 ports=[], now=0)  # fmt: skip
    with pytest.raises(InterceptRefused, match=r"mallory already intercepts requests with x-dev values") as err:
        reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice")], ports=[], now=1)
    assert err.value.code == "collision"
    assert "--header x-dev=" in str(err.value)
    assert "^=al" not in str(err.value)  # mallory's rule is not shown

    reg = registry()
    reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice")], ports=[], now=0)
    for broad in (
        rule("al", op="prefix"),
        rule(".*", op="regex"),
        HeaderRule(header="X-DEV", op="exact", value="alice"),
    ):
        with pytest.raises(InterceptRefused, match="alice already intercepts"):
            reg.register(name="m", secret=SECRET_B, owner="mallory", mode="personal", rules=[broad], ports=[], now=1)
    assert reg.personal_for(80, hdrs(x_dev="alice")) == "a"


def test_the_very_same_rules_are_refused_to_a_second_developer_even_while_the_first_is_detached() -> None:
    """The attack: alice's laptop sleeps (her intercept is detached, within its grace) and mallory registers
    alice's value meanwhile: alice's resume would then find her requests gone to mallory."""
    reg = registry()
    reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice")], ports=[], now=0)
    reg.detach("a", now=1)
    with pytest.raises(InterceptRefused, match="alice already intercepts"):
        reg.register(name="b", secret=SECRET_B, owner="bob", mode="personal", rules=[rule("alice")], ports=[], now=2)
    # Once it expired, the value is free.
    reg.expire(now=20)
    reg.register(name="b", secret=SECRET_B, owner="bob", mode="personal", rules=[rule("alice")], ports=[], now=21)


def test_the_same_developer_replaces_a_detached_intercept_of_theirs_but_not_an_attached_one() -> None:
    reg = registry()
    me = "i" * 64
    reg.register(name="a1", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice")], ports=[], now=0,
                 identity=me)  # fmt: skip
    with pytest.raises(InterceptRefused, match="you already intercept requests with x-dev"):
        reg.register(name="a2", secret=SECRET_B, owner="alice", mode="personal", rules=[rule("alice")], ports=[],
                     now=1, identity=me)  # fmt: skip
    with pytest.raises(InterceptRefused, match="alice already intercepts"):  # another identity is another developer
        reg.register(name="a2", secret=SECRET_B, owner="alice", mode="personal", rules=[rule("alice")], ports=[],
                     now=1, identity="j" * 64)  # fmt: skip
    reg.detach("a1", now=2)  # the CLI crashed; the developer starts it again at once
    reg.register(name="a2", secret=SECRET_B, owner="alice", mode="personal", rules=[rule("alice")], ports=[], now=3,
                 identity=me)  # fmt: skip
    assert [i.name for i in reg.all()] == ["a2"]
    assert reg.personal_for(80, hdrs(x_dev="alice")) == "a2"


def test_a_request_matching_two_developers_intercepts_goes_to_neither() -> None:
    """The attack: mallory registers first a rule on a header every request carries (`host~=.*`); with
    first-registered-wins, alice's later intercept on her own header never saw a request."""
    reg = registry()
    reg.register(name="m", secret=SECRET_B, owner="mallory", mode="personal", rules=[rule(".*", "host", "regex")],
                 ports=[], now=0)  # fmt: skip
    reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice-1f2e")], ports=[], now=1)
    assert reg.personal_for(80, hdrs(host="shop", x_dev="alice-1f2e")) is None  # the cluster's pods
    assert reg.personal_for(80, hdrs(x_dev="alice-1f2e")) == "a"
    reg.detach("m", now=2)  # a detached intercept takes nothing, so it decides nothing either
    assert reg.personal_for(80, hdrs(host="shop", x_dev="alice-1f2e")) == "a"


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
    with pytest.raises(InterceptRefused, match="no longer exists") as err:
        reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[], ports=[], now=31, resume=True)
    assert err.value.code == "unknown"  # what a CLI checks (with the router's instance) to register again


def test_describe_never_shows_the_secret() -> None:
    reg = registry()
    intercept, _ = reg.register(
        name="a", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice")], ports=[80], now=0
    )
    shown = intercept.describe()
    assert SECRET_A not in repr(shown)
    # Nor the value: listing the router's intercepts must not hand out a value to claim elsewhere first.
    assert "alice" not in repr(shown["rules"])
    assert shown["rules"] == [{"header": "x-dev", "op": "exact", "value": "(hidden)"}]
    assert intercept.describe(values=True)["rules"] == [rule("alice").to_dict()]
    assert shown["attached"] is True
    assert "digest" not in shown


def test_the_default_header_takes_exact_values_only() -> None:
    """The attack: with prefix rules allowed on `x-innerloop-user`, each refusal ("alice already intercepts")
    tells whether alice's secret value starts with a guess: 16 guesses a character recover it."""
    reg = registry()
    value = "alice-0123456789abcdef"
    reg.register(name="a", secret=SECRET_A, owner="alice", mode="personal",
                 rules=[rule(value, DEFAULT_HEADER)], ports=[], now=0)  # fmt: skip
    probes: list[tuple[Op, str]] = [("prefix", "alice-0"), ("regex", "alice-0.*")]
    for op, probe in probes:
        with pytest.raises(InterceptRefused, match="takes exact values only") as err:
            reg.register(name="m", secret=SECRET_B, owner="mallory", mode="personal",
                         rules=[rule(probe, DEFAULT_HEADER.upper(), op)], ports=[], now=1)  # fmt: skip
        assert err.value.code == "denied"
    # Every other header still takes prefixes and patterns.
    reg.register(name="m", secret=SECRET_B, owner="mallory", mode="personal",
                 rules=[rule("mal", "x-dev", "prefix")], ports=[], now=1)  # fmt: skip


def test_the_same_developer_and_name_replaces_a_detached_intercept_but_no_one_else_does() -> None:
    reg = registry()
    me = "i" * 64
    reg.register(name="alice", secret=SECRET_A, owner="alice", mode="personal", rules=[rule("alice")], ports=[],
                 now=0, identity=me)  # fmt: skip
    reg.detach("alice", now=1)
    for who in (None, "j" * 64):  # no identity, or another developer's: the name stays held
        with pytest.raises(InterceptRefused, match="held by another session"):
            reg.register(name="alice", secret=SECRET_B, owner="mallory", mode="personal", rules=[rule("m")],
                         ports=[], now=2, identity=who)  # fmt: skip
    with pytest.raises(InterceptRefused, match="held by another session"):  # a resume needs the secret
        reg.register(name="alice", secret=SECRET_B, owner="alice", mode="personal", rules=[rule("alice")],
                     ports=[], now=2, identity=me, resume=True)  # fmt: skip
    intercept, resumed = reg.register(name="alice", secret=SECRET_B, owner="alice", mode="personal",
                                      rules=[rule("alice2")], ports=[], now=3, identity=me)  # fmt: skip
    assert not resumed and intercept.attached and intercept.rules == [rule("alice2")]
    assert reg.personal_for(80, hdrs(x_dev="alice2")) == "alice"
