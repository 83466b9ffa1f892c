"""What the editor needs to attach: launch configurations merged into ``.vscode/launch.json``, and a note.

VS Code's launch.json is JSON with comments and trailing commas, and it is
the user's file. It is parsed with json-five, whose model keeps every
node's position, so an entry is added or replaced by splicing text at those
positions: the user's comments, order and formatting stay byte for byte.
Only entries named ``innerloop: SERVICE`` are ever replaced. When the file
cannot be parsed or has no ``configurations`` list, it is left alone and the
entry is printed instead (:func:`merge_launch_json` returns None).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import json5
from json5.loader import ModelLoader
from json5.model import JSONArray, JSONObject, JSONText, Node

from innerloop.debug.languages import DebugLaunch

LAUNCH_JSON = Path(".vscode") / "launch.json"
PREFIX = "innerloop: "


def configuration_name(service: str) -> str:
    return f"{PREFIX}{service}"


def _with_port(value: object, container_port: int, local_port: int) -> object:
    if isinstance(value, dict):
        return {
            k: local_port if k == "port" and v == container_port else _with_port(v, container_port, local_port)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_with_port(v, container_port, local_port) for v in value]
    return value


def configuration(service: str, launch: DebugLaunch, local_port: int) -> dict[str, Any]:
    """The VS Code attach configuration of one service, aimed at its local forward."""
    body = _with_port(copy.deepcopy(launch.launch_json), launch.port, local_port)
    assert isinstance(body, dict)
    return {"name": configuration_name(service), **body}


# ---- merging into launch.json (pure) -------------------------------------------------------------


def _offsets(text: str) -> list[int]:
    starts = [0]
    for i, char in enumerate(text):
        if char == "\n":
            starts.append(i + 1)
    return starts


def _span(node: Node, starts: Sequence[int]) -> tuple[int, int]:
    # json-five: 1-based lines, 0-based columns, end column exclusive.
    line, col, end_line, end_col = node.lineno, node.col_offset, node.end_lineno, node.end_col_offset
    if line is None or col is None or end_line is None or end_col is None:
        raise ValueError("json-five gave a node without a position")
    return starts[line - 1] + col, starts[end_line - 1] + end_col


def _indent_at(text: str, start: int) -> str:
    """The whitespace before ``start`` on its line (8 spaces when something else stands there)."""
    before = text[text.rfind("\n", 0, start) + 1 : start]
    return before if not before.strip() else " " * 8


def _indented(config: Mapping[str, Any], indent: str) -> str:
    return json.dumps(config, indent=4).replace("\n", "\n" + indent)


def merge_launch_json(text: str | None, configs: Sequence[Mapping[str, Any]]) -> str | None:
    """``text`` with ``configs`` added (an entry of the same name replaced), everything else kept; None if unsafe."""
    if text is None or not text.strip():
        return json.dumps({"version": "0.2.0", "configurations": list(configs)}, indent=4) + "\n"
    try:
        data = json5.loads(text)
        model = json5.loads(text, loader=ModelLoader())
    except ValueError:  # json-five's JSON5DecodeError: not a file we can edit safely
        return None
    return _merge(text, data, model, configs)


def _merge(text: str, data: object, model: JSONText, configs: Sequence[Mapping[str, Any]]) -> str | None:
    top = model.value
    if not isinstance(data, dict) or not isinstance(top, JSONObject):
        return None
    index = next((i for i, key in enumerate(top.keys) if getattr(key, "characters", None) == "configurations"), None)
    existing = data.get("configurations")
    if index is None or not isinstance(existing, list):
        return None
    array = top.values[index]
    if not isinstance(array, JSONArray) or len(array.values) != len(existing):
        return None
    starts = _offsets(text)
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    appended: list[Mapping[str, Any]] = []
    names = [e.get("name") if isinstance(e, dict) else None for e in existing]
    for config in configs:
        if config["name"] in names:
            node = array.values[names.index(config["name"])]
            start, end = _span(node, starts)
            edits.append((start, end, _indented(config, _indent_at(text, start))))
        else:
            appended.append(config)
    if appended:
        array_start, array_end = _span(array, starts)
        if array.values:
            last_start, last_end = _span(array.values[-1], starts)
            indent = _indent_at(text, last_start)
            added = "".join(f",\n{indent}{_indented(c, indent)}" for c in appended)
            edits.append((last_end, last_end, added))
        else:
            line_start = text.rfind("\n", 0, array_start) + 1
            outer = text[line_start:array_start]
            outer = outer[: len(outer) - len(outer.lstrip())]
            indent = outer + " " * 4
            added = ",".join(f"\n{indent}{_indented(c, indent)}" for c in appended) + f"\n{outer}"
            edits.append((array_start + 1, array_end - 1, added))
    merged = text
    for start, end, replacement in sorted(edits, reverse=True):
        merged = merged[:start] + replacement + merged[end:]
    expected = [
        next((c for c in configs if isinstance(e, dict) and c["name"] == e.get("name")), e) for e in existing
    ] + list(appended)
    try:
        check = json5.loads(merged)
    except ValueError:
        return None
    if not isinstance(check, dict) or check.get("configurations") != json.loads(json.dumps(expected)):
        return None
    return merged


# ---- the I/O edge ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attach:
    """One debugging service as the editor sees it."""

    service: str
    launch: DebugLaunch
    local_port: int


def publish(root: Path, attaches: Sequence[Attach]) -> list[str]:
    """Merge the services' configurations into ``root/.vscode/launch.json``; the lines to print."""
    if not attaches:
        return []
    configs = [configuration(a.service, a.launch, a.local_port) for a in attaches]
    path = root / LAUNCH_JSON
    try:
        text = path.read_text() if path.exists() else None
    except OSError:
        text = ""
    merged = None if text == "" and path.exists() else merge_launch_json(text, configs)
    lines = []
    if merged is not None and merged != text:
        try:
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f".{path.name}.innerloop-tmp")
            tmp.write_text(merged)
            tmp.replace(path)
            lines.append(f"debug: {LAUNCH_JSON} has {', '.join(repr(c['name']) for c in configs)}")
        except OSError as err:
            merged = None
            lines.append(f"debug: could not write {LAUNCH_JSON} ({err.strerror})")
    elif merged is None:
        lines.append(f"debug: {LAUNCH_JSON} left as it is (it cannot be rewritten keeping its comments); add:")
        lines.extend("  " + json.dumps(c) for c in configs)
    for a in attaches:
        lines.append(f"{a.service}: debugger ({a.launch.language}) on 127.0.0.1:{a.local_port}")
        restart = "re-attaches by itself" if a.launch.launch_json.get("restart") is True else "attach again (F5)"
        lines.append(
            f"  VS Code: Run and Debug > {configuration_name(a.service)!r}; a sync restarts the process: {restart}"
        )
        lines.append(f"  {a.launch.note.replace(f':{a.launch.port}', f':{a.local_port}')}")
    return lines
