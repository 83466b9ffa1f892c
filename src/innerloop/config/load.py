"""Reading ``innerloop.yaml``: every mistake comes back as ``file:line:col``.

pydantic knows *what* is wrong (``loc``: a path of keys and indices) but not
*where* in the file; PyYAML forgets positions once it has built Python
objects. ruamel.yaml's round-trip loader keeps the line and column of every
key and item, so the loader turns its tree into plain data plus a table of
positions by path, validates the plain data, and looks each error's path up
in the table. The plain data matters: the models never hold ruamel's
``CommentedMap``/``ScalarString`` subclasses, only ``dict``/``list``/``str``.

Error lines are made for terminals and editors (``file:line:col:`` is what
they link), use the YAML spelling of keys (``dependsOn``, never
``depends_on``), and say what was expected, derived from the JSON Schema so
the error and the editor's hover text never disagree.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean

from innerloop.config.model import InconsistentProject, Problem, Project, local_paths
from innerloop.config.schema import json_schema

CONFIG_FILE = "innerloop.yaml"

# Keys and indices from the root of the document to a value, as the YAML has them.
YamlPath = tuple[Any, ...]
# 1-based (line, column).
Position = tuple[int, int]


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a config file, where it is, and what was expected."""

    file: str
    line: int
    column: int
    path: str  # dotted, in the YAML spelling; empty for problems of the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """innerloop.yaml cannot be used. ``str()`` is what to show: one problem a line."""

    def __init__(self, message: str, problems: Sequence[ConfigProblem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


def find_config(start: Path) -> Path:
    """The ``innerloop.yaml`` in ``start`` or the nearest folder above it, like git finds ``.git``."""
    start = start.absolute()
    folders = [start, *start.parents]
    for folder in folders:
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(f) for f in folders)
    raise ConfigError(
        f"no {CONFIG_FILE} in {start} or any folder above it (looked in {looked}); create one with `innerloop init`"
    )


def load_config(path: Path) -> Project:
    """Read and validate a config file; problems name the file as ``path`` is written."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"{path}: cannot read: {reason}") from None
    project = parse_config(text, file=str(path))
    problems = local_path_problems(project, path.parent)
    if problems:
        raise locate_problems(path, problems)
    return project


def local_path_problems(project: Project, folder: Path) -> list[Problem]:
    """The config's local paths that lead out of ``folder`` once symlinks are resolved.

    The spelling was checked by the model (no ``..`` out, nothing absolute);
    a symlink inside the project that points to ``~/.ssh`` leaves it all the
    same. The sync checks again where it scans (it never follows a symlink
    out of its root), since links can change after the config was read.
    """
    top = folder.resolve()
    problems = []
    for where, local in local_paths(project):
        real = (folder / local).resolve()
        if not real.is_relative_to(top):
            problems.append(
                Problem(
                    where,
                    f"{local!r} leads out of the folder of innerloop.yaml through a symlink (to {real}); "
                    "name a file or folder inside the project",
                )
            )
    return problems


def parse_config(text: str, *, file: str = CONFIG_FILE) -> Project:
    """Validate a config given as text; ``file`` is the name problems are reported under."""
    document = _parse_yaml(text, file=file)
    try:
        # populate_by_name lets Python code write depends_on=...; the file
        # must use the spelling the schema and the editor show (dependsOn).
        return Project.model_validate(document.data, by_alias=True, by_name=False)
    except ValidationError as err:
        problems = sorted(
            (p for e in err.errors() for p in _problems(e, document, file=file)),
            key=lambda p: (p.line, p.column),
        )
        raise ConfigError("\n".join(map(str, problems)), problems) from None


def locate_problems(path: Path, problems: Sequence[Problem]) -> ConfigError:
    """Problems found after the config validated (against the manifests, say), at their file:line:col."""
    try:
        document = _parse_yaml(path.read_text(encoding="utf-8"), file=str(path))
    except (OSError, UnicodeDecodeError, ConfigError):
        document = _Document(data=None, positions={})
    located = [ConfigProblem(str(path), *document.position(p.path), _dotted(p.path), p.message) for p in problems]
    return ConfigError("\n".join(map(str, located)), located)


@dataclass(frozen=True)
class _Where:
    key: Position | None
    value: Position


@dataclass(frozen=True)
class _Document:
    data: object
    positions: dict[YamlPath, _Where]

    def position(self, path: YamlPath, *, of_key: bool = False) -> Position:
        # A merged key (``<<: *base``) has no position of its own: use the
        # nearest enclosing value that has one.
        for n in range(len(path), -1, -1):
            where = self.positions.get(path[:n])
            if where is not None:
                return where.key if of_key and n == len(path) and where.key else where.value
        return (1, 1)


def _parse_yaml(text: str, *, file: str) -> _Document:
    yaml = YAML(typ="rt")
    try:
        root = yaml.load(text)
    except YAMLError as err:
        line, column = _error_position(err, text)
        message = f"invalid YAML: {_yaml_reason(err)}"
        raise ConfigError(
            f"{file}:{line}:{column}: {message}", [ConfigProblem(file, line, column, "", message)]
        ) from None
    positions: dict[YamlPath, _Where] = {}
    start = (root.lc.line + 1, root.lc.col + 1) if isinstance(root, CommentedMap | CommentedSeq) else (1, 1)
    positions[()] = _Where(key=None, value=start)
    return _Document(data=_plain(root, (), positions), positions=positions)


def _plain(node: object, path: YamlPath, positions: dict[YamlPath, _Where]) -> object:
    """ruamel's round-trip tree as dict/list/str/int/float/bool/None, recording positions."""
    if isinstance(node, CommentedMap):
        mapping: dict[object, object] = {}
        own = (node.lc.line + 1, node.lc.col + 1)
        for raw_key, value in node.items():
            key = _scalar(raw_key)
            line_col = node.lc.data.get(raw_key)
            key_at = (line_col[0] + 1, line_col[1] + 1) if line_col else own
            value_at = (line_col[2] + 1, line_col[3] + 1) if line_col else own
            # A null value (``key:``) has no token; ruamel points past it, often onto the next line.
            positions[(*path, key)] = _Where(key=key_at, value=key_at if value is None else value_at)
            mapping[key] = _plain(value, (*path, key), positions)
        return mapping
    if isinstance(node, CommentedSeq):
        items: list[object] = []
        for i, value in enumerate(node):
            line_col = node.lc.data.get(i)
            at = (line_col[0] + 1, line_col[1] + 1) if line_col else (node.lc.line + 1, node.lc.col + 1)
            positions[(*path, i)] = _Where(key=None, value=at)
            items.append(_plain(value, (*path, i), positions))
        return items
    return _scalar(node)


def _scalar(value: object) -> object:
    # ruamel subclasses str/int/float to remember quoting and formatting; a
    # ScalarBoolean is an int subclass, so it is checked before int.
    if isinstance(value, bool | ScalarBoolean):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def _error_position(err: YAMLError, text: str) -> Position:
    if isinstance(err, MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        if mark is not None:
            return (mark.line + 1, mark.column + 1)
    if isinstance(err, ReaderError):
        before = text[: err.position]
        return (before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1)
    return (1, 1)


def _yaml_reason(err: YAMLError) -> str:
    if isinstance(err, MarkedYAMLError) and err.problem:
        reason = str(err.problem)
        if err.context and err.context_mark is not None and err.context_mark != err.problem_mark:
            reason += f" ({err.context} at {err.context_mark.line + 1}:{err.context_mark.column + 1})"
        return reason
    if isinstance(err, ReaderError):
        character = chr(err.character) if isinstance(err.character, int) else err.character
        return f"character {character!r} is not allowed in YAML"
    return str(err).strip().splitlines()[0]


def _problems(error: ErrorDetails, document: _Document, *, file: str) -> list[ConfigProblem]:
    context = error.get("ctx") or {}
    cause = context.get("error")
    if isinstance(cause, InconsistentProject):
        # Problems between services, found after the structure validated:
        # their paths are already in the YAML spelling.
        return [ConfigProblem(file, *document.position(p.path), _dotted(p.path), p.message) for p in cause.problems]
    kind = error["type"]
    path, position = _locate(error["loc"], document, kind)
    return [ConfigProblem(file, *position, _dotted(path), _describe_error(error, path))]


def _locate(loc: tuple[int | str, ...], document: _Document, kind: str) -> tuple[YamlPath, Position]:
    """pydantic's ``loc`` as a path in the YAML, and where to point for it."""
    node = document.data
    path: YamlPath = ()
    for i, item in enumerate(loc):
        if item == "[key]":  # the key of a mapping entry is wrong, not its value
            return path, document.position(path, of_key=True)
        found, child = _child(node, item)
        if found:
            node, path = child, (*path, item)
        elif kind == "missing" and i == len(loc) - 1:
            # A missing key has no position: point at the mapping that lacks it.
            return (*path, item), document.position(path)
        # else: a tag pydantic adds (union member, validator), not part of the YAML
    return path, document.position(path, of_key=kind == "extra_forbidden")


def _child(node: object, item: object) -> tuple[bool, object]:
    if isinstance(node, dict) and item in node:
        return True, node[item]
    if isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
        return True, node[item]
    return False, None


def _dotted(path: YamlPath) -> str:
    def part(item: object) -> str:
        text = str(item)
        return json.dumps(text) if not text or any(c in text for c in ". \t\"'") else text

    return ".".join(part(item) for item in path)


# Error kinds whose message is about the input's type: say what it got and what fits.
_TYPE_ERRORS = {"model_type", "dict_type", "list_type", "literal_error", "int_from_float", "bool_parsing"}


def _describe_error(error: ErrorDetails, path: YamlPath) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == "missing":
        return f"required, but missing (expected: {_expected(path)})"
    if kind == "extra_forbidden":
        allowed = _keys(path[:-1])
        close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"unknown key{hint} (expected one of: {', '.join(allowed)})"
    if kind == "value_error" and "error" in context:
        return str(context["error"])
    if not path and error["input"] is None:
        return f"the file is empty (expected: {_expected(path)})"
    message = error["msg"].replace(" after validation", "")
    if kind in ("model_type", "dict_type"):
        message = "Input should be a mapping"
    if kind in _TYPE_ERRORS or kind.endswith("_type"):
        message += f", got {_shown(error['input'])}"
        if kind != "literal_error":
            message += f" (expected: {_expected(path)})"
    return message


def _shown(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return str(value)


@functools.cache
def _schema() -> dict[str, Any]:
    return json_schema()


def _subschema(path: YamlPath) -> dict[str, Any] | None:
    """The JSON Schema of the value at ``path``."""
    schema: dict[str, Any] | None = _resolve(_schema())
    for item in path:
        if schema is None:
            return None
        properties = schema.get("properties", {})
        if isinstance(item, str) and item in properties:
            schema = properties[item]
        elif isinstance(item, int) and "items" in schema:
            schema = schema["items"]
        elif isinstance(schema.get("additionalProperties"), dict):
            schema = schema["additionalProperties"]
        elif "patternProperties" in schema:
            schema = next(iter(schema["patternProperties"].values()))
        else:
            return None
        schema = _resolve(schema) if schema is not None else None
    return schema


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    # Older pydantic wraps a reference with siblings (a description) in allOf.
    if len(schema.get("allOf", ())) == 1:
        schema = schema["allOf"][0]
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        resolved: dict[str, Any] = _schema()["$defs"][ref.removeprefix("#/$defs/")]
        return resolved
    return schema


def _keys(path: YamlPath) -> list[str]:
    schema = _subschema(path)
    return list(schema.get("properties", {})) if schema else []


def _expected(path: YamlPath) -> str:
    schema = _subschema(path)
    return _describe(schema) if schema else "see `innerloop schema`"


def _describe(schema: dict[str, Any], *, plural: bool = False) -> str:
    """A JSON Schema in a few words: ``an integer from 1 to 65535 or a string``."""
    schema = _resolve(schema)
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " or ".join(json.dumps(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_describe(s, plural=plural) for s in schema["anyOf"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(_describe({"type": k}, plural=plural) for k in kind)
    if kind == "object":
        noun = "mappings" if plural else "a mapping"
        properties = list(schema.get("properties", {}))
        if properties and schema.get("maxProperties") == 1:
            return f"{noun} with one of {', '.join(properties)}"
        if properties:
            required = [p for p in properties if p in schema.get("required", [])]
            optional = [p for p in properties if p not in required]
            keys = "; ".join(
                f"{label}: {', '.join(names)}"
                for label, names in (("required", required), ("optional", optional))
                if names
            )
            return f"{noun} ({keys})"
        values = schema.get("additionalProperties")
        if not isinstance(values, dict) and "patternProperties" in schema:
            values = next(iter(schema["patternProperties"].values()))
        if isinstance(values, dict):
            return f"{noun} of names to {_describe(values, plural=True)}"
        return noun
    if kind == "array":
        items = schema.get("items")
        of = f" of {_describe(items, plural=True)}" if isinstance(items, dict) else ""
        return f"{'lists' if plural else 'a list'}{of}"
    if kind == "integer":
        noun = "integers" if plural else "an integer"
        if "minimum" in schema and "maximum" in schema:
            return f"{noun} from {schema['minimum']} to {schema['maximum']}"
        return noun
    nouns = {"string": "a string", "number": "a number", "boolean": "true or false", "null": "null"}
    plurals = {"string": "strings", "number": "numbers", "boolean": "true or false", "null": "null"}
    return (plurals if plural else nouns).get(str(kind), "a value")
