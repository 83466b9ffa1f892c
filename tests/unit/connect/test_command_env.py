"""How a pod's variables meet this machine's environment for `innerloop run` and `intercept -- CMD`."""

from __future__ import annotations

import pytest

from innerloop.connect.context import command_environment, describes_machine, parse_env_options, withheld_line

LOCAL = {"PATH": "/home/me/.venv/bin:/usr/bin", "HOME": "/home/me", "LANG": "en_US.UTF-8", "EDITOR": "vim"}


def test_the_apps_variables_are_added_and_override_local_ones() -> None:
    decided = command_environment(
        {**LOCAL, "LOG_LEVEL": "info"}, {"BACKEND_URL": "http://backend:8080", "LOG_LEVEL": "debug"}
    )
    assert decided.env["BACKEND_URL"] == "http://backend:8080"
    assert decided.env["LOG_LEVEL"] == "debug"
    assert decided.env["EDITOR"] == "vim"  # the local environment is the base, never replaced
    assert decided.withheld == []


def test_the_machines_toolchain_and_session_stay_local() -> None:
    pod = {
        "PATH": "/usr/local/bin:/usr/bin",
        "HOME": "/root",
        "PYTHONHOME": "/.innerloop",
        "PYTHONPATH": "/app",
        "LD_LIBRARY_PATH": "/opt/lib",
        "LANG": "C.UTF-8",
    }
    decided = command_environment(LOCAL, pod)
    assert decided.env["PATH"] == LOCAL["PATH"]
    assert decided.env["HOME"] == "/home/me"
    assert decided.env["LANG"] == "en_US.UTF-8"
    for absent in ("PYTHONHOME", "PYTHONPATH", "LD_LIBRARY_PATH"):
        assert absent not in decided.env  # a container path is no path here, even when the machine has none
    assert decided.withheld == ["HOME", "LANG", "LD_LIBRARY_PATH", "PATH", "PYTHONHOME", "PYTHONPATH"]


def test_a_machine_variable_without_a_path_fills_a_gap_only() -> None:
    decided = command_environment(LOCAL, {"PYTHONUNBUFFERED": "1", "LC_ALL": "C.UTF-8", "TERM": "dumb"})
    assert decided.env["PYTHONUNBUFFERED"] == "1"
    assert decided.env["LC_ALL"] == "C.UTF-8"
    assert decided.env["TERM"] == "dumb"  # absent here
    assert command_environment({**LOCAL, "TERM": "xterm"}, {"TERM": "dumb"}).env["TERM"] == "xterm"


def test_equal_values_are_not_reported() -> None:
    assert command_environment(LOCAL, {"HOME": "/home/me"}).withheld == []


def test_explicit_values_win_over_both_and_are_not_reported() -> None:
    decided = command_environment(LOCAL, {"PATH": "/usr/bin", "X": "pod"}, {"PATH": "/opt/bin", "X": "mine"})
    assert decided.env["PATH"] == "/opt/bin"
    assert decided.env["X"] == "mine"
    assert decided.withheld == []


@pytest.mark.parametrize(
    ("name", "machine"),
    [
        ("PATH", True),
        ("PYTHONHOME", True),
        ("LC_ALL", True),
        ("LD_PRELOAD", True),
        ("GOPATH", True),
        ("XDG_CONFIG_HOME", True),
        ("BACKEND_URL", False),
        ("GOOGLE_APPLICATION_CREDENTIALS", False),
        ("KUBERNETES_SERVICE_HOST", False),
        ("PORT", False),
    ],
)
def test_which_names_describe_the_machine(name: str, machine: bool) -> None:
    assert describes_machine(name) is machine


def test_the_line_names_what_was_not_applied_and_how_to_set_it() -> None:
    assert withheld_line([]) is None
    line = withheld_line(["PATH", "PYTHONHOME"])
    assert line is not None
    assert line.startswith("not applied from the pod: PATH, PYTHONHOME (")
    assert "--env NAME=VALUE" in line


def test_env_options() -> None:
    assert parse_env_options(["A=1", "B=x=y", "EMPTY="]) == {"A": "1", "B": "x=y", "EMPTY": ""}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_env_options(["novalue"])
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_env_options(["1BAD=x"])
