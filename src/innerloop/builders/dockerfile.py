"""A Dockerfile subset that builds without a daemon: parsing is pure.

Supported: FROM, WORKDIR, COPY (files and directories from the context),
ENV, USER, EXPOSE, LABEL, ENTRYPOINT and CMD (exec form or shell form), ARG
(with defaults). ``RUN`` needs a container runtime and is refused with a clear
message: dev images here are a base plus the app's files, which is also what
keeps them rebuildable in milliseconds.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field


class DockerfileError(ValueError):
    """A Dockerfile this builder cannot build; the message names file:line."""


@dataclass(frozen=True, kw_only=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    line: int


@dataclass(kw_only=True)
class Recipe:
    base: str = ""
    workdir: str = ""
    user: str = ""
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    copies: list[Copy] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continuation lines; drop comments and blanks. Yields (first line number, text)."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also inside a continuation, as docker does
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        out.append((start, " ".join(buf).strip()))
        buf = []
    if buf:
        out.append((start, " ".join(buf).strip()))
    return out


def _command(value: str) -> list[str]:
    if value.startswith("["):
        parsed = json.loads(value)
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            raise ValueError("exec form must be a JSON array of strings")
        return parsed
    return ["/bin/sh", "-c", value]


def _pairs(value: str) -> dict[str, str]:
    parts = shlex.split(value)
    if len(parts) >= 2 and "=" not in parts[0]:  # legacy `ENV KEY value`
        return {parts[0]: " ".join(parts[1:])}
    pairs = {}
    for part in parts:
        key, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=value, got {part!r}")
        pairs[key] = val
    return pairs


_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _expand(value: str, variables: dict[str, str]) -> str:
    """Substitute ``$NAME`` and ``${NAME}`` that are defined; leave the others as written."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return variables.get(name, m.group(0))

    return _VARIABLE.sub(sub, value)


def parse(text: str, *, filename: str = "Dockerfile") -> Recipe:
    recipe = Recipe()
    args: dict[str, str] = {}
    for line, content in _logical_lines(text):
        word, _, rest = content.partition(" ")
        instr = word.upper()
        rest = rest.strip()
        where = f"{filename}:{line}"
        try:
            if instr == "ARG":
                key, _, default = rest.partition("=")
                args[key] = default
                continue
            if instr not in ("ENTRYPOINT", "CMD"):  # like docker: these see variables at run time
                rest = _expand(rest, {**args, **recipe.env})
            if instr == "FROM":
                if recipe.base:
                    raise DockerfileError(f"{where}: multi-stage builds are not supported; use one FROM")
                if not rest:
                    raise DockerfileError(f"{where}: FROM needs an image")
                recipe.base = next((w for w in rest.split() if not w.startswith("--")), "")
                if not recipe.base:
                    raise DockerfileError(f"{where}: FROM needs an image")
            elif instr == "WORKDIR":
                recipe.workdir = rest if rest.startswith("/") else f"{recipe.workdir or ''}/{rest}"
            elif instr in {"COPY", "ADD"}:
                parts = (
                    [p for p in _command(rest) if not p.startswith("--")]
                    if rest.startswith("[")
                    else [p for p in shlex.split(rest) if not p.startswith("--")]
                )
                if len(parts) < 2:
                    raise DockerfileError(f"{where}: {instr} needs at least a source and a destination")
                dest = parts[-1]
                if not dest.startswith("/"):
                    dest = f"{recipe.workdir or ''}/{dest}"
                recipe.copies.append(Copy(sources=tuple(parts[:-1]), dest=dest, line=line))
            elif instr == "ENV":
                recipe.env.update(_pairs(rest))
            elif instr == "LABEL":
                recipe.labels.update(_pairs(rest))
            elif instr == "USER":
                recipe.user = rest
            elif instr == "EXPOSE":
                recipe.exposed.extend(rest.split())
            elif instr == "ENTRYPOINT":
                # An inherited CMD is reset by the image build; a CMD of this file is kept, as docker does.
                recipe.entrypoint = _command(rest)
            elif instr == "CMD":
                recipe.cmd = _command(rest)
            elif instr == "RUN":
                raise DockerfileError(
                    f"{where}: RUN is not supported by innerloop's daemonless builder; "
                    "put build steps in the base image or use a custom build command"
                )
            else:
                raise DockerfileError(f"{where}: unsupported instruction {word}")
        except (ValueError, json.JSONDecodeError) as err:
            if isinstance(err, DockerfileError):
                raise
            raise DockerfileError(f"{where}: {instr}: {err}") from err
    if not recipe.base:
        raise DockerfileError(f"{filename}: no FROM line")
    return recipe
