"""The agent image: a self-contained Python runtime plus innerloop's agent, for amd64 and arm64 nodes.

In dev mode the agent runs *inside the app's container*, whatever its image:
distroless, no shell, another libc. So the agent carries everything it
needs: the Python interpreter, every shared library it loads, the dynamic
loader, the standard library, the `innerloop.agent` and
`innerloop.protocol` packages (stdlib-only by design), and the router
(`innerloop.router`, which the same image runs) with the pure-Python HTTP/2
libraries it speaks through (``h2``, ``hpack``, ``hyperframe``, taken from
this installation, so the versions are the ones its tests ran), all under one root.
It is started through the loader, never through a shell, with the same argv
on every architecture:

    <root>/lib/ld.so --library-path <root>/lib <root>/bin/python3 -m innerloop.agent ...

with ``PYTHONHOME=<root>``: ``lib/ld.so`` links to the architecture's own
loader (``ld-linux-x86-64.so.2``, ``ld-linux-aarch64.so.1``), so the dev-mode
patch (:mod:`innerloop.deploy.devmode`) needs to know nothing of the nodes.
An init container copies ``/opt/innerloop`` from this image into an emptyDir
that the app container mounts at ``/.innerloop``.

Where the runtime comes from (:func:`plan_agent`, pure):

- the bundled cluster: the Debian-built distroless-style Python it already
  has (:meth:`innerloop.cluster.images.ClusterImages.python`), no fetch;
- any other cluster: a Python base image *reference* (``agentBase:`` in
  innerloop.yaml, default ``gcr.io/distroless/python3-debian12``), fetched
  per node architecture by skopeo through the builders' base cache
  (:mod:`innerloop.builders.bases`: the user's registries.conf and
  credentials, cached by digest), so nothing here needs apt. A cluster with
  amd64 *and* arm64 nodes reached through a registry gets one OCI index of
  both (:mod:`innerloop.oci.layout`); a loader gets the one it needs.

A base may use Debian's layout (``/usr/bin/python3.X``, ``/usr/lib/python3.X``,
as distroless and the bundled image do) or the official Docker Python
images' (``/usr/local/bin/python3.X``, ``/usr/local/lib/python3.X``); the
libraries come from ``[/usr]/lib/<triplet>`` and the loader's ELF header must
be the node's machine, so a wrong-architecture base is refused, not deployed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import shutil
import sys
import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from innerloop.builders.bases import BaseImages
from innerloop.builders.image import read_archive
from innerloop.builders.request import BuildError
from innerloop.cluster.images import ClusterImages
from innerloop.cluster.paths import ClusterPaths
from innerloop.oci.archive import BuiltImage, FileEntry, ImageConfig, image_id, layer_from_entries, write_archive
from innerloop.oci.bytecode import with_bytecode
from innerloop.oci.layout import write_index_layout

Report = Callable[[str], None]
# Debug tools for one architecture (innerloop.debug.tools): entries under <root>/tools/<name>/, a layer of their own.
ToolEntries = Callable[[str], Sequence[FileEntry]]

IMAGE_ROOT = "/opt/innerloop"
MOUNT_ROOT = "/.innerloop"
LOADER = "ld.so"  # lib/ld.so: a link to the architecture's own loader
AGENT_PACKAGES = ("protocol", "agent", "router")
ROUTER_LIBRARIES = ("h2", "hpack", "hyperframe")  # pure Python: their .py files are all the router needs
DEFAULT_AGENT_BASE = "gcr.io/distroless/python3-debian12"
MIN_PYTHON = (3, 11)  # the agent uses asyncio.TaskGroup and asyncio.timeout
# Bump when what the runtime layer holds or where changes: cached runtimes are rebuilt.
LAYOUT_VERSION = "3"


@dataclass(frozen=True, kw_only=True)
class Arch:
    """A node architecture as Kubernetes names it (GOARCH), and what glibc calls its parts."""

    name: str
    triplet: str  # Debian's multiarch library folder
    loader: str  # glibc's dynamic loader
    e_machine: int  # the ELF header's machine


ARCHES: Mapping[str, Arch] = {
    "amd64": Arch(name="amd64", triplet="x86_64-linux-gnu", loader="ld-linux-x86-64.so.2", e_machine=62),
    "arm64": Arch(name="arm64", triplet="aarch64-linux-gnu", loader="ld-linux-aarch64.so.1", e_machine=183),
}

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
    "site-packages/",
    "dist-packages/",
)
_PYTHON_BINARY = re.compile(r"^(?P<prefix>usr|usr/local)/bin/python(?P<version>3\.\d+)$")


class AgentImageError(RuntimeError):
    """The agent image cannot be built; the message is one line saying what to do."""


def runtime_command(root: str = MOUNT_ROOT) -> list[str]:
    """argv prefix that starts the agent from a runtime copied to ``root`` (the same for every architecture)."""
    return [f"{root}/lib/{LOADER}", "--library-path", f"{root}/lib", f"{root}/bin/python3", "-m", "innerloop.agent"]


def runtime_env(root: str = MOUNT_ROOT) -> dict[str, str]:
    """The agent's own environment; it removes the names in INNERLOOP_RUNTIME_ENV before starting the app."""
    return {"PYTHONHOME": root, "INNERLOOP_RUNTIME_ENV": "PYTHONHOME,INNERLOOP_RUNTIME_ENV"}


