"""Base images for the built-in builder: the bundled ones, or any registry's through skopeo.

The bundled bases (``innerloop.local/python:3.11``, ...) are archives the
cluster builds; a ``FROM`` naming anything else is fetched with ``skopeo copy
docker://<ref> docker-archive:<cache>``, so the built-in builder works with
whatever registry the user can pull from, with the user's own registry
configuration (``registries.conf``, ``auth.json`` / docker ``config.json``).
skopeo, not a hand-written registry client: credentials, mirrors, TLS and
insecure registries are its job.

Archives are cached by manifest digest (and platform): a tag that moves
brings a new archive, an unchanged one is fetched once. The last digest seen
for each reference is remembered, so a machine that is offline still builds
from the archive it has (and says so).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from innerloop.builders.dockerfile import DEFAULT_PLATFORM, Unsupported
from innerloop.builders.request import BuildError, Report


class BaseSource(Protocol):
    """Where the built-in builder gets the archive of a ``FROM`` image."""

    def identity(self, ref: str) -> str:
        """What names the base's content without fetching it (for the input hash)."""
        ...

    def resolve(self, ref: str, *, platform: str | None, report: Report, where: str) -> Path:
        """The archive of ``ref``; ``where`` (file:line of the FROM) is for a refusal."""
        ...


class BaseImages:
    """The bundled bases by name, then anything else through skopeo (cached by digest under ``cache``)."""

    def __init__(
        self,
        *,
        bundled: Mapping[str, Callable[[], Path]],
        cache: Path,
        skopeo: str = "skopeo",
    ) -> None:
        self._bundled = bundled
        self._cache = cache
        self._skopeo = skopeo
        self._resolved: dict[str, Path] = {}

    @property
    def bundled(self) -> list[str]:
        return sorted(self._bundled)

    def identity(self, ref: str) -> str:
        if ref in self._bundled:
            return f"{ref}={self._bundled_path(ref).name}"
        return ref  # as a real builder: the tag decides; a moved tag needs a changed input to rebuild

    def _bundled_path(self, ref: str) -> Path:
        if ref not in self._resolved:
            self._resolved[ref] = self._bundled[ref]()
        return self._resolved[ref]

    def resolve(self, ref: str, *, platform: str | None, report: Report, where: str) -> Path:
        if ref in self._bundled:
            return self._bundled_path(ref)
        if shutil.which(self._skopeo) is None:
            # Without skopeo the built-in builder cannot fetch it; a real builder pulls it itself.
            raise Unsupported(where, f"FROM {ref} (not bundled, and skopeo, which would fetch it, is not installed)")
        return self._fetch(ref, platform or DEFAULT_PLATFORM, report)

    # -- skopeo --------------------------------------------------------------

    def _platform_flags(self, platform: str) -> list[str]:
        parts = platform.split("/")
        flags = []
        # buildah and podman read CONTAINERS_REGISTRIES_CONF; skopeo 1.9 only takes it as a flag.
        if os.environ.get("CONTAINERS_REGISTRIES_CONF"):
            flags += ["--registries-conf", os.environ["CONTAINERS_REGISTRIES_CONF"]]
        flags += ["--override-os", parts[0]]
        if len(parts) > 1:
            flags += ["--override-arch", parts[1]]
        if len(parts) > 2:
            flags += ["--override-variant", parts[2]]
        return flags

    def _index(self) -> Path:
        return self._cache / "refs.json"

    def _remembered(self) -> dict[str, str]:
        try:
            data = json.loads(self._index().read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _remember(self, key: str, name: str) -> None:
        data = self._remembered()
        data[key] = name
        tmp = self._index().with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self._index())

    def _fetch(self, ref: str, platform: str, report: Report) -> Path:
        self._cache.mkdir(parents=True, exist_ok=True)
        key = f"{ref} {platform}"
        flags = self._platform_flags(platform)
        inspect = subprocess.run(
            # --no-tags: listing tags ignores registries.conf rewrites (skopeo 1.9), and costs a request.
            [self._skopeo, *flags, "inspect", "--no-tags", "--format", "{{.Digest}}", f"docker://{ref}"],
            capture_output=True,
            text=True,
            check=False,
        )
        digest = inspect.stdout.strip()
        if inspect.returncode != 0 or not digest.startswith("sha256:"):
            known = self._remembered().get(key)
            if known and (self._cache / known).exists():
                why = _last_line(inspect.stderr)
                report(f"base {ref}: the registry did not answer ({why}); using the copy fetched before")
                return self._cache / known
            raise BuildError(f"base image {ref}: skopeo cannot read it: {_last_line(inspect.stderr)}")
        name = f"{digest.removeprefix('sha256:')[:32]}-{platform.replace('/', '-')}.tar"
        archive = self._cache / name
        if not archive.exists():
            report(f"fetching base {ref} ({digest[:19]}, {platform}) with skopeo")
            tmp = archive.with_suffix(f".{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            copied = subprocess.run(
                [
                    self._skopeo,
                    *flags,
                    "copy",
                    "--quiet",
                    f"docker://{_name(ref)}@{digest}",
                    f"docker-archive:{tmp}:{ref}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if copied.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise BuildError(f"base image {ref}: skopeo copy failed: {_last_line(copied.stderr)}")
            tmp.replace(archive)
        self._remember(key, name)
        return archive


def _name(ref: str) -> str:
    """The reference without its tag or digest (skopeo takes one of them, not both)."""
    ref = ref.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
