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


def test_up_recovers_after_every_process_is_killed(
    bundled_cluster: BundledCluster, innerloop_cli: list[str], kube: Kube, namespace: str
) -> None:
    kube.apply(namespace, pod_manifest("survivor", kube.images["busybox"], ["sleep", "3600"]))
    kube.wait_ready(namespace, "survivor")
    # A crash or a reboot: every daemon, shim and pod process dies at once.
    victims = tuple(bundled_cluster.status())
    for name in victims:
        pid = bundled_cluster.daemons.running(name)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    assert bundled_cluster.host.kill_workloads() > 0
    deadline = time.monotonic() + 60
    while any(bundled_cluster.daemons.running(n) for n in victims) and time.monotonic() < deadline:
        time.sleep(0.1)
    status = run_cli(innerloop_cli, "cluster", "status")
    assert status.returncode == 1
    assert "kubelet                  not running" in status.stdout

    out = run_cli(innerloop_cli, "cluster", "up")
    assert out.returncode == 0, out.stderr
    assert all(pid is not None for pid in bundled_cluster.status().values())
    # The workload from before the crash runs again and the node schedules new pods.
    kube.wait_ready(namespace, "survivor")
    restarted = kube.get_json("pod", "survivor", "-n", namespace)["status"]["containerStatuses"][0]
    assert restarted["ready"] is True
    kube.apply(namespace, pod_manifest("after", kube.images["busybox"], ["sleep", "3600"]))
    kube.wait_ready(namespace, "after")
