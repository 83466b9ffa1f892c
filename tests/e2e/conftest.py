"""Fixtures for end-to-end tests: the cluster (reused or started) and a fresh namespace per test."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import bcrypt
import pytest

from innerloop.cluster.node import BundledCluster
from innerloop.cluster.progress import stderr_report
from innerloop.cluster.registry import LocalRegistry, containerd_hosts

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


def innerloop_command() -> list[str]:
    """How to run the innerloop command of this checkout."""
    venv_bin = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "innerloop"
    return [str(venv_bin)] if venv_bin.exists() else ["python", "-m", "innerloop"]


@pytest.fixture
def innerloop_cli() -> list[str]:
    """How to run the innerloop command of this checkout."""
    return innerloop_command()


def run_cli(cli: list[str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def registry(bundled_cluster: BundledCluster) -> str:
    """The bundled cluster's open registry, ``host:port`` (plain HTTP; containerd pulls from it)."""
    info = bundled_cluster.info()
    assert info is not None and info.registry, "the bundled cluster runs no registry: `innerloop cluster up`"
    return info.registry


class RegistryLogin(NamedTuple):
    address: str
    user: str
    password: str


@pytest.fixture(scope="session")
def auth_registry(
    bundled_cluster: BundledCluster, registry: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryLogin]:
    """A second registry, behind htpasswd (bcrypt) auth, run by pid on the node's address and a free port.

    The bundled containerd trusts it (a hosts.toml written for this session), so pods pull from it
    with an imagePullSecret. Stopped, and its hosts.toml removed, at the end of the session.
    """
    node_ip = registry.rpartition(":")[0]
    with socket.socket() as s:
        s.bind((node_ip, 0))
        address = f"{node_ip}:{s.getsockname()[1]}"
    user, password = "innerloop-test", secrets.token_urlsafe(12)
    entry = f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
    server = LocalRegistry(address=address, root=tmp_path_factory.mktemp("auth-registry"), htpasswd=entry)
    hosts = bundled_cluster.paths.certs_d / address
    server.start()
    try:
        server.wait_ready()
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts.toml").write_text(containerd_hosts(address, mirror_docker_hub=False)[address])
        yield RegistryLogin(address=address, user=user, password=password)
    finally:
        server.stop()
        if hosts.exists():
            (hosts / "hosts.toml").unlink(missing_ok=True)
            hosts.rmdir()
