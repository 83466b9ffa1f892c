"""Save-to-served-by-every-replica: an edit of the storefront's catalog until each of its pods answers it.

`innerloop up` on a copy of examples/storefront with the catalog Deployment
at 1 and at 3 replicas. After each save, the catalog is asked through the
gateway (one connection per request, so kube-proxy picks a pod each time;
each answer names its pod) until every pod has answered the new version;
an edit's time is the slowest pod's. Also reported: when innerloop's store
says every replica had the batch written and its process restarted. The
sync session serves the replicas in parallel, one batch each.

Needs the bundled cluster (`innerloop cluster up`). Run:

    .venv/bin/python bench/replica_sync.py [--edits 20] [--replicas 1 3]

Prints a markdown table (p50/p95 per replica count) and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.kube import Kube
from e2e.storefront import copy_storefront
from innerloop.cluster.node import BundledCluster

MARK = 'VERSION = "'


def set_version(source: Path, text: str) -> None:
    lines = [f'VERSION = "{text}"' if ln.startswith(MARK) else ln for ln in source.read_text().splitlines()]
    tmp = source.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, source)  # as editors save


def served_by_all(gateway: int, pods: list[str], text: str, t0: float) -> float:
    """Ask catalog through the gateway (kube-proxy picks a pod per connection) until every pod answered ``text``."""
    seen: set[str] = set()
    while set(pods) - seen:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{gateway}/catalog", timeout=5) as resp:
                answer = json.load(resp)
            if answer.get("version") == text:
                seen.add(str(answer["pod"]))
        except (OSError, ValueError):
            pass
        if time.perf_counter() - t0 > 30:
            raise TimeoutError(f"{sorted(set(pods) - seen)} never served {text!r}")
    return time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def _status(app: Path) -> dict[str, Any]:
    sock = app / ".innerloop" / "api.sock"

    async def get() -> dict[str, Any]:
        connector = aiohttp.UnixConnector(path=str(sock))
        async with aiohttp.ClientSession(connector=connector) as s, s.get("http://innerloop/v1/status") as r:
            data: dict[str, Any] = await r.json()
            return data

    return asyncio.run(get())


def synced_counts(app: Path) -> dict[str, int]:
    return {pod: r["syncs"] for pod, r in _status(app)["services"]["catalog"]["replicas"].items()}


def synced_at(app: Path, before: dict[str, int]) -> list[float]:
    """When each replica finished the batch (sync + restart), as innerloop's store says; waits for all."""
    deadline = time.monotonic() + 30
    while True:
        replicas = _status(app)["services"]["catalog"]["replicas"]
        if all(r["syncs"] > before.get(pod, 0) for pod, r in replicas.items()):
            return [float(r["synced_at"]) for r in replicas.values()]
        if time.monotonic() > deadline:
            raise TimeoutError("not every replica reported its sync")
        time.sleep(0.01)


synced: list[float] = []


def run(kube: Kube, replicas: int, edits: int, work: Path) -> list[float]:
    namespace = f"bench-replicas-{replicas}-{os.getpid()}"
    kube.run("create", "namespace", namespace)
    app, _ = copy_storefront(work / f"storefront-{replicas}", port=0)
    manifest = app / "k8s" / "app.yaml"
    manifest.write_text(manifest.read_text().replace("replicas: 2", f"replicas: {replicas}", 1))
    cli = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "innerloop"
    log_path = work / f"up-{replicas}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(cli), "up", "-n", namespace, "--no-color"], cwd=app, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 240
        while (
            log_path.read_text().count("catalog: in sync") < replicas
            or "watching for changes" not in log_path.read_text()
        ):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("innerloop up did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.2)
        pods = kube.run(
            "get", "pods", "-n", namespace, "-l", "app=catalog", "-o", "jsonpath={.items[*].metadata.name}"
        ).stdout.split()
        assert len(pods) == replicas, pods
        [forward] = _status(app)["services"]["gateway"]["forwards"]
        gateway = int(forward.split(" ")[0].rsplit(":", 1)[1])
        source = app / "catalog" / "app.py"
        times: list[float] = []
        for i in range(edits):
            text = f"catalog edit {i}"
            before = synced_counts(app)
            t0, wall = time.perf_counter(), time.time()
            set_version(source, text)
            times.append(served_by_all(gateway, pods, text, t0))
            done = synced_at(app, before)
            synced.append(max(done) - wall)
            time.sleep(0.3)
        return times
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        subprocess.run([str(cli), "down", "-n", namespace], cwd=app, capture_output=True, check=False)
        kube.run("delete", "namespace", namespace, "--wait=false", check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    info = BundledCluster(report=lambda _m: None).info()
    if info is None:
        sys.exit("the bundled cluster is not running: innerloop cluster up")
    kube = Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)
    results: dict[int, list[float]] = {}
    synced_results: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.replicas:
            synced.clear()
            results[n] = run(kube, n, args.edits, Path(tmp))
            synced_results[n] = list(synced)
    print("| catalog replicas | edits | synced + restarted, all: p50 | p95 | served by all: p50 | p95 |")
    print("|---|---|---|---|---|---|")
    for n, times in results.items():
        done = synced_results[n]
        print(
            f"| {n} | {len(times)} | {pct(done, 0.5):.0f} ms | {pct(done, 0.95):.0f} ms "
            f"| {pct(times, 0.5):.0f} ms | {pct(times, 0.95):.0f} ms |"
        )
    print(json.dumps({str(n): {"p50_ms": pct(t, 0.5), "p95_ms": pct(t, 0.95)} for n, t in results.items()}))


if __name__ == "__main__":
    main()
