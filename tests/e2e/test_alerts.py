"""Alerts provoked for real on the bundled cluster, under ONE `innerloop up` of a small team's project.

The tests run in file order and share the `up` (module scope): the stuck
services first (they are stuck from the start), then an OOM kill, a
traceback and its fix by a sync, and last a sync of api that breaks web.
Each alert must appear once, with its cause and hint, in `innerloop status
--json` (the local API) and once in `up`'s terminal output.
"""

from __future__ import annotations

import json
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .alerting import write_team_project
from .bookshop import Up, running_up
from .kube import Kube, eventually

# conftest's innerloop_cli is per test; the one `up` of this module needs it once.
VENV_CLI = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "innerloop"
CLI = [str(VENV_CLI)] if VENV_CLI.exists() else [sys.executable, "-m", "innerloop"]


@pytest.fixture(scope="module")
def team(kube: Kube, registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("alerts")
    namespace = f"t-alerts-{secrets.token_hex(3)}"
    kube.run("create", "namespace", namespace)
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    app, ports = write_team_project(tmp / "team", registry=registry)
    try:
        with running_up(CLI, app, ports, namespace=namespace, log=tmp / "up.log", probe=("web", "/healthz")) as up:
            yield up
    finally:
        kube.run("delete", "namespace", namespace, "--wait=false", check=False)


def _status(up: Up) -> dict[str, Any]:
    out = up.cli_run("status", "--json")
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def _alert(up: Up, service: str, kind: str, *, active: bool = True) -> dict[str, Any]:
    """The one alert of ``kind`` on ``service`` (waited for); fails if there are two."""

    def found() -> dict[str, Any] | None:
        snapshot = _status(up)
        alerts = [
            a for a in snapshot["alerts" if active else "cleared"] if (a["service"], a["kind"]) == (service, kind)
        ]
        assert len(alerts) <= 1, alerts
        return alerts[0] if alerts else None

    alert: dict[str, Any] = eventually(found, timeout_s=90)
    return alert


def _printed_once(up: Up, line: str) -> None:
    text = up.log.read_text()
    assert text.count(line) == 1, text


def _get(up: Up, service: str, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{up.ports[service]}{path}", timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, ConnectionError):
        return 0  # the connection died with the process (an OOM kill)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _synced(up: Up, service: str, after: int) -> bool:
    return bool(_status(up)["services"][service]["syncs"] > after)


def test_services_that_cannot_start_do_not_block_up_and_each_raises_one_alert(team: Up) -> None:
    pull = _alert(team, "search", "image-pull")
    assert "team/search:1.4.2" in pull["cause"] and "not found" in pull["cause"]
    assert "image name and tag" in pull["hint"]
    unschedulable = _alert(team, "reports", "unschedulable")
    assert "Insufficient cpu" in unschedulable["cause"]
    assert "cpu 64" in unschedulable["hint"]
    probe = _alert(team, "payments", "probe-failed")
    assert "HTTP probe failed with statuscode: 503" in probe["cause"], probe
    assert "readiness probe" in probe["hint"]
    # `up` went on past them: the others run, and it said why it did not wait.
    team.logged("search: not ready, going on:")
    team.logged("reports: not ready, going on:")
    assert _get(team, "web", "/healthz") == 200
    team.logged("ALERT payments: probe-failed:")
    for service, kind in (("search", "image-pull"), ("reports", "unschedulable"), ("payments", "probe-failed")):
        _printed_once(team, f"ALERT {service}: {kind}:")
    assert _status(team)["services"]["search"]["phase"] == "error"


def test_a_stuck_service_fixed_outside_up_turns_running_and_its_alert_clears(team: Up, kube: Kube) -> None:
    """The cluster, not innerloop.yaml, is fixed (as when a teammate frees the node): `up` notices by itself."""
    _alert(team, "reports", "unschedulable")
    kube.run("set", "resources", "deployment/reports", "-n", team.namespace, "--requests=cpu=10m")
    eventually(lambda: _status(team)["services"]["reports"]["phase"] == "running", timeout_s=120)
    assert _status(team)["services"]["reports"]["message"] == ""
    _alert(team, "reports", "unschedulable", active=False)
    team.logged("reports: ready")


def test_a_container_past_its_memory_limit_is_one_oom_alert_naming_the_limit(team: Up) -> None:
    assert _get(team, "cache", "/fill") != 200
    oom = _alert(team, "cache", "oom-killed")
    assert "OOMKilled" in oom["cause"] and "limit of 48Mi" in oom["cause"], oom
    assert "limits.memory" in oom["hint"]
    assert "filling the cache" in oom["details"]
    team.logged("ALERT cache: oom-killed:")
    _printed_once(team, "ALERT cache: oom-killed:")


def test_an_exception_in_a_handler_raises_a_traceback_alert_that_a_fixing_sync_clears(team: Up) -> None:
    assert _get(team, "web", "/checkout") == 500
    error = _alert(team, "web", "app-error")
    assert error["cause"] == "a Python traceback in the logs: ZeroDivisionError: division by zero", error
    assert any("Traceback (most recent call last):" in line for line in error["details"])
    assert "alerts.ignore" in error["hint"]
    syncs = _status(team)["services"]["web"]["syncs"]
    _edit(team.dir / "web" / "app.py", "ITEMS_IN_CART = 0", "ITEMS_IN_CART = 4")
    eventually(lambda: _synced(team, "web", syncs), timeout_s=60)
    cleared = _alert(team, "web", "app-error", active=False)
    assert cleared["cleared_at"] is not None
    assert not [a for a in _status(team)["alerts"] if a["service"] == "web"]
    assert eventually(lambda: _get(team, "web", "/checkout") == 200)
    team.logged("cleared web: app-error:")
    _printed_once(team, "ALERT web: app-error:")


def test_a_sync_of_api_that_breaks_web_is_one_alert_on_web_naming_api(team: Up) -> None:
    assert _get(team, "web", "/") == 200
    syncs = _status(team)["services"]["api"]["syncs"]
    _edit(team.dir / "api" / "app.py", '{"title": "Dune"}, {"title": "Emma"}', '{"name": "Dune"}, {"name": "Emma"}')
    eventually(lambda: _synced(team, "api", syncs), timeout_s=60)
    assert eventually(lambda: _get(team, "web", "/") == 500)
    blame = _alert(team, "web", "broken-by-sync")
    assert blame["cause"].startswith("after your last sync of api ("), blame
    assert "web started failing: a Python traceback in the logs: KeyError: 'title'" in blame["cause"]
    assert "api" in blame["hint"]
    team.logged("ALERT web: broken-by-sync: after your last sync of api")
    _printed_once(team, "ALERT web: broken-by-sync:")
