"""Build an app image from a Dockerfile (subset) and a context, daemonless.

The image is the base image's layers plus one layer with the COPY'd files.
Its tag is ``<repository>:<first 12 hex of the image id>``: a content hash, so
an unchanged source gives the same tag and is never rebuilt or reloaded.
"""

from __future__ import annotations

import json
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from innerloop.builders.dockerfile import DockerfileError, Recipe, parse
from innerloop.oci.archive import (
    BuiltImage,
    FileEntry,
    ImageConfig,
    entries_from_directory,
    image_id,
    layer_from_entries,
    write_archive,
)

BaseResolver = Callable[[str], Path]


@dataclass(frozen=True, kw_only=True)
class _Base:
    layers: list[bytes]
    config: dict[str, object]


def read_archive(archive: Path) -> _Base:
    with tarfile.open(archive) as tar:

        def member(name: str) -> bytes:
            f = tar.extractfile(name)
            if f is None:
                raise DockerfileError(f"{archive}: {name} missing")
            return f.read()

        manifest = json.loads(member("manifest.json"))[0]
        config = json.loads(member(manifest["Config"]))
        layers = [member(name) for name in manifest["Layers"]]
    runtime = config.get("config", {})
    assert isinstance(runtime, dict)
    return _Base(layers=layers, config=runtime)


def _parents(path: str) -> list[str]:
    p = PurePosixPath(path)
    return [str(a) for a in reversed(p.parents) if str(a) != "/"]


def copy_entries(context: Path, recipe: Recipe, *, owner: tuple[int, int] = (0, 0)) -> list[FileEntry]:
    """The files that the recipe's COPY lines put into the image."""
    entries: dict[str, FileEntry] = {}
    for copy in recipe.copies:
        for source in copy.sources:
            src = (context / source).resolve()
            if not src.is_relative_to(context.resolve()):
                raise DockerfileError(f"Dockerfile:{copy.line}: COPY source {source} is outside the build context")
            if not src.exists():
                raise DockerfileError(f"Dockerfile:{copy.line}: COPY source {source} not found in {context}")
            if src.is_dir():
                for e in entries_from_directory(src, prefix=copy.dest):
                    entries[e.path] = e
                target_dir = copy.dest
            else:
                dest = PurePosixPath(copy.dest)  # normalized: "/app/." is "/app"
                into_dir = (
                    copy.dest.endswith(("/", "/."))
                    or len(copy.sources) > 1
                    or (bool(recipe.workdir) and dest == PurePosixPath(recipe.workdir))
                )
                target = str(dest / src.name) if into_dir else str(dest)
                mode = stat.S_IMODE(src.stat().st_mode)
                entries[target] = FileEntry(path=target, data=src.read_bytes(), mode=mode)
                target_dir = str(PurePosixPath(target).parent)
            for parent in [*_parents(target_dir + "/x")]:
                entries.setdefault(parent, FileEntry.directory(parent))
    if recipe.workdir:
        for parent in [*_parents(recipe.workdir + "/x")]:
            entries.setdefault(parent, FileEntry.directory(parent))
    return list(entries.values())


def build_image(
    *, context: Path, dockerfile: Path, repository: str, resolve_base: BaseResolver, out_dir: Path
) -> BuiltImage:
    recipe = parse(dockerfile.read_text(), filename=str(dockerfile))
    base = read_archive(resolve_base(recipe.base))
    layer = layer_from_entries(copy_entries(context, recipe))

    def inherited(key: str) -> list[str]:
        value = base.config.get(key)
        return [str(v) for v in value] if isinstance(value, list) else []

    env = dict(e.split("=", 1) for e in inherited("Env"))
    env.update(recipe.env)
    config = ImageConfig(
        entrypoint=recipe.entrypoint if recipe.entrypoint is not None else inherited("Entrypoint"),
        cmd=recipe.cmd if recipe.cmd is not None else ([] if recipe.entrypoint is not None else inherited("Cmd")),
        env=env,
        user=recipe.user or str(base.config.get("User", "")),
        workdir=recipe.workdir or str(base.config.get("WorkingDir", "")),
        labels=recipe.labels,
    )
    layers = [*base.layers, layer]
    tag = f"{repository}:{image_id(layers=layers, config=config)[:12]}"
    archive = out_dir / f"{repository.replace('/', '_').replace(':', '_')}-{tag.rsplit(':', 1)[1]}.tar"
    if not archive.exists():
        write_archive(archive, tag=tag, layers=layers, config=config)
    return BuiltImage(tag=tag, archive=archive)
