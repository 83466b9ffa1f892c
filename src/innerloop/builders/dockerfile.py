"""What the built-in builder makes of a Dockerfile: a base plus files and settings (pure).

The lines are split by ``dockerfile-parse`` (containerbuildsystem's parser:
continuations, comments, instruction names, line numbers); what the
instructions *mean* is decided here, for the subset that needs no container
runtime: FROM, ARG (global and per stage, build args, the ``TARGET*``
platform args), WORKDIR, COPY and local ADD (``--chown``, ``--chmod``,
``--link``), ENV, USER, EXPOSE, LABEL, ENTRYPOINT and CMD.

The built-in builder must be exact or say no. Anything it cannot reproduce
as Docker would (RUN, ADD of a URL, COPY --from, a stage built on another
stage, a heredoc, an unknown flag, an instruction it does not model) raises
:class:`Unsupported`, naming ``file:line``; in ``auto`` mode that refusal
is what sends the build to a real builder. Other mistakes (no FROM, a
malformed ENV) are plain :class:`DockerfileError`, which every builder
would report.

Variables expand as Docker's shell lexer does for the forms supported here:
``$NAME``, ``${NAME}``, ``${NAME:-word}`` and ``${NAME:+word}``; an
undefined name is empty. Other forms, and a ``$`` next to quotes or an
escape (where Docker's quoting rules decide), are refused rather than
guessed. ENTRYPOINT and CMD are never expanded: the container's shell (or
nothing, in exec form) sees them at run time.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from dockerfile_parse import DockerfileParser

DEFAULT_PLATFORM = "linux/amd64"


class DockerfileError(ValueError):
    """A Dockerfile that cannot be built as written; the message names file:line."""


class Unsupported(DockerfileError):
    """A valid Dockerfile the built-in builder cannot build exactly; a real builder can."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what} needs a real builder")
        self.where = where
        self.what = what


@dataclass(frozen=True, kw_only=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    line: int
    chown: str | None = None  # "uid[:gid]" or names, resolved against the base's /etc/passwd and /etc/group
    chmod: int | None = None
    add: bool = False  # ADD: a local archive would be extracted, which the builder refuses


@dataclass(kw_only=True)
class Recipe:
    base: str = ""
    base_line: int = 0  # the line of the FROM that names the base
    stage: str = ""
    workdir: str = ""
    user: str = ""
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    copies: list[Copy] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Instruction:
    line: int
    word: str  # as written
    value: str

    @property
    def name(self) -> str:
        return self.word.upper()


def _as_docker_reads_it(text: str) -> str:
    """Two details where dockerfile-parse and Docker differ, evened out with the line numbers kept.

    Docker skips a blank line inside a continuation (with a warning) and
    accepts a continuation on the last line; dockerfile-parse ends the
    instruction at the blank line and drops the last one. A blank line inside
    a continuation becomes a comment (which both skip there), and the last
    backslash is removed.
    """
    lines = text.splitlines()
    continued = False
    for number, line in enumerate(lines):
        stripped = line.strip()
        if continued and not stripped:
            lines[number] = "#"
            continue
        if stripped.startswith("#"):
            continue
        continued = stripped.endswith("\\")
    if continued:
        last = max(i for i, line in enumerate(lines) if line.strip() and not line.strip().startswith("#"))
        lines[last] = lines[last].rstrip()[:-1]
    return "\n".join(lines) + "\n"


def _instructions(text: str, filename: str) -> list[_Instruction]:
    text = _as_docker_reads_it(text)
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode("utf-8", "surrogateescape")), env_replace=False)
    out: list[_Instruction] = []
    directives = True
    raw_lines = text.splitlines()
    for item in parser.structure:
        line = int(item["startline"]) + 1
        if item["instruction"] == "COMMENT":
            directive = re.fullmatch(r"\s*(\w+)\s*=\s*(.*?)\s*", str(item["value"]))
            if directives and directive and directive.group(1).lower() == "escape":
                raise Unsupported(f"{filename}:{line}", "the escape parser directive")
            continue
        directives = False
        word = raw_lines[line - 1].split(None, 1)[0] if line <= len(raw_lines) and raw_lines[line - 1].split() else ""
        value = str(item["value"]).strip()
        out.append(_Instruction(line, word or str(item["instruction"]), value))
    return out


_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-+])(?P<word>.*))?", re.S)


def expand(value: str, variables: Mapping[str, str], *, where: str) -> str:
    """Substitute variables as Docker does for the supported forms; refuse the others."""
    if "$" not in value:
        return value
    if re.search(r"['\\]", value):
        raise Unsupported(where, "a variable next to single quotes or escapes")
    if "$" in _VARIABLE.sub("", value):
        raise Unsupported(where, "a '$' that is not a variable")

    def sub(m: re.Match[str]) -> str:
        if m.group("plain") is not None:
            return variables.get(m.group("plain"), "")
        braced = _BRACED.fullmatch(m.group("braced"))
        if braced is None:
            raise Unsupported(where, f"the variable form {m.group(0)}")
        current = variables.get(braced.group("name"), "")
        if braced.group("op") == ":-":
            return current or braced.group("word")
        if braced.group("op") == ":+":
            return braced.group("word") if current else ""
        return current

    return _VARIABLE.sub(sub, value)


