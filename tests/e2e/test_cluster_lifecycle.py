"""`innerloop cluster up` is idempotent and recovers a cluster whose daemons died."""

from __future__ import annotations

import os
import signal
import time

from innerloop.cluster.node import BundledCluster

from .conftest import run_cli
from .kube import Kube, pod_manifest


def test_up_twice_is_harmless(bundled_cluster: BundledCluster, innerloop_cli: list[str]) -> None:
    before = bundled_cluster.status()
    out = run_cli(innerloop_cli, "cluster", "up")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(bundled_cluster.paths.kubeconfig)
    assert bundled_cluster.status() == before, "a second up must not restart running daemons"
    assert "already running" in out.stderr


def test_up_recovers_after_daemons_are_killed(
    bundled_cluster: BundledCluster, innerloop_cli: list[str], kube: Kube, namespace: str
) -> None:
    kube.apply(namespace, pod_manifest("survivor", kube.images["busybox"], ["sleep", "3600"]))
    kube.wait_ready(namespace, "survivor")
    victims = ("kubelet", "kube-scheduler", "kube-proxy")
    for name in victims:
        pid = bundled_cluster.daemons.running(name)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(bundled_cluster.daemons.running(n) for n in victims) and time.monotonic() < deadline:
        time.sleep(0.1)
    status = run_cli(innerloop_cli, "cluster", "status")
    assert status.returncode == 1
    assert "kubelet                  not running" in status.stdout

    out = run_cli(innerloop_cli, "cluster", "up")
    assert out.returncode == 0, out.stderr
    assert all(pid is not None for pid in bundled_cluster.status().values())
    # The workload from before the crash is still there and the node schedules new pods.
    kube.wait_ready(namespace, "survivor")
    kube.apply(namespace, pod_manifest("after", kube.images["busybox"], ["sleep", "3600"]))
    kube.wait_ready(namespace, "after")
