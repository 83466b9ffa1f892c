"""Go under Delve: the service's binary launched as Delve's child, so no ``SYS_PTRACE`` is needed.

``dlv exec`` starts the program itself and traces its own child. Linux lets a
process trace a child of the same user without any capability (with Yama's
``ptrace_scope`` 1 a parent may trace its descendants; at 0 any process of
the same user), and containerd's default seccomp profile (the pod's
``RuntimeDefault``) allows ``ptrace`` on kernels 4.8 and newer. So the pod
keeps restricted Pod Security: non-root, every capability dropped, no
privilege escalation. Attaching to a running process (``dlv attach``) would
need ``CAP_SYS_PTRACE``, which restricted forbids: that is why Delve launches.

Delve is built static (``CGO_ENABLED=0``, so it runs on distroless static and
scratch images) at :data:`DELVE_VERSION` and cached: :mod:`innerloop.debug.delve`
finds it for a node's architecture, or builds it once with the machine's Go.
It listens headless on the pod's loopback, serving DAP and its JSON-RPC API
on one port (``--accept-multiclient``): editors attach with
``{"request": "attach", "mode": "remote"}`` through the CLI's port-forward.

Breakpoints bind only if the binary kept its DWARF (no ``-ldflags=-s -w``)
and the editor's file names are turned into the build's: the binary's own
line tables say where its sources were compiled (module-relative paths under
``-trimpath``, the build stage's folder otherwise), so
:func:`source_mappings` compares them with the local files to compute
Delve's ``substitutePath``. :func:`inspect_image` reads the program out of
the built image and does both checks before anything is deployed.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.dwarf.lineprogram import LineProgram
from elftools.elf.elffile import ELFFile

from innerloop.builders.image import read_config
from innerloop.debug.languages import LOOPBACK, TOOLS_ROOT, DebugError, DebugLaunch, register, workspace_path

DLV = f"{TOOLS_ROOT}/dlv/dlv"
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GO_VERSION = re.compile(r"\bgo(\d+\.\d+(?:\.\d+)?)")


def go_launch(original: list[str], *, port: int, wait: bool, mappings: list[tuple[str, str]]) -> DebugLaunch:
    """``original`` (the container's command: the binary and its arguments) as Delve's child.

    ``mappings``: (local folder relative to the project, the build's path for
    it) pairs, from :func:`source_mappings` (the sync rules' pairs are the
    right ones only if the binary was built from the synced folder in place).
    """
    flags = [
        "--headless",
        f"--listen={LOOPBACK}:{port}",
        "--accept-multiclient",  # the editor can detach and attach again; DAP and JSON-RPC on one port
        "--api-version=2",
        # The CLI's port-forward connects from the kubelet's side, not as the app's user: the port is on the
        # pod's loopback, so only what may port-forward to the pod (or share its network) reaches it.
        "--only-same-user=false",
        # Delve 1.27 supports Go 1.25 to 1.27; older binaries (Debian bookworm's Go 1.19) debug with a warning.
        "--check-go-version=false",
        *([] if wait else ["--continue"]),
    ]
    config: dict[str, object] = {
        "type": "go",
        "request": "attach",
        "mode": "remote",
        "debugAdapter": "dlv-dap",
        "host": LOOPBACK,
        "port": port,
        "substitutePath": substitute_path(mappings),
    }
    where = ", ".join(f"{local or '.'} -> {remote}" for local, remote in mappings) or "none"
    return DebugLaunch(
        command=[DLV, "exec", *flags, original[0], "--", *original[1:]],
        env={},
        port=port,
        tools=("dlv",),
        launch_json=config,
        note=(
            f"GoLand: Go Remote at {LOOPBACK}:{port}; dlv connect {LOOPBACK}:{port}; "
            f"other DAP clients: attach mode remote; substitute paths {where}"
        ),
        language="go",
    )


def substitute_path(mappings: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """Delve's ``substitutePath`` (VS Code's Go extension passes it on): local folder -> the build's path."""
    return [{"from": workspace_path(local), "to": remote} for local, remote in mappings]