# ---- which runtime (pure) -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AgentPlan:
    """Where the agent's runtime comes from and for which architectures."""

    base: str | None  # None: the bundled cluster's own Debian-built Python
    architectures: tuple[str, ...]
    reason: str

    @property
    def index(self) -> bool:
        """One image per architecture under one reference (an OCI index)."""
        return len(self.architectures) > 1

    def describe(self) -> str:
        platforms = ", ".join(f"linux/{a}" for a in self.architectures)
        source = self.base if self.base is not None else "the bundled cluster's Debian-built Python"
        return f"agent: runtime from {source} for {platforms}{' (one index)' if self.index else ''} ({self.reason})"


def plan_agent(
    *,
    bundled: bool,
    registry: bool,
    node_architectures: Sequence[str] | None,
    base: str | None = None,
    unknown_reason: str = "",
    host_architecture: str = "amd64",
) -> AgentPlan:
    """Decide the runtime's source and architectures from how images reach the cluster and its nodes.

    ``bundled``: images are imported into the bundled (amd64) cluster;
    ``registry``: they are pushed to a registry (which can hold an index);
    ``node_architectures``: what the nodes report, None when unknown.
    """
    if bundled:
        return AgentPlan(base=None, architectures=("amd64",), reason="the bundled cluster")
    source = base or DEFAULT_AGENT_BASE
    if node_architectures is None or not node_architectures:
        why = unknown_reason or "no node reported one"
        return AgentPlan(base=source, architectures=("amd64",), reason=f"node architecture unknown ({why}): amd64")
    wanted = tuple(sorted(set(node_architectures)))
    unsupported = [a for a in wanted if a not in ARCHES]
    if unsupported:
        raise AgentImageError(
            f"the cluster's nodes run {', '.join(unsupported)}: innerloop's agent runtime is built for "
            f"{' and '.join(ARCHES)} only; set agentImage in innerloop.yaml to an agent image built for them"
        )
    if len(wanted) == 1:
        return AgentPlan(base=source, architectures=wanted, reason=f"the nodes are {wanted[0]}")
    if registry:
        return AgentPlan(base=source, architectures=wanted, reason=f"the nodes are {' and '.join(wanted)}")
    # A loader takes one image, and a local cluster runs on this machine's architecture.
    one = host_architecture if host_architecture in wanted else wanted[0]
    return AgentPlan(base=source, architectures=(one,), reason=f"nodes are {' and '.join(wanted)}; a loader takes one")


