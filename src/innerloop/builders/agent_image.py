"""The agent image: a self-contained Python runtime plus innerloop's agent.

In dev mode the agent runs *inside the app's container*, whatever its image:
distroless, no shell, another libc. So the agent carries everything it
needs: the Python 3.11 interpreter, every shared library it loads, the
dynamic loader, the standard library and the `innerloop.agent` and
`innerloop.protocol` packages (stdlib-only by design), all under one root.
It is started through the loader, never through a shell:

    <root>/lib/ld-linux-x86-64.so.2 --library-path <root>/lib <root>/bin/python3.11 -m innerloop.agent ...

with ``PYTHONHOME=<root>``. An init container copies ``/opt/innerloop`` from
this image into an emptyDir that the app container mounts at
``/.innerloop``. The runtime is taken from the distroless Python base image
the cluster already builds, so no extra download is needed.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path, PurePosixPath

from innerloop.builders.image import read_archive
from innerloop.oci.archive import BuiltImage, FileEntry, ImageConfig, image_id, layer_from_entries, write_archive
from innerloop.oci.bytecode import with_bytecode

IMAGE_ROOT = "/opt/innerloop"
MOUNT_ROOT = "/.innerloop"
LOADER = "ld-linux-x86-64.so.2"
AGENT_PACKAGES = ("protocol", "agent")

# Standard-library parts the agent never imports: leaving them out halves the copy.
_STDLIB_SKIP = (
    "test/",
    "idlelib/",
    "tkinter/",
    "ensurepip/",
    "lib2to3/",
    "pydoc_data/",
    "turtledemo/",
    "unittest/test/",
    "__pycache__/",
    "config-3.11-x86_64-linux-gnu/",
)
_LIB_DIRS = ("lib/x86_64-linux-gnu/", "usr/lib/x86_64-linux-gnu/")


def runtime_command(root: str = MOUNT_ROOT) -> list[str]:
    """argv prefix that starts the agent from a runtime copied to ``root``."""
    return [f"{root}/lib/{LOADER}", "--library-path", f"{root}/lib", f"{root}/bin/python3.11", "-m", "innerloop.agent"]


def runtime_env(root: str = MOUNT_ROOT) -> dict[str, str]:
    """The agent's own environment; it removes the names in INNERLOOP_RUNTIME_ENV before starting the app."""
    return {"PYTHONHOME": root, "INNERLOOP_RUNTIME_ENV": "PYTHONHOME,INNERLOOP_RUNTIME_ENV"}


def _remap(name: str) -> str | None:
    """Where a file of the Debian Python rootfs goes in the runtime, or None to leave it out."""
    if name == "usr/bin/python3.11":
        return f"{IMAGE_ROOT}/bin/python3.11"
    for lib_dir in _LIB_DIRS:
        if name.startswith(lib_dir) and "/" not in name[len(lib_dir) :] and ".so" in name:
            return f"{IMAGE_ROOT}/lib/{name[len(lib_dir) :]}"
    prefix = "usr/lib/python3.11/"
    if name.startswith(prefix):
        rest = name[len(prefix) :]
        if any(rest.startswith(s) or f"/{s}" in rest for s in _STDLIB_SKIP) or "/test/" in rest:
            return None
        return f"{IMAGE_ROOT}/lib/python3.11/{rest}" if rest else None
    return None


def runtime_entries(python_archive: Path) -> list[FileEntry]:
    base = read_archive(python_archive)
    entries: dict[str, FileEntry] = {}
    for layer in base.layers:
        with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
            for member in tar.getmembers():
                target = _remap(member.name.lstrip("./"))
                if target is None or member.isdir():
                    continue
                if member.issym():
                    link = member.linkname
                    # Libraries link to siblings; the flattened lib/ keeps their basenames valid.
                    entries[target] = FileEntry.symlink(target, PurePosixPath(link).name if "/lib/" in target else link)
                elif member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    entries[target] = FileEntry(path=target, data=f.read(), mode=member.mode & 0o777)
    return list(entries.values())


def agent_entries(package_root: Path) -> list[FileEntry]:
    """innerloop/__init__.py plus the stdlib-only agent and protocol packages."""
    dest = f"{IMAGE_ROOT}/lib/python3.11/innerloop"
    entries = [FileEntry(path=f"{dest}/__init__.py", data=(package_root / "__init__.py").read_bytes())]
    for pkg in AGENT_PACKAGES:
        for src in sorted((package_root / pkg).rglob("*.py")):
            rel = src.relative_to(package_root).as_posix()
            entries.append(FileEntry(path=f"{dest}/{rel}", data=src.read_bytes()))
    return entries


def _with_parents(entries: list[FileEntry]) -> list[FileEntry]:
    dirs: set[str] = set()
    for e in entries:
        for parent in PurePosixPath(e.path).parents:
            if str(parent) != "/":
                dirs.add(str(parent))
    return [*entries, *(FileEntry.directory(d) for d in sorted(dirs))]


def _source_key(python_archive: Path, entries: list[FileEntry]) -> str:
    """What the image is made of, hashed cheaply: the base and the agent's sources (not the bytecode)."""
    digest = hashlib.sha256(python_archive.name.encode())
    digest.update(repr((runtime_command(IMAGE_ROOT), runtime_env(IMAGE_ROOT))).encode())
    for entry in entries:
        digest.update(entry.path.encode() + b"\0" + hashlib.sha256(entry.data).digest())
    return digest.hexdigest()[:24]


def build_agent_image(*, python_archive: Path, out_dir: Path) -> BuiltImage:
    package_root = Path(__file__).resolve().parents[1]
    sources = agent_entries(package_root)
    # Rebuilding an unchanged image costs ~1 s (bytecode, hashing the runtime layer):
    # a note per source hash says which tag those sources became.
    note = out_dir / f"agent-src-{_source_key(python_archive, sources)}.tag"
    if note.exists():
        tag = note.read_text().strip()
        archive = out_dir / f"agent-{tag.rsplit(':', 1)[1]}.tar"
        if archive.exists():
            return BuiltImage(tag=tag, archive=archive)
    # The runtime layer depends only on the Python image: compile it once.
    cached = out_dir / f"agent-runtime-{python_archive.stem}.tar"
    if not cached.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(layer_from_entries(_with_parents(with_bytecode(runtime_entries(python_archive)))))
        tmp.replace(cached)
    runtime = cached.read_bytes()
    agent = layer_from_entries(_with_parents(with_bytecode(sources)))
    config = ImageConfig(
        entrypoint=runtime_command(IMAGE_ROOT),
        env=runtime_env(IMAGE_ROOT),
        user="65532",
        labels={"org.opencontainers.image.title": "innerloop-agent"},
    )
    layers = [runtime, agent]
    tag = f"innerloop.local/innerloop-agent:{image_id(layers=layers, config=config)[:12]}"
    archive = out_dir / f"agent-{tag.rsplit(':', 1)[1]}.tar"
    if not archive.exists():
        write_archive(archive, tag=tag, layers=layers, config=config)
    tmp_note = note.with_suffix(f".{os.getpid()}.tmp")
    tmp_note.write_text(tag)
    tmp_note.replace(note)
    return BuiltImage(tag=tag, archive=archive)
