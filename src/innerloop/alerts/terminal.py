"""Alerts in the terminal, set apart from the logs, and on the desktop when the machine has one.

The terminal gets a bold red ``ALERT service: cause`` line, the hint on an
indented second line (and a crash's last log lines, indented), and a green
``cleared`` line when the cause is gone; plain text when the output is not a
terminal, so a captured log stays greppable.

A desktop notification goes through ``notify-send`` when it is on PATH and a
session bus or display is set; otherwise nothing happens and nothing is
said: a server or CI has no desktop, and that is no error. Each
notification is its own short process, reaped on the next alert or at
:meth:`Desktop.close`, so none is left behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping

from innerloop.status.store import Alert, Store

BOLD_RED = "\x1b[1;31m"
GREEN = "\x1b[32m"
DIM = "\x1b[2m"
RESET = "\x1b[0m"
SHOWN_DETAILS = 5


def alert_lines(alert: Alert, *, color: bool) -> list[str]:
    """How a raised alert reads in the terminal."""
    tag = f"{BOLD_RED}ALERT{RESET}" if color else "ALERT"
    head = f"{tag} {alert.service}: {alert.kind}: {alert.cause}"
    lines = [head, f"      hint: {alert.hint}"]
    for detail in alert.details[-SHOWN_DETAILS:]:
        lines.append(f"      {DIM}| {detail}{RESET}" if color else f"      | {detail}")
    return lines


def cleared_line(alert: Alert, *, color: bool) -> str:
    tag = f"{GREEN}cleared{RESET}" if color else "cleared"
    return f"{tag} {alert.service}: {alert.kind}: {alert.cause}"


class TerminalAlerts:
    """``store.on_alert`` / ``store.on_alert_cleared`` listeners that print through ``echo``."""

    def __init__(self, echo: Callable[[str], None], *, color: bool) -> None:
        self.echo = echo
        self.color = color

    def raised(self, alert: Alert) -> None:
        for line in alert_lines(alert, color=self.color):
            self.echo(line)

    def cleared(self, alert: Alert) -> None:
        self.echo(cleared_line(alert, color=self.color))


def desktop_available(env: Mapping[str, str], which: Callable[[str], str | None] | None = None) -> str | None:
    """The notify-send to use (found on ``env``'s PATH), when this session has a desktop to show it on."""
    if not any(env.get(v) for v in ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY")):
        return None
    if which is None:
        return shutil.which("notify-send", path=env.get("PATH"))
    return which("notify-send")


class Desktop:
    """Desktop notifications for raised alerts (an ``on_alert`` listener)."""

    def __init__(self, notify_send: str) -> None:
        self.notify_send = notify_send
        self.running: list[subprocess.Popen[bytes]] = []

    def raised(self, alert: Alert) -> None:
        self.running = [p for p in self.running if p.poll() is None]
        try:
            proc = subprocess.Popen(
                [
                    self.notify_send,
                    "--app-name=innerloop",
                    "--urgency=critical",
                    f"{alert.service}: {alert.kind}",
                    f"{alert.cause}\n{alert.hint}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            return  # a notifier that cannot start is no reason to disturb `up`
        self.running.append(proc)

    def close(self) -> None:
        for proc in self.running:
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.running = []


def attach(
    store: Store, *, echo: Callable[[str], None], color: bool, env: Mapping[str, str] | None = None
) -> Desktop | None:
    """Print ``store``'s alerts as they are raised and cleared, and notify the desktop when there is one."""
    terminal = TerminalAlerts(echo, color=color)
    store.on_alert.append(terminal.raised)
    store.on_alert_cleared.append(terminal.cleared)
    notify_send = desktop_available(os.environ if env is None else env)
    if notify_send is None:
        return None
    desktop = Desktop(notify_send)
    store.on_alert.append(desktop.raised)
    return desktop
