"""Each language's debug launch from the container's original command, and `auto` detection."""

from __future__ import annotations

import pytest

from innerloop.debug.languages import (
    DebugError,
    DebugLaunch,
    detect_language,
    language_of_files,
    launch_for,
    register,
    unregister,
)
from innerloop.debug.python import DEBUGPY, split_python

MAPPINGS = [("backend", "/app")]


def launch(language: str, original: list[str], *, wait: bool = False, port: int | None = None) -> DebugLaunch:
    return launch_for(language, original, port=port, wait=wait, mappings=MAPPINGS)


@pytest.mark.parametrize(
    ("original", "interpreter", "program"),
    [
        (["/usr/bin/python3", "/app/app.py"], ["/usr/bin/python3"], ["/app/app.py"]),
        (
            ["python", "-u", "-X", "dev", "app.py", "--port", "1"],
            ["python", "-u", "-X", "dev"],
            ["app.py", "--port", "1"],
        ),
        (["python3.12", "-m", "flask", "run"], ["python3.12"], ["-m", "flask", "run"]),
        (["python3", "-c", "print(1)"], ["python3"], ["-c", "print(1)"]),
        (["gunicorn", "app:app"], ["python3"], ["-m", "gunicorn", "app:app"]),
        (["/app/.venv/bin/uvicorn", "main:app"], ["/app/.venv/bin/python3"], ["-m", "uvicorn", "main:app"]),
        (["/app/manage.py", "runserver"], ["/app/python3"], ["/app/manage.py", "runserver"]),
    ],
)
def test_python_runs_the_apps_own_interpreter(original: list[str], interpreter: list[str], program: list[str]) -> None:
    assert split_python(original) == (interpreter, program)


@pytest.mark.parametrize("original", [["python3"], ["python3", "-u"], ["python3", "-m"], ["myserver", "--port", "1"]])
def test_python_without_a_program_says_what_to_set(original: list[str]) -> None:
    with pytest.raises(DebugError, match="command"):
        split_python(original)


def test_python_launch_listens_on_loopback_and_uses_the_pure_python_debugpy() -> None:
    got = launch("python", ["/usr/bin/python3", "/app/app.py"], wait=True)
    assert got.command == [
        "/usr/bin/python3",
        DEBUGPY,
        "--listen",
        "127.0.0.1:5678",
        "--wait-for-client",
        "/app/app.py",
    ]
    assert got.env["PYDEVD_USE_CYTHON"] == "NO"
    assert "PYTHONPATH" not in got.env  # started by path: the app's own PYTHONPATH is left alone
    assert got.tools == ("debugpy",)
    assert got.launch_json["connect"] == {"host": "127.0.0.1", "port": 5678}
    assert got.launch_json["pathMappings"] == [{"localRoot": "${workspaceFolder}/backend", "remoteRoot": "/app"}]


def test_gunicorn_workers_are_not_killed_while_paused() -> None:
    got = launch("python", ["gunicorn", "--workers", "2", "--timeout", "30", "app:app"])
    assert got.command[-2:] == ["--timeout", "0"]  # last wins over the image's own --timeout
    assert got.launch_json["subProcess"] is True  # workers are forked: the editor attaches to each


def test_node_inspector_on_nodes_own_argv() -> None:
    got = launch("node", ["node", "--inspect=0.0.0.0:9229", "src/server.js"], port=9300)
    assert got.command == ["node", "--inspect=127.0.0.1:9300", "src/server.js"]
    assert got.launch_json["port"] == 9300 and got.launch_json["restart"] is True
    assert got.launch_json["remoteRoot"] == "/app"
    assert launch("node", ["node", "server.js"], wait=True).command[1] == "--inspect-brk=127.0.0.1:9229"


def test_node_through_a_runner_is_refused_with_what_to_set() -> None:
    with pytest.raises(DebugError, match="node SCRIPT"):
        launch("node", ["npm", "start"])


def test_jvm_through_java_tool_options_keeps_the_command() -> None:
    got = launch("java", ["java", "-jar", "/app.jar"], wait=True)
    assert got.command == ["java", "-jar", "/app.jar"] and not got.replaces_command
    assert got.env == {
        "JAVA_TOOL_OPTIONS": "-agentlib:jdwp=transport=dt_socket,server=y,suspend=y,address=127.0.0.1:5005"
    }
    assert "suspend=n" in launch("java", ["java", "-jar", "/app.jar"]).env["JAVA_TOOL_OPTIONS"]


def test_an_unknown_language_is_refused() -> None:
    with pytest.raises(DebugError, match="no debugger for 'cobol'"):
        launch("cobol", ["/app/run"])


@pytest.mark.parametrize(
    ("command", "files", "language"),
    [
        (["/usr/bin/python3", "/app/app.py"], [], "python"),
        (["gunicorn", "app:app"], [], "python"),
        (["node", "src/server.js"], [], "node"),
        (["java", "-jar", "x.jar"], [], "java"),
        (["/app/server"], ["main.go", "go.mod"], "go"),
        (["/app/server"], ["app.py", "util.py", "package.json"], "node"),  # a project file outweighs sources
        (["/app/server"], ["README.md"], None),
        (["/app/start.py"], [], "python"),
    ],
)
def test_auto_detection(command: list[str], files: list[str], language: str | None) -> None:
    assert detect_language(command, files) == language


def test_a_registered_detector_and_launcher_plug_in() -> None:
    def fake(original: list[str], *, port: int, wait: bool, mappings: list[tuple[str, str]]) -> DebugLaunch:
        return DebugLaunch(command=["dbg", *original], env={}, port=port, tools=(), launch_json={}, note="")

    register("fake-lang", fake, detector=lambda command, files: command[0] == "/fake")
    try:
        assert detect_language(["/fake"], []) == "fake-lang"
        assert launch_for("fake-lang", ["/fake"], port=None, wait=False, mappings=[]).command == ["dbg", "/fake"]
    finally:
        unregister("fake-lang")


def test_language_of_files_is_none_without_sources() -> None:
    assert language_of_files([]) is None
