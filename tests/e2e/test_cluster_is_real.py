"""The bundled cluster is a real one: exec, logs, port-forward and DNS work end to end."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request

from .kube import Kube, eventually, free_port, pod_manifest


def _busybox_pod(kube: Kube, namespace: str, name: str, command: list[str]) -> None:
    kube.apply(namespace, pod_manifest(name, kube.images["busybox"], command))
    kube.wait_ready(namespace, name)


def test_exec_with_stdin_is_binary_safe(kube: Kube, namespace: str) -> None:
    _busybox_pod(kube, namespace, "shell", ["sleep", "3600"])
    payload = os.urandom(1024 * 1024) + bytes(range(256)) * 16  # every byte value, 1 MiB+
    out = subprocess.run(
        kube.argv("exec", "-i", "-n", namespace, "shell", "--", "cat"),
        input=payload,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert len(out.stdout) == len(payload)
    assert out.stdout == payload


def test_exec_passes_exit_codes_through(kube: Kube, namespace: str) -> None:
    _busybox_pod(kube, namespace, "shell", ["sleep", "3600"])
    for code in (0, 3, 42):
        out = kube.run("exec", "-n", namespace, "shell", "--", "sh", "-c", f"exit {code}", check=False)
        assert out.returncode == code, out.stderr


def test_logs_follow_a_running_container(kube: Kube, namespace: str) -> None:
    _busybox_pod(
        kube, namespace, "ticker", ["sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done"]
    )
    follow = subprocess.Popen(kube.argv("logs", "-f", "-n", namespace, "ticker"), stdout=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        seen: list[int] = []
        started = time.monotonic()
        first_at = last_at = 0.0
        # At least 15 lines, the last over a second after the first: the lines written before the follow
        # began (many, when the machine is busy) all come at once, and then more must come.
        while (len(seen) < 15 or last_at - first_at < 1.0) and time.monotonic() - started < 120:
            line = follow.stdout.readline()
            if line.startswith("tick-"):
                seen.append(int(line.strip().split("-")[1]))
                last_at = time.monotonic()
                first_at = first_at or last_at
        assert len(seen) >= 15, f"only {len(seen)} lines followed"
        # Lines keep arriving in order while we follow: the stream is live, not a snapshot.
        assert seen == sorted(seen)
        assert seen[-1] - seen[0] == len(seen) - 1
        assert last_at - first_at >= 1.0
    finally:
        follow.terminate()
        follow.wait(timeout=60)


def test_port_forward_from_the_host_reaches_a_pod(kube: Kube, namespace: str) -> None:
    server = [
        "python3",
        "-c",
        (
            "import http.server,socketserver\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "  def do_GET(self):\n"
            "    b=b'pong from '+self.path.encode(); self.send_response(200);"
            " self.send_header('Content-Length',str(len(b))); self.end_headers(); self.wfile.write(b)\n"
            "http.server.HTTPServer(('',8080),H).serve_forever()\n"
        ),
    ]
    kube.apply(namespace, pod_manifest("web", kube.images["python"], server, port=8080))
    kube.wait_ready(namespace, "web")
    port = free_port()
    forward = subprocess.Popen(
        kube.argv("port-forward", "-n", namespace, "pod/web", f"{port}:8080"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def fetch() -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=30) as resp:
                return bytes(resp.read())

        assert eventually(fetch) == b"pong from /ping"
    finally:
        forward.terminate()
        forward.wait(timeout=60)


def test_cluster_dns_resolves_services(kube: Kube, namespace: str) -> None:
    # glibc's resolver (in the python image) applies the pod's search domains, as apps do.
    kube.apply(
        namespace, pod_manifest("dns", kube.images["python"], ["python3", "-c", "import time; time.sleep(3600)"])
    )
    kube.wait_ready(namespace, "dns")
    kube.run("create", "service", "clusterip", "neighbour", "--tcp=80:8080", "-n", namespace)
    neighbour_ip = kube.get_json("service", "neighbour", "-n", namespace)["spec"]["clusterIP"]
    expected = {
        "neighbour": neighbour_ip,  # short name, same namespace
        f"neighbour.{namespace}": neighbour_ip,
        "kubernetes.default": "10.96.0.1",
        "kubernetes.default.svc": "10.96.0.1",
        "kubernetes.default.svc.cluster.local": "10.96.0.1",
    }
    for name, ip in expected.items():
        out = kube.run(
            "exec",
            "-n",
            namespace,
            "dns",
            "--",
            "python3",
            "-c",
            f"import socket; print(socket.gethostbyname({name!r}))",
            check=False,
        )
        assert out.returncode == 0, f"{name}: {out.stdout}{out.stderr}"
        assert out.stdout.strip() == ip, name
    out = kube.run(
        "exec",
        "-n",
        namespace,
        "dns",
        "--",
        "python3",
        "-c",
        "import socket; socket.gethostbyname('no-such-service.default.svc.cluster.local')",
        check=False,
    )
    assert out.returncode != 0 and "gaierror" in out.stderr
