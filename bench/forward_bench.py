"""How fast a PortForward heals, and what it costs per request, against kubectl port-forward in the same run.

Needs a running cluster (`innerloop cluster up`). Run:

    .venv/bin/python bench/forward_bench.py [--heals 5] [--requests 500]

Heal: a one-replica Deployment serving HTTP; its pod is deleted through the
API while a client keeps requesting through the forward; the figure is the
time from the delete call to the first answer from the replacement (median
of ``--heals``), with the cluster's own part (delete -> replacement Ready) and
the forward's part (Ready -> first answer) beside it.

Latency: GETs from a blocking client in a worker thread to 127.0.0.1, through
the PortForward and through `kubectl port-forward pod/<same pod>`, both with
a new TCP connection per request and with one kept-alive connection.

Prints a markdown table and one JSON line. All traffic stays on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lightkube.resources.core_v1 import Pod

from e2e.kube import Kube, free_port
from e2e.workloads import deployment_manifest, http_server_command
from innerloop.cluster.node import BundledCluster
from innerloop.forward import PortForward
from innerloop.k8s.connection import ClusterConnection


def get(port: int, timeout_s: float = 15.0) -> str | None:
    """One GET on a new connection; the answering pod's name, or None on failure."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read().decode()
        return body if resp.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def latencies_new_connection(port: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        assert get(port) is not None
        out.append(time.perf_counter() - start)
    return out


def latencies_keep_alive(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    out = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            out.append(time.perf_counter() - start)
    finally:
        conn.close()
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def record_ready(conn: ClusterConnection, namespace: str, ready_at: dict[str, float]) -> None:
    client = conn.client()
    try:
        async for _kind, pod in client.watch(Pod, namespace=namespace):
            name = pod.metadata.name if pod.metadata else None
            conditions = (pod.status.conditions if pod.status else None) or []
            if name and name not in ready_at and any(c.type == "Ready" and c.status == "True" for c in conditions):
                ready_at[name] = time.monotonic()
    finally:
        await client.close()


async def heal_rounds(conn: ClusterConnection, namespace: str, port: int, rounds: int) -> list[dict[str, float]]:
    ready_at: dict[str, float] = {}
    recorder = asyncio.create_task(record_ready(conn, namespace, ready_at))
    client = conn.client()
    results = []
    try:
        deadline = time.monotonic() + 60
        current = None
        while current is None:
            assert time.monotonic() < deadline, "the forward never answered"
            current = await asyncio.to_thread(get, port)
        for _ in range(rounds):
            deleted = time.monotonic()
            await client.delete(Pod, current, namespace=namespace)
            while True:
                answer = await asyncio.to_thread(get, port)
                if answer is not None and answer != current:
                    break
                assert time.monotonic() - deleted < 60, "no replacement answered within 60 s"
            answered = time.monotonic()
            for _ in range(50):  # the recorder's watch may be a moment behind
                if answer in ready_at:
                    break
                await asyncio.sleep(0.02)
            results.append(
                {
                    "delete_to_answer": answered - deleted,
                    "delete_to_ready": ready_at[answer] - deleted,
                    "ready_to_answer": answered - ready_at[answer],
                }
            )
            current = answer
            await asyncio.sleep(1.5)  # let the old pod go before the next round
    finally:
        recorder.cancel()
        await asyncio.gather(recorder, return_exceptions=True)
        await client.close()
    return results


async def current_pod(port: int) -> str:
    answer = await asyncio.to_thread(get, port)
    assert answer is not None
    return answer


async def main_async(args: argparse.Namespace, kube: Kube, conn: ClusterConnection, ns: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with PortForward(conn, namespace=ns, selector={"app": "web"}, remote_port=8000) as pf:
        heals = await heal_rounds(conn, ns, pf.local_port, args.heals)
        for key in ("delete_to_answer", "delete_to_ready", "ready_to_answer"):
            figures[f"heal {key} median s"] = statistics.median(h[key] for h in heals)
            figures[f"heal {key} max s"] = max(h[key] for h in heals)
        print("heal rounds (s):", [{k: round(v, 3) for k, v in h.items()} for h in heals])
        pod = await current_pod(pf.local_port)

        kubectl_port = free_port()
        forward = subprocess.Popen(
            kube.argv("port-forward", "-n", ns, f"pod/{pod}", f"{kubectl_port}:8000"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert forward.stdout is not None
            await asyncio.to_thread(forward.stdout.readline)  # "Forwarding from ..."
            for port in (pf.local_port, kubectl_port):
                await asyncio.to_thread(latencies_new_connection, port, 20)  # warm-up
            # Alternate the two, twice, so drift on this shared machine hits both alike.
            samples: dict[str, list[float]] = {}
            for _ in range(2):
                for name, port in (("innerloop", pf.local_port), ("kubectl", kubectl_port)):
                    assert await current_pod(port) == pod
                    new = await asyncio.to_thread(latencies_new_connection, port, args.requests // 2)
                    kept = await asyncio.to_thread(latencies_keep_alive, port, args.requests // 2)
                    samples.setdefault(f"{name} new-connection", []).extend(new)
                    samples.setdefault(f"{name} keep-alive", []).extend(kept)
        finally:
            forward.terminate()
            forward.wait(10)
    for name, values in samples.items():
        figures[f"{name} p50 ms"] = percentile(values, 50) * 1000
        figures[f"{name} p99 ms"] = percentile(values, 99) * 1000
    return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heals", type=int, default=5)
    ap.add_argument("--requests", type=int, default=500, help="per client and mode, split over two passes")
    args = ap.parse_args()
    info = BundledCluster(report=print).info()
    if info is None:
        sys.exit("start the cluster first: innerloop cluster up")
    kube = Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)
    conn = ClusterConnection.from_kubeconfig(info.kubeconfig)
    ns = f"bench-forward-{os.getpid()}"
    kube.run("create", "namespace", ns)
    try:
        port = {"containerPort": 8000, "name": "http"}
        kube.apply(ns, deployment_manifest("web", info.images["python"], http_server_command(), ports=[port]))
        figures = asyncio.run(main_async(args, kube, conn, ns))
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)

    print(f"| heal (median of {args.heals}) | median s | max s |")
    print("|---|---|---|")
    for key, label in (
        ("delete_to_answer", "pod deleted -> first answer through the forward"),
        ("delete_to_ready", "  of which: pod deleted -> replacement Ready (cluster)"),
        ("ready_to_answer", "  of which: replacement Ready -> first answer (forward)"),
    ):
        print(f"| {label} | {figures[f'heal {key} median s']:.2f} | {figures[f'heal {key} max s']:.2f} |")
    print()
    print(f"| request latency ({args.requests} GETs per row) | p50 ms | p99 ms |")
    print("|---|---|---|")
    for name in ("innerloop new-connection", "kubectl new-connection", "innerloop keep-alive", "kubectl keep-alive"):
        print(f"| {name} | {figures[f'{name} p50 ms']:.2f} | {figures[f'{name} p99 ms']:.2f} |")
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
