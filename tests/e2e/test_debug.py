"""`innerloop debug` on the bundled cluster, with real debug clients.

One `innerloop debug backend reviews py39 py313` (module-scoped) in a
namespace that enforces the restricted Pod Security Standard: the bookshop's
backend (Flask under gunicorn, two forked workers, on the official
python:3.11-slim image), py39 and py313 (a small app of the tests' own on
Debian 11's Python 3.9 and Debian 13's Python 3.13, each a `FROM scratch`
image of hack/debian-python's root filesystem: no shell, no pip) under
debugpy, driven by a Debug Adapter Protocol client (tests/e2e/dap.py);
reviews (Express on
node:18-slim) under ``node --inspect``, driven by a Chrome DevTools Protocol
client (tests/e2e/cdp.py: what VS Code's js-debug speaks to Node). It
proves, in order:

- every pod was admitted as restricted, adds no capability, keeps its
  readiness probe and has no liveness probe while debugging;
- `.vscode/launch.json` got "innerloop: backend", aimed at the local forward,
  and its pathMappings make a breakpoint set in the *local* backend/app.py
  bind: a request through the service's forward stops at that line in a
  gunicorn worker, the client reads a local variable's value there,
  continues, and the request completes with 200;
- a sync restarts the process, and the debugger's port answers again (the
  editor re-attaches in one action);
- "innerloop: reviews" maps reviews/src to the container's /app/src: a
  breakpoint set by that URL at a line of the local reviews/src/server.js
  stops a real request in the Express handler, a local's value and an
  expression over the request are read there, resume, 200;
- the same debugpy copy stops py39's and py313's handler under Python 3.9
  and 3.13, reads a local there, and the request completes with 200 (its
  body says which Python answered);
- a plain `innerloop up` afterwards brings the liveness probes back.

And, on its own: a debug.local in use stops `innerloop debug` before anything
is deployed.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import json5
import pytest
import yaml

from innerloop.cluster.node import BundledCluster

from .background import logged, stop_gently
from .bookshop import copy_bookshop
from .cdp import inspect
from .conftest import innerloop_command
from .dap import DapClient, attach_tree
from .kube import Kube, eventually, free_port

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


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, json.load(resp)


def _container(kube: Kube, namespace: str, service: str | None = None) -> dict[str, object]:
    """The app container of the service's Deployment (None: the namespace's only one)."""
    if service is None:
        [deployment] = kube.get_json("deployments", "-n", namespace)["items"]
    else:
        deployment = kube.get_json("deployment", service, "-n", namespace)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


# A service of the tests' own on Debian's Python 3.9 and 3.13 (hack/debian-python: a whole root filesystem,
# no shell, no pip), beside the bookshop's 3.11: debugpy's one pure-Python copy serves every interpreter.
PYTHONS = {"py39": "3.9", "py313": "3.13"}
TINY_APP = """\
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        visitor = self.headers.get("x-innerloop-user", "nobody")
        body = json.dumps({"python": "%d.%d" % sys.version_info[:2], "visitor": visitor}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""
TINY_DOCKERFILE = """\
FROM scratch
COPY root/ /
COPY app/ /app/
USER 1000:1000
CMD ["/usr/bin/python{version}", "/app/app.py"]
"""
TINY_MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, labels: {{app.kubernetes.io/name: {name}}}}}
spec:
  selector: {{matchLabels: {{app.kubernetes.io/name: {name}}}}}
  template:
    metadata: {{labels: {{app.kubernetes.io/name: {name}}}}}
    spec:
      automountServiceAccountToken: false
      securityContext:
        {{runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, seccompProfile: {{type: RuntimeDefault}}}}
      containers:
      - name: {name}
        image: debug-{name}
        imagePullPolicy: IfNotPresent
        ports: [{{name: http, containerPort: 8080}}]
        securityContext:
          {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
        readinessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 2}}
        livenessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 10}}
