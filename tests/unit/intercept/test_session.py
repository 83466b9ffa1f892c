"""A personal intercept's default header value: readable, stable for the developer, not guessable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from innerloop.intercept import session
from innerloop.intercept.session import DeveloperKey, default_rules
from innerloop.router.intercepts import DEFAULT_HEADER


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(session, "whoami", lambda: "alice")
    return tmp_path / "state" / "innerloop"


def test_the_default_value_is_not_the_user_name_that_anyone_can_guess(state: Path) -> None:
    """The attack: the default was `x-innerloop-user=$USER`, so a teammate registered `alice` before alice did
    and got her requests. The value now carries 64 random bits next to the readable name."""
    (rule,) = default_rules()
    assert rule.header == DEFAULT_HEADER and rule.op == "exact"
    assert rule.value != "alice"
    assert re.fullmatch(r"alice-[0-9a-f]{16}", rule.value), rule.value
    # Another developer (another key) gets another value, with the same user name.
    (state / "identity.json").unlink()
    assert default_rules()[0].value != rule.value


def test_the_value_and_identity_are_stable_across_runs_and_the_key_is_private(state: Path) -> None:
    first, identity = default_rules()[0].value, DeveloperKey.load().identity("ns", "backend")
    assert default_rules()[0].value == first  # a bookmarked preview or a browser extension keeps working
    assert DeveloperKey.load().identity("ns", "backend") == identity
    assert DeveloperKey.load().identity("ns", "frontend") != identity  # one router's proof is no other's
    path = state / "identity.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o077 == 0
    # The router gets the identity, never the key the value comes from.
    key = json.loads(path.read_text())["key"]
    assert key not in identity and identity != first
    path.chmod(0o644)
    DeveloperKey.load()
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_user_name_that_is_no_header_value_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session, "whoami", lambda: "Jörg Müller\r\nx: y")
    assert re.fullmatch(r"JrgMllerxy-[0-9a-f]{16}", default_rules()[0].value)
    monkeypatch.setattr(session, "whoami", lambda: "ü")
    assert re.fullmatch(r"dev-[0-9a-f]{16}", default_rules()[0].value)


def test_a_damaged_key_file_is_one_line_saying_what_to_do(state: Path) -> None:
    DeveloperKey.load()
    (state / "identity.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"identity.json is unreadable .*delete it"):
        default_rules()
    (state / "identity.json").write_text('{"key": "short"}')
    with pytest.raises(ValueError, match="holds no usable key"):
        default_rules()
