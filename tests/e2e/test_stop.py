"""`up`, `intercept` and `run` exit within seconds of Ctrl+C or SIGTERM, whatever they are doing.

Each test stops a real process at a chosen moment, found by waiting for a
line of its output (never a fixed sleep: the suite runs on loaded machines),
and measures how long it takes to exit. The deadline in cli/stopping.py is
5 s; 8 s leaves room for a busy machine.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .bookshop import copy_bookshop
from .intercepts import LocalApp, deploy_echo, leftovers
from .kube import Kube, eventually
from .stopping import Cli

WITHIN_S = 8.0


@pytest.fixture
def project(kube: Kube, namespace: str, tmp_path: Path) -> Path:
    app, _ = copy_bookshop(tmp_path / "bookshop", only=["backend"])
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    return app


@pytest.fixture
def started(innerloop_cli: list[str], project: Path, namespace: str) -> Iterator[Cli]:
    cli = Cli.start([*innerloop_cli, "up", "-n", namespace, "--no-color"], cwd=project)
    try:
        yield cli
    finally:
        print(cli.output)  # shown when the test fails
        cli.kill()


def _stopped_cleanly(cli: Cli, code: int, took: float) -> None:
    assert code == 0, cli.output
    assert took < WITHIN_S, cli.output
    assert "stopping innerloop up" in cli.output
    assert "stopped; the app stays deployed" in cli.output


def test_up_stops_while_deploying(started: Cli) -> None:
    started.wait_for("backend: image")  # built; applying and waiting for the rollout come next
    code, took = started.stop(signal.SIGINT, within=WITHIN_S)
    _stopped_cleanly(started, code, took)


def test_up_stops_in_steady_state_on_sigterm(started: Cli) -> None:
    started.wait_for("watching for changes")
    started.wait_for("in sync")
    code, took = started.stop(signal.SIGTERM, within=WITHIN_S)
    _stopped_cleanly(started, code, took)


def test_up_stops_while_reconnecting_to_a_new_pod(started: Cli, kube: Kube, namespace: str) -> None:
    started.wait_for("in sync")
    kube.run("delete", "pod", "-n", namespace, "-l", "app.kubernetes.io/name=backend", "--wait=false")
    started.wait_for("waiting for a ready pod")  # the pod is gone: its sync link and forward look for the next
    code, took = started.stop(signal.SIGINT, within=WITHIN_S)
    _stopped_cleanly(started, code, took)


def test_up_stops_after_being_suspended(started: Cli) -> None:
    started.wait_for("in sync")
    started.proc.send_signal(signal.SIGSTOP)
    started.proc.send_signal(signal.SIGINT)  # pending while stopped
    time.sleep(1)  # suspended for a while, as with Ctrl+Z; nothing to wait for
    code, took = started.stop(signal.SIGCONT, within=WITHIN_S)
    _stopped_cleanly(started, code, took)


def test_a_second_ctrl_c_stops_up_at_once(innerloop_cli: list[str], project: Path, namespace: str) -> None:
    """The second SIGINT goes once the first one's handler has spoken, so the two cannot merge into one pending
    signal (on a loaded machine two quick ones did). A first stop that finished before the second could be sent
    proves nothing: then `up` starts again, up to three times."""
    outputs = []
    for _attempt in range(3):
        cli = Cli.start([*innerloop_cli, "up", "-n", namespace, "--no-color"], cwd=project)
        try:
            cli.wait_for("backend: image")
            cli.proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 10
            while not any("again to exit at once" in line for line in cli.lines) and time.monotonic() < deadline:
                time.sleep(0.001)
            if cli.proc.poll() is None:
                cli.proc.send_signal(signal.SIGINT)
            code = cli.proc.wait(3)
            time.sleep(0.2)  # the reader's last lines
            outputs.append(cli.output)
            if code == 0 and "stopped at once" not in cli.output:
                continue  # the first stop won the race: nothing was left to stop at once
            assert code == 130, cli.output
            assert "stopped at once (SIGINT again)" in cli.output
            return
        finally:
            cli.kill()
    tried = "\n".join(outputs)
    raise AssertionError(f"three times the first Ctrl+C finished before a second one could be sent:\n{tried}")


@pytest.fixture
def echo(kube: Kube, namespace: str) -> str:
    return deploy_echo(kube, namespace)


def _intercept(innerloop_cli: list[str], namespace: str, tmp_path: Path, port: int) -> Cli:
    return Cli.start(
        [*innerloop_cli, "intercept", "echo", "-n", namespace, "--global", "--to", str(port)],
        cwd=tmp_path,
        env={"XDG_STATE_HOME": str(tmp_path / "state")},
    )


def _selector(kube: Kube, namespace: str) -> dict[str, str]:
    return dict(kube.get_json("svc", "echo", "-n", namespace)["spec"]["selector"])


def test_intercept_stops_during_set_up_and_leaves_nothing(
    innerloop_cli: list[str], kube: Kube, namespace: str, echo: str, tmp_path: Path
) -> None:
    local = LocalApp("laptop")
    cli = _intercept(innerloop_cli, namespace, tmp_path, local.port)
    try:
        cli.wait_for("router")  # the router is being created or started; not intercepting yet
        code, took = cli.stop(signal.SIGINT, within=WITHIN_S)
        assert took < WITHIN_S, cli.output
        assert "stopping" in cli.output, cli.output
        assert code in (0, 130), cli.output
        # Left, or (stopped before the router listened) the router gives up by itself after its 60 s start window.
        assert eventually(lambda: not leftovers(kube, namespace), timeout_s=150)
        assert _selector(kube, namespace) == {"app": "echo"}
    finally:
        print(cli.output)
        cli.kill()
        local.close()


def test_intercept_leaves_and_restores_on_ctrl_c_then_a_second_one_exits_at_once(
    innerloop_cli: list[str], kube: Kube, namespace: str, echo: str, tmp_path: Path
) -> None:
    local = LocalApp("laptop")
    first = _intercept(innerloop_cli, namespace, tmp_path, local.port)
    second: Cli | None = None
    try:
        first.wait_for("intercepting svc/echo")
        # Leaving, then waiting (bounded, announced) for the router to restore the Service.
        code, _ = first.stop(signal.SIGINT, within=WITHIN_S + 10)
        assert code == 0, first.output
        assert "restoring svc/echo" in first.output
        assert eventually(lambda: _selector(kube, namespace) == {"app": "echo"}, timeout_s=30)

        second = _intercept(innerloop_cli, namespace, tmp_path, local.port)
        second.wait_for("intercepting svc/echo")
        code, _took = second.stop(signal.SIGINT, signal.SIGINT, within=3)
        assert code == 130, second.output
        assert "stopped at once (SIGINT again)" in second.output
        # Told nothing, the router still restores the Service once the tunnel's grace has passed.
        assert eventually(lambda: not leftovers(kube, namespace), timeout_s=90)
    finally:
        print(first.output, second.output if second else "", sep="\n---\n")
        first.kill()
        if second is not None:
            second.kill()
        local.close()


STUBBORN = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('stubborn', os.getpid(), flush=True)\n"
    "time.sleep(600)\n"
)


def test_run_kills_a_command_that_ignores_signals_at_the_deadline(
    innerloop_cli: list[str], namespace: str, echo: str, tmp_path: Path
) -> None:
    cli = Cli.start(
        [*innerloop_cli, "run", "-n", namespace, "-l", "app=echo", "--", sys.executable, "-c", STUBBORN],
        cwd=tmp_path,
    )
    try:
        cli.wait_for("stubborn ")
        pid = int(next(line for line in cli.lines if line.startswith("stubborn ")).split()[1])
        code, _took = cli.stop(signal.SIGINT, within=WITHIN_S)
        assert code == 130, cli.output
        assert "did not finish within the deadline" in cli.output
        assert eventually(lambda: not os.path.exists(f"/proc/{pid}"), timeout_s=5), "the command outlived run"
    finally:
        print(cli.output)
        cli.kill()


def test_run_passes_sigterm_on_and_exits_with_the_commands_status(
    innerloop_cli: list[str], namespace: str, echo: str, tmp_path: Path
) -> None:
    script = "import time; print('sleeping', flush=True); time.sleep(600)"
    cli = Cli.start(
        [*innerloop_cli, "run", "-n", namespace, "-l", "app=echo", "--", sys.executable, "-c", script], cwd=tmp_path
    )
    try:
        cli.wait_for("sleeping")
        code, took = cli.stop(signal.SIGTERM, within=WITHIN_S)
        assert code == 128 + signal.SIGTERM, cli.output
        assert took < 3, cli.output
    finally:
        print(cli.output)
        cli.kill()
