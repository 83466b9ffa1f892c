"""A private copy of examples/bookshop for tests and benchmarks: edits never touch the repository."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml

from innerloop.demo import example_dir

from .kube import free_port


def copy_bookshop(dest: Path, *, only: Sequence[str] | None = None) -> tuple[Path, dict[str, int]]:
    """Copy the example to ``dest``, keep ``only`` these services, give each a free local port."""
    shutil.copytree(example_dir(), dest, ignore=shutil.ignore_patterns(".innerloop", "__pycache__"))
    config = yaml.safe_load((dest / "innerloop.yaml").read_text())
    if only is not None:
        config["services"] = {name: config["services"][name] for name in only}
    ports: dict[str, int] = {}
    for name, service in config["services"].items():
        ports[name] = free_port()
        service["ports"][0]["local"] = ports[name]
    (dest / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest, ports
