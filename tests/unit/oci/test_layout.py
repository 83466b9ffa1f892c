"""The OCI layout of a multi-architecture image: one index, one manifest per platform, blobs by digest."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from innerloop.oci.archive import FileEntry, ImageConfig, image_id, layer_from_entries, write_archive
from innerloop.oci.layout import (
    INDEX_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    is_layout,
    read_layout,
    write_index_layout,
)


def archive(tmp: Path, arch: str) -> tuple[Path, str]:
    layers = [layer_from_entries([FileEntry(path="/bin", kind="dir", mode=0o755), FileEntry(path=f"/bin/{arch}")])]
    config = ImageConfig(entrypoint=["/bin/x"])
    path = tmp / f"{arch}.tar"
    write_archive(path, tag=f"x/y:{arch}", layers=layers, config=config, architecture=arch)
    return path, image_id(layers=layers, config=config, architecture=arch)


def blob(layout: Path, digest: str) -> bytes:
    data = (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest.removeprefix("sha256:")
    return data


def test_an_index_names_each_platforms_manifest_and_every_blob_is_there(tmp_path: Path) -> None:
    (amd, amd_id), (arm, arm_id) = archive(tmp_path, "amd64"), archive(tmp_path, "arm64")
    assert amd_id != arm_id  # the architecture is part of the config
    layout = write_index_layout(tmp_path / "layout", ref="v1", archives=[amd, arm])
    assert is_layout(layout.path) and read_layout(layout.path) == layout
    assert json.loads((layout.path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    top = json.loads((layout.path / "index.json").read_text())
    assert top["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "v1"}
    index = json.loads(blob(layout.path, layout.digest))
    assert index["mediaType"] == INDEX_MEDIA_TYPE
    platforms = [m["platform"] for m in index["manifests"]]
    assert platforms == [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]
    for descriptor, image_sha in zip(index["manifests"], (amd_id, arm_id), strict=True):
        assert descriptor["mediaType"] == MANIFEST_MEDIA_TYPE
        manifest = json.loads(blob(layout.path, descriptor["digest"]))
        assert manifest["config"]["digest"] == f"sha256:{image_sha}"  # the image id is kept byte for byte
        [layer] = manifest["layers"]
        assert layer["mediaType"] == LAYER_MEDIA_TYPE
        assert gzip.decompress(blob(layout.path, layer["digest"]))[:4]  # a gzip of the tar


def test_the_same_archives_give_the_same_digest(tmp_path: Path) -> None:
    amd, arm = archive(tmp_path, "amd64")[0], archive(tmp_path, "arm64")[0]
    first = write_index_layout(tmp_path / "a", ref="v1", archives=[amd, arm])
    second = write_index_layout(tmp_path / "b", ref="v1", archives=[amd, arm])
    assert first.digest == second.digest
    assert write_index_layout(tmp_path / "a", ref="v1", archives=[amd, arm]).digest == first.digest  # already there
    cache = tmp_path / "gzip"
    cached = write_index_layout(tmp_path / "c", ref="v1", archives=[amd, arm], gzip_cache=cache)
    assert cached.digest == first.digest and len(list(cache.glob("*.gz"))) == 2  # one layer per architecture


def test_two_images_for_one_platform_are_refused(tmp_path: Path) -> None:
    amd = archive(tmp_path, "amd64")[0]
    with pytest.raises(ValueError, match="two images for linux/amd64"):
        write_index_layout(tmp_path / "layout", ref="v1", archives=[amd, amd])
