"""Which builder builds a service's image: ``image.builder``, or the automatic choice.

``auto`` (the default) takes the built-in builder when it can build the
Dockerfile exactly, because it needs nothing installed and rebuilds in
milliseconds; otherwise the first real builder that can build here, in the
order buildah, podman, docker buildx, docker, nerdctl, buildctl (the
daemonless ones first). The choice is said with its reason
("Dockerfile:3: RUN needs a real builder: using buildah"). A builder named
in the config is used or refused in one line that says what to install.

The decision (:func:`choose`) takes what is installed as a function, so it
is tested without any tool; :func:`build` runs it, and falls back to a real
builder also when the built-in one refuses only once it sees the files (an
``ADD`` of a local archive, a base it cannot fetch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from innerloop.builders.custom import CustomBuilder
from innerloop.builders.dockerfile import Unsupported
from innerloop.builders.image import BuiltinBuilder
from innerloop.builders.request import Builder, BuilderMissing, BuildError, BuildRequest, Report
from innerloop.builders.tools import AUTO_ORDER, TOOLS, Tool, ToolBuilder, available
from innerloop.oci.archive import BuiltImage

BUILDER_NAMES = ("auto", "builtin", "buildah", "podman", "docker", "buildx", "buildctl", "nerdctl", "custom")

Availability = Callable[[Tool], "str | None"]


@dataclass(frozen=True)
class Choice:
    builder: Builder
    reason: str


def _real_builder(why: str, *, availability: Availability, make: Callable[[Tool], Builder] = ToolBuilder) -> Choice:
    missing: list[str] = []
    for name in AUTO_ORDER:
        problem = availability(TOOLS[name])
        if problem is None:
            return Choice(make(TOOLS[name]), f"{why}: using {name}")
        missing.append(name)
    raise BuilderMissing(
        f"{why}, and no real builder is installed (looked for {', '.join(missing)}): install buildah or podman "
        "(or Docker), or set image.builder: custom with your own build command"
    )


def choose(
    setting: str,
    request: BuildRequest,
    *,
    builtin: BuiltinBuilder,
    custom_command: Sequence[str] | None = None,
    availability: Availability = available,
    make: Callable[[Tool], Builder] = ToolBuilder,
) -> Choice:
    """The builder for ``setting`` (one of :data:`BUILDER_NAMES`) and why; errors are one line."""
    if setting == "custom" or (setting == "auto" and custom_command):
        if not custom_command:
            raise BuildError("image.builder is custom but image.custom.command is not set: add the command to run")
        return Choice(CustomBuilder(custom_command), f"custom build command `{' '.join(custom_command)}`")
    if setting == "builtin":
        try:
            builtin.recipe(request)
        except Unsupported as err:
            raise BuildError(
                f"{err}; image.builder is builtin: set it to auto (or buildah, podman, docker...) to use one"
            ) from None
        return Choice(builtin, "the built-in builder (image.builder: builtin)")
    if setting == "auto":
        try:
            builtin.recipe(request)
        except Unsupported as err:
            return _real_builder(str(err), availability=availability, make=make)
        return Choice(builtin, "the built-in builder: the Dockerfile needs no real one")
    tool = TOOLS.get(setting)
    if tool is None:
        raise BuildError(f"image.builder {setting!r} is not a builder; use one of {', '.join(BUILDER_NAMES)}")
    problem = availability(tool)
    if problem is not None:
        raise BuilderMissing(f"image.builder {setting}: {problem}")
    return Choice(make(tool), f"{setting} (image.builder: {setting})")


def build(
    setting: str,
    request: BuildRequest,
    *,
    builtin: BuiltinBuilder,
    custom_command: Sequence[str] | None = None,
    report: Report,
    availability: Availability = available,
) -> tuple[BuiltImage, Choice]:
    """Choose, build, and (auto only) move to a real builder when the built-in one refuses at build time."""
    choice = choose(setting, request, builtin=builtin, custom_command=custom_command, availability=availability)
    report(choice.reason)
    try:
        return choice.builder.build(request, report), choice
    except Unsupported as err:
        if setting != "auto" or choice.builder is not builtin:
            if choice.builder is builtin:
                raise BuildError(f"{err}; set image.builder to auto (or a real builder) to use one") from None
            raise
        fallback = _real_builder(str(err), availability=availability)
        report(fallback.reason)
        return fallback.builder.build(request, report), fallback
