"""A private copy of examples/storefront (one manifest file, replicas, a StatefulSet, a sidecar, an unbuilt image)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from innerloop.demo import example_dir

from .kube import Kube, eventually, free_port


def copy_storefront(dest: Path, *, port: int | None = None) -> tuple[Path, int]:
    """Copy the example to ``dest`` with a free local port for the gateway (or ``port``); returns both."""
    shutil.copytree(
        example_dir().parent / "storefront", dest, ignore=shutil.ignore_patterns(".innerloop", "__pycache__")
    )
    config = yaml.safe_load((dest / "innerloop.yaml").read_text())
    port = free_port() if port is None else port
    config["services"]["gateway"]["ports"][0]["local"] = port
    (dest / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest, port


@dataclass
class Storefront:
    dir: Path
    namespace: str
    port: int
    proc: subprocess.Popen[str]
    cli: list[str]
    log: Path

    def get(self, path: str = "/") -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
            return json.load(resp)

    def status(self) -> Any:
        out = subprocess.run(
            [*self.cli, "status", "--json"], cwd=self.dir, capture_output=True, text=True, timeout=30, check=True
        )
        return json.loads(out.stdout)

    def replicas(self, service: str) -> dict[str, Any]:
        found: dict[str, Any] = self.status()["services"][service]["replicas"]
        return found


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def storefront_up(
    cli: list[str], kube: Kube, namespace: str, tmp_path: Path, *, port: int | None = None
) -> Iterator[Storefront]:
    """`innerloop up` on a copy of the storefront in a restricted namespace, until every service is in sync.

    ``port=0``: the gateway's forward takes any free port, read back from `innerloop status`.
    """
    app, port = copy_storefront(tmp_path / "storefront", port=port)
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    log = tmp_path / "up.log"
    proc = subprocess.Popen(
        [*cli, "up", "-n", namespace, "--no-color"], cwd=app, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True
    )
    handle = Storefront(dir=app, namespace=namespace, port=port, proc=proc, cli=cli, log=log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"innerloop up exited with {proc.returncode}:\n{log.read_text()}")
        text = log.read_text()
        return "watching for changes" in text and all(f"{s}: in sync" in text for s in ("catalog", "gateway", "ledger"))

    try:
        eventually(ready, timeout_s=240, interval_s=0.5)
        if port == 0:
            [forward] = handle.status()["services"]["gateway"]["forwards"]
            handle.port = int(forward.split(" ")[0].rsplit(":", 1)[1])
        yield handle
    finally:
        stop(proc)
