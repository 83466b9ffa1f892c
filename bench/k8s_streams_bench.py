"""Throughput of innerloop's exec and port-forward streams against kubectl, in the same run.

Needs a running cluster (`innerloop cluster up`). Run:

    .venv/bin/python bench/k8s_streams_bench.py [--mib 64] [--rounds 3]

Exec: stream N MiB into `cat` in a pod and read them back (stdin -> stdout),
ours (aiohttp websocket, v5) vs `kubectl exec -i`. Port-forward: N MiB through
an echo server in the pod, ours vs `kubectl port-forward` + a local socket.
Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.kube import Kube, free_port, pod_manifest
from e2e.test_k8s_streams import ECHO_SERVER
from innerloop.cluster.node import BundledCluster
from innerloop.k8s.connection import ClusterConnection
from innerloop.k8s.streams import PortForwardStream, run


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    info = BundledCluster(report=lambda _m: None).info()
    if info is None:
        sys.exit("start the cluster first: innerloop cluster up")
    kube = Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)
    conn = ClusterConnection.from_kubeconfig(info.kubeconfig)
    ns = f"bench-streams-{os.getpid()}"
    kube.run("create", "namespace", ns)
    try:
        kube.apply(ns, pod_manifest("shell", info.images["busybox"], ["sleep", "3600"]))
        kube.apply(ns, pod_manifest("echo", info.images["python"], ["python3", "-c", ECHO_SERVER], port=9000))
        kube.wait_ready(ns, "shell")
        kube.wait_ready(ns, "echo")
        payload = os.urandom(args.mib * 1024 * 1024)

        def ours_exec() -> None:
            code, out, _ = asyncio.run(run(conn, namespace=ns, pod="shell", command=["cat"], input=payload))
            assert code == 0 and out == payload

        def kubectl_exec() -> None:
            out = subprocess.run(
                kube.argv("exec", "-i", "-n", ns, "shell", "--", "cat"), input=payload, capture_output=True, check=True
            )
            assert out.stdout == payload

        async def ours_forward_async() -> None:
            stream = await PortForwardStream.open(conn, namespace=ns, pod="echo", port=9000)
            try:
                writer = asyncio.create_task(stream.write(payload))
                got = await stream.reader.readexactly(len(payload))
                await writer
                assert got == payload
            finally:
                await stream.close()

        def ours_forward() -> None:
            asyncio.run(ours_forward_async())

        port = free_port()
        forward = subprocess.Popen(
            kube.argv("port-forward", "-n", ns, "pod/echo", f"{port}:9000"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert forward.stdout is not None
        forward.stdout.readline()  # "Forwarding from ..."

        def kubectl_forward() -> None:
            with socket.create_connection(("127.0.0.1", port)) as s:
                sender = threading.Thread(target=s.sendall, args=(payload,))
                sender.start()
                got = bytearray()
                while len(got) < len(payload):
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    got += chunk
                sender.join()
                assert bytes(got) == payload

        results: dict[str, float] = {}
        try:
            for name, fn in (
                ("exec innerloop", ours_exec),
                ("exec kubectl", kubectl_exec),
                ("port-forward innerloop", ours_forward),
                ("port-forward kubectl", kubectl_forward),
            ):
                fn()  # warm-up
                secs = statistics.median(timed(fn) for _ in range(args.rounds))
                results[name] = args.mib / secs
        finally:
            forward.terminate()
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)
    print(f"| stream | MiB/s (median of {args.rounds}, {args.mib} MiB round trip) |")
    print("|---|---|")
    for name, mbps in results.items():
        print(f"| {name} | {mbps:.1f} |")
    print(f"exec ratio innerloop/kubectl: {results['exec innerloop'] / results['exec kubectl']:.2f}")
    ratio = results["port-forward innerloop"] / results["port-forward kubectl"]
    print(f"port-forward ratio innerloop/kubectl: {ratio:.2f}")
    print(json.dumps({k: round(v, 1) for k, v in results.items()}))


if __name__ == "__main__":
    main()
