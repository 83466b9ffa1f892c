"""The router's own messages, on stderr (``kubectl logs`` of the router pod)."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    print(f"innerloop-router: {message}", file=sys.stderr, flush=True)
