"""Alerts in the terminal (apart from logs, plain when not a tty) and the desktop only where there is one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from innerloop.alerts.terminal import Desktop, alert_lines, attach, desktop_available
from innerloop.status.store import Alert, Store


def _alert() -> Alert:
    return Alert(
        key="crashed/backend/p/app",
        service="backend",
        kind="crashed",
        cause="app crashed (exit 1)",
        hint="fix it and save",
        details=["a", "b"],
    )


def test_plain_lines_when_not_a_terminal_and_bold_red_when_it_is() -> None:
    assert alert_lines(_alert(), color=False) == [
        "ALERT backend: crashed: app crashed (exit 1)",
        "      hint: fix it and save",
        "      | a",
        "      | b",
    ]
    assert alert_lines(_alert(), color=True)[0].startswith("\x1b[1;31mALERT\x1b[0m backend")


def test_attach_prints_raised_and_cleared_and_no_desktop_without_one() -> None:
    store = Store(project="p", namespace="n")
    printed: list[str] = []
    assert attach(store, echo=printed.append, color=False, env={}) is None
    store.raise_alert(_alert())
    store.clear_alert("crashed/backend/p/app", "it runs again")
    assert printed[0] == "ALERT backend: crashed: app crashed (exit 1)"
    assert printed[-1] == "cleared backend: crashed: app crashed (exit 1)"


def test_the_desktop_needs_a_session_and_notify_send() -> None:
    assert desktop_available({}, which=lambda _n: "/usr/bin/notify-send") is None
    assert desktop_available({"DISPLAY": ":0"}, which=lambda _n: None) is None
    assert (
        desktop_available({"WAYLAND_DISPLAY": "w"}, which=lambda _n: "/usr/bin/notify-send") == "/usr/bin/notify-send"
    )


def test_a_notification_runs_notify_send_with_the_cause_and_hint(tmp_path: Path) -> None:
    out = tmp_path / "args"
    fake = tmp_path / "notify-send"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {out}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    store = Store(project="p", namespace="n")
    env = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/x", "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    desktop = attach(store, echo=lambda _l: None, color=False, env=env)
    assert isinstance(desktop, Desktop)
    store.raise_alert(_alert())
    desktop.close()
    assert out.read_text().splitlines() == [
        "--app-name=innerloop",
        "--urgency=critical",
        "backend: crashed",
        "app crashed (exit 1)",
        "fix it and save",
    ]


def test_a_notifier_that_cannot_start_is_silent() -> None:
    desktop = Desktop("/nonexistent/notify-send")
    desktop.raised(_alert())
    desktop.close()
