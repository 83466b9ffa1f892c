"""Write container images as docker-save archives, byte for byte reproducible.

No maintained Python library appends a layer to an image, and the format is
small: a layer is a tar, its diff_id the sha256 of that tar, the config names
the diff_ids, and ``manifest.json`` ties a tag to the config and the layers.
``ctr images import`` (containerd) and ``skopeo`` read this format.

Determinism is the point: every entry gets mtime 0, owner 0:0 unless set, and
entries are sorted, so the same inputs always give the same digest and a
content-hash tag never changes for unchanged sources.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


@dataclass(frozen=True, kw_only=True)
class FileEntry:
    """One entry of a layer: a regular file, a directory or a symlink."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    kind: str = "file"  # "file" | "dir" | "symlink"
    target: str = ""
    uid: int = 0
    gid: int = 0

    @classmethod
    def directory(cls, path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> FileEntry:
        return cls(path=path, kind="dir", mode=mode, uid=uid, gid=gid)

    @classmethod
    def symlink(cls, path: str, target: str) -> FileEntry:
        return cls(path=path, kind="symlink", target=target, mode=0o777)


def _tarinfo(entry: FileEntry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(str(PurePosixPath(entry.path.lstrip("/"))))
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.mtime = 0
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
    else:
        info.size = len(entry.data)
    return info


def layer_from_entries(entries: Iterable[FileEntry]) -> bytes:
    """A layer tar holding ``entries`` (parents must be listed too), sorted by path."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path):
            info = _tarinfo(entry)
            tar.addfile(info, io.BytesIO(entry.data) if entry.kind == "file" else None)
    return buf.getvalue()


def entries_from_directory(root: Path, *, prefix: str = "/") -> list[FileEntry]:
    """Every file, directory and symlink under ``root``, as entries rooted at ``prefix``.

    Modes are kept; owners are reset to root. Hard links become copies.
    """
    found: list[FileEntry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            full = Path(dirpath) / name
            rel = str(PurePosixPath(prefix) / full.relative_to(root).as_posix())
            st = full.lstat()
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                found.append(FileEntry.symlink(rel, os.readlink(full)))
            elif stat.S_ISDIR(st.st_mode):
                found.append(FileEntry.directory(rel, mode=perm))
            elif stat.S_ISREG(st.st_mode):
                found.append(FileEntry(path=rel, data=full.read_bytes(), mode=perm))
    return found


@dataclass(frozen=True, kw_only=True)
class BuiltImage:
    """An image archive on disk and the tag it carries."""

    tag: str
    archive: Path


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """The runtime part of an image config (what `docker inspect` shows as Config)."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.env:
            out["Env"] = [f"{k}={v}" for k, v in self.env.items()]
        if self.user:
            out["User"] = self.user
        if self.workdir:
            out["WorkingDir"] = self.workdir
        if self.labels:
            out["Labels"] = dict(self.labels)
        return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_id(*, layers: Sequence[bytes], config: ImageConfig, architecture: str = "amd64") -> str:
    """The sha256 of the image config: changes exactly when content or config change."""
    return sha256(_config_blob(layers=layers, config=config, architecture=architecture))


def _config_blob(*, layers: Sequence[bytes], config: ImageConfig, architecture: str = "amd64") -> bytes:
    doc = {
        "architecture": architecture,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256(layer)}" for layer in layers]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "innerloop"} for _ in layers],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_archive(
    path: Path, *, tag: str, layers: Sequence[bytes], config: ImageConfig, architecture: str = "amd64"
) -> str:
    """Write a docker-save archive of one image (for ``architecture``) to ``path``; returns the image id."""
    blob = _config_blob(layers=layers, config=config, architecture=architecture)
    config_name = f"{sha256(blob)}.json"
    layer_names = [f"{sha256(layer)}/layer.tar" for layer in layers]
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": layer_names}]
    files: list[FileEntry] = [
        FileEntry(path=config_name, data=blob),
        FileEntry(path="manifest.json", data=json.dumps(manifest).encode()),
    ]
    for name, layer in zip(layer_names, layers, strict=True):
        files.append(FileEntry.directory(name.split("/")[0]))
        files.append(FileEntry(path=name, data=layer))
    # Per-process temporary name: two CLIs may build the same image at once (same content, same result).
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(layer_from_entries(files))
    tmp.replace(path)
    return sha256(blob)
