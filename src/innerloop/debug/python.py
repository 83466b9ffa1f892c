"""Python under debugpy, run by the app's own interpreter (pure).

debugpy is carried in the agent image (:mod:`innerloop.debug.tools`) and
started by path, ``python /.innerloop/tools/debugpy/debugpy --listen ...``,
so the app's ``PYTHONPATH`` stays its own. Only its pure-Python code is
carried: ``PYDEVD_USE_CYTHON=NO`` makes pydevd skip the compiled speedups,
so one copy serves every interpreter from 3.8 to 3.13, on Debian, distroless
or any other image.

Forking servers: debugpy follows ``fork`` (subprocess support is on by
default in an attach), so a gunicorn worker reports itself to the adapter
and the editor attaches to it as a child session (VS Code does this by
itself; :mod:`tests.e2e.dap` shows the protocol). gunicorn also gets
``--timeout 0``: its arbiter would otherwise kill a worker paused at a
breakpoint for longer than 30 s.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from innerloop.debug.languages import (
    _PYTHON,
    LOOPBACK,
    PYTHON_SCRIPTS,
    TOOLS_ROOT,
    DebugError,
    DebugLaunch,
    path_mappings,
    register,
)

DEBUGPY = f"{TOOLS_ROOT}/debugpy/debugpy"
ENV = {
    "PYDEVD_USE_CYTHON": "NO",  # the carried copy has no compiled speedups for the app's interpreter
    "PYDEVD_USE_FRAME_EVAL": "NO",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # no warning about frozen modules on 3.11+
    "PYTHONDONTWRITEBYTECODE": "1",  # /.innerloop is read-only
}
# Interpreter options that take a value (``python -X dev app.py``).
_VALUE_OPTIONS = {"-X", "-W", "-Q"}


def split_python(original: list[str]) -> tuple[list[str], list[str]]:
    """``(interpreter and its options, the program debugpy runs)`` for an original command.

    ``python [opts] app.py ARGS`` -> ``python [opts]`` + ``app.py ARGS``;
    ``python -m mod ARGS`` keeps ``-m mod``; a server's console script
    (``gunicorn ARGS``) becomes ``python3 -m gunicorn ARGS`` with the
    ``python3`` beside it (``/app/.venv/bin/gunicorn`` -> ``/app/.venv/bin/python3``);
    any other program by path is run as a Python script (its shebang says so).
    """
    program = PurePosixPath(original[0])
    if _PYTHON.match(program.name):
        interpreter = [original[0]]
        rest = original[1:]
        i = 0
        while i < len(rest):
            arg = rest[i]
            if arg in ("-m", "-c"):
                if i + 1 >= len(rest):
                    break
                return interpreter + rest[:i], rest[i:]
            if arg == "-":
                break
            if not arg.startswith("-"):
                return interpreter + rest[:i], rest[i:]
            i += 2 if arg in _VALUE_OPTIONS else 1
        raise DebugError(
            f"{' '.join(original)!r} starts no program (a script, -m MODULE or -c CODE) to debug: "
            "set the container's command to the program"
        )
    sibling = "python3" if str(program.parent) in (".", "") else str(program.parent / "python3")
    if program.name in PYTHON_SCRIPTS:
        return [sibling], ["-m", PYTHON_SCRIPTS[program.name], *original[1:]]
    if "/" not in original[0]:
        raise DebugError(
            f"{original[0]!r} is not a Python interpreter or a known Python server: set the container's "
            f"command to `python3 -m MODULE` or to the script's full path"
        )
    return [sibling], original


def python_launch(original: list[str], *, port: int, wait: bool, mappings: list[tuple[str, str]]) -> DebugLaunch:
    interpreter, program = split_python(original)
    if program[:2] == ["-m", "gunicorn"]:
        program = [*program, "--timeout", "0"]  # last wins: a paused worker is not a stuck one
    listen = ["--listen", f"{LOOPBACK}:{port}", *(["--wait-for-client"] if wait else [])]
    config: dict[str, object] = {
        "type": "debugpy",
        "request": "attach",
        "connect": {"host": LOOPBACK, "port": port},
        "pathMappings": path_mappings(mappings),
        "justMyCode": True,
        "subProcess": True,
    }
    where = ", ".join(f"{local or '.'} -> {remote}" for local, remote in mappings) or "none"
    return DebugLaunch(
        command=[*interpreter, DEBUGPY, *listen, *program],
        env=dict(ENV),
        port=port,
        tools=("debugpy",),
        launch_json=config,
        note=f"PyCharm and other DAP clients: attach to debugpy at {LOOPBACK}:{port}, path mappings {where}",
        language="python",
    )


register("python", python_launch)
