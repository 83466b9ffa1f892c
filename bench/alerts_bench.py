"""From an OOM kill to its alert in the store (what the API and the terminal show), on the bundled cluster.

Needs a running cluster (`innerloop cluster up`). Run:

    .venv/bin/python bench/alerts_bench.py [--runs 7]

Each run starts a bare pod (restartPolicy Never, memory limit 32Mi) whose
process prints a line and then allocates 200 MiB: the kernel kills it at
once. The AlertWatcher of `up` runs in this process with its own Store,
watching those pods as it watches a service's. Per run:

- ``from_line_ms``: the alert's ``raised_at`` minus the kubelet's timestamp
  of the process's last line (nanoseconds; the kill follows within the few
  milliseconds the allocation takes), the closest view of the kill time the
  API gives;
- ``from_finished_ms``: ``raised_at`` minus the container's ``finishedAt``,
  which the API gives in whole seconds (so up to 1 s too long).

Prints a markdown table and one JSON line with the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.kube import Kube
from innerloop.alerts.pods import parse_time
from innerloop.alerts.watcher import AlertWatcher, WatchedService
from innerloop.cluster.node import BundledCluster
from innerloop.k8s.connection import ClusterConnection
from innerloop.status.store import Store

SERVICE = "cache"
GROW = "import time; print('filling', flush=True); b = bytearray(200 * 1024 * 1024); time.sleep(60)"


def pod_manifest(name: str, image: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "oom-bench"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "app",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/usr/bin/python3", "-c", GROW],
                        "resources": {"limits": {"memory": "32Mi"}},
                    }
                ],
            },
        }
    )


def last_line_time(kube: Kube, namespace: str, pod: str) -> float:
    out = kube.run("logs", "-n", namespace, pod, "--timestamps")
    stamp = out.stdout.splitlines()[-1].split(" ", 1)[0]  # RFC 3339 with nanoseconds
    whole, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{frac or 0}")


async def run(kube: Kube, conn: ClusterConnection, namespace: str, image: str, runs: int) -> list[dict[str, float]]:
    store = Store(project="bench", namespace=namespace)
    watcher = AlertWatcher(
        conn=conn,
        namespace=namespace,
        store=store,
        services=[WatchedService(name=SERVICE, selector={"app": "oom-bench"})],
        report=print,
    )
    task = asyncio.create_task(watcher.run())
    rows: list[dict[str, float]] = []
    try:
        for i in range(runs):
            pod = f"oom-{i}"
            key = f"oom-killed/{SERVICE}/{pod}/app"
            await asyncio.to_thread(kube.apply, namespace, pod_manifest(pod, image))
            deadline = time.monotonic() + 120
            while key not in store.alerts:
                if time.monotonic() > deadline:
                    raise SystemExit(f"no OOM alert for {pod} within 120 s")
                await asyncio.sleep(0.01)
            raised = store.alerts[key].raised_at
            status = await asyncio.to_thread(kube.get_json, "pod", pod, "-n", namespace)
            finished = parse_time(status["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"])
            line = await asyncio.to_thread(last_line_time, kube, namespace, pod)
            assert finished is not None
            rows.append({"from_line_ms": (raised - line) * 1000, "from_finished_ms": (raised - finished) * 1000})
            await asyncio.to_thread(kube.run, "delete", "pod", "-n", namespace, pod, "--wait=false")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    info = BundledCluster(report=print).info()
    if info is None:
        raise SystemExit("the bundled cluster is not running: `innerloop cluster up`")
    kube = Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)
    conn = ClusterConnection.from_kubeconfig(info.kubeconfig)
    namespace = f"bench-alerts-{secrets.token_hex(3)}"
    kube.run("create", "namespace", namespace)
    try:
        rows = asyncio.run(run(kube, conn, namespace, info.images["python"], args.runs))
    finally:
        subprocess.run(kube.argv("delete", "namespace", namespace, "--wait=false"), check=False, capture_output=True)
    print("| run | kill (last line) -> alert, ms | finishedAt (whole s) -> alert, ms |")
    print("|---|---|---|")
    for i, row in enumerate(rows):
        print(f"| {i} | {row['from_line_ms']:.0f} | {row['from_finished_ms']:.0f} |")
    medians = {k: round(statistics.median(r[k] for r in rows), 1) for k in ("from_line_ms", "from_finished_ms")}
    print(json.dumps({"runs": len(rows), **medians}))


if __name__ == "__main__":
    main()
