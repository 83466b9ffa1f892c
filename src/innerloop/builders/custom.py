"""``builder: custom``: the user's own command builds the image (Tilt's ``custom_build``, Skaffold's custom builder).

The command (an argv list from innerloop.yaml, run without a shell, in the
build context) gets:

- ``IMAGE``: the tag to produce, ``<repository>:<input hash>`` (Tilt's name
  for it, ``EXPECTED_REF``, too);
- ``BUILD_CONTEXT``: the context folder (absolute);
- ``IMAGE_ARCHIVE``: where it must write the image, as a docker-archive or an
  oci-archive tar;
- ``PLATFORM``: the requested platform, or empty;
- every build arg, by its name.

It must write the archive; one that wrote nothing fails with that said. A
docker-archive that carries another tag (or none) is retagged here (its
``manifest.json`` is rewritten; the layers are copied as they are), and an
oci-archive is turned into a docker-archive with ``skopeo copy``, so the
delivery code always gets the same kind of file. The command is part of the
input hash: changing it rebuilds. Whether it honours the ``.dockerignore`` is
up to the command; the hash does (a file it excludes never triggers a
rebuild).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from innerloop.builders.context import planned_image
from innerloop.builders.request import BuildError, BuildRequest, Report
from innerloop.oci.archive import BuiltImage


def custom_env(request: BuildRequest, *, tag: str, archive: Path, base: Mapping[str, str]) -> dict[str, str]:
    """The command's environment (pure): the machine's, the build args, then innerloop's names."""
    env = dict(base)
    env.update(request.build_args)
    env.update(
        {
            "IMAGE": tag,
            "EXPECTED_REF": tag,
            "BUILD_CONTEXT": str(request.context.absolute()),
            "IMAGE_ARCHIVE": str(archive),
            "PLATFORM": request.platform or "",
        }
    )
    return env


def archive_kind(path: Path) -> str:
    """``docker`` (manifest.json), ``oci`` (index.json + oci-layout), or ``unknown``."""
    try:
        with tarfile.open(path) as tar:
            names = {m.name.removeprefix("./") for m in tar.getmembers()}
    except (tarfile.TarError, OSError):
        return "unknown"
    if "manifest.json" in names:
        return "docker"
    if "index.json" in names and "oci-layout" in names:
        return "oci"
    return "unknown"


def retag_docker_archive(source: Path, dest: Path, *, tag: str) -> None:
    """Copy a one-image docker-archive to ``dest`` with ``RepoTags`` set to ``[tag]``."""
    with tarfile.open(source) as tar_in, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar_out:
        manifest_member = tar_in.getmember("manifest.json")
        handle = tar_in.extractfile(manifest_member)
        manifest = json.loads(handle.read() if handle else b"[]")
        if len(manifest) != 1:
            raise BuildError(f"{source}: the archive holds {len(manifest)} images; write exactly one")
        manifest[0]["RepoTags"] = [tag]
        for member in tar_in.getmembers():
            if member.name.removeprefix("./") in ("manifest.json", "repositories"):
                continue
            tar_out.addfile(member, tar_in.extractfile(member) if member.isreg() else None)
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar_out.addfile(info, io.BytesIO(data))


def _is_tagged(path: Path, tag: str) -> bool:
    with tarfile.open(path) as tar:
        handle = tar.extractfile("manifest.json")
        manifest = json.loads(handle.read() if handle else b"[]")
    return len(manifest) == 1 and manifest[0].get("RepoTags") == [tag]


class CustomBuilder:
    """Runs the user's command; the archive it writes becomes the image."""

    name = "custom"

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str] | None = None, skopeo: str = "skopeo") -> None:
        if not command:
            raise BuildError("image.custom.command is empty: give the command as a list, e.g. [./build.sh]")
        self.command = list(command)
        self._env = env
        self._skopeo = skopeo

    def build(self, request: BuildRequest, report: Report) -> BuiltImage:
        planned = planned_image(self.name, request, extra=self.command)
        if planned.archive.exists():
            return planned
        request.out_dir.mkdir(parents=True, exist_ok=True)
        written = planned.archive.with_suffix(f".{os.getpid()}.out.tar")
        converted = planned.archive.with_suffix(f".{os.getpid()}.tmp")
        written.unlink(missing_ok=True)
        env = custom_env(request, tag=planned.tag, archive=written, base=os.environ if self._env is None else self._env)
        shown = " ".join(self.command)
        started = time.monotonic()
        try:
            try:
                out = subprocess.run(
                    self.command, env=env, cwd=request.context, capture_output=True, text=True, check=False
                )
            except FileNotFoundError:
                raise BuildError(
                    f"image.custom.command: {self.command[0]} not found (run from {request.context}); "
                    "give a program on PATH or a path relative to the build context"
                ) from None
            except PermissionError:
                raise BuildError(f"image.custom.command: {self.command[0]} is not executable (chmod +x it)") from None
            if out.returncode != 0:
                detail = " | ".join([line for line in (out.stderr or out.stdout).splitlines() if line.strip()][-3:])
                raise BuildError(f"custom build `{shown}` exited with {out.returncode}: {detail or 'no output'}")
            if not written.exists() or written.stat().st_size == 0:
                raise BuildError(
                    f"custom build `{shown}` succeeded but wrote nothing at $IMAGE_ARCHIVE ({written}): "
                    "it must write the image there as a docker-archive or oci-archive tar "
                    "(e.g. `docker save -o $IMAGE_ARCHIVE $IMAGE`)"
                )
            self._normalize(written, converted, tag=planned.tag, shown=shown)
            converted.replace(planned.archive)
        finally:
            written.unlink(missing_ok=True)
            converted.unlink(missing_ok=True)
        report(f"built {planned.tag} with `{shown}` in {time.monotonic() - started:.1f} s")
        return planned

    def _normalize(self, written: Path, dest: Path, *, tag: str, shown: str) -> None:
        kind = archive_kind(written)
        if kind == "docker":
            if _is_tagged(written, tag):
                written.replace(dest)
            else:
                retag_docker_archive(written, dest, tag=tag)
            return
        if kind == "oci":
            if shutil.which(self._skopeo) is None:
                raise BuildError(
                    f"custom build `{shown}` wrote an oci-archive; turning it into a docker-archive needs skopeo: "
                    "install skopeo, or write a docker-archive"
                )
            out = subprocess.run(
                [self._skopeo, "copy", "--quiet", f"oci-archive:{written}", f"docker-archive:{dest}:{tag}"],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise BuildError(f"skopeo could not read the oci-archive `{shown}` wrote: {out.stderr.strip()}")
            return
        raise BuildError(
            f"custom build `{shown}` wrote {written.name}, which is neither a docker-archive nor an oci-archive tar"
        )
