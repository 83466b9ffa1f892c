"""The agent's own messages, on stderr next to the app's output in ``kubectl logs``."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    print(f"innerloop-agent: {message}", file=sys.stderr, flush=True)
