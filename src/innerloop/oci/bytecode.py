"""Precompiled bytecode for Python files put into image layers.

Layers carry mtime 0 and are read-only at run time, so Python can neither
validate timestamp-based .pyc files nor write new ones: without these, every
start compiles every import from source (measured: the agent starts in
320 ms instead of 80 ms). Unchecked-hash .pyc files (PEP 552) are valid
whatever the mtime. Debian's packages ship no .pyc either (their postinst
compiles them), so images assembled from .deb files need the same.
"""

from __future__ import annotations

import importlib._bootstrap_external
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import PurePosixPath

from innerloop.oci.archive import FileEntry


def pyc_for(entry: FileEntry) -> FileEntry | None:
    """The unchecked-hash .pyc of a .py entry, or None if it is not valid Python 3."""
    path = PurePosixPath(entry.path)
    try:
        code = compile(entry.data, str(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None
    data = importlib._bootstrap_external._code_to_hash_pyc(  # type: ignore[attr-defined]
        code, importlib.util.source_hash(entry.data), checked=False
    )
    target = path.parent / "__pycache__" / f"{path.stem}.{sys.implementation.cache_tag}.pyc"
    return FileEntry(path=str(target), data=bytes(data))


def with_bytecode(entries: Iterable[FileEntry], *, under: str = "/") -> list[FileEntry]:
    """``entries`` plus a .pyc for every .py file below ``under``."""
    listed = list(entries)
    compiled = [pyc_for(e) for e in listed if e.kind == "file" and e.path.endswith(".py") and e.path.startswith(under)]
    return [*listed, *(c for c in compiled if c is not None)]
