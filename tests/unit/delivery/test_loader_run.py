"""LoaderRun's process handling, with small stand-in scripts for the loaders (their argv is in test_choice.py).

What this proves is innerloop's side: the archive reaches the loader as an
argument or on stdin (microk8s), a failure is one line with the loader's own
message, a missing loader says what to install.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from innerloop.delivery.choice import Loader, LoaderCommand
from innerloop.delivery.deliver import DeliveryError, LoaderRun
from innerloop.oci.archive import BuiltImage


def _script(folder: Path, body: str) -> Path:
    path = folder / "loader"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _archive(tmp_path: Path) -> BuiltImage:
    archive = tmp_path / "img.tar"
    archive.write_bytes(b"not really a tar, but bytes to pass along" * 100)
    return BuiltImage(tag="api:1f2e", archive=archive)


def test_the_archive_goes_on_stdin_when_the_loader_reads_it_there(tmp_path: Path) -> None:
    image = _archive(tmp_path)
    got = tmp_path / "received"
    tool = _script(tmp_path, f'cat > "{got}"\n')
    loader = Loader(
        tool="microk8s", shown="", build=lambda a: LoaderCommand(argv=(str(tool), "images", "import"), stdin=a)
    )
    assert LoaderRun(loader).deliver(image) == "api:1f2e"
    assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(image.archive.read_bytes()).digest()


def test_the_archive_path_goes_as_an_argument(tmp_path: Path) -> None:
    image = _archive(tmp_path)
    got = tmp_path / "args"
    tool = _script(tmp_path, f'echo "$@" > "{got}"\n')
    loader = Loader(
        tool="kind", shown="", build=lambda a: LoaderCommand(argv=(str(tool), "load", "image-archive", str(a)))
    )
    LoaderRun(loader).deliver(image)
    assert got.read_text().split() == ["load", "image-archive", str(image.archive)]


def test_a_failing_loader_is_one_line_with_its_message(tmp_path: Path) -> None:
    tool = _script(tmp_path, 'echo "noise" >&2\necho "ERROR: no nodes found for cluster \\"dev\\"" >&2\nexit 1\n')
    loader = Loader(tool="kind", shown="", build=lambda a: LoaderCommand(argv=(str(tool), str(a))))
    with pytest.raises(DeliveryError) as err:
        LoaderRun(loader).deliver(_archive(tmp_path))
    assert str(err.value) == 'kind could not load api:1f2e: ERROR: no nodes found for cluster "dev"'


def test_a_missing_loader_says_what_to_install(tmp_path: Path) -> None:
    loader = Loader(tool="k3d", shown="", build=lambda a: LoaderCommand(argv=(str(tmp_path / "k3d"), str(a))))
    with pytest.raises(DeliveryError, match=r"loading api:1f2e needs k3d: install k3d \(https://k3d.io"):
        LoaderRun(loader).deliver(_archive(tmp_path))
