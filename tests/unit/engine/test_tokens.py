"""``session_tokens``: a new agent token per `up`, the earlier ones kept on this machine only, privately."""

from __future__ import annotations

import stat
from pathlib import Path

from innerloop.engine.tokens import KEEP, STATE_FILE, session_tokens


def test_each_up_gets_a_new_token_and_keeps_the_last_ones(tmp_path: Path) -> None:
    first = session_tokens(tmp_path, namespace="dev", service="web")
    second = session_tokens(tmp_path, namespace="dev", service="web")
    assert len(first) == 1 and second[1:] == first and second[0] != first[0]
    for _ in range(5):
        latest = session_tokens(tmp_path, namespace="dev", service="web")
    assert len(latest) == KEEP
    assert session_tokens(tmp_path, namespace="other", service="web")[1:] == []  # another namespace, other pods


def test_the_tokens_are_readable_by_the_developer_alone(tmp_path: Path) -> None:
    """Attack: another local user (or a process of theirs) reads the project's state folder."""
    session_tokens(tmp_path, namespace="dev", service="web")
    path = tmp_path / STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


def test_a_damaged_state_file_starts_over(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    path.parent.mkdir(mode=0o700)
    path.write_text("{not json")
    assert len(session_tokens(tmp_path, namespace="dev", service="web")) == 1
