"""The real builders: buildah, podman, docker, docker buildx, BuildKit's buildctl, nerdctl.

Each is two pure parts, the command lines (:meth:`Tool.build_argv`, which
passes build args, target and platform the tool's own way, and
:meth:`Tool.save_argv`, which writes the docker-archive) and one runner
shared by all (:class:`ToolBuilder`): tag with the input hash, skip when that
archive exists, build, save to a temporary name, rename.

They run with the user's own storage and configuration: no storage driver,
runtime or isolation is forced. One failure is known and fixed on the spot:
buildah and podman running ``RUN`` through crun on a host with hybrid cgroups
("cgroups in hybrid mode not supported") or without the rights to create a
container; innerloop then retries once with ``BUILDAH_ISOLATION=chroot``
(buildah's own variable, which podman reads too) and says so. A user who
sets ``BUILDAH_ISOLATION`` decides alone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from innerloop.builders.context import planned_image
from innerloop.builders.request import BuilderMissing, BuildError, BuildRequest, Report
from innerloop.oci.archive import BuiltImage

# What crun/runc say when this host cannot give a RUN step a container of its own.
_NO_CONTAINER = re.compile(
    r"cgroups in hybrid mode not supported|creating container for \[|error running container|"
    r"unable to start container process|operation not permitted.*(?:mount|unshare)",
    re.I,
)


def _common_flags(request: BuildRequest, *, target_flag: str = "--target") -> list[str]:
    flags: list[str] = []
    for key, value in sorted(request.build_args.items()):
        flags += ["--build-arg", f"{key}={value}"]
    if request.target:
        flags += [target_flag, request.target]
    if request.platform:
        flags += ["--platform", request.platform]
    return flags


@dataclass(frozen=True, kw_only=True)
class Tool:
    """One real builder's command lines (pure)."""

    name: str
    program: str
    install: str  # what to install, said when it is missing
    daemon: str = ""  # what must be running, said when its probe fails

    def build_argv(self, request: BuildRequest, *, tag: str, archive: Path) -> list[str]:
        df, ctx = str(request.dockerfile), str(request.context)
        if self.name == "buildah":
            return [self.program, "build", "-f", df, "-t", tag, *_common_flags(request), ctx]
        if self.name in ("podman", "docker", "nerdctl"):
            return [self.program, "build", "-f", df, "-t", tag, *_common_flags(request), ctx]
        if self.name == "buildx":
            out = f"type=docker,dest={archive}"
            return [self.program, "buildx", "build", "-f", df, "-t", tag, *_common_flags(request), "--output", out, ctx]
        if self.name == "buildctl":
            argv = [
                self.program,
                "build",
                "--frontend",
                "dockerfile.v0",
                "--local",
                f"context={ctx}",
                "--local",
                f"dockerfile={request.dockerfile.parent}",
                "--opt",
                f"filename={request.dockerfile.name}",
            ]
            for key, value in sorted(request.build_args.items()):
                argv += ["--opt", f"build-arg:{key}={value}"]
            if request.target:
                argv += ["--opt", f"target={request.target}"]
            if request.platform:
                argv += ["--opt", f"platform={request.platform}"]
            return [*argv, "--output", f"type=docker,name={tag},dest={archive}"]
        raise ValueError(f"no command line for {self.name}")

    def save_argv(self, *, tag: str, archive: Path) -> list[str] | None:
        """The command that writes the archive after the build (None: the build wrote it)."""
        if self.name == "buildah":
            return [self.program, "push", "--quiet", tag, f"docker-archive:{archive}:{tag}"]
        if self.name == "podman":
            return [self.program, "save", "--quiet", "--format", "docker-archive", "-o", str(archive), tag]
        if self.name in ("docker", "nerdctl"):
            return [self.program, "save", "-o", str(archive), tag]
        return None

    def probe_argv(self) -> list[str] | None:
        """A quick command that fails when the tool cannot build here (no daemon, no plugin)."""
        if self.name == "docker":
            return [self.program, "version", "--format", "{{.Server.Version}}"]
        if self.name == "buildx":
            return [self.program, "buildx", "version"]
        if self.name == "buildctl":
            return [self.program, "debug", "workers"]
        return None


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(name="buildah", program="buildah", install="install buildah (apt install buildah / dnf install buildah)"),
        Tool(name="podman", program="podman", install="install podman (apt install podman / dnf install podman)"),
        Tool(name="docker", program="docker", install="install Docker", daemon="the Docker daemon"),
        Tool(
            name="buildx",
            program="docker",
            install="install Docker with the buildx plugin (docker-buildx-plugin)",
            daemon="the Docker daemon",
        ),
        Tool(
            name="buildctl",
            program="buildctl",
            install="install BuildKit (buildctl and buildkitd)",
            daemon="buildkitd (BUILDKIT_HOST)",
        ),
        Tool(name="nerdctl", program="nerdctl", install="install nerdctl (with containerd and BuildKit)"),
    )
}