"""
DEBUGGED = {"backend": "python", "reviews": "node", **dict.fromkeys(PYTHONS, "python")}


def _add_pythons(app: Path, ports: dict[str, int]) -> None:
    """The tiny app on each of PYTHONS, added to the bookshop copy's innerloop.yaml."""
    config = yaml.safe_load((app / "innerloop.yaml").read_text())
    for name, version in PYTHONS.items():
        hack = Path(__file__).resolve().parents[2] / "hack" / "debian-python"
        root = subprocess.run([str(hack), version], capture_output=True, text=True, check=True).stdout.strip()
        shutil.copytree(root, app / name / "root", symlinks=True)
        (app / name / "app").mkdir()
        (app / name / "app" / "app.py").write_text(TINY_APP)
        (app / name / "Dockerfile").write_text(TINY_DOCKERFILE.format(version=version))
        (app / "k8s" / f"{name}.yaml").write_text(TINY_MANIFEST.format(name=name))
        ports[name] = free_port()
        config["services"][name] = {
            "manifests": {"files": [f"k8s/{name}.yaml"]},
            # buildah: innerloop's built-in builder does not take FROM scratch (it looks for an image named scratch).
            "image": {"name": f"debug-{name}", "context": name, "builder": "buildah"},
            "sync": [{"local": f"{name}/app/", "remote": "/app/"}],
            "ports": [{"remote": 8080, "local": ports[name]}],
        }
    (app / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@dataclass
class Debugging:
    app: Path
    namespace: str
    ports: dict[str, int]  # each service's forwarded app port
    debuggers: dict[str, int]  # each service's debugger, forwarded to this machine
    proc: subprocess.Popen[str]
    kube: Kube
    cli: list[str]
    tmp: Path


@pytest.fixture(scope="module")
def debugging(bundled_cluster: BundledCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Debugging]:
    """One `innerloop debug backend reviews py39 py313` for the module (reviews' dependsOn inventory dropped)."""
    info = bundled_cluster.info()
    assert info is not None, "bundled cluster is not ready"
    kube = Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)
    namespace = f"t-debug-{secrets.token_hex(3)}"
    kube.run("create", "namespace", namespace)
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    tmp = tmp_path_factory.mktemp("debug")
    app, ports = copy_bookshop(tmp / "bookshop", only=["backend", "reviews"])
    _add_pythons(app, ports)
    cli = innerloop_command()
    log = tmp / "debug.log"
    proc = _start(cli, app, log, "debug", *DEBUGGED, "-n", namespace, "--no-color")
    try:
        debuggers = {
            name: int(logged(proc, log, rf"{name}: debugger \({language}\) on 127\.0\.0\.1:(\d+)").group(1))
            for name, language in DEBUGGED.items()
        }
        eventually(lambda: log.read_text().count("in sync") >= len(DEBUGGED), timeout_s=120)
        for name in ports:
            eventually(lambda name=name: _get(ports[name], "/healthz")[0] == 200, timeout_s=120)
        yield Debugging(app, namespace, ports, debuggers, proc, kube, cli, tmp)
    finally:
        stop_gently(proc)
        kube.run("delete", "namespace", namespace, "--wait=false", check=False)


def test_debugged_pods_stay_restricted_without_liveness_probes(debugging: Debugging) -> None:
    kube, namespace = debugging.kube, debugging.namespace
    for service in DEBUGGED:
        container = _container(kube, namespace, service)
        assert "livenessProbe" not in container and "readinessProbe" in container
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}  # type: ignore[index]
        pods = kube.get_json("pods", "-n", namespace, "-l", f"app.kubernetes.io/name={service}")["items"]
        assert pods and all("livenessProbe" not in c for p in pods for c in p["spec"]["containers"])


def test_python_breakpoint_through_debug(debugging: Debugging) -> None:
    app, ports, local = debugging.app, debugging.ports, debugging.debuggers["backend"]
    source = app / "backend" / "app.py"
    text = source.read_text()
    # The line after `forwarded = ...` in the /books handler: `forwarded` is a local there.
    line = text[: text.index("    try:\n        reviews = fetch_reviews")].count("\n") + 1

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
    source.write_text(text)  # as built: the plain `up` at the end finds the image by its input hash


def test_node_breakpoint_through_debug(debugging: Debugging) -> None:
    app, local = debugging.app, debugging.debuggers["reviews"]
    source = app / "reviews" / "src" / "server.js"
    text = source.read_text()
    # In the /reviews handler, after `inventory` is set (an error object: inventory is not deployed).
    line = text[: text.index("  const stock = new Map(")].count("\n") + 1

    launch = json5.loads((app / ".vscode" / "launch.json").read_text())
    [config] = [c for c in launch["configurations"] if c["name"] == "innerloop: reviews"]
    assert (config["type"], config["request"], config["port"]) == ("node", "attach", local)
    # The editor's mapping, local file -> the script's URL in the container.
    local_root = Path(config["localRoot"].replace("${workspaceFolder}", str(app)))
    url = "file://" + str(Path(config["remoteRoot"]) / source.relative_to(local_root))

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http, inspect(http, "127.0.0.1", local) as node:
            await node.call("Debugger.enable")
            script = await node.event("Debugger.scriptParsed", lambda p: p.get("url") == url)  # the mapping names it
            breakpoint_ = await node.call("Debugger.setBreakpointByUrl", {"url": url, "lineNumber": line - 1})
            assert breakpoint_["locations"], breakpoint_  # bound in the running script
            headers = {"x-innerloop-user": "cdp-test"}
            request = asyncio.create_task(
                http.get(f"http://127.0.0.1:{debugging.ports['reviews']}/reviews", headers=headers)
            )
            paused = await node.event("Debugger.paused")
            assert paused["hitBreakpoints"] == [breakpoint_["breakpointId"]]
            [frame, *_] = paused["callFrames"]
            assert frame["location"] == {**frame["location"], "scriptId": script["scriptId"], "lineNumber": line - 1}
            assert {"inventory", "stock"} <= await node.local_names(frame)
            value = await node.call(
                "Debugger.evaluateOnCallFrame",
                {
                    "callFrameId": frame["callFrameId"],
                    "expression": "inventory.service + ' ' + req.get('x-innerloop-user')",
                },
            )
            assert value["result"]["value"] == "inventory cdp-test", value
            await asyncio.sleep(0.5)
            assert not request.done()  # held at the breakpoint
            await node.call("Debugger.resume")
            async with await asyncio.wait_for(request, 30) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["service"] == "reviews" and body["via"][0]["service"] == "inventory"

    [before] = _inspector_targets(local)
    asyncio.run(scenario())

    # A sync restarts node under its inspector: a new target on the same port (launch.json's restart re-attaches).
    source.write_text(text.replace('"hello from reviews"', '"hello from a debugged sync"'))
    eventually(lambda: _get(debugging.ports["reviews"], "/reviews")[1]["greeting"] == "hello from a debugged sync")
    [after] = eventually(lambda: [t for t in _inspector_targets(local) if t["id"] != before["id"]], timeout_s=30)
    assert after["url"] == url
    source.write_text(text)  # as built: the plain `up` at the end finds the image by its input hash


