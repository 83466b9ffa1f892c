"""The custom builder: its environment, the archive it must write, retagging (real processes, no tools)."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from innerloop.builders.custom import CustomBuilder, archive_kind, custom_env, retag_docker_archive
from innerloop.builders.request import BuildError, BuildRequest
from innerloop.oci.archive import FileEntry, ImageConfig, layer_from_entries, write_archive


def request(tmp_path: Path, **changes: object) -> BuildRequest:
    context = tmp_path / "ctx"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text("FROM b\n")
    return BuildRequest(
        context=context,
        dockerfile=context / "Dockerfile",
        repository="innerloop.local/shop",
        out_dir=tmp_path / "out",
        **changes,  # type: ignore[arg-type]
    )


def tags_of(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        tags: list[str] = json.loads(handle.read())[0]["RepoTags"]
        return tags


def test_environment(tmp_path: Path) -> None:
    r = request(tmp_path, build_args={"GREETING": "hi", "IMAGE": "not this"}, platform="linux/arm64")
    env = custom_env(r, tag="innerloop.local/shop:abc", archive=tmp_path / "a.tar", base={"PATH": "/bin"})
    assert env == {
        "PATH": "/bin",
        "GREETING": "hi",
        "IMAGE": "innerloop.local/shop:abc",  # innerloop's names win over a build arg of the same name
        "EXPECTED_REF": "innerloop.local/shop:abc",
        "BUILD_CONTEXT": str(r.context.absolute()),
        "IMAGE_ARCHIVE": str(tmp_path / "a.tar"),
        "PLATFORM": "linux/arm64",
    }


def test_archive_kinds_and_retag(tmp_path: Path) -> None:
    docker = tmp_path / "d.tar"
    write_archive(docker, tag="other/name:1", layers=[layer_from_entries([FileEntry(path="/x")])], config=ImageConfig())
    oci = tmp_path / "o.tar"
    with tarfile.open(oci, "w") as tar:
        for name in ("index.json", "oci-layout"):
            tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    assert [archive_kind(p) for p in (docker, oci, tmp_path / "junk.tar")] == ["docker", "oci", "unknown"]
    retag_docker_archive(docker, tmp_path / "r.tar", tag="innerloop.local/shop:abc")
    assert tags_of(tmp_path / "r.tar") == ["innerloop.local/shop:abc"]
    with tarfile.open(docker) as a, tarfile.open(tmp_path / "r.tar") as b:
        assert sorted(a.getnames()) == sorted(b.getnames())


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "build.py"
    path.write_text(body)
    return [sys.executable, str(path)]


WRITE_ARCHIVE = """
import os
from pathlib import Path
from innerloop.oci.archive import FileEntry, ImageConfig, layer_from_entries, write_archive
assert Path.cwd() == Path(os.environ["BUILD_CONTEXT"])
write_archive(Path(os.environ["IMAGE_ARCHIVE"]), tag=os.environ["IMAGE"], config=ImageConfig(),
              layers=[layer_from_entries([FileEntry(path="/greeting", data=os.environ["GREETING"].encode())])])
"""


def test_a_command_that_writes_the_archive(tmp_path: Path) -> None:
    lines: list[str] = []
    image = CustomBuilder(script(tmp_path, WRITE_ARCHIVE)).build(
        request(tmp_path, build_args={"GREETING": "hi"}), lines.append
    )
    assert tags_of(image.archive) == [image.tag]
    assert lines[-1].startswith(f"built {image.tag} with `")
    assert not [p for p in image.archive.parent.iterdir() if p != image.archive]


def test_a_failing_command_is_one_line_with_its_last_output(tmp_path: Path) -> None:
    argv = script(tmp_path, "import sys\nprint('compiling')\nsys.exit('error: the build broke')\n")
    with pytest.raises(BuildError, match=r"exited with 1: error: the build broke$"):
        CustomBuilder(argv).build(request(tmp_path), print)


def test_a_missing_program_says_so(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"^image\.custom\.command: ./nope\.sh not found"):
        CustomBuilder(["./nope.sh"]).build(request(tmp_path), print)


def test_not_an_archive(tmp_path: Path) -> None:
    argv = script(tmp_path, "import os\nopen(os.environ['IMAGE_ARCHIVE'], 'w').write('hello')\n")
    with pytest.raises(BuildError, match="neither a docker-archive nor an oci-archive"):
        CustomBuilder(argv).build(request(tmp_path), print)
