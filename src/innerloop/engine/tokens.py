"""The agent tokens of `innerloop up`: one new token per `up` and service, kept on this machine only.

The cluster never sees a token, only its sha256 (the token Secret holds the
hash, see :mod:`innerloop.agent.server`): every holder of the documented Role
reads Secrets. The token itself lives in this process and in
``.innerloop/agent-tokens.json`` (mode 0600, in a 0700 folder), so an `up`
started after a crashed one still reaches the pods the crashed one left
behind: it greets them with its own token and the few earlier ones it kept
(``KEEP``), and rotates them to its own at once. A token older than that no
longer opens anything a newer `up` greeted.

Saved *before* the Secret is applied, so a crash between the two never
leaves a cluster whose hash no kept token matches.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

STATE_FILE = Path(".innerloop") / "agent-tokens.json"
KEEP = 3  # this up's token and the two before it


def _key(namespace: str, service: str) -> str:
    return f"{namespace}/{service}"


def _load(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: the pods of an earlier up will say "denied"
    if not isinstance(data, dict):
        return {}
    return {
        key: [t for t in value if isinstance(t, str)][:KEEP]
        for key, value in data.items()
        if isinstance(key, str) and isinstance(value, list)
    }


def _save(path: Path, data: dict[str, list[str]]) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(data, file, indent=1, sort_keys=True)
    os.replace(tmp, path)


def session_tokens(root: Path, *, namespace: str, service: str) -> list[str]:
    """A new token for this `up`, then the kept ones of earlier ups, newest first; saved before returning."""
    path = root / STATE_FILE
    data = _load(path)
    key = _key(namespace, service)
    tokens = [secrets.token_urlsafe(32), *data.get(key, [])][:KEEP]
    data[key] = tokens
    _save(path, data)
    return tokens
