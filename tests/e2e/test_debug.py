"""`innerloop debug` on the bundled cluster, with a real Debug Adapter Protocol client (tests/e2e/dap.py).

The bookshop's backend (Flask under gunicorn, two forked workers, on the
official python:3.11-slim image) runs under debugpy in a namespace that
enforces the restricted Pod Security Standard. One run proves, in order:

- the pod was admitted as restricted, adds no capability, keeps its
  readiness probe and has no liveness probe while debugging;
- `.vscode/launch.json` got "innerloop: backend", aimed at the local forward,
  and its pathMappings make a breakpoint set in the *local* backend/app.py
  bind: a request through the service's forward stops at that line in a
  gunicorn worker, the client reads a local variable's value there,
  continues, and the request completes with 200;
- a sync restarts the process, and the debugger's port answers again (the
  editor re-attaches in one action);
- a plain `innerloop up` afterwards brings the liveness probe back.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import json5
import yaml

from .bookshop import copy_bookshop
from .dap import DapClient, attach_tree
from .kube import Kube, eventually

BUILD_ENV = {
    "CONTAINERS_REGISTRIES_CONF": "/var/lib/innerloop-cluster/config/containers/registries.conf",
    "CONTAINERS_STORAGE_CONF": "/var/lib/innerloop-cluster/config/containers/storage.conf",
}


def _start(cli: list[str], app: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*cli, *args],
        cwd=app,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **BUILD_ENV},
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _logged(proc: subprocess.Popen[str], log: Path, pattern: str, timeout_s: float = 600) -> re.Match[str]:
    def found() -> re.Match[str] | None:
        if proc.poll() is not None:
            raise RuntimeError(f"innerloop exited {proc.returncode}:\n{log.read_text()}")
        return re.search(pattern, log.read_text())

    match: re.Match[str] = eventually(found, timeout_s=timeout_s)
    return match


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, json.load(resp)


def _container(kube: Kube, namespace: str) -> dict[str, object]:
    [deployment] = kube.get_json("deployments", "-n", namespace)["items"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def test_python_breakpoint_through_debug(kube: Kube, namespace: str, innerloop_cli: list[str], tmp_path: Path) -> None:
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    app, ports = copy_bookshop(tmp_path / "bookshop", only=["backend"])
    source = app / "backend" / "app.py"
    text = source.read_text()
    # The line after `forwarded = ...` in the /books handler: `forwarded` is a local there.
    line = text[: text.index("    try:\n        reviews = fetch_reviews")].count("\n") + 1
    log = tmp_path / "debug.log"
    proc = _start(innerloop_cli, app, log, "debug", "backend", "-n", namespace, "--no-color")
    try:
        local = int(_logged(proc, log, r"backend: debugger \(python\) on 127\.0\.0\.1:(\d+)").group(1))
        _logged(proc, log, r"in sync")
        eventually(lambda: _get(ports["backend"], "/healthz")[0] == 200, timeout_s=120)

        container = _container(kube, namespace)
        assert "livenessProbe" not in container and "readinessProbe" in container
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}  # type: ignore[index]
        pods = kube.get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/name=backend")["items"]
        assert pods and all("livenessProbe" not in c for p in pods for c in p["spec"]["containers"])

        launch = json5.loads((app / ".vscode" / "launch.json").read_text())
        [config] = [c for c in launch["configurations"] if c["name"] == "innerloop: backend"]
        assert config["connect"] == {"host": "127.0.0.1", "port": local}
        arguments = json.loads(json.dumps(config).replace("${workspaceFolder}", str(app)))

        with attach_tree("127.0.0.1", local, arguments, {str(source): [line]}, children=2) as sessions:
            answer: dict[str, object] = {}

            def request() -> None:
                answer["status"], answer["body"] = _get(ports["backend"], "/books", {"x-innerloop-user": "dap-test"})

            client = threading.Thread(target=request, daemon=True)
            client.start()

            def stopped() -> tuple[DapClient, dict[str, object]] | None:
                for session in sessions[1:]:  # the gunicorn workers
                    body = session.has_event("stopped")
                    if body is not None:
                        return session, body
                return None

            session, event = eventually(stopped, timeout_s=30, interval_s=0.05)
            assert event["reason"] == "breakpoint"
            frame, variables = session.locals_of_top_frame(int(event["threadId"]))
            assert frame["line"] == line
            assert Path(frame["source"]["path"]) == source  # the remote /app/app.py mapped to the local file
            assert "dap-test" in variables["forwarded"], variables
            assert "status" not in answer  # held at the breakpoint
            session.request("continue", {"threadId": event["threadId"]})
            client.join(timeout=30)
            assert answer.get("status") == 200, answer

        # A sync restarts the process under debugpy: the debugger's port answers again.
        source.write_text(text.replace('"hello from backend"', '"hello from a debugged sync"'))
        eventually(lambda: _get(ports["backend"], "/books")[1]["greeting"] == "hello from a debugged sync")
        again = DapClient("127.0.0.1", local)
        try:
            capabilities = again.request("initialize", {"clientID": "innerloop-tests", "adapterID": "debugpy"})
            assert capabilities.get("supportsConfigurationDoneRequest") is True
        finally:
            again.close()
    finally:
        _stop(proc)

    # Plain `up` afterwards: the manifest's probes are back.
    log = tmp_path / "up.log"
    proc = _start(innerloop_cli, app, log, "up", "-n", namespace, "--no-color")
    try:
        _logged(proc, log, r"in sync")
        eventually(lambda: "livenessProbe" in _container(kube, namespace), timeout_s=60)
    finally:
        _stop(proc)


def test_a_debug_local_port_in_use_stops_debug_before_it_deploys(
    kube: Kube, namespace: str, innerloop_cli: list[str], tmp_path: Path
) -> None:
    app, _ = copy_bookshop(tmp_path / "bookshop", only=["backend"])
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        config = yaml.safe_load((app / "innerloop.yaml").read_text())
        config["services"]["backend"]["debug"] = {"local": port}
        (app / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        done = subprocess.run(
            [*innerloop_cli, "debug", "backend", "-n", namespace],
            cwd=app,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={**os.environ, **BUILD_ENV},
        )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = [e for e in done.stderr.splitlines() if e.startswith("error:")]
    row = (app / "innerloop.yaml").read_text().splitlines().index(f"      local: {port}") + 1
    assert f"innerloop.yaml:{row}:" in line and ": services.backend.debug.local: " in line, line
    assert f"the debugger's local port {port} on 127.0.0.1 is in use by " in line, line
    assert f"(pid {os.getpid()}" in line, line  # this test holds it
    # Nothing was deployed: no workload, no token or restore Secret.
    assert kube.get_json("deployments,secrets", "-n", namespace)["items"] == []