def machine_architecture(machine: str | None = None) -> str:
    """This machine's architecture as Kubernetes names it (``platform.machine()`` spells it otherwise)."""
    value = (machine or os.uname().machine).lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "amd64": "amd64"}.get(value, value)


# ---- the runtime's files (pure over a base image's layers) ------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PythonLayout:
    """Where a base image keeps its Python: ``usr`` (Debian's) or ``usr/local`` (the official images')."""

    prefix: str
    version: str  # "3.11"

    @property
    def binary(self) -> str:
        return f"{self.prefix}/bin/python{self.version}"

    @property
    def stdlib(self) -> str:
        return f"{self.prefix}/lib/python{self.version}/"


def find_python(names: Iterable[str]) -> PythonLayout | None:
    """The newest ``python3.X`` binary among a base's file names (``usr/local`` before ``usr`` on a tie)."""
    found = [
        PythonLayout(prefix=m["prefix"], version=m["version"]) for name in names if (m := _PYTHON_BINARY.match(name))
    ]
    if not found:
        return None
    return max(found, key=lambda p: (tuple(int(x) for x in p.version.split(".")), p.prefix == "usr/local"))


def remap(name: str, *, arch: Arch, python: PythonLayout) -> str | None:
    """Where a file of the base image goes in the runtime, or None to leave it out."""
    if name == python.binary:
        return f"{IMAGE_ROOT}/bin/python3"
    lib_dirs = [f"lib/{arch.triplet}/", f"usr/lib/{arch.triplet}/"]
    if python.prefix == "usr/local":
        lib_dirs.append("usr/local/lib/")  # libpython3.X.so of the official images
    for lib_dir in lib_dirs:
        rest = name[len(lib_dir) :]
        if name.startswith(lib_dir) and "/" not in rest and ".so" in rest:
            return f"{IMAGE_ROOT}/lib/{rest}"
    if name.startswith(python.stdlib):
        rest = name[len(python.stdlib) :]
        if not rest or rest.startswith("config-") or "/test/" in rest:
            return None
        if any(rest.startswith(s) or f"/{s}" in rest for s in _STDLIB_SKIP):
            return None
        # The base's own bytecode for this interpreter (kept only if hash-based: see _usable_bytecode).
        if "__pycache__/" in rest and not rest.endswith(f".cpython-{python.version.replace('.', '')}.pyc"):
            return None
        return f"{IMAGE_ROOT}/lib/python{python.version}/{rest}"
    return None


@dataclass(frozen=True)
class _Member:
    kind: str  # "file" | "symlink"
    data: bytes = b""
    mode: int = 0o644
    target: str = ""


_KEPT_PREFIXES = ("lib/", "usr/lib/", "usr/local/lib/", "usr/bin/python3", "usr/local/bin/python3")


def _normal(name: str) -> str:
    return name.removeprefix("./").lstrip("/").rstrip("/")


def base_files(layers: Sequence[bytes]) -> dict[str, _Member]:
    """The files and symlinks a runtime may take from a base, with the layers' whiteouts applied."""
    files: dict[str, _Member] = {}

    def remove_under(path: str) -> None:
        for key in [k for k in files if k == path or k.startswith(f"{path}/")]:
            del files[key]

    for layer in layers:
        with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
            for member in tar:
                name = _normal(member.name)
                folder, _, base = name.rpartition("/")
                if base == ".wh..wh..opq":
                    for key in [k for k in files if k.startswith(f"{folder}/")]:
                        del files[key]
                    continue
                if base.startswith(".wh."):
                    remove_under(f"{folder}/{base[4:]}" if folder else base[4:])
                    continue
                if not name.startswith(_KEPT_PREFIXES) or member.isdir():
                    continue
                if member.issym():
                    files[name] = _Member("symlink", target=member.linkname, mode=0o777)
                elif member.isfile() or member.islnk():
                    f = tar.extractfile(member)
                    if f is not None:
                        files[name] = _Member("file", data=f.read(), mode=member.mode & 0o777)
    return files


