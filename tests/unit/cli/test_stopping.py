"""Ctrl+C and SIGTERM stop a command within its deadline, whatever its event loop is doing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

SCRIPT = """
import asyncio, sys, time
from innerloop.cli.stopping import run_until_signal

async def main(stopping):
    mode = sys.argv[1]
    print("ready", flush=True)
    if mode == "swallow":  # a task that swallows its cancellation
        while True:
            try:
                await asyncio.sleep(100)
            except asyncio.CancelledError:
                pass
    if mode == "thread":  # a blocking call that no cancellation can end
        await asyncio.to_thread(time.sleep, 60)
    if mode == "blocked":  # the event loop itself is stuck
        time.sleep(60)
    if mode == "clean":
        try:
            await asyncio.sleep(100)
        finally:
            await asyncio.sleep(0.2)
            print("cleaned up", flush=True)

try:
    run_until_signal(main, what="the test", grace_s=float(sys.argv[2]))
except asyncio.CancelledError:
    print("stopped", flush=True)
if mode_after := sys.argv[3:]:  # the command still finishing its exit after the stop
    time.sleep(float(mode_after[0]))
"""

GRACE_S = 1.5


def start(mode: str, *after: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode, str(GRACE_S), *after],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen[str], *signals: int, gap_s: float = 0.2) -> tuple[int, float, str]:
    started = time.monotonic()
    for i, sig in enumerate(signals):
        if i:
            time.sleep(gap_s)
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, time.monotonic() - started, out


def test_a_clean_stop_cleans_up_and_says_what_it_stops() -> None:
    code, took, out = stop(start("clean"), signal.SIGINT)
    assert code == 0, out
    assert took < GRACE_S, out
    assert "stopping the test (SIGINT; again to exit at once)" in out
    assert "cleaned up" in out
    assert "stopped" in out


def test_a_blocking_call_in_a_thread_is_abandoned_not_awaited() -> None:
    code, took, out = stop(start("thread"), signal.SIGTERM)
    assert code == 0, out
    assert took < GRACE_S, out
    assert "stopped" in out


@pytest.mark.parametrize(("mode", "sig"), [("swallow", signal.SIGINT), ("blocked", signal.SIGTERM)])
def test_past_the_deadline_the_process_exits_hard(mode: str, sig: int) -> None:
    code, took, out = stop(start(mode), sig)
    assert code == 128 + sig, out
    assert GRACE_S <= took < GRACE_S + 3, out
    assert "did not finish within the deadline; exiting now" in out


def test_a_second_ctrl_c_exits_at_once() -> None:
    code, took, out = stop(start("swallow"), signal.SIGINT, signal.SIGINT)
    assert code == 130, out
    assert took < GRACE_S, out
    assert "stopped at once (SIGINT again)" in out


def test_a_second_ctrl_c_after_the_stop_finished_still_exits_at_once() -> None:
    """The first stop is done and the command is on its way out (as `up` printing its last line): a second
    Ctrl+C then exits at once with 130, never a KeyboardInterrupt from Python's own handler."""
    proc = start("clean", "30")
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    while "stopped" not in (line := proc.stdout.readline()):
        assert line, "the command ended before its stop finished"
    code, took, out = stop(proc, signal.SIGINT)
    assert code == 130, out
    assert took < GRACE_S, out
    assert "stopped at once (SIGINT again)" in out
    assert "KeyboardInterrupt" not in out
