"""Save-to-served-by-every-replica: an edit of the storefront's catalog until each of its pods answers it.

`innerloop up` on a copy of examples/storefront with the catalog Deployment
at 1 and at 3 replicas. After each save, every pod is asked directly (a
port-forward stream to that pod, one HTTP/1.0 request per poll, polls every
few milliseconds) until it answers the new version; an edit's time is the
slowest pod's. The sync session serves the replicas in parallel, one batch
each, so 3 replicas should cost about what 1 does.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.kube import Kube
from e2e.storefront import copy_storefront
from innerloop.cluster.node import BundledCluster
from innerloop.k8s.connection import ClusterConnection
from innerloop.k8s.streams import PortForwardByteStream, StreamError

MARK = 'VERSION = "'


def set_version(source: Path, text: str) -> None:
    lines = [f'VERSION = "{text}"' if ln.startswith(MARK) else ln for ln in source.read_text().splitlines()]
    tmp = source.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, source)  # as editors save


async def version_of(conn: ClusterConnection, namespace: str, pod: str) -> str | None:
    try:
        stream = await PortForwardByteStream.open(conn, namespace=namespace, pod=pod, port=8080)
    except (StreamError, OSError):
        return None
    try:
        stream.write(b"GET /items HTTP/1.0\r\n\r\n")
        await stream.drain()
        data = b""
        while chunk := await stream.read(65536):
            data += chunk
        body = data.partition(b"\r\n\r\n")[2]
        return str(json.loads(body)["version"]) if body else None
    except (StreamError, OSError, ValueError, KeyError):
        return None
    finally:
        await stream.close()


async def served_by_all(conn: ClusterConnection, namespace: str, pods: list[str], text: str, t0: float) -> float:
    async def one(pod: str) -> float:
        while await version_of(conn, namespace, pod) != text:
            if time.perf_counter() - t0 > 30:
                raise TimeoutError(f"{pod} never served {text!r}")
            await asyncio.sleep(0.002)
        return time.perf_counter() - t0

    return max(await asyncio.gather(*(one(p) for p in pods)))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def run(kube: Kube, conn: ClusterConnection, replicas: int, edits: int, work: Path) -> list[float]:
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
        source = app / "catalog" / "app.py"
        times: list[float] = []
        for i in range(edits):
            text = f"catalog edit {i}"
            t0 = time.perf_counter()
            set_version(source, text)
            times.append(asyncio.run(served_by_all(conn, namespace, pods, text, t0)))
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
    conn = ClusterConnection.from_kubeconfig(info.kubeconfig)
    results: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.replicas:
            results[n] = run(kube, conn, n, args.edits, Path(tmp))
    print("| catalog replicas | edits | save-to-served-by-every-replica p50 | p95 |")
    print("|---|---|---|---|")
    for n, times in results.items():
        print(f"| {n} | {len(times)} | {pct(times, 0.5):.0f} ms | {pct(times, 0.95):.0f} ms |")
    print(json.dumps({str(n): {"p50_ms": pct(t, 0.5), "p95_ms": pct(t, 0.95)} for n, t in results.items()}))


if __name__ == "__main__":
    main()
