"""HTTP/2 (h2c, as gRPC speaks it in a cluster): one client connection, streams routed one by one.

The cluster side and the local side are servers built on the `h2` package
(shipped to the pod in a ConfigMap, since the base image has no pip), and
the client is `h2` too: an implementation independent of the router's own.
"""

from __future__ import annotations

import importlib
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events

from .intercepts import InterceptProcess, leftovers
from .kube import Kube, eventually, restricted_security

H2_SERVER = """
import json, socket, sys, threading
import h2.config, h2.connection, h2.events
WHO, PORT, HOST = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def handle(sock):
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    heads = {}
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                heads[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                h = heads.pop(ev.stream_id, {})
                body = json.dumps({"where": WHO, "dev": h.get(b"x-dev", b"").decode()}).encode()
                conn.send_headers(ev.stream_id, [(":status", "200"), ("content-length", str(len(body)))])
                conn.send_data(ev.stream_id, body)
                conn.send_headers(ev.stream_id, [("grpc-status", "0")], end_stream=True)
        sock.sendall(conn.data_to_send())
srv = socket.create_server((HOST, PORT))
print("listening", srv.getsockname()[1], flush=True)
while True:
    client, _ = srv.accept()
    threading.Thread(target=handle, args=(client,), daemon=True).start()
"""


def _h2_library_configmap() -> tuple[dict[str, object], list[dict[str, str]]]:
    """The pure-Python h2, hpack and hyperframe packages as a ConfigMap (keys cannot hold '/')."""
    data: dict[str, str] = {}
    items: list[dict[str, str]] = []
    for package in ("h2", "hpack", "hyperframe"):
        root = Path(str(importlib.import_module(package).__file__)).parent
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root.parent).as_posix()
            data[rel.replace("/", "__")] = path.read_text()
            items.append({"key": rel.replace("/", "__"), "path": rel})
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "h2lib"}, "data": data}, items


def _deploy(kube: Kube, namespace: str) -> str:
    configmap, items = _h2_library_configmap()
    sec = restricted_security()
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "greeter"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "greeter"}},
            "template": {
                "metadata": {"labels": {"app": "greeter"}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": sec["pod"],
                    "containers": [
                        {
                            "name": "greeter",
                            "image": kube.images["python"],
                            "imagePullPolicy": "Never",
                            "command": ["python3", "-c", H2_SERVER, "cluster", "8080", ""],
                            "env": [{"name": "PYTHONPATH", "value": "/h2lib"}],
                            "ports": [{"name": "grpc", "containerPort": 8080}],
                            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                            "securityContext": sec["container"],
                            "volumeMounts": [{"name": "h2lib", "mountPath": "/h2lib"}],
                        }
                    ],
                    "volumes": [{"name": "h2lib", "configMap": {"name": "h2lib", "items": items}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "greeter"},
        "spec": {"selector": {"app": "greeter"}, "ports": [{"name": "grpc", "port": 80, "targetPort": "grpc"}]},
    }
    for doc in (configmap, deployment, service):
        # create, not apply: apply's last-applied annotation would not fit the library's size.
        kube.run("create", "-n", namespace, "-f", "-", input=json.dumps(doc))
    kube.run("rollout", "status", "-n", namespace, "deploy/greeter", "--timeout=300s", timeout=310)
    return str(kube.get_json("svc", "greeter", "-n", namespace)["spec"]["clusterIP"])


def h2_requests(host: str, port: int, devs: list[str | None]) -> list[dict[str, Any]]:
    """All requests concurrently on ONE connection; each answer with its trailers."""
    sock = socket.create_connection((host, port), timeout=30)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    streams: dict[int, dict[str, Any]] = {}
    for dev in devs:
        stream_id = conn.get_next_available_stream_id()
        headers = [(":method", "POST"), (":path", "/greet.Greeter/Hello"), (":scheme", "http"), (":authority", host)]
        headers += [("content-type", "application/grpc")] + ([("x-dev", dev)] if dev else [])
        conn.send_headers(stream_id, headers)
        conn.send_data(stream_id, b"\0\0\0\0\0", end_stream=True)
        streams[stream_id] = {"status": b"", "body": b"", "trailers": {}}
    sock.sendall(conn.data_to_send())
    open_streams = set(streams)
    try:
        while open_streams:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    streams[event.stream_id]["status"] = dict(event.headers).get(b":status", b"")
                elif isinstance(event, h2.events.DataReceived):
                    streams[event.stream_id]["body"] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    streams[event.stream_id]["trailers"] = dict(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    open_streams.discard(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    raise ConnectionError(f"stream {event.stream_id} reset: {event.error_code}")
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    for stream_id, s in streams.items():
        if s["status"] != b"200":  # e.g. a Service whose rules kube-proxy has not programmed yet
            raise ConnectionError(f"stream {stream_id}: HTTP {s['status'].decode()}: {s['body'][:200]!r}")
    return [
        {**json.loads(s["body"]), "grpc-status": s["trailers"].get(b"grpc-status")} for _, s in sorted(streams.items())
    ]


def test_h2c_streams_on_one_connection_are_routed_one_by_one(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    ip = _deploy(kube, namespace)
    eventually(lambda: h2_requests(ip, 80, [None])[0]["where"] == "cluster")
    local = subprocess.Popen(
        [sys.executable, "-c", H2_SERVER, "laptop", "0", "127.0.0.1"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert local.stdout is not None
        port = int(local.stdout.readline().split()[1])
        cli = InterceptProcess.start(
            innerloop_cli, "greeter", "-n", namespace, "--to", str(port), "--header", "x-dev=alice", state=tmp_path
        )
        cli.wait_for("intercepting svc/greeter")
        devs: list[str | None] = ["alice", None, "bob", "alice", None]

        def routed() -> list[dict[str, Any]]:
            answers = h2_requests(ip, 80, devs)
            assert [a["where"] for a in answers] == ["laptop", "cluster", "cluster", "laptop", "cluster"], answers
            return answers

        answers = eventually(routed)
        assert all(a["grpc-status"] == b"0" for a in answers), answers  # trailers come through both ways
        assert [a["dev"] for a in answers] == ["alice", "", "bob", "alice", ""]
        assert cli.stop() == 0, cli.output
    finally:
        local.kill()
        local.wait()
    eventually(lambda: not leftovers(kube, namespace), timeout_s=180)
    assert [a["where"] for a in h2_requests(ip, 80, ["alice"])] == ["cluster"]