def resolve(files: Mapping[str, _Member], name: str) -> str | None:
    """``name`` with its symlinks followed inside the base (None when it leads nowhere)."""
    for _ in range(16):
        member = files.get(name)
        if member is None:
            return None
        if member.kind == "file":
            return name
        target = member.target
        joined = target.lstrip("/") if target.startswith("/") else f"{PurePosixPath(name).parent}/{target}"
        parts: list[str] = []
        for part in joined.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        name = "/".join(parts)
    return None


def elf_machine(data: bytes) -> int | None:
    """The ``e_machine`` of an ELF file's header, or None when it is not ELF."""
    if len(data) < 20 or data[:4] != b"\x7fELF":
        return None
    return int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")


def runtime_entries_from(files: Mapping[str, _Member], *, arch: Arch, what: str) -> tuple[list[FileEntry], str]:
    """The runtime's entries (and its Python version) from a base's files; refusals say what to change."""
    python = find_python(files)
    if python is None:
        raise AgentImageError(
            f"{what} has no Python 3 at /usr/bin/python3.X or /usr/local/bin/python3.X: "
            "set agentBase to a Python image (a slim or distroless Python)"
        )
    if tuple(int(x) for x in python.version.split(".")) < MIN_PYTHON:
        raise AgentImageError(
            f"{what} has Python {python.version}; the agent needs {'.'.join(map(str, MIN_PYTHON))} or newer: "
            "set agentBase to a newer Python image"
        )
    found = (resolve(files, f"{d}/{arch.loader}") for d in (f"lib/{arch.triplet}", f"usr/lib/{arch.triplet}"))
    loader = next((name for name in found if name is not None), None)
    if loader is None:
        raise AgentImageError(
            f"{what} has no {arch.loader} in /lib/{arch.triplet}: it is not a glibc image for {arch.name}; "
            "set agentBase to a Debian-based Python image that has linux/" + arch.name
        )
    machines = {
        "the loader": elf_machine(files[loader].data),
        "the interpreter": elf_machine(files[resolve(files, python.binary) or python.binary].data),
    }
    for part, machine in machines.items():
        if machine != arch.e_machine:
            raise AgentImageError(
                f"{what}: {part} is not {arch.name} code (ELF machine {machine}, want {arch.e_machine}); "
                f"set agentBase to an image that has linux/{arch.name}"
            )
    entries: dict[str, FileEntry] = {}
    for name, member in files.items():
        target = remap(name, arch=arch, python=python)
        if target is None:
            continue
        real = resolve(files, name) if name in (python.binary, loader) else None
        if member.kind == "symlink" and real is None:
            # Libraries link to siblings; the flattened lib/ keeps their basenames valid.
            link = PurePosixPath(member.target).name if "/lib/" in target else member.target
            entries[target] = FileEntry.symlink(target, link)
        else:
            chosen = files[real] if real is not None else member
            entries[target] = FileEntry(path=target, data=chosen.data, mode=chosen.mode)
    link = f"{IMAGE_ROOT}/lib/{LOADER}"
    entries[link] = FileEntry.symlink(link, arch.loader)
    return [e for e in entries.values() if _usable_bytecode(e)], python.version


def _usable_bytecode(entry: FileEntry) -> bool:
    """Anything but a .pyc a read-only layer with mtime 0 cannot serve: only unchecked-hash ones (PEP 552) stay."""
    if not entry.path.endswith(".pyc") or entry.kind != "file":
        return True
    return len(entry.data) >= 16 and int.from_bytes(entry.data[4:8], "little") == 1


def runtime_entries(
    python_archive: Path, *, arch: str = "amd64", what: str | None = None
) -> tuple[list[FileEntry], str]:
    """The runtime's entries from a docker-save archive of a Python base image, for ``arch``."""
    base = read_archive(python_archive)
    label = what or python_archive.name
    if base.architecture != arch:
        raise AgentImageError(
            f"{label} is a linux/{base.architecture} image, the nodes need linux/{arch}: "
            f"set agentBase to an image that has linux/{arch}"
        )
    return runtime_entries_from(base_files(base.layers), arch=ARCHES[arch], what=label)


