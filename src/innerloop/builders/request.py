"""What every image builder is asked, and what it answers: one interface for all of them.

A :class:`BuildRequest` holds everything that decides the image (the context,
the Dockerfile, build args, the target stage, the platform); a
:class:`Builder` turns it into a docker-archive tar tagged
``<repository>:<content hash of the inputs>`` (:mod:`innerloop.builders.context`),
which the delivery code loads into or pushes to the cluster. Whatever tool
built it, the answer has the same shape, so nothing above this package knows
which builder ran.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from innerloop.oci.archive import BuiltImage

Report = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    """One image to build. ``platform`` is ``os/arch[/variant]`` (``linux/amd64``); None: the builder's own."""

    context: Path
    dockerfile: Path
    repository: str  # e.g. "innerloop.local/catalog"
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: str | None = None
    out_dir: Path  # where archives are cached, by tag


class Builder(Protocol):
    """Builds a request into a docker-archive whose tag is the request's input hash."""

    name: str

    def build(self, request: BuildRequest, report: Report) -> BuiltImage: ...


class BuildError(Exception):
    """A build that failed or cannot start; the message is one line the user can act on."""


class BuilderMissing(BuildError):
    """The builder's tool is not installed (or its daemon is not running); the message says what to install."""
