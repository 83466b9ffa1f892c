"""Delve's ``dlv``, static, for a node's architecture: found in the cache, or built once with the machine's Go.

The build is pinned by ``delve-module/`` (shipped in the package): its go.mod
names the Delve version, its go.sum every module Delve is built from (the set
Delve's own go.mod names), so a build never takes a dependency's newest
version of the day. ``CGO_ENABLED=0``: the pod's image may be distroless
static or scratch, with no libc to load. ``-s -w``: Delve needs the
debuggee's symbols, not its own.

Where it goes: innerloop's machine cache (``INNERLOOP_CACHE``, default
/var/cache/innerloop: ``bin/dlv-<version>/<arch>/dlv``, where CI builds it
with ``hack/delve``) when it is writable, else the user's
(``$XDG_CACHE_HOME/innerloop``). A Go developer has Go: the first
``innerloop debug`` of a Go service builds it (a few minutes, said), later
ones find it. ``python -m innerloop.debug.delve [ARCH...]`` builds ahead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from innerloop.cluster.paths import ClusterPaths
from innerloop.debug.languages import DebugError

MODULE = Path(__file__).resolve().parent / "delve-module"
ARCHITECTURES = ("amd64", "arm64")
PACKAGE = "github.com/go-delve/delve/cmd/dlv"


def delve_version() -> str:
    """The pinned version, from delve-module/go.mod (the one truth)."""
    found = re.search(r"^require github.com/go-delve/delve (v\S+)$", (MODULE / "go.mod").read_text(), re.M)
    assert found is not None, "delve-module/go.mod names no Delve version"
    return found.group(1)


DELVE_VERSION = delve_version()


def _caches() -> list[Path]:
    """Where a built dlv may be, the machine's cache first."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "innerloop" / "bin"
    return [ClusterPaths.from_env().bin_dir("dlv", DELVE_VERSION), user / f"dlv-{DELVE_VERSION}"]


def _writable(folder: Path) -> bool:
    while not folder.exists():
        folder = folder.parent
    return os.access(folder, os.W_OK)


def _go() -> str | None:
    found = shutil.which("go")
    if found is None and os.access("/usr/local/go/bin/go", os.X_OK):
        found = "/usr/local/go/bin/go"
    return found


def find_delve(arch: str) -> Path | None:
    for cache in _caches():
        if (cache / arch / "dlv").is_file():
            return cache / arch / "dlv"
    return None


def build_delve(arch: str, *, report: Callable[[str], None]) -> Path:
    """Build dlv for ``arch`` into the first writable cache; DebugError says what is missing."""
    if arch not in ARCHITECTURES:
        raise DebugError(f"Delve is built for {' and '.join(ARCHITECTURES)} nodes, not {arch!r}")
    go = _go()
    if go is None:
        raise DebugError(
            f"Delve {DELVE_VERSION} for {arch} is not built and Go is not installed here: install Go 1.21 or "
            f"newer (it fetches the toolchain Delve needs), or put a static linux/{arch} dlv at "
            f"{_caches()[0] / arch / 'dlv'}"
        )
    cache = next((c for c in _caches() if _writable(c)), None)
    if cache is None:
        raise DebugError(f"no writable cache for Delve: tried {', '.join(map(str, _caches()))}")
    target = cache / arch / "dlv"
    target.parent.mkdir(parents=True, exist_ok=True)
    report(f"building Delve {DELVE_VERSION} for linux/{arch} with {go} (once; a few minutes)")
    paths = ClusterPaths.from_env()
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOOS": "linux",
        "GOARCH": arch,
        "GOFLAGS": "-mod=readonly",
    }
    if _writable(paths.cache):  # share the Go caches the bundled cluster's builds use
        env |= {"GOMODCACHE": str(paths.gomodcache), "GOCACHE": str(paths.gocache)}
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build.") as tmp:
        # A temporary file renamed into place: a half-written dlv is never left at the cached path.
        out = Path(tmp) / "dlv"
        argv = [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(out), PACKAGE]
        done = subprocess.run(argv, cwd=MODULE, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise DebugError(f"building Delve {DELVE_VERSION} for linux/{arch} failed: {last}")
        out.replace(target)
    return target


def delve_binary(arch: str, *, report: Callable[[str], None] = lambda _m: None) -> Path:
    """The static dlv for ``arch`` (a node's architecture): cached, or built now."""
    if arch not in ARCHITECTURES:
        raise DebugError(f"Delve is built for {' and '.join(ARCHITECTURES)} nodes, not {arch!r}")
    return find_delve(arch) or build_delve(arch, report=report)


def main(argv: list[str]) -> int:
    """``python -m innerloop.debug.delve [ARCH...]``: build ahead (CI's hack/delve); prints each dlv's path."""
    for arch in argv or list(ARCHITECTURES):
        try:
            print(delve_binary(arch, report=lambda m: print(m, file=sys.stderr)))
        except DebugError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
