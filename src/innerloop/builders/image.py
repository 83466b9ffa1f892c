"""The built-in builder: a base image's layers plus one layer with the COPY'd files, daemonless.

No container runtime, no daemon, no root: the Dockerfile (the subset that
:mod:`innerloop.builders.dockerfile` accepts) says which files of the
context go where and with which settings; the layer is written
deterministically, so the same inputs give the same bytes. It is exact or it
refuses (:class:`Unsupported`), and it honours what Docker honours: the
``.dockerignore`` (through :mod:`innerloop.builders.context`), ``COPY
--chown`` (numbers, or names looked up in the base's ``/etc/passwd`` and
``/etc/group``) and ``--chmod``, a file copied onto a folder the base
already has, and folders of the base are left as the base has them (a
parent created by the layer would otherwise reset the base's owner).

The tag is ``<repository>:<input hash>`` like every builder's
(:func:`innerloop.builders.context.planned_image`); the base's identity is
part of the hash (a bundled base's archive name carries its content hash).
"""

from __future__ import annotations

import glob
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from innerloop.builders.bases import BaseSource
from innerloop.builders.context import context_scope, planned_image
from innerloop.builders.dockerfile import DEFAULT_PLATFORM, Copy, DockerfileError, Recipe, Unsupported, parse
from innerloop.builders.request import BuildRequest, Report
from innerloop.oci.archive import (
    BuiltImage,
    FileEntry,
    ImageConfig,
    layer_from_entries,
    write_archive,
)
from innerloop.sync.ignore import PathFilter

BaseResolver = Callable[[str], Path]
_GLOB = frozenset("*?[")


SCRATCH = "scratch"


@dataclass(frozen=True, kw_only=True)
class _Base:
    layers: list[bytes]
    config: dict[str, object]
    architecture: str = "amd64"
    os: str = "linux"


def read_config(archive: Path) -> dict[str, object]:
    """The image config of a docker-archive (what ``docker inspect`` shows), without reading its layers."""
    with tarfile.open(archive) as tar:
        manifest = json.loads(_member(tar, archive, "manifest.json"))[0]
        config = json.loads(_member(tar, archive, manifest["Config"]))
    assert isinstance(config, dict)
    return config


def _member(tar: tarfile.TarFile, archive: Path, name: str) -> bytes:
    f = tar.extractfile(name)
    if f is None:
        raise DockerfileError(f"{archive}: {name} missing")
    return f.read()


def read_archive(archive: Path) -> _Base:
    with tarfile.open(archive) as tar:
        manifest = json.loads(_member(tar, archive, "manifest.json"))[0]
        config = json.loads(_member(tar, archive, manifest["Config"]))
        layers = [_member(tar, archive, name) for name in manifest["Layers"]]
    runtime = config.get("config", {}) or {}
    assert isinstance(runtime, dict)
    return _Base(
        layers=layers,
        config=runtime,
        architecture=str(config.get("architecture", "amd64")),
        os=str(config.get("os", "linux")),
    )


@dataclass(kw_only=True)
class BaseFiles:
    """What the layer must know of the base's file system: its folders and its users and groups."""

    folders: set[str] = field(default_factory=set)
    passwd: str = ""
    group: str = ""

    @classmethod
    def of(cls, layers: list[bytes]) -> BaseFiles:
        found = cls()
        for layer in layers:
            with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
                for member in tar:
                    name = "/" + member.name.lstrip("./").rstrip("/")
                    if member.isdir():
                        found.folders.add(name)
                    elif name in ("/etc/passwd", "/etc/group") and member.isreg():
                        data = tar.extractfile(member)
                        text = data.read().decode(errors="replace") if data else ""
                        if name == "/etc/passwd":
                            found.passwd = text
                        else:
                            found.group = text
        return found

    def owner(self, chown: str, *, where: str) -> tuple[int, int]:
        """``--chown=user[:group]`` as numbers; a user alone also gives its group, as Docker does."""
        user, _, group = chown.partition(":")
        uid, primary = self._lookup(self.passwd, user, what="user", where=where)
        if group:
            gid, _ = self._lookup(self.group, group, what="group", where=where)
        else:
            gid = primary if not user.isdigit() else uid
        return uid, gid

    @staticmethod
    def _lookup(table: str, name: str, *, what: str, where: str) -> tuple[int, int]:
        if name.isdigit():
            return int(name), int(name)
        for line in table.splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
                primary = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else int(fields[2])
                return int(fields[2]), primary
        source = "/etc/passwd" if what == "user" else "/etc/group"
        raise DockerfileError(f"{where}: COPY --chown: the base image's {source} has no {what} {name!r}")


def _parents(path: str) -> list[str]:
    p = PurePosixPath(path)
    return [str(a) for a in reversed(p.parents) if str(a) != "/"]


