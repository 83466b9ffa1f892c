"""How the long-running commands (``up``, ``intercept``, ``run``) stop: promptly, whatever they are doing.

The first Ctrl+C or SIGTERM says what is being stopped and cancels the
command's main task (or calls the command's own stop, for ``run``), so every
owner cleans up as usual: ``up`` stops its forwards and syncs, ``intercept``
leaves and restores the Service. That cleanup has a deadline (5 s; a command
may extend it once for a bounded, announced step): past it, or at a second
Ctrl+C, the process exits at once with 128 + the signal, saying so.

Why not ``asyncio.run``: its shutdown waits without a bound for every task
it cancels (one that swallows its cancellation never ends) and for the
default executor's threads, and the interpreter's exit joins those threads
once more; a thread cannot be cancelled, so an image build in
``asyncio.to_thread`` kept a Ctrl+C'd ``up`` alive, deaf to further
signals. Here:

- the default executor runs each call on a daemon thread that nothing waits
  for at exit (a cancelled ``to_thread`` call is abandoned, not awaited);
- the handler is a Python-level ``signal.signal`` one, which runs even while
  the event loop is blocked, and writes with ``os.write`` (a buffered write
  could re-enter a write it interrupted);
- the deadline is a daemon thread's timer, not a loop callback, so it fires
  while the loop is stuck too;
- leftover tasks get a bounded wait after the main task ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, ParamSpec, TypeVar

import click

GRACE_S = 5.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)

T = TypeVar("T")
P = ParamSpec("P")


def say(message: str) -> None:
    """A progress line (as ``output.report``), written unbuffered: safe in a signal handler or any thread."""
    prefix = click.style("innerloop ", fg="bright_black") if sys.stderr.isatty() else "innerloop "
    with contextlib.suppress(OSError):
        os.write(2, (prefix + message + "\n").encode(errors="replace"))


def _flush_then_exit(code: int) -> None:
    """Exit now; buffered output gets half a second to flush (on another thread: its lock may be held)."""
    flusher = threading.Thread(target=_flush, daemon=True)
    flusher.start()
    flusher.join(0.5)
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


class DaemonThreads(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: each call on its own daemon thread, none waited for at exit.

    A ThreadPoolExecutor only because ``set_default_executor`` insists; none of its pool is used.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self._ids = itertools.count(1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to wait for: a call still running is abandoned with its daemon thread."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as err:  # handed to the awaiting side, as ThreadPoolExecutor does
                future.set_exception(err)
            else:
                future.set_result(result)

        threading.Thread(target=work, name=f"innerloop-call-{next(self._ids)}", daemon=True).start()
        return future


@dataclass(kw_only=True)
class Stopping:
    """What a signal stops, shared between the command and the handler.

    ``what`` may change as the command goes (``"the build"``,
    ``"the intercept: leaving"``); ``stop`` replaces the default (cancel the
    main task), e.g. to pass the signal to a child first; ``at_exit`` runs
    just before a hard exit (kill a child that would outlive us).
    """

    what: str | Callable[[], str]
    signal: int | None = None
    stop: Callable[[int], None] | None = None
    at_exit: list[Callable[[], None]] = field(default_factory=list)
    grace_s: float = GRACE_S
    _deadline: float | None = None
    _extended: bool = False

    def describe(self) -> str:
        # Called from the signal handler and the deadline thread, so it must never raise (a dict it
        # reads may be changing in the very frame the signal interrupted).
        try:
            return self.what() if callable(self.what) else self.what
        except Exception:
            return "the command"

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def remaining(self) -> float:
        """Seconds left before the hard exit (the full grace while no signal came)."""
        if self._deadline is None:
            return self.grace_s
        return max(0.0, self._deadline - time.monotonic())

    def extend(self, seconds: float, what: str) -> None:
        """Once: allow ``seconds`` more for a bounded step, announced (a second Ctrl+C still exits at once)."""
        if self._deadline is None or self._extended:
            return
        self._extended = True
        self._deadline = max(self._deadline, time.monotonic() + seconds)
        say(f"{what} (up to {seconds:.0f} s; Ctrl+C again to exit at once)")

    def _hard_exit(self, code: int) -> None:
        for action in self.at_exit:
            with contextlib.suppress(Exception):  # best effort on the way out
                action()
        _flush_then_exit(code)


def run_until_signal(
    main: Callable[[Stopping], Coroutine[Any, Any, T]],
    *,
    what: str | Callable[[], str],
    grace_s: float = GRACE_S,
) -> T:
    """Run ``main(stopping)`` in a new event loop; Ctrl+C/SIGTERM stop it as the module docstring says.

    A stopped ``main`` raises ``asyncio.CancelledError`` here (unless its own
    ``stop`` let it return). Signal handlers stay until this returns, and for
    the rest of the process once a signal came (a second one exits at once).
    """
    stopping = Stopping(what=what, grace_s=grace_s)
    loop = asyncio.new_event_loop()
    loop.set_default_executor(DaemonThreads())
    task = loop.create_task(main(stopping))

    def watchdog() -> None:
        while True:
            left = stopping.remaining()
            if left <= 0:
                break
            time.sleep(min(left, 0.1))
        assert stopping.signal is not None
        say(f"stopped: {stopping.describe()} did not finish within the deadline; exiting now")
        stopping._hard_exit(128 + stopping.signal)

    def first(signum: int) -> None:
        if task.done():
            return
        if stopping.stop is not None:
            stopping.stop(signum)
        else:
            task.cancel()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping.signal is not None:
            say(f"stopped at once ({signal.Signals(signum).name} again)")
            stopping._hard_exit(128 + signum)
        stopping.signal = signum
        stopping._deadline = time.monotonic() + stopping.grace_s
        say(f"stopping {stopping.describe()} ({signal.Signals(signum).name}; again to exit at once)")
        threading.Thread(target=watchdog, name="innerloop-deadline", daemon=True).start()
        loop.call_soon_threadsafe(first, signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(task)
    finally:
        try:
            _finish(loop, stopping)
        finally:
            if stopping.signal is None:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            # Once a stop was asked for, the handler stays for the rest of the process: a second
            # Ctrl+C while the command finishes its exit still exits at once, with 128 + the signal.
            asyncio.set_event_loop(None)
            loop.close()


def _finish(loop: asyncio.AbstractEventLoop, stopping: Stopping) -> None:
    """Cancel what is left and give it a bounded time, as asyncio.run does without the bound."""
    left = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in left:
        t.cancel()
    if left:
        loop.run_until_complete(asyncio.wait(left, timeout=max(0.5, stopping.remaining())))
    for t in left:
        if t.done() and not t.cancelled() and t.exception() is not None:
            loop.call_exception_handler({"message": "unhandled error in a task at exit", "exception": t.exception()})
    loop.run_until_complete(asyncio.wait({loop.create_task(loop.shutdown_asyncgens())}, timeout=1.0))
