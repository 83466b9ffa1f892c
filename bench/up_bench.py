"""`innerloop up` from nothing to every bookshop service Ready, synced and forwarded.

Needs the bundled cluster. Each run uses a fresh namespace. "cold" first
removes the cached app and agent images (so they are built and imported
again); "warm" keeps them. Run:

    .venv/bin/python bench/up_bench.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.bookshop import copy_bookshop
from e2e.kube import Kube
from innerloop.cluster.node import BundledCluster

CLI = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "innerloop"


def one_up(kube: Kube, work: Path, run: str) -> float:
    app, ports = copy_bookshop(work / run)
    ns = f"bench-up-{run}-{os.getpid()}"
    log_path = work / f"{run}.log"
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(CLI), "up", "-n", ns, "--no-color"], cwd=app, stdout=log, stderr=subprocess.STDOUT)
    try:
        while log_path.read_text().count("in sync") < len(ports):
            if proc.poll() is not None or time.perf_counter() - started > 300:
                raise RuntimeError(log_path.read_text()[-2000:])
            time.sleep(0.05)
        return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        subprocess.run([str(CLI), "down", "-n", ns], cwd=app, capture_output=True, check=False)
        kube.run("delete", "namespace", ns, "--wait=false", check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    bundled = BundledCluster(report=lambda _m: None)
    info = bundled.info()
    if info is None:
        sys.exit("start the cluster first: innerloop cluster up")
    kube = Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)
    results: dict[str, list[float]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            shutil.rmtree(bundled.paths.images / "apps", ignore_errors=True)
            for agent in bundled.paths.images.glob("agent-*.tar"):
                if "runtime" not in agent.name:
                    agent.unlink()
            results["cold"].append(one_up(kube, Path(tmp), f"cold{i}"))
            results["warm"].append(one_up(kube, Path(tmp), f"warm{i}"))
    print("| up to all 3 services synced | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |")
    print(json.dumps({k: [round(v, 2) for v in vs] for k, vs in results.items()}))


if __name__ == "__main__":
    main()
