"""The agent image carries the router's HTTP/2 libraries (h2, hpack, hyperframe), and the router imports there."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

import innerloop
from innerloop.builders.agent_image import (
    IMAGE_ROOT,
    ROUTER_LIBRARIES,
    _source_key,
    agent_entries,
    build_agent_image,
    library_root,
)
from innerloop.builders.image import read_archive
from innerloop.cluster.paths import ClusterPaths
from innerloop.oci.archive import FileEntry

PACKAGE_ROOT = Path(innerloop.__file__).parent
LIB = f"{IMAGE_ROOT}/lib/python3.11"


def test_the_agent_layer_holds_the_routers_http2_libraries_as_installed() -> None:
    """Without them the router (``route``) fails at ``import h2`` in the cluster: every intercept is down."""
    entries = {e.path: e.data for e in agent_entries(PACKAGE_ROOT)}
    assert f"{LIB}/innerloop/router/h2.py" in entries
    for name in ROUTER_LIBRARIES:
        root = library_root(name)
        files = sorted(root.rglob("*.py"))
        assert files
        for src in files:
            path = f"{LIB}/{name}/{src.relative_to(root).as_posix()}"
            assert entries[path] == src.read_bytes(), path
    assert f"{LIB}/h2/connection.py" in entries and f"{LIB}/hpack/hpack.py" in entries
    assert f"{LIB}/hyperframe/frame.py" in entries
    assert not [p for p in entries if "dist-info" in p or "__pycache__" in p]


def test_the_images_source_key_follows_the_libraries_files(tmp_path: Path) -> None:
    """A changed h2 (another installed version) must give another image, never the cached one."""
    archive = tmp_path / "python-3.11-x.tar"
    entries = agent_entries(PACKAGE_ROOT)
    key = _source_key(archive, "amd64", entries)
    changed = [
        FileEntry(path=e.path, data=e.data + b"\n# another version\n") if e.path.endswith("/h2/connection.py") else e
        for e in entries
    ]
    assert _source_key(archive, "amd64", changed) != key
    assert _source_key(archive, "amd64", entries) == key


def _bundled_python() -> Path | None:
    images = ClusterPaths.from_env().images
    found = sorted(p for p in images.glob("python-3.11-*.tar") if "arm64" not in p.name) if images.is_dir() else []
    return found[-1] if found else None


@pytest.mark.skipif(_bundled_python() is None, reason="no bundled Python image in the cache (innerloop cluster up)")
def test_the_router_imports_from_a_runtime_built_as_the_bundled_cluster_builds_it(tmp_path: Path) -> None:
    """The agent image from the bundled cluster's Python archive, unpacked, started through its own loader with
    only ``PYTHONHOME`` (as the router's pod starts it): ``import innerloop.router.h2`` must work there."""
    python = _bundled_python()
    assert python is not None
    built = build_agent_image(python_archive=python, out_dir=tmp_path / "images")
    root = tmp_path / "rootfs"
    for layer in read_archive(built.archive).layers:
        with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
            tar.extractall(root, filter="tar")
    home = root / IMAGE_ROOT.lstrip("/")
    script = "import innerloop.router.h2, h2, sys; print(h2.__file__)"
    done = subprocess.run(
        [str(home / "lib/ld.so"), "--library-path", str(home / "lib"), str(home / "bin/python3"), "-c", script],
        env={"PYTHONHOME": str(home), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(home / "lib/python3.11/h2/"))