def agent_entries(package_root: Path, *, version: str = "3.11") -> list[FileEntry]:
    """innerloop/__init__.py, the agent, protocol and router packages, and the router's HTTP/2 libraries."""
    lib = f"{IMAGE_ROOT}/lib/python{version}"
    dest = f"{lib}/innerloop"
    entries = [FileEntry(path=f"{dest}/__init__.py", data=(package_root / "__init__.py").read_bytes())]
    for pkg in AGENT_PACKAGES:
        for src in sorted((package_root / pkg).rglob("*.py")):
            rel = src.relative_to(package_root).as_posix()
            entries.append(FileEntry(path=f"{dest}/{rel}", data=src.read_bytes()))
    for name in ROUTER_LIBRARIES:
        root = library_root(name)
        for src in sorted(root.rglob("*.py")):
            rel = src.relative_to(root.parent).as_posix()
            entries.append(FileEntry(path=f"{lib}/{rel}", data=src.read_bytes()))
    return entries


def library_root(name: str) -> Path:
    """The installed package directory of ``name`` (a pure-Python library the router imports)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise AgentImageError(
            f"the router needs the {name} package and this installation has none: reinstall innerloop "
            f"(pip install innerloop) so its dependencies come along"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _with_parents(entries: list[FileEntry]) -> list[FileEntry]:
    dirs: set[str] = set()
    for e in entries:
        for parent in PurePosixPath(e.path).parents:
            if str(parent) != "/":
                dirs.add(str(parent))
    return [*entries, *(FileEntry.directory(d) for d in sorted(dirs))]


def _compiled(entries: list[FileEntry], version: str) -> list[FileEntry]:
    """With an unchecked-hash .pyc for each .py the base has none for, when this Python writes that
    version's bytecode (else as they are: the interpreter compiles in memory)."""
    if version != f"{sys.version_info.major}.{sys.version_info.minor}":
        return entries
    tag = f"cpython-{version.replace('.', '')}"
    have = {e.path for e in entries if e.path.endswith(f".{tag}.pyc")}

    def missing(entry: FileEntry) -> bool:
        path = PurePosixPath(entry.path)
        return str(path.parent / "__pycache__" / f"{path.stem}.{tag}.pyc") not in have

    lacking = [e for e in entries if e.kind == "file" and e.path.endswith(".py") and missing(e)]
    return [*entries, *(c for c in with_bytecode(lacking) if c.path.endswith(".pyc"))]


def _source_key(python_archive: Path, arch: str, sources: Sequence[FileEntry]) -> str:
    """What the image is made of, hashed cheaply: the base, the architecture, the agent's sources (not bytecode)."""
    digest = hashlib.sha256(f"{LAYOUT_VERSION} {arch} {python_archive.name}".encode())
    digest.update(repr((runtime_command(IMAGE_ROOT), runtime_env(IMAGE_ROOT))).encode())
    for entry in sources:
        digest.update(entry.path.encode() + b"\0" + hashlib.sha256(entry.data).digest())
    return digest.hexdigest()[:24]


