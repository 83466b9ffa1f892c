"""`innerloop run`: a local command reaches the namespace's Services by their cluster DNS names.

Without root, without touching the machine's /etc/resolv.conf or /etc/hosts,
for any binary: a Python script (glibc's resolver) and a statically linked Go
program (Go's own resolver, which reads /etc/resolv.conf itself).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .kube import Kube, eventually
from .workloads import deployment_manifest

# The bookshop backend's answer, served by the standard library (the example's own backend is Flask now,
# and this image has no pip): what matters here is the name the local command calls.
BACKEND_SOURCE = """
import json, os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"service": "backend", "pod": socket.gethostname(),
                           "books": [{"id": 1, "title": "The Phoenix Project"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
"""
GO_CACHE = Path("/var/cache/innerloop/go-test-cache")
NOBODY = 65534
SRC = Path(__file__).resolve().parents[2] / "src"

# Every name a pod would use, on both Service ports (80 proves ports below 1024 need no root).
PY_CLIENT = """
import json, sys, urllib.request
ns = sys.argv[1]
results = {}
for url in ["http://backend:8080/books", f"http://backend.{ns}:8080/books", f"http://backend.{ns}.svc:8080/books",
            f"http://backend.{ns}.svc.cluster.local:8080/books", "http://BACKEND.%s.SVC.cluster.local./books" % ns]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            results[url] = json.loads(r.read())
    except Exception as err:
        results[url] = repr(err)
print(json.dumps(results))
"""

GO_CLIENT = """package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

func main() {
	addrs, err := net.LookupHost("backend")
	if err != nil {
		fmt.Println("lookup failed:", err)
		os.Exit(2)
	}
	resp, err := http.Get("http://backend:8080/books")
	if err != nil {
		fmt.Println("get failed:", err)
		os.Exit(3)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("%s %s\\n", addrs[0], body)
}
"""

# Waits until the test has looked from outside, so "during the run" is certain.
WAIT_FOR_TEST = """
import os, socket, sys, time
open(sys.argv[1], "w").write(socket.gethostbyname("backend"))
deadline = time.time() + 600
while not os.path.exists(sys.argv[2]) and time.time() < deadline:
    time.sleep(0.05)
"""


def _deploy_backend(kube: Kube, namespace: str) -> None:
    command = ["python3", "-c", BACKEND_SOURCE]
    port = {"containerPort": 8080, "name": "http"}
    kube.apply(namespace, deployment_manifest("backend", kube.images["python"], command, ports=[port]))
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "backend"},
        "spec": {
            "selector": {"app": "backend"},
            "ports": [
                {"name": "http", "port": 8080, "targetPort": "http"},
                {"name": "low", "port": 80, "targetPort": "http"},
            ],
        },
    }
    kube.apply(namespace, json.dumps(service))
    kube.run("rollout", "status", "-n", namespace, "deployment/backend", "--timeout=300s", timeout=310)


@pytest.fixture
def backend(kube: Kube, namespace: str) -> str:
    _deploy_backend(kube, namespace)
    return namespace


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A statically linked Go HTTP client (pure-Go resolver), built once; the caches make reruns fast."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain on PATH")
    folder = tmp_path_factory.mktemp("goclient")
    (folder / "main.go").write_text(GO_CLIENT)
    (folder / "go.mod").write_text("module goclient\n\ngo 1.21\n")
    GO_CACHE.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        CGO_ENABLED="0",
        GOPATH=str(GO_CACHE / "gopath"),
        GOCACHE=str(GO_CACHE / "build"),
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=mod",
    )
    binary = folder / "goclient"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=folder, env=env, check=True, timeout=900)
    described = subprocess.run(["file", str(binary)], capture_output=True, text=True, check=True).stdout
    assert "statically linked" in described, described
    assert b".interp" not in binary.read_bytes()  # no dynamic loader section: nothing for LD_PRELOAD to hook
    binary.chmod(0o755)
    folder.chmod(0o755)
    return binary


def _snapshot() -> tuple[bytes, bytes]:
    return Path("/etc/resolv.conf").read_bytes(), Path("/etc/hosts").read_bytes()


def _assert_books(result: object, namespace: str) -> None:
    assert isinstance(result, dict), result
    assert result["service"] == "backend"
    assert result["pod"].startswith("backend-")
    assert result["books"][0]["title"] == "The Phoenix Project"


def _run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _our_processes() -> set[int]:
    """Processes of this checkout's namespace helpers (and slirp4netns) still alive."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"innerloop.connect.netns_init" in cmdline or cmdline.startswith(b"slirp4netns"):
            found.add(int(proc.name))
    return found


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Every test ends with its namespaces' processes gone (they would keep the namespaces alive)."""
    before = _our_processes()
    yield
    deadline = time.monotonic() + 60
    while (left := _our_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"helper processes left behind: {left}"


def test_service_names_resolve_for_python_and_static_go(
    innerloop_cli: list[str], kube: Kube, backend: str, go_client: Path, tmp_path: Path
) -> None:
    namespace = backend
    env = dict(os.environ, KUBECONFIG=str(kube.kubeconfig))
    before = _snapshot()
    script = tmp_path / "client.py"
    script.write_text(PY_CLIENT)

    out = _run(
        [*innerloop_cli, "run", "-n", namespace, "-l", "app=backend", "--", "python3", str(script), namespace],
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.splitlines()[-1])
    assert len(results) == 5
    for url, result in results.items():
        assert isinstance(result, dict), f"{url}: {result}"
        _assert_books(result, namespace)
    assert "cluster names in the command: backend (each also as" in out.stderr, out.stderr

    static = _run(
        [*innerloop_cli, "run", "-n", namespace, "-l", "app=backend", "--", str(go_client)], cwd=tmp_path, env=env
    )
    assert static.returncode == 0, static.stdout + static.stderr
    address, body = static.stdout.strip().split(" ", 1)
    assert address.startswith("127.1.")
    _assert_books(json.loads(body), namespace)

    assert _snapshot() == before


def test_other_processes_do_not_see_the_names_and_the_machine_is_unchanged(
    innerloop_cli: list[str], kube: Kube, backend: str, tmp_path: Path
) -> None:
    namespace = backend
    env = dict(os.environ, KUBECONFIG=str(kube.kubeconfig))
    before = _snapshot()
    resolved, release = tmp_path / "resolved", tmp_path / "release"
    script = tmp_path / "wait.py"
    script.write_text(WAIT_FOR_TEST)
    proc = subprocess.Popen(
        [
            *innerloop_cli,
            "run",
            "-n",
            namespace,
            "-l",
            "app=backend",
            "--",
            "python3",
            str(script),
            str(resolved),
            str(release),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not resolved.exists() or not resolved.read_text():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the command never resolved backend"
            time.sleep(0.05)
        assert resolved.read_text().startswith("127.1.")
        # Meanwhile, processes outside the command's namespace see the machine as it was.
        assert _snapshot() == before
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("backend", 8080)
        outside = _run([sys.executable, "-c", "import socket; socket.gethostbyname('backend')"], cwd=tmp_path, env=env)
        assert outside.returncode != 0 and "gaierror" in outside.stderr
        getent = _run(["getent", "hosts", f"backend.{namespace}.svc.cluster.local"], cwd=tmp_path, env=env)
        assert getent.returncode != 0 and getent.stdout == ""
        release.write_text("go")
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert _snapshot() == before
    # Without the cluster network the command sees the machine's resolver.
    plain = _run(
        [
            *innerloop_cli,
            "run",
            "-n",
            namespace,
            "-l",
            "app=backend",
            "--no-cluster-network",
            "--",
            "python3",
            "-c",
            "import socket; socket.gethostbyname('backend')",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert plain.returncode == 1 and "gaierror" in plain.stderr


def _nobody_python() -> str:
    """An interpreter of this venv's version that uid 65534 can run (the venv's own may live under /root)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.path.exists(candidate):
            return candidate
    pytest.skip(f"no {version} outside /root for an unprivileged user")


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    """A folder uid 65534 owns, under /tmp (pytest's own temp folders are private to root)."""
    home = Path(tempfile.mkdtemp(prefix="innerloop-nobody-"))
    home.chmod(0o755)
    os.chown(home, NOBODY, NOBODY)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_runs_as_an_unprivileged_user(kube: Kube, backend: str, go_client: Path, nobody_home: Path) -> None:
    namespace = backend
    home = nobody_home
    kubeconfig, script, binary = home / "kubeconfig", home / "client.py", home / "goclient"
    shutil.copy(kube.kubeconfig, kubeconfig)
    script.write_text(PY_CLIENT)
    shutil.copy(go_client, binary)
    for path in (kubeconfig, script, binary):
        os.chown(path, NOBODY, NOBODY)
    python = _nobody_python()
    env = {
        "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not p.startswith("/root")),
        "HOME": str(home),
        "KUBECONFIG": str(kubeconfig),
        "PYTHONPATH": os.pathsep.join([str(SRC), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]),
    }
    setpriv = [
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ]
    whoami = _run(
        [*setpriv, "python3", "-c", "import os; print(os.getuid(), open('/proc/self/status').read())"],
        cwd=home,
        env=env,
    )
    assert whoami.stdout.startswith(f"{NOBODY} ") and "CapEff:\t0000000000000000" in whoami.stdout
    before = _snapshot()
    cli = [*setpriv, python, "-m", "innerloop", "run", "-n", namespace, "-l", "app=backend", "--"]

    out = _run([*cli, "sh", "-c", f"id -u; python3 {script} {namespace}; {binary}"], cwd=home, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(NOBODY)  # the command runs as the same user, not as root of the namespace
    results = json.loads(lines[1])
    for url, result in results.items():
        assert isinstance(result, dict), f"{url}: {result}"
        _assert_books(result, namespace)
    address, body = lines[2].split(" ", 1)
    assert address.startswith("127.1.")
    _assert_books(json.loads(body), namespace)
    assert _snapshot() == before


@pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="slirp4netns is not installed (it is optional)")
def test_outbound_through_slirp4netns_reaches_this_machines_loopback(
    innerloop_cli: list[str], kube: Kube, backend: str, tmp_path: Path
) -> None:
    namespace = backend
    (tmp_path / "index.html").write_text("from the host")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host_server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                return True

        eventually(listening)
        client = (
            "import sys, time, urllib.request\n"
            "for _ in range(300):\n"
            "    try:\n"
            f"        print(urllib.request.urlopen('http://10.0.2.2:{port}/index.html', timeout=5).read().decode())\n"
            "        break\n"
            "    except OSError:\n"
            "        time.sleep(0.1)\n"
            "print(urllib.request.urlopen('http://backend/books', timeout=60).status)\n"
        )
        env = dict(os.environ, KUBECONFIG=str(kube.kubeconfig))
        out = _run(
            [*innerloop_cli, "run", "-n", namespace, "-l", "app=backend", "--", "python3", "-c", client],
            cwd=tmp_path,
            env=env,
        )
    finally:
        host_server.terminate()
        host_server.wait()
    if "only cluster Services are reachable" in out.stderr:
        pytest.skip(f"slirp4netns cannot run here: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["from the host", "200"]
