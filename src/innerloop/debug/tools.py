"""The debug tools the agent image carries under ``tools/<name>/`` (copied into the pod at ``/.innerloop/tools``).

A debugging service's pod gets its debugger the way it gets the agent: the
agent image's init container copies it into the runtime emptyDir, so the
app's image is never changed. Each tool is a provider of layer entries, for
one node architecture:

- ``debugpy``: the pure-Python files of the debugpy this installation
  carries (the version its tests ran: pinned in pyproject.toml), without its
  compiled speedups and attach helpers (each is built for one interpreter;
  ``--listen`` needs neither);
- ``dlv``: Delve, a static binary, from :func:`innerloop.debug.delve.delve_binary` (cached, or built once).

The image holds a tool only when a service debugs with it, so a plain `up`
keeps the small agent image.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from innerloop.builders.agent_image import IMAGE_ROOT, AgentImageError, library_root
from innerloop.debug.delve import delve_binary
from innerloop.debug.languages import DebugError
from innerloop.oci.archive import FileEntry

TOOLS_DIR = f"{IMAGE_ROOT}/tools"
# Compiled parts and their sources: built for one interpreter and platform, and not needed to --listen.
_DEBUGPY_SKIP = (".so", ".pyd", ".dll", ".dylib", ".exe", ".pdb", ".c", ".cpp", ".h", ".hpp", ".pyx", ".pxd", ".pyc")

ToolProvider = Callable[[str], list[FileEntry]]  # node architecture -> entries under TOOLS_DIR/<name>/


def debugpy_entries(arch: str) -> list[FileEntry]:
    del arch  # pure Python: the same files for every architecture
    root = library_root("debugpy")
    entries = []
    for src in sorted(root.rglob("*")):
        if not src.is_file() or "__pycache__" in src.parts or src.name.endswith(_DEBUGPY_SKIP):
            continue
        rel = src.relative_to(root.parent).as_posix()
        entries.append(FileEntry(path=f"{TOOLS_DIR}/debugpy/{rel}", data=src.read_bytes()))
    return entries


def dlv_entries(arch: str) -> list[FileEntry]:
    try:
        binary = delve_binary(arch, report=lambda message: print(f"innerloop {message}", file=sys.stderr))
    except DebugError as err:
        raise AgentImageError(str(err)) from None  # one line from `up`, as the agent's own build errors
    return [FileEntry(path=f"{TOOLS_DIR}/dlv/dlv", data=binary.read_bytes(), mode=0o755)]


PROVIDERS: dict[str, ToolProvider] = {"debugpy": debugpy_entries, "dlv": dlv_entries}


def tool_entries(names: Sequence[str], arch: str) -> list[FileEntry]:
    """Every file of the named tools for ``arch``, under ``TOOLS_DIR``; an unknown tool is refused."""
    entries: list[FileEntry] = []
    for name in sorted(set(names)):
        provider = PROVIDERS.get(name)
        if provider is None:
            raise AgentImageError(f"no debug tool named {name!r} (known: {', '.join(sorted(PROVIDERS))})")
        entries.extend(provider(arch))
    return entries
