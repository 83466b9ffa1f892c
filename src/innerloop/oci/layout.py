"""A multi-architecture image as an OCI image layout: one index over per-architecture images.

A cluster whose nodes run both amd64 and arm64 needs one reference that
serves both: an OCI image index naming one manifest per platform, which each
node's runtime resolves to its own. docker-save archives hold one image
each, so the index is written as an OCI image layout (``oci-layout``,
``index.json``, ``blobs/sha256/...``), which ``skopeo copy --all
--preserve-digests oci:<dir>:<ref> docker://...`` pushes as it is.

The per-architecture images are innerloop's own docker-save archives
(:mod:`innerloop.oci.archive`): their configs are copied byte for byte (so
the image ids stay what they were), their layers gzip-compressed with a
fixed header, so the same archives always give the same index digest and a
registry that holds it already is recognised by that digest alone.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from innerloop.oci.archive import sha256

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True, kw_only=True)
class Platform:
    architecture: str
    os: str = "linux"
    variant: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


@dataclass(frozen=True, kw_only=True)
class IndexLayout:
    """An OCI layout on disk holding one index, and the reference name it carries."""

    path: Path
    ref: str  # the layout's ``org.opencontainers.image.ref.name``: ``oci:<path>:<ref>``
    digest: str  # sha256:... of the index (what a registry serves it as)


def is_layout(path: Path) -> bool:
    return path.is_dir() and (path / "oci-layout").is_file()


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": f"sha256:{sha256(data)}", "size": len(data)}


def _json(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _read_docker_archive(archive: Path) -> tuple[bytes, list[bytes]]:
    """(config blob, layer tars) of the single image in a docker-save archive."""
    with tarfile.open(archive) as tar:

        def member(name: str) -> bytes:
            f = tar.extractfile(name)
            if f is None:
                raise ValueError(f"{archive}: {name} is not a file")
            return f.read()

        [entry] = json.loads(member("manifest.json"))
        return member(entry["Config"]), [member(name) for name in entry["Layers"]]


def platform_of(config_blob: bytes) -> Platform:
    doc = json.loads(config_blob)
    return Platform(architecture=str(doc["architecture"]), os=str(doc["os"]), variant=str(doc.get("variant", "")))


def _gzip(layer: bytes, cache: Path | None) -> bytes:
    """The layer gzip-compressed with a fixed header (mtime 0, no name); kept by the layer's digest in ``cache``."""
    if cache is None:
        return gzip.compress(layer, compresslevel=6, mtime=0)
    cached = cache / f"{sha256(layer)}.gz"
    if not cached.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        tmp.write_bytes(gzip.compress(layer, compresslevel=6, mtime=0))
        tmp.replace(cached)
    return cached.read_bytes()


def index_blobs(archives: Sequence[Path], *, gzip_cache: Path | None = None) -> tuple[bytes, dict[str, bytes]]:
    """The index over per-architecture docker archives and every blob it reaches (digest -> bytes).

    Images are listed in the order given; two for one platform is an error.
    """
    blobs: dict[str, bytes] = {}
    manifests: list[dict[str, object]] = []
    seen: set[Platform] = set()

    def keep(media_type: str, data: bytes) -> dict[str, object]:
        blobs[f"sha256:{sha256(data)}"] = data
        return _descriptor(media_type, data)

    for archive in archives:
        config, layers = _read_docker_archive(archive)
        platform = platform_of(config)
        if platform in seen:
            raise ValueError(f"two images for {platform.os}/{platform.architecture} in one index")
        seen.add(platform)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": keep(CONFIG_MEDIA_TYPE, config),
            # mtime 0 and no file name in the gzip header: the same layer always compresses the same.
            "layers": [keep(LAYER_MEDIA_TYPE, _gzip(layer, gzip_cache)) for layer in layers],
        }
        manifests.append({**keep(MANIFEST_MEDIA_TYPE, _json(manifest)), "platform": platform.to_json()})
    index = _json({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests})
    return index, blobs


def write_index_layout(
    path: Path, *, ref: str, archives: Sequence[Path], gzip_cache: Path | None = None
) -> IndexLayout:
    """Write an OCI layout at ``path`` whose one entry, named ``ref``, is an index over ``archives``.

    ``gzip_cache`` keeps compressed layers by digest: an unchanged runtime layer is compressed once.
    """
    index, blobs = index_blobs(archives, gzip_cache=gzip_cache)
    digest = f"sha256:{sha256(index)}"
    blobs[digest] = index
    top = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{**_descriptor(INDEX_MEDIA_TYPE, index), "annotations": {REF_NAME: ref}}],
    }
    # Written beside and renamed into place: two CLIs may write the same layout at once.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "blobs" / "sha256").mkdir(parents=True)
    for blob_digest, data in blobs.items():
        (tmp / "blobs" / "sha256" / blob_digest.removeprefix("sha256:")).write_bytes(data)
    (tmp / "index.json").write_bytes(_json(top))
    (tmp / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
    if path.exists():
        shutil.rmtree(tmp)
    else:
        try:
            tmp.rename(path)
        except OSError:  # another process put the same layout there first
            shutil.rmtree(tmp, ignore_errors=True)
    return IndexLayout(path=path, ref=ref, digest=digest)


def read_layout(path: Path) -> IndexLayout:
    """The one entry of a layout written by :func:`write_index_layout`."""
    top = json.loads((path / "index.json").read_text())
    [entry] = top["manifests"]
    return IndexLayout(path=path, ref=str(entry["annotations"][REF_NAME]), digest=str(entry["digest"]))
