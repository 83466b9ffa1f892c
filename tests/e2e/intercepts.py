"""Pieces the intercept tests share: a Service to intercept, local apps, CLI processes, a request loop.

The tests run on the bundled cluster's node, where kube-proxy's rules apply
to the host too: a ClusterIP is reachable from the test process, so traffic
"through the Service" is real kube-proxy traffic.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .kube import Kube, restricted_security

# One request of a RequestLoop may take this long before it counts as failed: generous, as a busy
# machine stalls a process now and then; a lost request or a broken connection still fails at once.
REQUEST_TIMEOUT_S = 30

ECHO_APP = """
import json, os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n) if n else b""
        body = json.dumps({"where": "cluster", "pod": socket.gethostname(), "path": self.path,
                           "received": len(data)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *a): pass
ThreadingHTTPServer(("", 8080), H).serve_forever()
"""


def echo_manifest(
    image: str,
    *,
    name: str = "echo",
    replicas: int = 2,
    target_port: str | int = "http",
    command: list[str] | None = None,
) -> str:
    sec = restricted_security()
    labels = {"app": name}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {**sec["pod"], "runAsGroup": 65532},
                    "containers": [
                        {
                            "name": "echo",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": command or ["python3", "-c", ECHO_APP],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                            "securityContext": sec["container"],
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"team": "shop"}},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": target_port}]},
    }
    return json.dumps(deployment) + "\n---\n" + json.dumps(service)


def deploy_echo(kube: Kube, namespace: str, **kwargs: Any) -> str:
    """Deploy, wait for the rollout; returns the Service's ClusterIP."""
    name = kwargs.get("name", "echo")
    kube.apply(namespace, echo_manifest(kube.images["python"], **kwargs))
    kube.run("rollout", "status", "-n", namespace, f"deploy/{name}", "--timeout=300s", timeout=310)
    ip = str(kube.get_json("svc", name, "-n", namespace)["spec"]["clusterIP"])
    # Rolled out is not yet reachable: kube-proxy programs the new endpoints on its next sync.
    deadline = time.monotonic() + 120
    while True:
        try:
            if request(ip, 80)["where"] == "cluster":
                return ip
        except (OSError, ValueError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def service_snapshot(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    """The Service exactly as stored, managedFields included, minus the version the server bumps."""
    obj = kube.get_json("svc", name, "-n", namespace, "--show-managed-fields")
    obj["metadata"].pop("resourceVersion")
    return dict(obj)


def pods_of(kube: Kube, namespace: str, app: str) -> dict[str, int]:
    """uid -> restarts of the app's pods: equal before and after means nothing was restarted."""
    pods = kube.get_json("pods", "-n", namespace, "-l", f"app={app}")["items"]
    return {p["metadata"]["uid"]: sum(c["restartCount"] for c in p["status"]["containerStatuses"]) for p in pods}


def leftovers(kube: Kube, namespace: str) -> list[str]:
    out = kube.run(
        "get",
        "deploy,rs,pods,svc,cm,sa,role,rolebinding",
        "-n",
        namespace,
        "-l",
        "innerloop.dev/intercept-router",
        "-o",
        "name",
    ).stdout
    return out.split()


class LocalApp:
    """A local HTTP server that says who it is, and records the requests it got."""

    def __init__(self, who: str) -> None:
        app = self
        self.who = who
        self.requests: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body are two writes: no delayed-ACK stall

            def do_GET(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n) if n else b""
                app.requests.append({k.lower(): v for k, v in self.headers.items()})
                body = json.dumps({"where": app.who, "path": self.path, "received": len(data)}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class InterceptProcess:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @classmethod
    def start(
        cls,
        cli: list[str],
        *args: str,
        state: Path,
        kubeconfig: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> InterceptProcess:
        environ = {**os.environ, **(env or {}), "XDG_STATE_HOME": str(state)}
        if kubeconfig is not None:
            environ["KUBECONFIG"] = str(kubeconfig)
        proc = subprocess.Popen(
            [*cli, "intercept", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environ,
            cwd=cwd,
        )
        me = cls(proc)
        me.reader = threading.Thread(target=me._read, daemon=True)
        me.reader.start()
        return me

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 300) -> float:
        """Seconds until a line containing ``text`` appeared; fails with the output if the process ended."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if any(text in line for line in self.lines):
                return time.monotonic() - started
            if self.proc.poll() is not None:
                self._drain()
                if any(text in line for line in self.lines):
                    return time.monotonic() - started
                raise AssertionError(f"intercept exited {self.proc.returncode} before {text!r}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout}s:\n{self.output}")

    def _drain(self) -> None:
        """After the process ended: wait until its last line has been read (``output`` is then complete)."""
        if self.reader is not None:
            self.reader.join(30)

    def wait(self, timeout: float = 120) -> int:
        """The exit code, once every line of the output has been read."""
        code = self.proc.wait(timeout)
        self._drain()
        return code

    def stop(self, sig: int = signal.SIGINT, timeout: float = 120) -> int:
        self.proc.send_signal(sig)
        return self.wait(timeout)


def request(
    host: str,
    port: int,
    *,
    headers: Mapping[str, str] | None = None,
    path: str = "/",
    body: bytes | None = None,
    timeout: float = 10,
) -> dict[str, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST" if body else "GET", path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise OSError(f"HTTP {response.status}: {data[:200]!r}")
        result: dict[str, Any] = json.loads(data)
        return result
    finally:
        conn.close()


class RequestLoop:
    """Requests through the Service, round-robin over header sets, from threads, until stopped.

    Each label in ``headers`` has its own thread and counts where its
    responses came from and every failure (an exception or a non-200).
    One more thread uses a single keep-alive connection for all labels in
    turn, as pooled clients do, reconnecting only when the server says so
    or the connection breaks (which counts as a failure).
    """

    def __init__(self, host: str, port: int, headers: Mapping[str, Mapping[str, str]]) -> None:
        self.host = host
        self.port = port
        self.headers = dict(headers)
        self.where: dict[str, Counter[str]] = {label: Counter() for label in headers}
        self.failures: list[str] = []
        self.keepalive_requests = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._one, args=(label,), daemon=True) for label in headers]
        self._threads.append(threading.Thread(target=self._keepalive, daemon=True))
        self._lock = threading.Lock()
        self._started = time.monotonic()

    def _record(self, label: str, where: str) -> None:
        with self._lock:
            self.where[label][where] += 1

    def _one(self, label: str) -> None:
        while not self._stop.is_set():
            try:
                answer = request(self.host, self.port, headers=self.headers[label], timeout=REQUEST_TIMEOUT_S)
                self._record(label, answer["where"])
            except (OSError, ValueError, http.client.HTTPException) as err:
                self.failures.append(f"{self._at()} {label}: {type(err).__name__}: {err}")
            time.sleep(0.01)

    def _keepalive(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT_S)
        labels = list(self.headers)
        i = 0
        while not self._stop.is_set():
            label = labels[i % len(labels)]
            i += 1
            try:
                conn.request("GET", "/keepalive", headers=dict(self.headers[label]))
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise OSError(f"HTTP {response.status}: {data[:200]!r}")
                # Not counted per label: a connection opened before an intercept stays with the pod it
                # reached (kube-proxy balances connections, not requests); only failures count here.
                json.loads(data)
                self.keepalive_requests += 1
            except (OSError, ValueError, http.client.HTTPException) as err:
                self.failures.append(f"{self._at()} keep-alive {label}: {type(err).__name__}: {err}")
                conn.close()
            time.sleep(0.01)
        conn.close()

    def _at(self) -> str:
        return f"t+{time.monotonic() - self._started:.2f}s"

    def snapshot(self) -> dict[str, Counter[str]]:
        with self._lock:
            return {label: Counter(c) for label, c in self.where.items()}

    def _answered(self) -> dict[str, int]:
        with self._lock:
            return {label: c.total() for label, c in self.where.items()}

    def until_answered(self, n: int, *, timeout_s: float = 120) -> None:
        """Wait until every label got ``n`` more answers than now (and no thread failed meanwhile).

        With n >= 2, every label's request that was in flight when this was called has been
        recorded, and one more was sent after it: what follows sees only requests made after now.
        """
        base = self._answered()
        deadline = time.monotonic() + timeout_s
        while any(self._answered()[label] < base[label] + n for label in base):
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {n} answers per label within {timeout_s}s: {self.snapshot()}")
            time.sleep(0.02)

    def window(self, *, min_s: float = 3.0, answers: int = 20, timeout_s: float = 120) -> dict[str, Counter[str]]:
        """Where each label's answers came from during a window of at least ``min_s`` seconds and
        ``answers`` answers per label, counted only from requests sent after this call."""
        self.until_answered(2, timeout_s=timeout_s)
        start = self.snapshot()
        opened = time.monotonic()
        self.until_answered(answers, timeout_s=timeout_s)
        time.sleep(max(0.0, min_s - (time.monotonic() - opened)))  # the measurement window, not a wait for an event
        end = self.snapshot()
        return {label: end[label] - start[label] for label in end}

    @contextmanager
    def running(self) -> Iterator[RequestLoop]:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(REQUEST_TIMEOUT_S + 5)