def _matches(context: Path, source: str, *, where: str) -> list[Path]:
    """The context paths a COPY source names: itself, or what its wildcards match (``*`` stays in one folder)."""
    if not _GLOB & set(source):
        return [context / source]
    found = sorted(glob.glob(source, root_dir=context, include_hidden=True))
    if not found:
        raise DockerfileError(f"{where}: COPY source {source} matches no file in {context}")
    return [context / f for f in found]


def copy_entries(
    context: Path,
    recipe: Recipe,
    *,
    scope: PathFilter | None = None,
    base: BaseFiles | None = None,
    filename: str = "Dockerfile",
) -> list[FileEntry]:
    """The files that the recipe's COPY lines put into the image (the .dockerignore's ``scope`` applied)."""
    base = base or BaseFiles()
    root = context.resolve()
    entries: dict[str, FileEntry] = {}
    for copy in recipe.copies:
        where = f"{filename}:{copy.line}"
        owner = base.owner(copy.chown, where=where) if copy.chown else (0, 0)
        sources = [m for s in copy.sources for m in _matches(context, s, where=where)]
        for source in sources:
            _copy_one(
                source,
                copy,
                root=root,
                scope=scope,
                base=base,
                owner=owner,
                entries=entries,
                where=where,
                many=len(sources) > 1,
                workdir=recipe.workdir,
            )
    if recipe.workdir:
        for parent in [*_parents(recipe.workdir + "/x")]:
            if parent not in base.folders:
                entries.setdefault(parent, FileEntry.directory(parent))
    return list(entries.values())


def _copy_one(
    source: Path,
    copy: Copy,
    *,
    root: Path,
    scope: PathFilter | None,
    base: BaseFiles,
    owner: tuple[int, int],
    entries: dict[str, FileEntry],
    where: str,
    many: bool,
    workdir: str,
) -> None:
    src = source.resolve()
    if not src.is_relative_to(root):
        raise DockerfileError(f"{where}: COPY source {source.name} is outside the build context")
    relative = src.relative_to(root).as_posix() if src != root else ""
    shown = relative or "."
    excluded = scope is not None and bool(relative) and scope.ignores(relative, is_dir=src.is_dir())
    if not src.exists() or excluded:
        why = " (the .dockerignore excludes it)" if src.exists() else ""
        raise DockerfileError(f"{where}: COPY source {shown} not found in the build context {root}{why}")
    uid, gid = owner
    if src.is_dir():
        target_dir = str(PurePosixPath(copy.dest))
        if target_dir not in base.folders or copy.chown:
            entries[target_dir] = FileEntry.directory(target_dir, mode=copy.chmod or 0o755, uid=uid, gid=gid)
        for entry in _directory_entries(src, relative, prefix=target_dir, scope=scope, copy=copy, owner=owner):
            entries[entry.path] = entry
    else:
        dest = PurePosixPath(copy.dest)  # normalized: "/app/." is "/app"
        into_dir = (
            copy.dest.endswith(("/", "/."))
            or many
            or str(dest) in base.folders
            or (bool(workdir) and dest == PurePosixPath(workdir))
        )
        if copy.add and tarfile.is_tarfile(src):
            raise Unsupported(where, f"ADD of the archive {shown} (ADD extracts it; COPY copies it as a file)")
        target = str(dest / src.name) if into_dir else str(dest)
        mode = copy.chmod if copy.chmod is not None else stat.S_IMODE(src.stat().st_mode)
        entries[target] = FileEntry(path=target, data=src.read_bytes(), mode=mode, uid=uid, gid=gid)
        target_dir = str(PurePosixPath(target).parent)
    for parent in _parents(target_dir + "/x"):
        if parent not in base.folders:
            entries.setdefault(parent, FileEntry.directory(parent))


def _directory_entries(
    folder: Path, relative: str, *, prefix: str, scope: PathFilter | None, copy: Copy, owner: tuple[int, int]
) -> list[FileEntry]:
    """The files, folders and symlinks below ``folder`` that the build context sends, rooted at ``prefix``."""
    uid, gid = owner
    found: list[FileEntry] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        rel_here = here.relative_to(folder).as_posix()
        kept = []
        for name in sorted(dirnames):
            in_context = "/".join(p for p in (relative, rel_here if rel_here != "." else "", name) if p)
            if scope is None or not scope.ignores(in_context, is_dir=True):
                kept.append(name)
        dirnames[:] = kept
        for name in sorted([*dirnames, *filenames]):
            full = here / name
            rel = full.relative_to(folder).as_posix()
            in_context = f"{relative}/{rel}" if relative else rel
            path = str(PurePosixPath(prefix) / rel)
            st = full.lstat()
            perm = copy.chmod if copy.chmod is not None else stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                found.append(FileEntry.directory(path, mode=perm, uid=uid, gid=gid))
                continue
            if scope is not None and scope.ignores(in_context):
                continue
            if stat.S_ISLNK(st.st_mode):
                found.append(
                    FileEntry(path=path, kind="symlink", target=os.readlink(full), mode=0o777, uid=uid, gid=gid)
                )
            elif stat.S_ISREG(st.st_mode):
                found.append(FileEntry(path=path, data=full.read_bytes(), mode=perm, uid=uid, gid=gid))
    return found