def is_go(command: Sequence[str], files: Sequence[str]) -> bool:
    """``language: auto`` for a command no interpreter runs: a compiled binary built from a Go module."""
    del command
    return any(PurePosixPath(name).name == "go.mod" for name in files)


register("go", go_launch, detector=is_go)


# ---- what the binary says -------------------------------------------------------------------------


@dataclass(frozen=True)
class GoBinary:
    """What Delve will find in a program: whether it has DWARF, the Go that built it, its sources' paths."""

    debug_info: bool
    producer: str = ""  # the main package's DW_AT_producer: "Go cmd/compile go1.26.8; regabi"
    main_files: tuple[str, ...] = ()  # every file in the main package's line table, as the binary names it

    @property
    def go_version(self) -> str | None:
        found = _GO_VERSION.search(self.producer)
        return found.group(1) if found else None

    @property
    def optimized(self) -> bool:
        """Built without ``-gcflags=all=-N -l``: some local variables read as unavailable."""
        return "-N" not in self.producer.split(";", 1)[-1].split()


def read_go_binary(stream: BinaryIO) -> GoBinary | None:
    """The Go facts of an ELF program (pyelftools reads it); None if it is not ELF or not built by Go."""
    try:
        elf = ELFFile(stream)
        if elf.get_section_by_name(".go.buildinfo") is None and elf.get_section_by_name(".gopclntab") is None:
            return None
        if not elf.has_dwarf_info():
            return GoBinary(debug_info=False)
        dwarf = elf.get_dwarf_info()
        for cu in dwarf.iter_CUs():
            top = cu.get_top_DIE()
            name = top.attributes.get("DW_AT_name")
            if name is None or name.value != b"main":
                continue
            producer = top.attributes.get("DW_AT_producer")
            program = dwarf.line_program_for_CU(cu)
            files = tuple(_line_table_files(program)) if program is not None else ()
            return GoBinary(debug_info=True, producer=producer.value.decode() if producer else "", main_files=files)
    except ELFError:
        return None
    return GoBinary(debug_info=True)


def _line_table_files(program: LineProgram) -> Iterator[str]:
    header = program.header
    # DWARF 5 (Go 1.25+) counts directories from 0 (the compile dir); DWARF 2-4 from 1.
    version: int = header.version
    dirs = [d.decode() for d in header.include_directory]
    for entry in header.file_entry:
        name = entry.name.decode()
        index = entry.dir_index if version >= 5 else entry.dir_index - 1
        folder = dirs[index] if 0 <= index < len(dirs) else ""
        if name.startswith("/") or folder in ("", "."):
            yield name
        else:
            yield f"{folder.rstrip('/')}/{name}"


def source_mappings(binary: GoBinary, local_files: Iterable[str], *, local_root: str) -> list[tuple[str, str]]:
    """The (local folder, build path) pair that makes the binary's sources local files.

    ``local_files``: the ``.go`` files under ``local_root`` (relative to it);
    ``local_root``: that folder relative to the project. The build path is
    the prefix that most of the main package's files share with a local
    file's relative name (``example.com/inventory/main.go`` and ``main.go``:
    ``example.com/inventory``; ``/src/cmd/api/main.go`` and
    ``cmd/api/main.go``: ``/src``). Nothing in common: no mapping.
    """
    locals_ = {PurePosixPath(f).as_posix() for f in local_files if f.endswith(".go")}
    votes: dict[str, tuple[int, int]] = {}  # build root -> (files matched, longest relative name)
    for remote in binary.main_files:
        for rel in locals_:
            if remote.endswith("/" + rel):
                root = remote[: -len(rel) - 1]
                count, longest = votes.get(root, (0, 0))
                votes[root] = (count + 1, max(longest, len(rel)))
            elif remote == rel:
                count, longest = votes.get("", (0, 0))
                votes[""] = (count + 1, max(longest, len(rel)))
    if not votes:
        return []
    root = max(votes, key=lambda r: votes[r])
    return [(local_root, root)] if root else []


