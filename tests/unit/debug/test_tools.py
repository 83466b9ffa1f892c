"""The debug tools carried in the agent image: debugpy's pure-Python files only."""

from __future__ import annotations

import pytest

from innerloop.builders.agent_image import AgentImageError
from innerloop.debug.tools import TOOLS_DIR, tool_entries


def test_debugpy_is_carried_without_compiled_parts() -> None:
    entries = tool_entries(["debugpy"], "arm64")
    paths = {e.path for e in entries}
    assert f"{TOOLS_DIR}/debugpy/debugpy/__main__.py" in paths
    assert f"{TOOLS_DIR}/debugpy/debugpy/_vendored/pydevd/pydevd.py" in paths
    assert not [p for p in paths if p.endswith((".so", ".pyc", ".dll")) or "__pycache__" in p]
    assert sum(len(e.data) for e in entries) < 8_000_000


def test_an_unknown_tool_is_refused() -> None:
    with pytest.raises(AgentImageError, match="no debug tool named 'gdb'"):
        tool_entries(["gdb"], "amd64")
