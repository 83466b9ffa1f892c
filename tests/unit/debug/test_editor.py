"""launch.json: our entries merged in, the user's entries and comments kept byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import json5

from innerloop.debug.editor import Attach, configuration, merge_launch_json, publish
from innerloop.debug.languages import launch_for
from innerloop.forward.targets import PodView, choose_pod

VSCODE_DEFAULT = """\
{
    // Use IntelliSense to learn about possible attributes.
    // Hover to view descriptions of existing attributes.
    "version": "0.2.0",
    "configurations": [
        {
            "name": "Python: current file", // mine
            "type": "debugpy",
            "request": "launch",
            "program": "${file}",
        },
    ]
}
"""
OURS = {"name": "innerloop: api", "type": "debugpy", "request": "attach", "connect": {"host": "127.0.0.1", "port": 1}}


def test_a_new_file_gets_our_entry() -> None:
    merged = merge_launch_json(None, [OURS])
    assert merged is not None
    assert json.loads(merged) == {"version": "0.2.0", "configurations": [OURS]}


def test_comments_and_trailing_commas_are_kept_and_ours_appended() -> None:
    merged = merge_launch_json(VSCODE_DEFAULT, [OURS])
    assert merged is not None
    head = VSCODE_DEFAULT[: VSCODE_DEFAULT.index("        },\n    ]") + len("        }")]
    assert merged.startswith(head)  # everything up to the user's last entry, byte for byte
    assert merged.endswith(",\n    ]\n}\n")  # their trailing comma and closing lines too
    data = json5.loads(merged)
    assert [c["name"] for c in data["configurations"]] == ["Python: current file", "innerloop: api"]
    assert data["configurations"][1] == OURS


def test_our_entry_is_replaced_in_place_and_only_ours() -> None:
    once = merge_launch_json(VSCODE_DEFAULT, [OURS])
    assert once is not None
    moved = {**OURS, "connect": {"host": "127.0.0.1", "port": 2}}
    twice = merge_launch_json(once, [moved])
    assert twice is not None
    data = json5.loads(twice)
    assert [c["name"] for c in data["configurations"]] == ["Python: current file", "innerloop: api"]
    assert data["configurations"][1]["connect"]["port"] == 2
    assert "// mine" in twice and "// Use IntelliSense" in twice
    assert merge_launch_json(twice, [moved]) == twice  # idempotent


def test_an_empty_configurations_list() -> None:
    merged = merge_launch_json('{\n  "version": "0.2.0", // v\n  "configurations": []\n}\n', [OURS])
    assert merged is not None and "// v" in merged
    assert json5.loads(merged)["configurations"] == [OURS]


def test_a_file_we_cannot_edit_safely_is_left_alone() -> None:
    assert merge_launch_json("{ this is not json", [OURS]) is None
    assert merge_launch_json('{"version": "0.2.0"}', [OURS]) is None  # no configurations list
    assert merge_launch_json('["x"]', [OURS]) is None


def test_the_configuration_points_at_the_local_forward(tmp_path: Path) -> None:
    launch = launch_for("python", ["python3", "app.py"], port=5678, wait=False, mappings=[("api", "/app")])
    config = configuration("api", launch, 40123)
    assert config["name"] == "innerloop: api"
    assert config["connect"] == {"host": "127.0.0.1", "port": 40123}
    (tmp_path / ".vscode").mkdir()
    (tmp_path / ".vscode" / "launch.json").write_text(VSCODE_DEFAULT)
    lines = publish(tmp_path, [Attach("api", launch, 40123)])
    assert "api: debugger (python) on 127.0.0.1:40123" in lines
    saved = json5.loads((tmp_path / ".vscode" / "launch.json").read_text())
    assert saved["configurations"][1] == config


def test_publish_prints_the_entry_when_the_file_cannot_be_kept(tmp_path: Path) -> None:
    launch = launch_for("node", ["node", "s.js"], port=9229, wait=False, mappings=[])
    (tmp_path / ".vscode").mkdir()
    (tmp_path / ".vscode" / "launch.json").write_text("{ broken")
    lines = publish(tmp_path, [Attach("reviews", launch, 9229)])
    assert any("left as it is" in line for line in lines)
    assert any('"name": "innerloop: reviews"' in line for line in lines)
    assert (tmp_path / ".vscode" / "launch.json").read_text() == "{ broken"


def test_a_debug_forward_takes_a_running_pod_that_is_not_ready() -> None:
    pods = [PodView(name="paused", phase="Running", ready=False), PodView(name="gone", phase="Running", deleting=True)]
    assert choose_pod(pods) is None  # the app's own forward waits for readiness
    assert choose_pod(pods, ready=False) == "paused"
