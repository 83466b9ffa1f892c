"""How each language's process runs under its debugger, and which language a service is (pure).

A debugging service keeps its image: the dev-mode patch runs
:attr:`DebugLaunch.command` (the original program under its debugger) in
place of the original command, with :attr:`DebugLaunch.env` added, and the
tools it names injected under ``/.innerloop/tools/<name>/`` by the agent's
init container (:mod:`innerloop.debug.tools`). Every debugger listens on the
pod's loopback: the CLI reaches it through a port-forward, so nothing else
in the cluster can attach, and no capability is added (Delve launches the
program as its child, so no ``SYS_PTRACE`` either).

Languages plug in through :func:`register`: Python, Node and the JVM are
here; Go registers itself from :mod:`innerloop.debug.go`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from innerloop.builders.agent_image import MOUNT_ROOT

TOOLS_ROOT = f"{MOUNT_ROOT}/tools"
LANGUAGES = ("python", "go", "node", "java")
DEFAULT_PORTS = {"python": 5678, "go": 2345, "node": 9229, "java": 5005}
LOOPBACK = "127.0.0.1"


class DebugError(ValueError):
    """A service cannot run under its debugger; the message says what to set."""


@dataclass(frozen=True)
class DebugLaunch:
    """What the agent runs instead of the original command, and how an editor attaches."""

    command: list[str]  # the argv the agent runs instead of the original command
    env: dict[str, str]  # added to the container's env
    port: int  # the debugger's port in the container (on its loopback; the CLI port-forwards to it)
    tools: tuple[str, ...]  # tool bundles it needs under /.innerloop/tools/: "debugpy", "dlv"
    launch_json: dict[str, object]  # the VS Code configuration (type/request/port/pathMappings...), without "name"
    note: str  # one line for JetBrains and others: how to attach
    language: str = ""
    replaces_command: bool = True  # False: the original command runs unchanged (the env alone enables the debugger)


class Launcher(Protocol):
    def __call__(
        self, original: list[str], *, port: int, wait: bool, mappings: list[tuple[str, str]]
    ) -> DebugLaunch: ...


# A detector looks at the original command and the synced files' relative names; True when it is its language.
Detector = Callable[[Sequence[str], Sequence[str]], bool]

_LAUNCHERS: dict[str, Launcher] = {}
_DETECTORS: dict[str, Detector] = {}
# Modules that register a language when imported (go.py is optional: a build without Delve lacks it).
_PLUGINS = ("innerloop.debug.python", "innerloop.debug.node", "innerloop.debug.jvm", "innerloop.debug.go")


def register(language: str, launcher: Launcher, *, detector: Detector | None = None) -> None:
    """Make ``language`` debuggable: its launch, and optionally how to recognise it beyond the defaults."""
    _LAUNCHERS[language] = launcher
    if detector is not None:
        _DETECTORS[language] = detector


def unregister(language: str) -> None:
    _LAUNCHERS.pop(language, None)
    _DETECTORS.pop(language, None)


def _load_plugins() -> None:
    for module in _PLUGINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def path_mappings(mappings: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """VS Code's ``pathMappings``: each local folder (relative to the project) under ``${workspaceFolder}``."""
    return [{"localRoot": workspace_path(local), "remoteRoot": remote} for local, remote in mappings]


def workspace_path(local: str) -> str:
    local = local.strip("/")
    return "${workspaceFolder}" if local in ("", ".") else f"${{workspaceFolder}}/{local}"


def launch_for(
    language: str,
    original: list[str],
    *,
    port: int | None,
    wait: bool,
    mappings: list[tuple[str, str]],
) -> DebugLaunch:
    """The debug launch of ``original`` (the container's command) for ``language``.

    ``port``: the debugger's port in the container (None: the language's
    default); ``wait``: hold the program until a debugger attaches;
    ``mappings``: (local folder, remote folder) pairs from the sync rules,
    local folders relative to the project (innerloop.yaml's folder, the
    editor's workspace), so breakpoints set in local files bind.
    """
    _load_plugins()
    launcher = _LAUNCHERS.get(language)
    if launcher is None:
        known = ", ".join(sorted(_LAUNCHERS))
        raise DebugError(f"no debugger for {language!r} in this innerloop (it debugs {known})")
    if not original:
        raise DebugError("the container has no command to run under the debugger: set `command` in the manifest")
    return launcher(list(original), port=port or DEFAULT_PORTS.get(language, 5678), wait=wait, mappings=mappings)


# ---- which language --------------------------------------------------------------------------------

_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
# Console scripts of Python servers and tools, run as `python -m MODULE` under debugpy.
PYTHON_SCRIPTS: dict[str, str] = {
    "gunicorn": "gunicorn",
    "uvicorn": "uvicorn",
    "hypercorn": "hypercorn",
    "flask": "flask",
    "celery": "celery",
    "daphne": "daphne",
    "waitress-serve": "waitress",
    "django-admin": "django",
    "fastapi": "fastapi",
    "pytest": "pytest",
    "streamlit": "streamlit",
}
_NODE = {"node", "nodejs"}
_NODE_RUNNERS = {"npm", "npx", "yarn", "pnpm", "nodemon", "ts-node", "tsx"}
_JAVA = {"java"}
_JVM_RUNNERS = {"mvn", "gradle", "./mvnw", "./gradlew", "catalina.sh", "kotlin"}
_BY_FILE = (
    ("python", (".py",), ("requirements.txt", "pyproject.toml", "setup.py", "Pipfile")),
    ("node", (".js", ".mjs", ".cjs", ".ts"), ("package.json",)),
    ("go", (".go",), ("go.mod",)),
    ("java", (".java", ".kt", ".jar"), ("pom.xml", "build.gradle", "build.gradle.kts")),
)


def _program(command: Sequence[str]) -> str:
    return PurePosixPath(command[0]).name if command else ""


def language_of_command(command: Sequence[str]) -> str | None:
    """The language the command's program says, or None (a compiled binary, a shell, an unknown name)."""
    program = _program(command)
    if _PYTHON.match(program) or program in PYTHON_SCRIPTS:
        return "python"
    if program in _NODE or program in _NODE_RUNNERS:
        return "node"
    if program in _JAVA or program in _JVM_RUNNERS or command[0] in _JVM_RUNNERS:
        return "java"
    # `./manage.py`, `/app/server.js`: run through a shebang.
    suffix = PurePosixPath(command[0]).suffix if command else ""
    for language, suffixes, _ in _BY_FILE:
        if suffix in suffixes and suffix != ".jar":
            return language
    return None


def language_of_files(files: Iterable[str]) -> str | None:
    """The language most of the synced files are in (project files count for ten), or None."""
    score = dict.fromkeys(LANGUAGES, 0)
    for name in files:
        path = PurePosixPath(name)
        for language, suffixes, projects in _BY_FILE:
            if path.name in projects:
                score[language] += 10
            elif path.suffix in suffixes:
                score[language] += 1
    best = max(score.values())
    if best == 0:
        return None
    return next(language for language in LANGUAGES if score[language] == best)


def detect_language(command: Sequence[str], files: Sequence[str]) -> str | None:
    """``auto``: the command's program first (it is what runs), then a registered detector, then the files."""
    _load_plugins()
    found = language_of_command(command)
    if found is not None:
        return found
    for language, detector in _DETECTORS.items():
        if detector(command, files):
            return language
    return language_of_files(files)