def _command(value: str) -> list[str]:
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return ["/bin/sh", "-c", value]  # Docker: not a JSON array, so shell form
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            raise ValueError("exec form must be a JSON array of strings")
        return parsed
    return ["/bin/sh", "-c", value]


def _pairs(value: str) -> dict[str, str]:
    parts = shlex.split(value)
    if len(parts) >= 2 and "=" not in parts[0]:  # legacy `ENV KEY value`
        return {parts[0]: " ".join(parts[1:])}
    if len(parts) == 1 and "=" not in parts[0]:
        raise ValueError(f"expected KEY=value, got {parts[0]!r}")
    pairs = {}
    for part in parts:
        key, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=value, got {part!r}")
        pairs[key] = val
    return pairs


def _args(value: str) -> list[tuple[str, str | None]]:
    """``ARG A=1 B`` -> [("A", "1"), ("B", None)]."""
    out: list[tuple[str, str | None]] = []
    for part in shlex.split(value):
        key, sep, default = part.partition("=")
        if not key:
            raise ValueError("ARG needs a name")
        out.append((key, default if sep else None))
    if not out:
        raise ValueError("ARG needs a name")
    return out


def _platform_args(platform: str) -> dict[str, str]:
    parts = platform.split("/")
    os_, arch = parts[0], parts[1] if len(parts) > 1 else ""
    variant = parts[2] if len(parts) > 2 else ""
    values = {"PLATFORM": platform, "OS": os_, "ARCH": arch, "VARIANT": variant}
    out = {f"TARGET{k}": v for k, v in values.items()}
    out.update({f"BUILD{k}": v for k, v in values.items()})
    return out


_COPY_FLAGS = re.compile(r"^((?:--\S+\s+)*)(.*)$", re.S)


def _copy(instr: _Instruction, value: str, *, workdir: str, where: str) -> Copy:
    flags_text, rest = _COPY_FLAGS.match(value).groups()  # type: ignore[union-attr]  # the pattern always matches
    chown: str | None = None
    chmod: int | None = None
    for flag in flags_text.split():
        name, _, arg = flag.partition("=")
        if name == "--chown" and arg:
            chown = arg
        elif name == "--chmod" and arg:
            if not re.fullmatch(r"[0-7]{3,4}", arg):
                raise Unsupported(where, f"{instr.name} --chmod={arg} (only octal modes are built in)")
            chmod = int(arg, 8)
        elif name == "--link" and arg in ("", "true", "false"):
            pass  # a layer-reuse hint: the files and their modes are the same
        else:
            raise Unsupported(where, f"{instr.name} {flag}")
    if rest.startswith("<<"):
        raise Unsupported(where, f"{instr.name} with a heredoc")
    parts: list[str] = []
    if rest.startswith("["):
        try:
            parsed = json.loads(rest)
        except json.JSONDecodeError:
            parsed = None  # Docker: not a JSON array, so the shell form
        if parsed is not None:
            if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
                raise ValueError("the JSON form must be an array of strings")
            parts = parsed
    if not parts:
        parts = shlex.split(rest)
    if len(parts) < 2:
        raise DockerfileError(f"{where}: {instr.name} needs at least a source and a destination")
    sources = tuple(parts[:-1])
    if instr.name == "ADD":
        for source in sources:
            if re.match(r"^[a-z][a-z0-9+.-]*://", source, re.I) or source.startswith("git@"):
                raise Unsupported(where, f"ADD of a URL ({source})")
    dest = parts[-1]
    if not dest.startswith("/"):
        dest = f"{workdir or ''}/{dest}"
    return Copy(sources=sources, dest=dest, line=instr.line, chown=chown, chmod=chmod, add=instr.name == "ADD")


_FROM = re.compile(r"^(?P<flags>(?:--\S+\s+)*)(?P<image>\S+)(?:\s+[Aa][Ss]\s+(?P<name>\S+))?\s*$")


