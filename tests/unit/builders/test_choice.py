"""Which builder builds an image: the setting, the automatic choice and its reason (no tool is run)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pytest

from innerloop.builders.choice import BUILDER_NAMES, choose
from innerloop.builders.custom import CustomBuilder
from innerloop.builders.dockerfile import DockerfileError
from innerloop.builders.image import BuiltinBuilder
from innerloop.builders.request import BuilderMissing, BuildError, BuildRequest
from innerloop.builders.tools import Tool, ToolBuilder
from innerloop.config.model import Image


class NoBases:
    def identity(self, ref: str) -> str:
        return ref

    def resolve(self, ref: str, **_kwargs: object) -> Path:
        raise AssertionError("choosing never fetches a base")


def request(tmp_path: Path, dockerfile: str, **changes: object) -> BuildRequest:
    (tmp_path / "Dockerfile").write_text(dockerfile)
    return BuildRequest(
        context=tmp_path,
        dockerfile=tmp_path / "Dockerfile",
        repository="innerloop.local/shop",
        out_dir=tmp_path / "out",
        **changes,  # type: ignore[arg-type]
    )


def installed(*names: str) -> Callable[[Tool], str | None]:
    def availability(tool: Tool) -> str | None:
        return None if tool.name in names else f"{tool.program} is not installed: {tool.install}"

    return availability


BUILTIN = BuiltinBuilder(bases=NoBases())
SIMPLE = "FROM innerloop.local/python:3.11\nCOPY app.py /app/\n"
WITH_RUN = "FROM python:3.12-slim\nWORKDIR /app\nRUN pip install -r requirements.txt\n"


def test_the_config_and_the_chooser_know_the_same_names() -> None:
    assert set(get_args(Image.model_fields["builder"].annotation)) == set(BUILDER_NAMES)


class TestAuto:
    def test_the_builtin_builder_when_it_is_exact(self, tmp_path: Path) -> None:
        choice = choose("auto", request(tmp_path, SIMPLE), builtin=BUILTIN, availability=installed("buildah"))
        assert choice.builder is BUILTIN
        assert choice.reason == "the built-in builder: the Dockerfile needs no real one"

    def test_run_goes_to_the_first_real_builder_installed_and_says_why(self, tmp_path: Path) -> None:
        r = request(tmp_path, WITH_RUN)
        choice = choose("auto", r, builtin=BUILTIN, availability=installed("podman", "docker"))
        assert isinstance(choice.builder, ToolBuilder) and choice.builder.name == "podman"
        assert choice.reason == f"{r.dockerfile}:3: RUN needs a real builder: using podman"

    @pytest.mark.parametrize(
        ("have", "chosen"),
        [
            (("buildah", "podman", "buildx", "docker"), "buildah"),
            (("docker", "buildx"), "buildx"),
            (("docker", "nerdctl"), "docker"),
            (("buildctl", "nerdctl"), "nerdctl"),
            (("buildctl",), "buildctl"),
        ],
    )
    def test_order(self, tmp_path: Path, have: tuple[str, ...], chosen: str) -> None:
        choice = choose("auto", request(tmp_path, WITH_RUN), builtin=BUILTIN, availability=installed(*have))
        assert choice.builder.name == chosen

    def test_a_platform_the_builtin_builder_does_not_write_goes_to_a_real_one(self, tmp_path: Path) -> None:
        r = request(tmp_path, SIMPLE, platform="linux/arm64")
        choice = choose("auto", r, builtin=BUILTIN, availability=installed("buildah"))
        assert choice.builder.name == "buildah"
        assert "--platform linux/arm64" in choice.reason

    def test_nothing_installed_is_one_line_with_what_to_do(self, tmp_path: Path) -> None:
        r = request(tmp_path, WITH_RUN)
        with pytest.raises(BuilderMissing) as err:
            choose("auto", r, builtin=BUILTIN, availability=installed())
        assert str(err.value) == (
            f"{r.dockerfile}:3: RUN needs a real builder, and no real builder is installed "
            "(looked for buildah, podman, buildx, docker, nerdctl, buildctl): install buildah or podman "
            "(or Docker), or set image.builder: custom with your own build command"
        )

    def test_a_broken_dockerfile_is_not_sent_to_another_builder(self, tmp_path: Path) -> None:
        with pytest.raises(DockerfileError, match="no FROM line"):
            choose("auto", request(tmp_path, "COPY a /a\n"), builtin=BUILTIN, availability=installed("buildah"))

    def test_a_custom_command_implies_custom(self, tmp_path: Path) -> None:
        choice = choose("auto", request(tmp_path, WITH_RUN), builtin=BUILTIN, custom_command=["./build.sh"])
        assert isinstance(choice.builder, CustomBuilder)
        assert choice.reason == "custom build command `./build.sh`"


class TestNamed:
    def test_builtin_that_cannot_build_exactly_says_how_to_get_a_real_builder(self, tmp_path: Path) -> None:
        r = request(tmp_path, WITH_RUN)
        with pytest.raises(BuildError) as err:
            choose("builtin", r, builtin=BUILTIN, availability=installed("buildah"))
        assert str(err.value) == (
            f"{r.dockerfile}:3: RUN needs a real builder; image.builder is builtin: "
            "set it to auto (or buildah, podman, docker...) to use one"
        )

    def test_a_named_builder_is_used_even_when_the_builtin_one_could(self, tmp_path: Path) -> None:
        choice = choose("podman", request(tmp_path, SIMPLE), builtin=BUILTIN, availability=installed("podman"))
        assert choice.builder.name == "podman"
        assert choice.reason == "podman (image.builder: podman)"

    def test_a_named_builder_that_is_missing_says_what_to_install(self, tmp_path: Path) -> None:
        with pytest.raises(BuilderMissing) as err:
            choose("buildah", request(tmp_path, SIMPLE), builtin=BUILTIN, availability=installed("podman"))
        assert str(err.value) == (
            "image.builder buildah: buildah is not installed: "
            "install buildah (apt install buildah / dnf install buildah)"
        )

    def test_custom_without_a_command(self, tmp_path: Path) -> None:
        with pytest.raises(BuildError, match=r"image\.custom\.command is not set"):
            choose("custom", request(tmp_path, SIMPLE), builtin=BUILTIN)