def _inspector_targets(port: int) -> list[dict[str, str]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
        targets: list[dict[str, str]] = json.load(resp)
        return targets


def test_run_on_a_debugged_pod_gets_the_apps_context_not_the_debuggers(debugging: Debugging) -> None:
    """`innerloop run` borrowing the debugged backend's context: no debugpy variables, no debug record."""
    out = debugging.tmp / "run-env.json"
    dump = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    local = {k: v for k, v in os.environ.items() if not k.startswith(("PYDEVD_", "PYTHON"))}
    done = subprocess.run(
        [*debugging.cli, "run", "-n", debugging.namespace, "-l", "app.kubernetes.io/name=backend", "--",
         os.path.realpath(sys.executable), "-c", dump, str(out)],
        cwd=debugging.tmp, env=local, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    env = json.loads(out.read_text())
    assert env["REVIEWS_URL"] == "http://reviews:8080", env  # the app's own variable, from k8s/backend.yaml
    assert not [k for k in env if k.startswith("PYDEVD_") or k == "INNERLOOP_DEBUG_ORIGINAL"], env
    assert "PYTHONDONTWRITEBYTECODE" not in env  # the debug launch's, not the app's
    assert "PYDEVD" not in done.stdout + done.stderr  # removed, not merely withheld with a note


@pytest.mark.parametrize("name", PYTHONS)
def test_other_pythons_breakpoint_through_debug(debugging: Debugging, name: str) -> None:
    """The same debugpy copy under Debian's Python 3.9 and 3.13: stopped at a line, a local read, continued."""
    app, ports, local = debugging.app, debugging.ports, debugging.debuggers[name]
    source = app / name / "app" / "app.py"
    line = TINY_APP[: TINY_APP.index("        self.send_response(200)")].count("\n") + 1
    [config] = [
        c
        for c in json5.loads((app / ".vscode" / "launch.json").read_text())["configurations"]
        if c["name"] == f"innerloop: {name}"
    ]
    arguments = json.loads(json.dumps(config).replace("${workspaceFolder}", str(app)))
    with attach_tree("127.0.0.1", local, arguments, {str(source): [line]}) as [session]:
        answer: dict[str, object] = {}

        def request() -> None:
            answer["status"], answer["body"] = _get(ports[name], "/", {"x-innerloop-user": f"dap-{name}"})

        client = threading.Thread(target=request, daemon=True)
        client.start()
        event = session.event("stopped", timeout_s=30)
        assert event["reason"] == "breakpoint"
        frame, variables = session.locals_of_top_frame(int(event["threadId"]))
        assert (frame["line"], Path(frame["source"]["path"])) == (line, source)
        assert variables["visitor"] == f"'dap-{name}'", variables
        assert "status" not in answer  # held at the breakpoint
        session.request("continue", {"threadId": event["threadId"]})
        client.join(timeout=30)
    assert answer.get("status") == 200, answer
    assert answer["body"] == {"python": PYTHONS[name], "visitor": f"dap-{name}"}


def test_plain_up_afterwards_brings_the_probes_back(debugging: Debugging) -> None:
    """Last in the module: it ends the shared `innerloop debug`."""
    stop_gently(debugging.proc)
    log = debugging.tmp / "up.log"
    proc = _start(debugging.cli, debugging.app, log, "up", "-n", debugging.namespace, "--no-color")
    try:
        logged(proc, log, r"in sync")
        for service in DEBUGGED:
            eventually(
                lambda s=service: "livenessProbe" in _container(debugging.kube, debugging.namespace, s), timeout_s=60
            )
    finally:
        stop_gently(proc)


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
