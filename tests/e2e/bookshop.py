"""A private copy of examples/bookshop for tests and benchmarks: edits never touch the repository."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from innerloop.demo import example_dir

from .background import stop_gently
from .kube import eventually, free_port


def copy_bookshop(dest: Path, *, only: Sequence[str] | None = None) -> tuple[Path, dict[str, int]]:
    """Copy the example to ``dest``, keep ``only`` these services, give each a free local port."""
    shutil.copytree(example_dir(), dest, ignore=shutil.ignore_patterns(".innerloop", "__pycache__"))
    config = yaml.safe_load((dest / "innerloop.yaml").read_text())
    if only is not None:
        config["services"] = {name: config["services"][name] for name in only}
        for service in config["services"].values():
            # backend without reviews answers without ratings (and says so): it still starts.
            kept = [d for d in service.get("dependsOn", []) if d in config["services"]]
            if kept:
                service["dependsOn"] = kept
            else:
                service.pop("dependsOn", None)
    ports: dict[str, int] = {}
    for name, service in config["services"].items():
        ports[name] = free_port()
        service["ports"][0]["local"] = ports[name]
    (dest / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest, ports


@dataclass
class Up:
    dir: Path
    namespace: str
    ports: dict[str, int]
    proc: subprocess.Popen[str]
    cli: list[str]
    log: Path
    env: dict[str, str]

    def get(self, service: str = "frontend", path: str = "/api.json") -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[service]}{path}", timeout=30) as resp:
            data: dict[str, object] = json.load(resp)
            return data

    def greeting(self) -> str:
        chain: Any = self.get()
        api = chain["via"][0]
        return str(api["via"][0]["greeting"])

    def cli_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [*self.cli, *args]
        env = {**os.environ, **self.env}
        return subprocess.run(argv, cwd=self.dir, capture_output=True, text=True, timeout=180, check=False, env=env)

    def logged(self, text: str, timeout_s: float = 60) -> None:
        """Wait until `up` has printed ``text`` (its log is written as it goes)."""
        eventually(lambda: text in self.log.read_text(), timeout_s=timeout_s)


@contextlib.contextmanager
def running_up(
    cli: list[str],
    app: Path,
    ports: dict[str, int],
    *,
    namespace: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    probe: tuple[str, str] = ("frontend", "/api.json"),
) -> Iterator[Up]:
    """`innerloop up` on a bookshop copy, until the chain answers; Ctrl+C (then kill) at the end."""
    proc = subprocess.Popen(
        [*cli, "up", "-n", namespace, "--no-color", *args],
        cwd=app,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env} if env is not None else None,
    )
    handle = Up(dir=app, namespace=namespace, ports=ports, proc=proc, cli=cli, log=log, env=dict(env or {}))
    try:
        # Builds three images and starts three pods: minutes on a busy machine.
        def serving() -> bool:
            if proc.poll() is not None:  # not retried: `up` gave up, its log says why
                raise RuntimeError(f"innerloop up exited {proc.returncode}:\n{log.read_text()}")
            return "in sync" in log.read_text() and bool(handle.get(*probe))

        eventually(serving, timeout_s=600)
        yield handle
    finally:
        stop_gently(proc)
