"""The build context as a builder sees it, and the content hash that names the image.

What is sent: every file of the context that survives its ``.dockerignore``,
with Docker's rules (``sync/ignore.py`` holds the one implementation, shared
with the file sync; here ``.git`` is not special, as in Docker). The
``.dockerignore`` and the Dockerfile are inputs whatever it says, as Docker
still sends them.

The tag of every built image is ``<repository>:<first 12 hex of the input
hash>``: the hash covers the builder's name, the Dockerfile's bytes, the
``.dockerignore``'s bytes, each context file's path, mode and content, the
build args, the target and the platform (and what a builder adds, such as a
custom command's argv). So an archive with that tag on disk *is* the build:
unchanged inputs never rebuild, whatever the builder. The files are hashed
through :class:`innerloop.sync.tree.Scanner`, whose stat cache makes a second
look at an unchanged context cost one ``lstat`` per file (one scanner per
process, as a dev loop rebuilds from the same process).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from innerloop.builders.request import BuildRequest
from innerloop.oci.archive import BuiltImage
from innerloop.sync.ignore import DOCKERIGNORE, IgnoreFile, SyncScope
from innerloop.sync.tree import FileState, Scanner, Tree

TAG_HEX = 12

_SCANNER = Scanner()


def dockerignore_text(context: Path) -> str:
    try:
        return (context / DOCKERIGNORE).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return ""


def context_scope(context: Path) -> SyncScope:
    """What of ``context`` is sent to a build: all but what its ``.dockerignore`` excludes (Docker's rules)."""
    text = dockerignore_text(context)
    dockerignore = IgnoreFile(text=text, source=DOCKERIGNORE) if text else None
    return SyncScope(dockerignore=dockerignore, keep_git=True)


class _Remembered:
    """A scope whose answers are kept: the same paths are asked again at every look at an unchanged context."""

    def __init__(self, scope: SyncScope) -> None:
        self._scope = scope
        self._answers: dict[tuple[str, bool], bool] = {}

    def ignores(self, path: str, *, is_dir: bool = False) -> bool:
        key = (path, is_dir)
        answer = self._answers.get(key)
        if answer is None:
            if len(self._answers) >= _ANSWERS_LIMIT:
                self._answers.clear()
            answer = self._answers[key] = self._scope.ignores(path, is_dir=is_dir)
        return answer


_ANSWERS_LIMIT = 500_000
_SCOPES: dict[tuple[str, str], _Remembered] = {}


def context_files(context: Path, *, scanner: Scanner | None = None) -> Tree[FileState]:
    """Every file and symlink of the context that a build sees, with its mode and sha256."""
    key = (str(context.absolute()), dockerignore_text(context))
    scope = _SCOPES.get(key)
    if scope is None:
        if len(_SCOPES) > 64:
            _SCOPES.clear()
        scope = _SCOPES[key] = _Remembered(context_scope(context))
    return (scanner or _SCANNER).scan(context, scope)


def input_hash(
    *,
    builder: str,
    request: BuildRequest,
    dockerfile: bytes,
    dockerignore: bytes,
    files: Iterable[tuple[str, FileState]],
    extra: Iterable[str] = (),
) -> str:
    """The sha256 (hex) of everything that decides the image (pure)."""
    digest = hashlib.sha256()
    header = {
        "builder": builder,
        "dockerfile": hashlib.sha256(dockerfile).hexdigest(),
        "dockerignore": hashlib.sha256(dockerignore).hexdigest(),
        "build_args": sorted(request.build_args.items()),
        "target": request.target,
        "platform": request.platform,
        "extra": list(extra),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path, state in sorted(files):
        digest.update(f"\n{path}\0{state.mode:o}\0{state.sha256}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def archive_for(out_dir: Path, repository: str, tag: str) -> Path:
    """Where the archive of ``tag`` is cached: one file per tag, named so it never needs a folder."""
    return out_dir / f"{repository.replace('/', '_').replace(':', '_')}-{tag.rsplit(':', 1)[1]}.tar"


def planned_image(
    builder: str, request: BuildRequest, *, extra: Iterable[str] = (), scanner: Scanner | None = None
) -> BuiltImage:
    """The tag and archive path this builder produces for the request (the archive may not exist yet)."""
    files = context_files(request.context, scanner=scanner)
    digest = input_hash(
        builder=builder,
        request=request,
        dockerfile=request.dockerfile.read_bytes(),
        dockerignore=dockerignore_text(request.context).encode(),
        files=files.items(),
        extra=extra,
    )
    tag = f"{request.repository}:{digest[:TAG_HEX]}"
    return BuiltImage(tag=tag, archive=archive_for(request.out_dir, request.repository, tag))