def debug_problem(binary: GoBinary, program: str) -> str | None:
    """One line when Delve cannot debug the program: what is wrong and what to change; None when it can."""
    if not binary.debug_info:
        return (
            f"the binary {program} has no debug info (built with -ldflags='-s -w'): drop -s -w from its "
            "go build (e.g. a build argument that is empty for debugging), and add -gcflags='all=-N -l' "
            "to read every local variable"
        )
    return None


# ---- the program inside the built image -----------------------------------------------------------


def program_path(original: Sequence[str], *, env: Sequence[str], workdir: str) -> list[str]:
    """Where the image's file system may hold ``original[0]``: as given, under the workdir, or on PATH."""
    program = original[0]
    if program.startswith("/"):
        return [program]
    if "/" in program:
        return [str(PurePosixPath(workdir or "/") / program)]
    path = next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")), _DEFAULT_PATH)
    return [str(PurePosixPath(folder) / program) for folder in path.split(":") if folder.startswith("/")]


def read_image_file(archive: Path, path: str, *, max_links: int = 8) -> bytes | None:
    """The file at ``path`` in a docker-archive image (the top layer that has it wins; symlinks followed)."""
    with tarfile.open(archive) as outer:
        manifest = json.loads(_member(outer, "manifest.json"))[0]
        layers = [_member(outer, name) for name in reversed(manifest["Layers"])]
    wanted = PurePosixPath(path)
    for _ in range(max_links):
        entry = _find_in_layers(layers, wanted)
        if entry is None:
            return None
        data, link = entry
        if link is None:
            return data
        wanted = (
            PurePosixPath(os.path.normpath(wanted.parent / link)) if not link.startswith("/") else PurePosixPath(link)
        )
    return None


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    if f is None:
        raise DebugError(f"the image archive {tar.name!r} has no {name}")
    return f.read()


def _find_in_layers(layers: Sequence[bytes], wanted: PurePosixPath) -> tuple[bytes, str | None] | None:
    key = wanted.as_posix().lstrip("/")
    whiteout = (wanted.parent / f".wh.{wanted.name}").as_posix().lstrip("/")
    for layer in layers:  # top layer first
        with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                name = name.strip("/")
                if name == whiteout:
                    return None
                if name != key:
                    continue
                if member.issym():
                    return b"", member.linkname
                if member.islnk():
                    return _find_in_layers([layer], PurePosixPath("/" + member.linkname.lstrip("./")))
                f = tar.extractfile(member)
                return (f.read() if f else b""), None
    return None


@dataclass(frozen=True)
class GoImage:
    """What :func:`inspect_image` found: the program's path in the image and how its sources map."""

    program: str
    binary: GoBinary
    mappings: list[tuple[str, str]]


def inspect_image(
    *,
    archive: Path,
    original: Sequence[str],
    project_root: Path,
    context: Path,
) -> GoImage | None:
    """Before deploying under Delve: the image's program, checked, and how its sources map to local files.

    ``original``: the command (the image's entrypoint and cmd); ``context``:
    the image's build context (its Go module), whose ``.go`` files are
    compared with the binary's. None when the image has no Go program there
    (a wrapper script, a command the manifest sets): nothing to check or
    map. Raises :class:`DebugError` with one line when the program is Go but
    cannot be debugged.
    """
    if not original:
        return None
    runtime = read_config(archive).get("config")
    config = runtime if isinstance(runtime, dict) else {}
    listed = config.get("Env")
    env = [str(e) for e in listed] if isinstance(listed, list) else []
    workdir = str(config.get("WorkingDir") or "/")
    for candidate in program_path(original, env=env, workdir=workdir):
        data = read_image_file(archive, candidate)
        if data is None:
            continue
        binary = read_go_binary(io.BytesIO(data))
        if binary is None:
            return None
        problem = debug_problem(binary, candidate)
        if problem is not None:
            raise DebugError(problem)
        local_files = [p.relative_to(context).as_posix() for p in sorted(context.rglob("*.go")) if p.is_file()]
        root = context.relative_to(project_root).as_posix() if context.is_relative_to(project_root) else str(context)
        return GoImage(program=candidate, binary=binary, mappings=source_mappings(binary, local_files, local_root=root))
    return None
