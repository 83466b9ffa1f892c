"""Fixtures for end-to-end tests: the cluster (reused or started) and a fresh namespace per test."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from innerloop.cluster.node import BundledCluster
from innerloop.cluster.progress import stderr_report

from .kube import Kube


@pytest.fixture(scope="session")
def bundled_cluster() -> BundledCluster:
    """The bundled cluster: reused when it runs, started otherwise (needs root)."""
    cluster = BundledCluster(report=stderr_report)
    if cluster.info() is None:
        if os.geteuid() != 0:
            pytest.fail("the bundled cluster is not running and starting it needs root: run `innerloop cluster up`")
        cluster.up()
    return cluster


@pytest.fixture(scope="session")
def kube(bundled_cluster: BundledCluster) -> Kube:
    info = bundled_cluster.info()
    assert info is not None, "bundled cluster is not ready"
    return Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace only this test uses; deleted (without waiting) afterwards."""
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{base}-{secrets.token_hex(3)}"
    kube.run("create", "namespace", name)
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def innerloop_cli() -> list[str]:
    """How to run the innerloop command of this checkout."""
    venv_bin = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "innerloop"
    return [str(venv_bin)] if venv_bin.exists() else ["python", "-m", "innerloop"]


def run_cli(cli: list[str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=timeout, check=False)
