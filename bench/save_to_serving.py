"""Save-to-serving: an edit of a bookshop service until its HTTP answer changes.

Two services, reported apart, because their restarts differ:

- ``api``: Python's standard library (http.server), built by innerloop's own builder; its
  restart is one interpreter start. The edit rewrites ``PRICES``; the answer is
  ``/api/books`` (which also calls backend).
- ``backend``: Flask served by gunicorn, installed by ``pip install`` in its Dockerfile; its
  restart is gunicorn's master plus two (sync) workers importing Flask and the app. The edit
  rewrites ``GREETING``; the answer is ``/books`` (which also calls reviews).

innerloop (`innerloop up` on frontend-less bookshop: watcher -> agent through one port-forward
-> atomic write -> process restart) against the way Tilt and Skaffold sync, in the same run on
the same cluster: `tar -c | kubectl exec -i POD -- tar -x` into the container, then a second
exec that kills the app so a shell loop restarts it (the equivalent of Tilt's restart_process
trigger), served through `kubectl port-forward` (reopened at once when the restart breaks it).
The baseline for api runs in the python base plus busybox; the one for backend in backend's own
image (Debian slim has sh, tar and kill), with the same gunicorn command.

Needs the bundled cluster (`innerloop cluster up`) and, for backend's RUN, the builder
environment `make` exports (CONTAINERS_REGISTRIES_CONF). Run:

    .venv/bin/python bench/save_to_serving.py [--edits 30]

Reports p50/p95 of: file visible in the container, and save-to-serving; and the ratio
baseline/innerloop, per service. Prints a markdown table and one JSON line.
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
from dataclasses import dataclass
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

GUNICORN = "gunicorn --bind 0.0.0.0:8080 --workers 2 --worker-tmp-dir /dev/shm app:app"


@dataclass(frozen=True)
class Target:
    """One service under test: which line an edit rewrites, and where its answer shows."""

    service: str
    line_prefix: str  # the line of app.py an edit replaces
    path: str  # GET path on the service's port

    def line(self, i: int) -> str:
        if self.service == "api":
            return f"PRICES = {{1: {100 + i}.5, 2: 39.5, 3: 45.0}}"
        return f'GREETING = "edit {i}"'

    def value(self, i: int) -> str:
        return f"{100 + i}.5" if self.service == "api" else f"edit {i}"

    def read(self, body: dict[str, Any]) -> str:
        if self.service == "api":
            return str(body["books"][0]["price"])
        return str(body["greeting"])


TARGETS = (Target("api", "PRICES = {", "/api/books"), Target("backend", 'GREETING = "', "/books"))


def answer(port: int, target: Target) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{target.path}", timeout=2) as resp:
            return target.read(json.load(resp))
    except (OSError, ValueError, KeyError, IndexError):
        return None


def edit(source: Path, target: Target, i: int) -> None:
    lines = [target.line(i) if ln.startswith(target.line_prefix) else ln for ln in source.read_text().splitlines()]
    tmp = source.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, source)  # editors save atomically too


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def files_synced(sock: Path, service: str) -> int:
    connector = aiohttp.UnixConnector(path=str(sock))
    async with aiohttp.ClientSession(connector=connector) as s, s.get("http://innerloop/v1/status") as r:
        data: dict[str, Any] = await r.json()
    return int(data["services"][service]["files_synced"])


Timings = tuple[list[float], list[float]]


def innerloop_run(ns: str, edits: int, work: Path) -> dict[str, Timings]:
    """One `up` of api -> backend -> reviews -> inventory; each target edited in turn."""
    app, ports = copy_bookshop(work / "bookshop", only=["api", "backend", "reviews", "inventory"])
    cli = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "innerloop"
    log_path = work / "up.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(cli), "up", "-n", ns, "--no-color"], cwd=app, stdout=log, stderr=subprocess.STDOUT)
    sock = app / ".innerloop" / "api.sock"
    results: dict[str, Timings] = {}
    try:
        deadline = time.monotonic() + 900  # cold: backend, reviews and inventory are built with RUN
        while not (
            sock.exists()
            and log_path.read_text().count("in sync") >= 3
            and all(answer(ports[t.service], t) for t in TARGETS)
        ):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("innerloop up did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.2)
        for target in TARGETS:
            port = ports[target.service]
            source = app / target.service / "app.py"
            visible: list[float] = []
            serving: list[float] = []
            for i in range(edits):
                before = asyncio.run(files_synced(sock, target.service))
                t0 = time.perf_counter()
                edit(source, target, i)
                while asyncio.run(files_synced(sock, target.service)) == before:
                    time.sleep(0.001)
                visible.append(time.perf_counter() - t0)
                while answer(port, target) != target.value(i):
                    if time.perf_counter() - t0 > 30:
                        tail = log_path.read_text()[-4000:]
                        raise TimeoutError(f"{target.service}: edit {i} not served; up's log ends:\n{tail}")
                    time.sleep(0.002)
                serving.append(time.perf_counter() - t0)
                time.sleep(0.3)
            results[target.service] = (visible, serving)
        return results
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


def deployed_image(kube: Kube, ns: str, service: str) -> str:
    deployment = json.loads(kube.run("get", "deployment", service, "-n", ns, "-o", "json").stdout)
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def baseline_run(kube: Kube, bundled: BundledCluster, ns: str, work: Path, *, edits: int, target: Target) -> Timings:
    if target.service == "backend":
        # Its own image, which innerloop's run built and left deployed: Flask, gunicorn, sh, tar.
        image, start = deployed_image(kube, ns, "backend"), GUNICORN
    else:
        image, start = baseline_image(bundled), "python3 /app/app.py"
    # restart_process-style: a shell loop runs the app again whenever it is killed.
    loop = f"cd /app; while true; do {start} & echo $! > /tmp/app.pid; wait; sleep 0.01; done"
    name = f"baseline-{target.service}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [
                {
                    "name": "app",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", loop],
                    "env": [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
                    "volumeMounts": [{"name": "app", "mountPath": "/app"}],
                }
            ],
            "volumes": [{"name": "app", "emptyDir": {}}],
        },
    }
    source = work / name / "app.py"
    source.parent.mkdir()
    shutil.copy(example_dir() / target.service / "app.py", source)
    kube.apply(ns, json.dumps(pod))
    kube.wait_ready(ns, name)

    def sync_and_restart() -> float:
        tar = kube.argv("exec", "-i", "-n", ns, name, "--", "tar", "-x", "-C", "/app", "-f", "-")
        for attempt in (1, 2):  # an exec can fail under load; the retry's time counts, as it would for a tool
            out = subprocess.run(tar, input=tar_of(source), check=False, capture_output=True)
            if out.returncode == 0:
                break
            if attempt == 2:
                raise RuntimeError(f"tar over exec failed twice: {out.stderr.decode(errors='replace').strip()}")
        visible_at = time.perf_counter()
        kill = kube.argv("exec", "-n", ns, name, "--", "sh", "-c", "kill $(cat /tmp/app.pid)")
        subprocess.run(kill, check=False, capture_output=True)
        return visible_at

    port = free_port()

    def start_forward() -> subprocess.Popen[str]:
        argv = kube.argv("port-forward", "-n", ns, f"pod/{name}", f"{port}:8080")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # "Forwarding from ...": listening
        return proc

    def wait_serving(value: str, forward: subprocess.Popen[str]) -> subprocess.Popen[str]:
        deadline = time.perf_counter() + 60
        while answer(port, target) != value:
            if forward.poll() is not None:
                # kubectl's forward dies when the app restarts under it (Tilt #2099, Skaffold #4518):
                # reopen it at once, and count the time that costs.
                forward = start_forward()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{target.service}: {value!r} not served")
            time.sleep(0.002)
        return forward

    edit(source, target, 999)
    sync_and_restart()
    forward = start_forward()
    try:
        forward = wait_serving(target.value(999), forward)
        visible: list[float] = []
        serving: list[float] = []
        for i in range(edits):
            t0 = time.perf_counter()
            edit(source, target, i)  # a tool's watcher would notice this now; syncing starts at once
            visible.append(sync_and_restart() - t0)
            forward = wait_serving(target.value(i), forward)
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
            base = {t.service: baseline_run(kube, bundled, ns, work, edits=args.edits, target=t) for t in TARGETS}
    finally:
        kube.run("delete", "namespace", ns, "--wait=false", check=False)
    summary: dict[str, dict[str, float]] = {}
    for target in TARGETS:
        kind = "Flask + gunicorn" if target.service == "backend" else "Python stdlib"
        rows = {
            "innerloop file visible": ours[target.service][0],
            "innerloop save-to-serving": ours[target.service][1],
            "tar-over-exec file visible": base[target.service][0],
            "tar-over-exec save-to-serving": base[target.service][1],
        }
        print(f"\n{target.service} ({kind})\n")
        print(f"| {args.edits} edits | p50 ms | p95 ms | mean ms |")
        print("|---|---|---|---|")
        for name, values in rows.items():
            print(
                f"| {name} | {pct(values, 0.5):.0f} | {pct(values, 0.95):.0f} | {statistics.mean(values) * 1000:.0f} |"
            )
        ratio = pct(rows["tar-over-exec save-to-serving"], 0.5) / pct(rows["innerloop save-to-serving"], 0.5)
        print(f"save-to-serving p50 ratio (tar-over-exec / innerloop): {ratio:.1f}x")
        for name, values in rows.items():
            summary[f"{target.service} {name}"] = {
                "p50_ms": round(pct(values, 0.5), 1),
                "p95_ms": round(pct(values, 0.95), 1),
            }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
