"""Save-to-serving: an edit of the bookshop backend until its HTTP answer changes.

innerloop (`innerloop up`: watcher -> agent through one port-forward -> atomic
write -> process restart) against the way Tilt and Skaffold sync, in the same
run on the same cluster: `tar -c | kubectl exec -i POD -- tar -x` into the
container, then a second exec that kills the app so a shell loop restarts it
(the equivalent of Tilt's restart_process trigger), served through
`kubectl port-forward` (reopened at once when the restart breaks it).

Needs the bundled cluster (`innerloop cluster up`). Run:

    .venv/bin/python bench/save_to_serving.py [--edits 30]

Reports p50/p95 of: file visible in the container, and save-to-serving; and
the ratio baseline/innerloop. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.bookshop import copy_bookshop
from e2e.kube import Kube, free_port
from innerloop.builders.image import read_archive
from innerloop.cluster.images import ClusterImages
from innerloop.cluster.node import BundledCluster
from innerloop.demo import example_dir
from innerloop.oci.archive import ImageConfig, image_id, write_archive

EDIT_MARK = 'GREETING = "'


def greeting(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/books", timeout=2) as resp:
            return str(json.load(resp)["greeting"])
    except (OSError, ValueError):
        return None


def set_greeting(source: Path, text: str) -> None:
    lines = [f'GREETING = "{text}"' if ln.startswith(EDIT_MARK) else ln for ln in source.read_text().splitlines()]
    tmp = source.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, source)  # editors save atomically too


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def files_synced(sock: Path) -> int:
    connector = aiohttp.UnixConnector(path=str(sock))
    async with aiohttp.ClientSession(connector=connector) as s, s.get("http://innerloop/v1/status") as r:
        data: dict[str, Any] = await r.json()
    return int(data["services"]["backend"]["files_synced"])


def innerloop_run(ns: str, edits: int, work: Path) -> tuple[list[float], list[float]]:
    app, ports = copy_bookshop(work / "bookshop", only=["backend"])
    port = ports["backend"]
    cli = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "innerloop"
    log_path = work / "up.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(cli), "up", "-n", ns, "--no-color"], cwd=app, stdout=log, stderr=subprocess.STDOUT)
    sock = app / ".innerloop" / "api.sock"
    try:
        deadline = time.monotonic() + 180
        while not (sock.exists() and "in sync" in log_path.read_text() and greeting(port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("innerloop up did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.2)
        source = app / "backend" / "app.py"
        visible: list[float] = []
        serving: list[float] = []
        for i in range(edits):
            before = asyncio.run(files_synced(sock))
            text = f"innerloop edit {i}"
            t0 = time.perf_counter()
            set_greeting(source, text)
            while asyncio.run(files_synced(sock)) == before:
                time.sleep(0.001)
            visible.append(time.perf_counter() - t0)
            while greeting(port) != text:
                if time.perf_counter() - t0 > 30:
                    raise TimeoutError(f"{text!r} not served")
                time.sleep(0.002)
            serving.append(time.perf_counter() - t0)
            time.sleep(0.3)
        return visible, serving
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def baseline_image(bundled: BundledCluster) -> str:
    """The python base plus busybox (sh, tar, kill): what a tar-over-exec tool needs in the image."""
    images = ClusterImages(paths=bundled.paths, report=lambda _m: None)
    python = read_archive(images.python().archive)
    busybox = read_archive(images.busybox().archive)
    config = ImageConfig(env={"PATH": "/usr/bin:/bin"}, user="65532")
    layers = [*python.layers, *busybox.layers]
    tag = f"innerloop.local/bench-baseline:{image_id(layers=layers, config=config)[:12]}"
    archive = bundled.paths.images / "bench" / f"baseline-{tag.rsplit(':', 1)[1]}.tar"
    if not archive.exists():
        write_archive(archive, tag=tag, layers=layers, config=config)
    bundled.import_image(archive)
    return tag


def tar_of(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=path.name)
    return buf.getvalue()


def baseline_run(
    kube: Kube, bundled: BundledCluster, ns: str, edits: int, work: Path
) -> tuple[list[float], list[float]]:
    tag = baseline_image(bundled)
    # restart_process-style: a shell loop runs the app again whenever it is killed.
    loop = "while true; do python3 /app/app.py & echo $! > /tmp/app.pid; wait; sleep 0.01; done"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "baseline"},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [
                {
                    "name": "backend",
                    "image": tag,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", loop],
                    "volumeMounts": [{"name": "app", "mountPath": "/app"}],
                }
            ],
            "volumes": [{"name": "app", "emptyDir": {}}],
        },
    }
    source = work / "baseline" / "app.py"
    source.parent.mkdir()
    shutil.copy(example_dir() / "backend" / "app.py", source)
    kube.apply(ns, json.dumps(pod))
    kube.wait_ready(ns, "baseline")

    def sync_and_restart() -> float:
        tar = kube.argv("exec", "-i", "-n", ns, "baseline", "--", "tar", "-x", "-C", "/app", "-f", "-")
        subprocess.run(tar, input=tar_of(source), check=True, capture_output=True)
        visible_at = time.perf_counter()
        kill = kube.argv("exec", "-n", ns, "baseline", "--", "sh", "-c", "kill $(cat /tmp/app.pid)")
        subprocess.run(kill, check=False, capture_output=True)
        return visible_at

    port = free_port()

    def start_forward() -> subprocess.Popen[str]:
        argv = kube.argv("port-forward", "-n", ns, "pod/baseline", f"{port}:8080")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # "Forwarding from ...": listening
        return proc

    def wait_serving(text: str, forward: subprocess.Popen[str]) -> subprocess.Popen[str]:
        deadline = time.perf_counter() + 60
        while greeting(port) != text:
            if forward.poll() is not None:
                # kubectl's forward dies when the app restarts under it (Tilt #2099, Skaffold #4518):
                # reopen it at once, and count the time that costs.
                forward = start_forward()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{text!r} not served")
            time.sleep(0.002)
        return forward

    set_greeting(source, "baseline start")
    sync_and_restart()
    forward = start_forward()
    try:
        forward = wait_serving("baseline start", forward)
        visible: list[float] = []
        serving: list[float] = []
        for i in range(edits):
            text = f"baseline edit {i}"
            t0 = time.perf_counter()
            set_greeting(source, text)  # a tool's watcher would notice this now; syncing starts at once
            visible.append(sync_and_restart() - t0)
            forward = wait_serving(text, forward)
            serving.append(time.perf_counter() - t0)
            time.sleep(0.3)
        return visible, serving
    finally:
        forward.terminate()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=30)
    args = ap.parse_args()
    bundled = BundledCluster(report=lambda _m: None)
    info = bundled.info()
    if info is None:
        sys.exit("start the cluster first: innerloop cluster up")
    kube = Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)
    ns = f"bench-s2s-{os.getpid()}"
    kube.run("create", "namespace", ns)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            ours = innerloop_run(ns, args.edits, work)
            base = baseline_run(kube, bundled, ns, args.edits, work)
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)
    rows = {
        "innerloop file visible": ours[0],
        "innerloop save-to-serving": ours[1],
        "tar-over-exec file visible": base[0],
        "tar-over-exec save-to-serving": base[1],
    }
    print(f"| {args.edits} edits | p50 ms | p95 ms | mean ms |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {pct(values, 0.5):.0f} | {pct(values, 0.95):.0f} | {statistics.mean(values) * 1000:.0f} |")
    ratio = pct(base[1], 0.5) / pct(ours[1], 0.5)
    print(f"save-to-serving p50 ratio (tar-over-exec / innerloop): {ratio:.1f}x")
    print(json.dumps({k: {"p50_ms": round(pct(v, 0.5), 1), "p95_ms": round(pct(v, 0.95), 1)} for k, v in rows.items()}))


if __name__ == "__main__":
    main()