def parse(
    text: str,
    *,
    filename: str = "Dockerfile",
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    platform: str | None = None,
) -> Recipe:
    """The recipe of the stage to build (``target``, else the last), or an error naming file:line."""
    given = dict(build_args or {})
    instructions = _instructions(text, filename)
    if not any(instr.name == "FROM" for instr in instructions):
        raise DockerfileError(f"{filename}: no FROM line")
    builtin_args = _platform_args(platform or DEFAULT_PLATFORM)
    global_args: dict[str, str] = {}
    stages: list[tuple[_Instruction, list[_Instruction]]] = []
    for instr in instructions:
        where = f"{filename}:{instr.line}"
        if instr.name == "FROM":
            stages.append((instr, []))
        elif stages:
            stages[-1][1].append(instr)
        elif instr.name == "ARG":
            try:
                declared = _args(instr.value)
            except ValueError as err:
                raise DockerfileError(f"{where}: ARG: {err}") from err
            for key, default in declared:
                fallback = builtin_args.get(key, "") if default is None else default
                global_args[key] = given.get(key, expand(fallback, global_args, where=where))
        else:
            raise DockerfileError(f"{where}: {instr.word} before the first FROM (only ARG may come first)")
    if not stages:
        raise DockerfileError(f"{filename}: no FROM line")

    names: list[str] = []
    for from_instr, _ in stages:
        match = _FROM.match(from_instr.value)
        names.append((match.group("name") or "").lower() if match else "")
    index = len(stages) - 1
    if target is not None:
        if target.lower() not in names:
            known = ", ".join(n for n in names if n) or "none is named"
            raise DockerfileError(f"{filename}: no stage named {target!r} to build (stages: {known})")
        index = names.index(target.lower())
    return _stage(
        stages[index],
        earlier=names[:index],
        global_args=global_args,
        given=given,
        builtin_args=builtin_args,
        filename=filename,
    )


def _stage(
    stage: tuple[_Instruction, list[_Instruction]],
    *,
    earlier: list[str],
    global_args: dict[str, str],
    given: dict[str, str],
    builtin_args: dict[str, str],
    filename: str,
) -> Recipe:
    from_instr, body = stage
    where = f"{filename}:{from_instr.line}"
    recipe = Recipe()
    match = _FROM.match(expand(from_instr.value, global_args, where=where)) if from_instr.value else None
    if match is None:
        raise DockerfileError(f"{where}: FROM needs an image")
    for flag in match.group("flags").split():
        # FROM --platform=P is exact when P is the platform being built (the base is fetched for it).
        if flag != f"--platform={builtin_args['TARGETPLATFORM']}":
            raise Unsupported(where, f"FROM {flag}")
    recipe.base = match.group("image")
    recipe.base_line = from_instr.line
    recipe.stage = match.group("name") or ""
    if recipe.base.lower() in earlier:
        raise Unsupported(where, f"FROM {recipe.base} (a stage built on another stage)")
    args: dict[str, str] = {}
    for instr in body:
        where = f"{filename}:{instr.line}"
        name, value = instr.name, instr.value
        try:
            if name == "ARG":
                for key, default in _args(value):
                    if key in given:
                        args[key] = given[key]
                    elif default is not None:
                        args[key] = expand(default, {**args, **recipe.env}, where=where)
                    else:
                        args[key] = global_args.get(key, builtin_args.get(key, ""))
                continue
            if name in ("ENTRYPOINT", "CMD"):
                # Like docker: these see variables at run time. An inherited CMD is reset by an
                # ENTRYPOINT of this file; a CMD of this file is kept.
                if name == "ENTRYPOINT":
                    recipe.entrypoint = _command(value)
                else:
                    recipe.cmd = _command(value)
                continue
            if name == "RUN":
                raise Unsupported(where, "RUN")
            if name in ("COPY", "ADD") and re.search(r"(?:^|\s)--from(?:=|\s)", value):
                raise Unsupported(where, f"{name} --from")
            variables = {**args, **recipe.env}
            if name == "FROM":  # unreachable: stages are split on FROM
                raise DockerfileError(f"{where}: unexpected FROM")
            if name == "WORKDIR":
                path = expand(value, variables, where=where)
                if not path:
                    raise DockerfileError(f"{where}: WORKDIR needs a path")
                recipe.workdir = posixpath.normpath(posixpath.join(recipe.workdir or "/", path))
            elif name in ("COPY", "ADD"):
                copied = expand(value, variables, where=where)
                recipe.copies.append(_copy(instr, copied, workdir=recipe.workdir, where=where))
            elif name in ("ENV", "LABEL"):
                if "$" in value and re.search(r"['\\]", value):
                    raise Unsupported(where, f"{name} with a variable and single quotes or escapes")
                # Every value of the line sees the variables as they were before it, as in Docker.
                expanded = {k: expand(v, variables, where=where) for k, v in _pairs(value).items()}
                (recipe.env if name == "ENV" else recipe.labels).update(expanded)
            elif name == "USER":
                recipe.user = expand(value, variables, where=where)
            elif name == "EXPOSE":
                recipe.exposed.extend(expand(value, variables, where=where).split())
            elif name in ("HEALTHCHECK", "STOPSIGNAL", "VOLUME", "SHELL", "ONBUILD", "MAINTAINER"):
                raise Unsupported(where, name)
            else:
                raise DockerfileError(f"{where}: unsupported instruction {instr.word}")
        except DockerfileError:
            raise
        except ValueError as err:
            raise DockerfileError(f"{where}: {name}: {err}") from err
    return recipe