def build_agent_image(
    *,
    python_archive: Path,
    out_dir: Path,
    arch: str = "amd64",
    what: str | None = None,
    tools: ToolEntries | None = None,
) -> BuiltImage:
    """The agent image for ``arch`` on the Python of ``python_archive`` (a docker-save archive), cached.

    ``tools``: the debug tools a debugging service needs, as a third layer (none: the plain agent).
    """
    package_root = Path(__file__).resolve().parents[1]
    tool_files = list(tools(arch)) if tools is not None else []
    probe = [*agent_entries(package_root), *tool_files]
    # Rebuilding an unchanged image costs ~1 s (bytecode, hashing the runtime layer):
    # a note per source hash says which tag those sources became.
    note = out_dir / f"agent-src-{_source_key(python_archive, arch, probe)}.tag"
    if note.exists():
        tag = note.read_text().strip()
        archive = out_dir / f"agent-{tag.rsplit(':', 1)[1]}.tar"
        if archive.exists():
            return BuiltImage(tag=tag, archive=archive)
    # The runtime layer depends only on the Python image and the architecture: made once.
    cached = out_dir / f"agent-runtime-v{LAYOUT_VERSION}-{arch}-{python_archive.stem}.tar"
    version_note = cached.with_suffix(".version")
    if not cached.exists() or not version_note.exists():
        entries, version = runtime_entries(python_archive, arch=arch, what=what)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(layer_from_entries(_with_parents(_compiled(entries, version))))
        tmp.replace(cached)
        version_note.write_text(version)
    version = version_note.read_text().strip()
    runtime = cached.read_bytes()
    agent = layer_from_entries(_with_parents(_compiled(agent_entries(package_root, version=version), version)))
    config = ImageConfig(
        entrypoint=runtime_command(IMAGE_ROOT),
        env=runtime_env(IMAGE_ROOT),
        user="65532",
        labels={"org.opencontainers.image.title": "innerloop-agent"},
    )
    layers = [runtime, agent]
    if tool_files:
        layers.append(layer_from_entries(_with_parents(tool_files)))
    tag = f"innerloop.local/innerloop-agent:{image_id(layers=layers, config=config, architecture=arch)[:12]}"
    archive = out_dir / f"agent-{tag.rsplit(':', 1)[1]}.tar"
    if not archive.exists():
        write_archive(archive, tag=tag, layers=layers, config=config, architecture=arch)
    tmp_note = note.with_suffix(f".{os.getpid()}.tmp")
    tmp_note.write_text(tag)
    tmp_note.replace(note)
    return BuiltImage(tag=tag, archive=archive)


def index_image(images: Sequence[BuiltImage], *, out_dir: Path) -> BuiltImage:
    """One multi-architecture image (an OCI layout holding an index) over per-architecture agent images."""
    key = hashlib.sha256(" ".join(sorted(i.tag for i in images)).encode()).hexdigest()[:12]
    layout = out_dir / f"agent-index-{key}"
    if not (layout / "index.json").exists():
        write_index_layout(layout, ref=key, archives=[i.archive for i in images], gzip_cache=out_dir / "gzip")
    return BuiltImage(tag=f"innerloop.local/innerloop-agent:{key}", archive=layout)


# ---- the I/O edge ---------------------------------------------------------------------------------


def build_agent(
    plan: AgentPlan,
    *,
    paths: ClusterPaths,
    report: Report,
    bundled_python: Callable[[], Path] | None = None,
    skopeo: str = "skopeo",
    tools: ToolEntries | None = None,
) -> BuiltImage:
    """The agent image ``plan`` asks for: on the bundled Python, or on ``plan.base`` fetched per architecture."""
    out_dir = paths.images
    if plan.base is None:
        python = bundled_python or (lambda: ClusterImages(paths=paths, report=report).python().archive)
        return build_agent_image(python_archive=python(), out_dir=out_dir, arch="amd64", tools=tools)
    if shutil.which(skopeo) is None:
        raise AgentImageError(
            f"building the agent from {plan.base} needs skopeo to fetch it: "
            "install skopeo (apt install skopeo / brew install skopeo), or set agentImage to a pre-built agent image"
        )
    bases = BaseImages(bundled={}, cache=paths.images / "fetched", skopeo=skopeo)
    images = []
    for arch in plan.architectures:
        try:
            archive = bases.resolve(plan.base, platform=f"linux/{arch}", report=report, where="agentBase")
        except BuildError as err:
            raise AgentImageError(
                f"the agent's base: {err}; set agentBase in innerloop.yaml to a Python image this machine can pull, "
                "or agentImage to a pre-built agent image"
            ) from None
        images.append(
            build_agent_image(python_archive=archive, out_dir=out_dir, arch=arch, what=plan.base, tools=tools)
        )
    return images[0] if len(images) == 1 else index_image(images, out_dir=out_dir)
