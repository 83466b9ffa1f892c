"""The real builders' command lines and their runner, with a scripted `run` (no tool is started)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from innerloop.builders.request import BuilderMissing, BuildError, BuildRequest
from innerloop.builders.tools import AUTO_ORDER, TOOLS, ToolBuilder, available

TAG = "innerloop.local/shop:0123456789ab"


def request(tmp_path: Path, **changes: Any) -> BuildRequest:
    context = tmp_path / "ctx"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text("FROM b\nRUN true\n")
    fields: dict[str, Any] = {
        "context": context,
        "dockerfile": context / "Dockerfile",
        "repository": "innerloop.local/shop",
        "build_args": {"B": "2", "A": "1"},
        "target": "dev",
        "platform": "linux/arm64",
        "out_dir": tmp_path / "out",
    }
    fields.update(changes)
    return BuildRequest(**fields)


class TestArgv:
    def test_buildah(self, tmp_path: Path) -> None:
        r = request(tmp_path)
        archive = tmp_path / "x.tar"
        assert TOOLS["buildah"].build_argv(r, tag=TAG, archive=archive) == [
            "buildah", "build", "-f", str(r.dockerfile), "-t", TAG,
            "--build-arg", "A=1", "--build-arg", "B=2", "--target", "dev", "--platform", "linux/arm64",
            str(r.context),
        ]  # fmt: skip
        assert TOOLS["buildah"].save_argv(tag=TAG, archive=archive) == [
            "buildah", "push", "--quiet", TAG, f"docker-archive:{archive}:{TAG}",
        ]  # fmt: skip

    def test_podman_docker_nerdctl_build_then_save(self, tmp_path: Path) -> None:
        r = request(tmp_path, build_args={}, target=None, platform=None)
        archive = tmp_path / "x.tar"
        for name in ("podman", "docker", "nerdctl"):
            tool = TOOLS[name]
            assert tool.build_argv(r, tag=TAG, archive=archive) == [
                tool.program, "build", "-f", str(r.dockerfile), "-t", TAG, str(r.context),
            ]  # fmt: skip
        assert TOOLS["podman"].save_argv(tag=TAG, archive=archive) == [
            "podman", "save", "--quiet", "--format", "docker-archive", "-o", str(archive), TAG,
        ]  # fmt: skip
        assert TOOLS["docker"].save_argv(tag=TAG, archive=archive) == ["docker", "save", "-o", str(archive), TAG]
        assert TOOLS["nerdctl"].save_argv(tag=TAG, archive=archive) == ["nerdctl", "save", "-o", str(archive), TAG]

    def test_buildx_writes_the_archive_itself(self, tmp_path: Path) -> None:
        r = request(tmp_path, build_args={"A": "1"}, target="dev", platform="linux/amd64")
        archive = tmp_path / "x.tar"
        assert TOOLS["buildx"].build_argv(r, tag=TAG, archive=archive) == [
            "docker", "buildx", "build", "-f", str(r.dockerfile), "-t", TAG,
            "--build-arg", "A=1", "--target", "dev", "--platform", "linux/amd64",
            "--output", f"type=docker,dest={archive}", str(r.context),
        ]  # fmt: skip
        assert TOOLS["buildx"].save_argv(tag=TAG, archive=archive) is None

    def test_buildctl_uses_the_dockerfile_frontend_with_two_locals(self, tmp_path: Path) -> None:
        r = request(tmp_path, build_args={"A": "1"}, target="dev", platform="linux/arm64")
        archive = tmp_path / "x.tar"
        assert TOOLS["buildctl"].build_argv(r, tag=TAG, archive=archive) == [
            "buildctl", "build", "--frontend", "dockerfile.v0",
            "--local", f"context={r.context}", "--local", f"dockerfile={r.dockerfile.parent}",
            "--opt", "filename=Dockerfile", "--opt", "build-arg:A=1", "--opt", "target=dev",
            "--opt", "platform=linux/arm64", "--output", f"type=docker,name={TAG},dest={archive}",
        ]  # fmt: skip
        assert TOOLS["buildctl"].save_argv(tag=TAG, archive=archive) is None

    def test_auto_order_prefers_daemonless_builders(self) -> None:
        assert AUTO_ORDER == ("buildah", "podman", "buildx", "docker", "nerdctl", "buildctl")
        assert set(AUTO_ORDER) == set(TOOLS)


class TestAvailable:
    def test_not_on_path_says_what_to_install(self) -> None:
        assert available(TOOLS["buildah"], which=lambda _p: None) == (
            "buildah is not installed: install buildah (apt install buildah / dnf install buildah)"
        )

    def test_daemonless_tools_need_no_probe(self) -> None:
        def run(*_a: object, **_k: object) -> subprocess.CompletedProcess[str]:
            raise AssertionError("no probe for buildah")

        assert available(TOOLS["buildah"], which=lambda p: f"/usr/bin/{p}", run=run) is None

    def test_docker_without_a_daemon_is_not_available(self) -> None:
        def run(argv: list[str], **_k: object) -> subprocess.CompletedProcess[str]:
            assert argv == ["docker", "version", "--format", "{{.Server.Version}}"]
            return subprocess.CompletedProcess(argv, 1, "", "Cannot connect to the Docker daemon at unix:///x.sock\n")

        problem = available(TOOLS["docker"], which=lambda p: f"/usr/bin/{p}", run=run)
        assert problem is not None
        assert "Cannot connect to the Docker daemon" in problem and "start the Docker daemon" in problem


class Scripted:
    """Stands in for subprocess.run: records argv and env, answers in order, writes the archive on save."""

    def __init__(self, answers: list[tuple[int, str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((argv, dict(kwargs.get("env") or {})))
        if argv[1] in ("push", "save"):
            target = argv[-1].split(":")[1] if argv[1] == "push" else argv[argv.index("-o") + 1]
            Path(target).write_bytes(b"archive")
            return subprocess.CompletedProcess(argv, 0, "", "")
        code, stderr = self.answers.pop(0)
        return subprocess.CompletedProcess(argv, code, "", stderr)


class TestToolBuilder:
    def test_builds_saves_and_then_never_runs_again_for_unchanged_inputs(self, tmp_path: Path) -> None:
        run = Scripted([(0, "")])
        builder = ToolBuilder(TOOLS["buildah"], env={"PATH": "/usr/bin"}, run=run)
        lines: list[str] = []
        image = builder.build(request(tmp_path), lines.append)
        assert [argv[1] for argv, _ in run.calls] == ["build", "push"]
        assert image.archive.read_bytes() == b"archive"
        assert image.tag.startswith("innerloop.local/shop:")
        assert lines[-1].startswith(f"built {image.tag} with buildah in ")
        assert not list(image.archive.parent.glob("*.tmp"))
        again = ToolBuilder(TOOLS["buildah"], env={}, run=Scripted([])).build(request(tmp_path), lines.append)
        assert again == image

    def test_a_host_that_cannot_run_containers_is_retried_with_chroot_isolation(self, tmp_path: Path) -> None:
        crun = "error running container: from /usr/bin/crun creating container for [/bin/sh -c true]: cgroups in hybrid mode not supported, drop all controllers from cgroupv2"  # noqa: E501
        run = Scripted([(1, crun), (0, "")])
        lines: list[str] = []
        ToolBuilder(TOOLS["podman"], env={}, run=run).build(request(tmp_path), lines.append)
        assert [env.get("BUILDAH_ISOLATION") for _, env in run.calls] == [None, "chroot", "chroot"]
        assert lines[0] == (
            "podman: this host cannot give RUN a container (cgroups in hybrid mode not supported); "
            "retrying with BUILDAH_ISOLATION=chroot (set it yourself to skip the first try)"
        )

    def test_the_users_isolation_is_never_overridden(self, tmp_path: Path) -> None:
        run = Scripted([(1, "cgroups in hybrid mode not supported")])
        with pytest.raises(BuildError, match="buildah build failed"):
            ToolBuilder(TOOLS["buildah"], env={"BUILDAH_ISOLATION": "oci"}, run=run).build(request(tmp_path), print)
        assert len(run.calls) == 1

    def test_a_failed_build_is_one_line_with_the_log_kept(self, tmp_path: Path) -> None:
        stderr = 'STEP 1/2: FROM b\nSTEP 2/2: RUN false\nError: building at STEP "RUN false": exit status 1\n'
        with pytest.raises(BuildError) as err:
            ToolBuilder(TOOLS["buildah"], env={}, run=Scripted([(1, stderr)])).build(request(tmp_path), print)
        message = str(err.value)
        assert "\n" not in message
        assert 'Error: building at STEP "RUN false": exit status 1' in message
        log = Path(message.rsplit("whole log: ", 1)[1].rstrip(")"))
        assert "RUN false" in log.read_text()
        assert not list((tmp_path / "out").glob("*.tar"))

    def test_a_missing_tool_is_one_line_with_what_to_install(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(BuilderMissing, match=r"^image.builder nerdctl: nerdctl is not installed: install nerdctl"):
            ToolBuilder(TOOLS["nerdctl"], env={}).build(request(tmp_path), print)