# auto mode's order of preference among the real builders.
AUTO_ORDER = ("buildah", "podman", "buildx", "docker", "nerdctl", "buildctl")

Run = Callable[..., subprocess.CompletedProcess[str]]


def available(
    tool: Tool, *, which: Callable[[str], str | None] = shutil.which, run: Run = subprocess.run
) -> str | None:
    """None when the tool can build here, else what is missing (one phrase)."""
    if which(tool.program) is None:
        return f"{tool.program} is not installed: {tool.install}"
    probe = tool.probe_argv()
    if probe is None:
        return None
    try:
        out = run(probe, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{' '.join(probe)} failed ({err}): is {tool.daemon or tool.program} running?"
    if out.returncode != 0:
        detail = _last_line(out.stderr or out.stdout)
        return f"`{' '.join(probe)}` failed ({detail}): {tool.install}, and start {tool.daemon or tool.program}"
    return None


class ToolBuilder:
    """A real builder behind the :class:`~innerloop.builders.request.Builder` interface."""

    def __init__(self, tool: Tool, *, env: Mapping[str, str] | None = None, run: Run = subprocess.run) -> None:
        self.tool = tool
        self.name = tool.name
        self._env = env
        self._run = run

    def build(self, request: BuildRequest, report: Report) -> BuiltImage:
        planned = planned_image(self.name, request)
        if planned.archive.exists():
            return planned
        missing = available(self.tool, run=self._run)
        if missing is not None:
            raise BuilderMissing(f"image.builder {self.name}: {missing}")
        request.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = planned.archive.with_suffix(f".{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        env = dict(os.environ if self._env is None else self._env)
        started = time.monotonic()
        try:
            self._build(request, planned.tag, tmp, env, report, log=planned.archive.with_suffix(".log"))
            save = self.tool.save_argv(tag=planned.tag, archive=tmp)
            if save is not None:
                self._check(save, env, what="saving the image")
            if not tmp.exists():
                raise BuildError(f"{self.name} reported success but wrote no archive at {tmp}")
            tmp.replace(planned.archive)
        finally:
            tmp.unlink(missing_ok=True)
        report(f"built {planned.tag} with {self.name} in {time.monotonic() - started:.1f} s")
        return planned

    def _build(
        self, request: BuildRequest, tag: str, archive: Path, env: dict[str, str], report: Report, *, log: Path
    ) -> None:
        argv = self.tool.build_argv(request, tag=tag, archive=archive)
        out = self._run(argv, capture_output=True, text=True, check=False, env=env, cwd=request.context)
        if (
            out.returncode != 0
            and self.name in ("buildah", "podman")
            and "BUILDAH_ISOLATION" not in env
            and _NO_CONTAINER.search(out.stderr or "")
        ):
            report(
                f"{self.name}: this host cannot give RUN a container ({_cause(out.stderr)}); "
                "retrying with BUILDAH_ISOLATION=chroot (set it yourself to skip the first try)"
            )
            env["BUILDAH_ISOLATION"] = "chroot"
            out = self._run(argv, capture_output=True, text=True, check=False, env=env, cwd=request.context)
        if out.returncode != 0:
            log.write_text(f"$ {' '.join(argv)}\n{out.stdout}\n{out.stderr}")
            raise BuildError(f"{self.name} build failed: {_failure(out.stderr or out.stdout)} (whole log: {log})")

    def _check(self, argv: list[str], env: dict[str, str], *, what: str) -> None:
        out = self._run(argv, capture_output=True, text=True, check=False, env=env)
        if out.returncode != 0:
            raise BuildError(f"{self.name}: {what} failed (`{' '.join(argv)}`): {_last_line(out.stderr or out.stdout)}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _cause(stderr: str) -> str:
    """The most specific phrase of the runtime's complaint (the cgroup one says what is wrong with the host)."""
    found = [m.group(0) for m in _NO_CONTAINER.finditer(stderr)]
    specific = [f for f in found if "cgroup" in f.lower()]
    return (specific or found or [_last_line(stderr)])[0]


def _failure(text: str) -> str:
    """The lines of a failed build worth showing: the step that failed and the error, not the whole log."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error|failed|STEP", line, re.I)]
    shown = (errors or lines)[-3:]
    return " | ".join(s.strip() for s in shown) if shown else "no output"