def shown_path(path: Path) -> str:
    """A path as messages show it: relative to the current folder when it is below it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class BuiltinBuilder:
    """innerloop's own builder: exact for the Dockerfiles it accepts, refusing the others."""

    name = "builtin"

    def __init__(self, *, bases: BaseSource) -> None:
        self._bases = bases

    def recipe(self, request: BuildRequest) -> Recipe:
        """The parsed Dockerfile; :class:`Unsupported` if this builder cannot build it exactly."""
        if request.platform not in (None, DEFAULT_PLATFORM):
            raise Unsupported(
                shown_path(request.dockerfile), f"--platform {request.platform} (it writes {DEFAULT_PLATFORM})"
            )
        return parse(
            request.dockerfile.read_text(encoding="utf-8", errors="surrogateescape"),
            filename=shown_path(request.dockerfile),
            build_args=request.build_args,
            target=request.target,
            platform=request.platform,
        )

    def build(self, request: BuildRequest, report: Report) -> BuiltImage:
        recipe = self.recipe(request)
        empty = recipe.base == SCRATCH  # Docker's empty base: no layers, no config, nothing to fetch
        identity = SCRATCH if empty else self._bases.identity(recipe.base)
        planned = planned_image(self.name, request, extra=[identity])
        if planned.archive.exists():
            return planned
        where = f"{shown_path(request.dockerfile)}:{recipe.base_line}"
        base = (
            _Base(layers=[], config={}, os=DEFAULT_PLATFORM.split("/")[0], architecture=DEFAULT_PLATFORM.split("/")[1])
            if empty
            else read_archive(self._bases.resolve(recipe.base, platform=request.platform, report=report, where=where))
        )
        if f"{base.os}/{base.architecture}" != DEFAULT_PLATFORM:
            raise Unsupported(where, f"a {base.os}/{base.architecture} base (it writes {DEFAULT_PLATFORM})")
        files = BaseFiles.of(base.layers)
        entries = copy_entries(
            request.context,
            recipe,
            scope=context_scope(request.context),
            base=files,
            filename=shown_path(request.dockerfile),
        )
        write_archive(
            planned.archive,
            tag=planned.tag,
            layers=[*base.layers, layer_from_entries(entries)],
            config=_config(recipe, base),
        )
        return planned


def _config(recipe: Recipe, base: _Base) -> ImageConfig:
    def inherited(key: str) -> list[str]:
        value = base.config.get(key)
        return [str(v) for v in value] if isinstance(value, list) else []

    env = dict(e.split("=", 1) for e in inherited("Env"))
    env.update(recipe.env)
    labels = base.config.get("Labels")
    return ImageConfig(
        entrypoint=recipe.entrypoint if recipe.entrypoint is not None else inherited("Entrypoint"),
        cmd=recipe.cmd if recipe.cmd is not None else ([] if recipe.entrypoint is not None else inherited("Cmd")),
        env=env,
        user=recipe.user or str(base.config.get("User", "") or ""),
        workdir=recipe.workdir or str(base.config.get("WorkingDir", "") or ""),
        labels={**(labels if isinstance(labels, dict) else {}), **recipe.labels},
    )


class _Resolver:
    """A plain ``ref -> archive`` function as a :class:`BaseSource` (the example app's bundled bases)."""

    def __init__(self, resolve: BaseResolver) -> None:
        self._resolve = resolve
        self._seen: dict[str, Path] = {}

    def identity(self, ref: str) -> str:
        return f"{ref}={self.resolve(ref, platform=None, report=lambda _line: None, where='').name}"

    def resolve(self, ref: str, *, platform: str | None, report: Report, where: str) -> Path:
        if ref not in self._seen:
            self._seen[ref] = self._resolve(ref)
        return self._seen[ref]


def build_image(
    *, context: Path, dockerfile: Path, repository: str, resolve_base: BaseResolver, out_dir: Path
) -> BuiltImage:
    """Build with the built-in builder and a plain base resolver (no build args, target or platform)."""
    request = BuildRequest(context=context, dockerfile=dockerfile, repository=repository, out_dir=out_dir)
    return BuiltinBuilder(bases=_Resolver(resolve_base)).build(request, report=lambda _line: None)
