"""`innerloop debug` of a Go service on the bundled cluster: Delve launches the binary, a real DAP client attaches.

The bookshop's inventory (Go 1.19 from the bundled golang:1.19, multi-stage
onto distroless static, non-root) in a namespace that enforces the
restricted Pod Security Standard. One test proves, in order:

- the example as shipped is built with ``-ldflags="-s -w"``: `innerloop
  debug inventory` refuses it in one line that says what to change, with
  its place in innerloop.yaml, and deploys nothing;
- with ``-s -w`` dropped (``-trimpath`` kept, so the binary's paths are
  module-relative), the pod is admitted as restricted with no capability
  added (Delve traces its own child: no ``SYS_PTRACE``; the kernel shows
  the binary as dlv's traced child, both with no capability, under the
  RuntimeDefault seccomp filter and no_new_privs), Delve (static,
  from hack/delve) runs the binary, and `.vscode/launch.json` got
  "innerloop: inventory" aimed at the local forward with a
  ``substitutePath`` read from the binary's own line tables;
- through that configuration a breakpoint set in the *local*
  inventory/main.go binds: a request through the service's forward stops
  at that line, the client reads a local variable's value there, continues,
  and the request completes with 200;
- detached, the service keeps serving under Delve, and a second client
  attaches again (what an editor's re-attach does).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.request
from pathlib import Path

import json5

from innerloop.debug.delve import delve_binary

from .background import logged, stop_gently
from .bookshop import copy_bookshop
from .dap import DapClient
from .kube import Kube, eventually

REPO = Path(__file__).resolve().parents[2]
BUILD_ENV = {  # inventory's Dockerfile has RUN steps: buildah builds it, from the bundled cluster's bases
    "CONTAINERS_REGISTRIES_CONF": "/var/lib/innerloop-cluster/config/containers/registries.conf",
    "CONTAINERS_STORAGE_CONF": "/var/lib/innerloop-cluster/config/containers/storage.conf",
}


def _start(cli: list[str], app: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **BUILD_ENV}
    return subprocess.Popen([*cli, *args], cwd=app, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env=env)


def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as resp:
        return resp.status, json.load(resp)


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:  # gone meanwhile
        return []


def _environ(pid: int) -> dict[str, str]:
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return {}
    return dict(e.split("=", 1) for e in entries if "=" in e)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _container(kube: Kube, namespace: str) -> dict[str, object]:
    [deployment] = kube.get_json("deployments", "-n", namespace)["items"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _delve_built() -> None:
    """hack/delve builds dlv once per version (minutes, cold); CI runs it before the tests."""
    built = subprocess.run([str(REPO / "hack/delve"), "amd64"], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    assert delve_binary("amd64").is_file()


def test_go_breakpoint_through_debug(kube: Kube, namespace: str, innerloop_cli: list[str], tmp_path: Path) -> None:
    _delve_built()
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    app, ports = copy_bookshop(tmp_path / "bookshop", only=["inventory"])

    # As shipped: stripped, so no breakpoint could bind. One line, before anything is deployed.
    done = subprocess.run(
        [*innerloop_cli, "debug", "inventory", "-n", namespace, "--no-color"],
        cwd=app,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, **BUILD_ENV},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    [line] = [e for e in done.stderr.splitlines() if e.startswith("error:")]
    assert ": services.inventory.debug: the binary /inventory has no debug info (built with -ldflags='-s -w'): " in line
    assert "drop -s -w" in line, line
    assert kube.get_json("deployments", "-n", namespace)["items"] == []

    dockerfile = app / "inventory" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace(' -ldflags="-s -w"', ""))
    source = app / "inventory" / "main.go"
    text = source.read_text()
    # The line after `items` is filled in the /inventory handler: `items` is a local there.
    line_no = text[: text.index("\tpod, _ := os.Hostname()")].count("\n") + 1
    log = tmp_path / "debug.log"
    proc = _start(innerloop_cli, app, log, "debug", "inventory", "-n", namespace, "--no-color")
    try:
        local = int(logged(proc, log, r"inventory: debugger \(go\) on 127\.0\.0\.1:(\d+)").group(1))
        eventually(lambda: _get(ports["inventory"], "/healthz")[0] == 200, timeout_s=180)

        container = _container(kube, namespace)
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}  # type: ignore[index]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False  # type: ignore[index]
        assert "livenessProbe" not in container and "readinessProbe" in container
        command = container["command"]
        assert isinstance(command, list)
        launched = command[command.index("--") + 1 :]  # what the agent runs: the binary as Delve's child
        assert launched[:2] == ["/.innerloop/tools/dlv/dlv", "exec"] and launched[-2:] == ["/inventory", "--"], launched

        # The bundled cluster's containers are this machine's processes: the kernel's view of them.
        [pod] = kube.get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/name=inventory")["items"]
        ours = [pid for pid in _pids() if _environ(pid).get("HOSTNAME") == pod["metadata"]["name"]]
        [dlv] = [pid for pid in ours if _cmdline(pid)[:2] == ["/.innerloop/tools/dlv/dlv", "exec"]]
        [child] = [pid for pid in ours if _cmdline(pid) == ["/inventory"]]
        assert _status(child)["PPid"] == str(dlv)  # Delve launched the binary: it traces its own child
        assert _status(child)["TracerPid"] == str(dlv)
        for pid in (dlv, child):
            status = _status(pid)
            assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, status  # no SYS_PTRACE
            assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1", status  # RuntimeDefault's filter
            assert status["Uid"].split()[0] == "65532", status

        launch = json5.loads((app / ".vscode" / "launch.json").read_text())
        [config] = [c for c in launch["configurations"] if c["name"] == "innerloop: inventory"]
        assert (config["type"], config["request"], config["mode"]) == ("go", "attach", "remote")
        assert config["port"] == local
        # -trimpath: the binary names its sources by module path; the local folder maps to it.
        assert config["substitutePath"] == [
            {"from": "${workspaceFolder}/inventory", "to": "example.com/bookshop/inventory"}
        ]
        arguments = json.loads(json.dumps(config).replace("${workspaceFolder}", str(app)))

        session = DapClient("127.0.0.1", local)
        try:
            verified = session.attach(arguments, {str(source): [line_no]})
            assert [b.get("verified") for b in verified[str(source)]] == [True], verified
            answer: dict[str, object] = {}

            def request() -> None:
                answer["status"], answer["body"] = _get(ports["inventory"], "/inventory")

            client = threading.Thread(target=request, daemon=True)
            client.start()
            event = session.event("stopped", timeout_s=30)
            assert event["reason"] == "breakpoint", event
            frame, variables = session.locals_of_top_frame(int(event["threadId"]))
            assert frame["line"] == line_no
            assert (
                Path(frame["source"]["path"]) == source
            )  # example.com/bookshop/inventory/main.go mapped to the local file
            assert "len: 3" in variables["items"], variables  # the three books, as Delve shows a slice
            assert "status" not in answer  # held at the breakpoint
            session.request("continue", {"threadId": event["threadId"]})
            client.join(timeout=30)
            assert answer.get("status") == 200, answer
            body = answer["body"]
            assert isinstance(body, dict) and len(body["items"]) == 3
            # Delve keeps a detached client's breakpoints (the target is left as it is): clear them first.
            session.request("setBreakpoints", {"source": {"path": str(source)}, "breakpoints": []})
        finally:
            session.send("disconnect", {"terminateDebuggee": False})
            session.close()

        # Detached, the service runs on under Delve (--accept-multiclient), and an editor attaches again.
        assert _get(ports["inventory"], "/inventory")[0] == 200
        again = DapClient("127.0.0.1", local)
        try:
            again.attach(arguments, {})
            assert again.request("threads")["threads"]
        finally:
            again.send("disconnect", {"terminateDebuggee": False})
            again.close()
        assert _get(ports["inventory"], "/inventory")[0] == 200
    finally:
        stop_gently(proc)
