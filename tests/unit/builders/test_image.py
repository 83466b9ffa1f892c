"""Building an app image from a context and a tiny base archive, daemonlessly."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest

from innerloop.builders.dockerfile import DockerfileError, Unsupported
from innerloop.builders.image import BuiltinBuilder, build_image, read_archive
from innerloop.builders.request import BuildRequest
from innerloop.oci.archive import BuiltImage, FileEntry, ImageConfig, layer_from_entries, write_archive

BASE_TAG = "innerloop.local/base:1"
BASE_CONFIG = ImageConfig(
    cmd=["/bin/sh"],
    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    user="65532",
    workdir="/home/nonroot",
)


def tar_members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isreg() else None
            out[m.name] = (m, f.read() if f else b"")
    return out


class Archive:
    """A docker-save archive, opened for assertions."""

    def __init__(self, path: Path) -> None:
        files = tar_members(path.read_bytes())
        self.manifest: dict[str, Any] = json.loads(files["manifest.json"][1])[0]
        self.config: dict[str, Any] = json.loads(files[self.manifest["Config"]][1])
        self.layers = [files[name][1] for name in self.manifest["Layers"]]

    @property
    def runtime(self) -> dict[str, Any]:
        runtime = self.config["config"]
        assert isinstance(runtime, dict)
        return runtime

    def app_layer(self) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
        return tar_members(self.layers[-1])


@pytest.fixture
def base_layers() -> list[bytes]:
    return [
        layer_from_entries(
            [
                FileEntry.directory("/bin"),
                FileEntry(path="/bin/sh", data=b"\x7fELF not really", mode=0o755),
                FileEntry.directory("/home"),
                FileEntry.directory("/home/nonroot", uid=65532, gid=65532),
            ]
        ),
        layer_from_entries([FileEntry.directory("/etc"), FileEntry(path="/etc/os-release", data=b"ID=tiny\n")]),
    ]


@pytest.fixture
def base_archive(tmp_path: Path, base_layers: list[bytes]) -> Path:
    path = tmp_path / "bases" / "base.tar"
    write_archive(path, tag=BASE_TAG, layers=base_layers, config=BASE_CONFIG)
    return path


@pytest.fixture
def context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "static" / "css").mkdir(parents=True)
    (ctx / "app.py").write_text("print('hello')\n")
    (ctx / "run.sh").write_text("#!/bin/sh\nexec python3 app.py\n")
    (ctx / "run.sh").chmod(0o755)
    (ctx / "static" / "index.html").write_text("<h1>hi</h1>\n")
    (ctx / "static" / "css" / "site.css").write_text("h1 {}\n")
    return ctx


class Builder:
    def __init__(self, tmp_path: Path, context: Path, base_archive: Path) -> None:
        self.context = context
        self.base_archive = base_archive
        self.out = tmp_path / "images"
        self.resolved: list[str] = []

    def resolve(self, ref: str) -> Path:
        self.resolved.append(ref)
        if ref != BASE_TAG:
            raise KeyError(ref)
        return self.base_archive

    def build(self, dockerfile: str, repository: str = "innerloop.local/shop") -> BuiltImage:
        path = self.context / "Dockerfile"
        path.write_text(dockerfile)
        return build_image(
            context=self.context,
            dockerfile=path,
            repository=repository,
            resolve_base=self.resolve,
            out_dir=self.out,
        )


@pytest.fixture
def builder(tmp_path: Path, context: Path, base_archive: Path) -> Builder:
    return Builder(tmp_path, context, base_archive)


APP = f"""FROM {BASE_TAG}
WORKDIR /app
COPY app.py /app/app.py
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["python3", "/app/app.py"]
"""


class TestReadArchive:
    def test_reads_layers_and_runtime_config(self, base_archive: Path, base_layers: list[bytes]) -> None:
        base = read_archive(base_archive)
        assert base.layers == base_layers
        assert base.config == BASE_CONFIG.to_json()


class TestTag:
    def test_tag_is_the_repository_and_a_content_hash(self, builder: Builder) -> None:
        image = builder.build(APP)
        assert re.fullmatch(r"innerloop\.local/shop:[0-9a-f]{12}", image.tag)
        assert builder.resolved == [BASE_TAG]
        archive = Archive(image.archive)
        assert archive.manifest["RepoTags"] == [image.tag]

    def test_same_inputs_give_the_same_tag_and_archive(self, builder: Builder) -> None:
        first = builder.build(APP)
        first_bytes = first.archive.read_bytes()
        second = builder.build(APP)
        assert second == first
        assert second.archive.read_bytes() == first_bytes

    def test_changing_a_source_file_changes_the_tag(self, builder: Builder) -> None:
        first = builder.build(APP)
        (builder.context / "app.py").write_text("print('changed')\n")
        second = builder.build(APP)
        assert second.tag != first.tag
        assert second.archive != first.archive
        assert first.archive.exists()

    def test_changing_a_file_the_dockerignore_excludes_keeps_the_tag(self, builder: Builder) -> None:
        (builder.context / ".dockerignore").write_text("static/\n")
        first = builder.build(APP)
        (builder.context / "static" / "index.html").write_text("changed")
        assert builder.build(APP).tag == first.tag

    def test_changing_any_file_of_the_context_changes_the_tag(self, builder: Builder) -> None:
        # The tag hashes the inputs (as for every builder), not the output: no need to build to know it.
        first = builder.build(APP)
        (builder.context / "static" / "index.html").write_text("changed")
        assert builder.build(APP).tag != first.tag

    def test_changing_the_config_changes_the_tag(self, builder: Builder) -> None:
        first = builder.build(APP)
        assert builder.build(APP.replace("PORT=8080", "PORT=9090")).tag != first.tag

    def test_repository_with_a_registry_port(self, builder: Builder) -> None:
        image = builder.build(APP, repository="localhost:5000/team/shop")
        assert image.tag.startswith("localhost:5000/team/shop:")
        assert image.archive.parent == builder.out
        assert "/" not in image.archive.name
        assert image.archive.name == f"localhost_5000_team_shop-{image.tag.rsplit(':', 1)[1]}.tar"


class TestLayers:
    def test_base_layers_then_one_app_layer(self, builder: Builder, base_layers: list[bytes]) -> None:
        archive = Archive(builder.build(APP).archive)
        assert archive.layers[:2] == base_layers
        assert len(archive.layers) == 3
        assert archive.config["rootfs"]["diff_ids"] == [
            f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in archive.layers
        ]

    def test_copied_file_lands_at_its_destination(self, builder: Builder) -> None:
        layer = Archive(builder.build(APP).archive).app_layer()
        assert set(layer) == {"app", "app/app.py"}
        info, data = layer["app/app.py"]
        assert data == b"print('hello')\n"
        assert info.mtime == 0
        assert (info.uid, info.gid) == (0, 0)
        assert layer["app"][0].isdir()

    def test_copy_into_the_workdir_with_dot(self, builder: Builder) -> None:
        layer = Archive(builder.build(f"FROM {BASE_TAG}\nWORKDIR /app\nCOPY app.py .\n").archive).app_layer()
        assert layer["app"][0].isdir()
        assert layer["app/app.py"][1] == b"print('hello')\n"

    def test_copy_onto_the_workdir_itself_puts_the_file_inside(self, builder: Builder) -> None:
        layer = Archive(builder.build(f"FROM {BASE_TAG}\nWORKDIR /app\nCOPY app.py /app\n").archive).app_layer()
        assert layer["app"][0].isdir()
        assert layer["app/app.py"][1] == b"print('hello')\n"

    def test_copy_file_to_a_new_name(self, builder: Builder) -> None:
        layer = Archive(builder.build(f"FROM {BASE_TAG}\nCOPY app.py /srv/main.py\n").archive).app_layer()
        assert set(layer) == {"srv", "srv/main.py"}

    def test_copy_several_files_and_a_directory(self, builder: Builder) -> None:
        dockerfile = f"FROM {BASE_TAG}\nWORKDIR /app\nCOPY app.py run.sh ./\nCOPY static /app/web\n"
        layer = Archive(builder.build(dockerfile).archive).app_layer()
        assert set(layer) == {
            "app",
            "app/app.py",
            "app/run.sh",
            "app/web",
            "app/web/index.html",
            "app/web/css",
            "app/web/css/site.css",
        }
        assert layer["app/run.sh"][0].mode == 0o755
        assert layer["app/web/css/site.css"][1] == b"h1 {}\n"
        assert layer["app/web/css"][0].isdir()

    def test_parent_directories_are_created(self, builder: Builder) -> None:
        layer = Archive(builder.build(f"FROM {BASE_TAG}\nCOPY app.py /opt/shop/bin/\n").archive).app_layer()
        assert set(layer) == {"opt", "opt/shop", "opt/shop/bin", "opt/shop/bin/app.py"}
        assert all(layer[d][0].isdir() for d in ("opt", "opt/shop", "opt/shop/bin"))

    def test_workdir_exists_even_without_copies(self, builder: Builder) -> None:
        layer = Archive(builder.build(f"FROM {BASE_TAG}\nWORKDIR /data/work\n").archive).app_layer()
        assert set(layer) == {"data", "data/work"}

    def test_symlink_in_a_copied_directory_stays_a_symlink(self, builder: Builder) -> None:
        (builder.context / "static" / "latest.css").symlink_to("css/site.css")
        layer = Archive(builder.build(f"FROM {BASE_TAG}\nCOPY static /web\n").archive).app_layer()
        info, _ = layer["web/latest.css"]
        assert info.issym()
        assert info.linkname == "css/site.css"


class TestConfig:
    def test_inherits_env_user_workdir_and_cmd(self, builder: Builder) -> None:
        archive = Archive(builder.build(f"FROM {BASE_TAG}\nCOPY app.py /srv/app.py\n").archive)
        assert archive.runtime == {
            "Cmd": ["/bin/sh"],
            "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
            "User": "65532",
            "WorkingDir": "/home/nonroot",
        }

    def test_dockerfile_values_override_inherited_ones(self, builder: Builder) -> None:
        dockerfile = f"FROM {BASE_TAG}\nWORKDIR /app\nUSER 1000:1000\nENV LANG=en_US.UTF-8 PORT=8080\nLABEL team=web\n"
        runtime = Archive(builder.build(dockerfile).archive).runtime
        assert runtime["User"] == "1000:1000"
        assert runtime["WorkingDir"] == "/app"
        assert runtime["Env"] == ["PATH=/usr/bin:/bin", "LANG=en_US.UTF-8", "PORT=8080"]
        assert runtime["Labels"] == {"team": "web"}

    def test_entrypoint_resets_the_inherited_cmd(self, builder: Builder) -> None:
        runtime = Archive(builder.build(APP).archive).runtime
        assert runtime["Entrypoint"] == ["python3", "/app/app.py"]
        assert "Cmd" not in runtime

    def test_cmd_given_with_the_entrypoint_is_kept(self, builder: Builder) -> None:
        runtime = Archive(builder.build(APP + 'CMD ["--debug"]\n').archive).runtime
        assert runtime["Entrypoint"] == ["python3", "/app/app.py"]
        assert runtime["Cmd"] == ["--debug"]

    def test_cmd_alone_replaces_the_inherited_cmd(self, builder: Builder) -> None:
        runtime = Archive(builder.build(f'FROM {BASE_TAG}\nCMD ["python3", "-V"]\n').archive).runtime
        assert runtime["Cmd"] == ["python3", "-V"]
        assert "Entrypoint" not in runtime


class TestRefusals:
    @pytest.mark.parametrize("source", ["../secret.txt", "static/../../secret.txt"])
    def test_copy_outside_the_context(self, builder: Builder, tmp_path: Path, source: str) -> None:
        (tmp_path / "secret.txt").write_text("secret")
        with pytest.raises(DockerfileError, match=r"Dockerfile:3: COPY source .* is outside the build context"):
            builder.build(f"FROM {BASE_TAG}\n\nCOPY {source} /x\n")
        assert not builder.out.exists() or not any(builder.out.iterdir())

    def test_symlink_pointing_outside_the_context(self, builder: Builder, tmp_path: Path) -> None:
        (tmp_path / "secret.txt").write_text("secret")
        (builder.context / "innocent").symlink_to(tmp_path / "secret.txt")
        with pytest.raises(DockerfileError, match="outside the build context"):
            builder.build(f"FROM {BASE_TAG}\nCOPY innocent /x\n")

    def test_missing_source(self, builder: Builder) -> None:
        with pytest.raises(DockerfileError, match=r"Dockerfile:2: COPY source nope.py not found"):
            builder.build(f"FROM {BASE_TAG}\nCOPY nope.py /x\n")

    def test_run(self, builder: Builder) -> None:
        with pytest.raises(Unsupported, match="RUN needs a real builder"):
            builder.build(f"FROM {BASE_TAG}\nRUN echo\n")
        assert builder.resolved == []

    def test_unknown_base_is_reported_by_the_resolver(self, builder: Builder) -> None:
        with pytest.raises(KeyError):
            builder.build("FROM somewhere/else:1\n")
        assert builder.resolved == ["somewhere/else:1"]


class TestDockerignore:
    def test_copy_dot_leaves_out_what_the_dockerignore_excludes(self, builder: Builder) -> None:
        ctx = builder.context
        (ctx / ".git").mkdir()
        (ctx / ".git" / "HEAD").write_text("ref\n")
        (ctx / ".env").write_text("SECRET=1\n")
        (ctx / ".innerloop" / "run").mkdir(parents=True)
        (ctx / ".innerloop" / "run" / "secret.env").write_text("TOKEN=1\n")
        (ctx / ".dockerignore").write_text(".env\n.git\n.innerloop/\nstatic/css\n!static/css/site.css\n")
        layer = Archive(builder.build(f"FROM {BASE_TAG}\nCOPY . /app/\n").archive).app_layer()
        assert {"app/app.py", "app/run.sh", "app/static/index.html", "app/static/css/site.css"} <= set(layer)
        assert {"app/Dockerfile", "app/.dockerignore"} <= set(layer)  # still sent, and copied unless excluded
        assert not [p for p in layer if ".env" in p or ".git" in p or ".innerloop" in p]

    def test_copying_an_excluded_file_is_not_found(self, builder: Builder) -> None:
        (builder.context / ".dockerignore").write_text("app.py\n")
        with pytest.raises(
            DockerfileError, match=r"Dockerfile:2: COPY source app.py not found .*\.dockerignore excludes"
        ):
            builder.build(f"FROM {BASE_TAG}\nCOPY app.py /app/\n")

    def test_wildcards(self, builder: Builder) -> None:
        (builder.context / "b.py").write_text("")
        layer = Archive(builder.build(f"FROM {BASE_TAG}\nCOPY *.py /app/\n").archive).app_layer()
        assert set(layer) == {"app", "app/app.py", "app/b.py"}


class TestOwnersAndModes:
    PASSWD = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
    GROUP = "root:x:0:\napp:x:1001:\nstaff:x:50:\n"

    @pytest.fixture
    def base_layers(self) -> list[bytes]:
        return [
            layer_from_entries(
                [
                    FileEntry.directory("/etc"),
                    FileEntry(path="/etc/passwd", data=self.PASSWD.encode()),
                    FileEntry(path="/etc/group", data=self.GROUP.encode()),
                    FileEntry.directory("/home"),
                    FileEntry.directory("/home/nonroot", uid=65532, gid=65532, mode=0o700),
                    FileEntry.directory("/usr"),
                    FileEntry.directory("/usr/bin"),
                ]
            )
        ]

    def test_chown_by_name_uses_the_base_users_and_groups(self, builder: Builder) -> None:
        layer = Archive(builder.build(f"FROM {BASE_TAG}\nCOPY --chown=app static /srv/\n").archive).app_layer()
        assert {(layer[p][0].uid, layer[p][0].gid) for p in ("srv", "srv/index.html", "srv/css")} == {(1000, 1001)}
        layer = Archive(builder.build(f"FROM {BASE_TAG}\nCOPY --chown=app:staff app.py /srv/\n").archive).app_layer()
        assert (layer["srv/app.py"][0].uid, layer["srv/app.py"][0].gid) == (1000, 50)

    def test_chown_by_number_without_group_uses_the_uid(self, builder: Builder) -> None:
        layer = Archive(builder.build(f"FROM {BASE_TAG}\nCOPY --chown=42 app.py /srv/\n").archive).app_layer()
        assert (layer["srv/app.py"][0].uid, layer["srv/app.py"][0].gid) == (42, 42)
        assert (layer["srv"][0].uid, layer["srv"][0].gid) == (0, 0)  # a parent it creates stays root's

    def test_an_unknown_user(self, builder: Builder) -> None:
        with pytest.raises(
            DockerfileError, match=r"Dockerfile:2: COPY --chown: the base image's /etc/passwd has no user 'nobody'"
        ):
            builder.build(f"FROM {BASE_TAG}\nCOPY --chown=nobody app.py /srv/\n")

    def test_chmod_applies_to_files_and_folders_copied(self, builder: Builder) -> None:
        layer = Archive(builder.build(f"FROM {BASE_TAG}\nCOPY --chmod=750 static /srv/\n").archive).app_layer()
        assert {layer[p][0].mode for p in ("srv/index.html", "srv/css", "srv/css/site.css")} == {0o750}

    def test_folders_of_the_base_keep_their_owner_and_a_file_lands_inside_them(self, builder: Builder) -> None:
        layer = Archive(
            builder.build(f"FROM {BASE_TAG}\nCOPY run.sh /usr/bin\nCOPY app.py /home/nonroot/\n").archive
        ).app_layer()
        assert set(layer) == {"usr/bin/run.sh", "home/nonroot/app.py"}


def test_add_of_a_local_archive_is_refused(builder: Builder) -> None:
    with tarfile.open(builder.context / "vendor.tar", "w") as tar:
        tar.add(builder.context / "app.py", arcname="app.py")
    with pytest.raises(Unsupported, match=r"Dockerfile:2: ADD of the archive vendor.tar .* needs a real builder"):
        builder.build(f"FROM {BASE_TAG}\nADD vendor.tar /opt/\n")
    layer = Archive(builder.build(f"FROM {BASE_TAG}\nADD app.py /opt/\n").archive).app_layer()
    assert "opt/app.py" in layer


def test_build_args_reach_the_image(builder: Builder, tmp_path: Path) -> None:
    path = builder.context / "Dockerfile"
    path.write_text(f"FROM {BASE_TAG}\nARG PORT=8080\nENV PORT=$PORT\n")
    request = BuildRequest(
        context=builder.context,
        dockerfile=path,
        repository="innerloop.local/shop",
        build_args={"PORT": "9090"},
        out_dir=tmp_path / "o",
    )
    image = BuiltinBuilder(bases=_Bases(builder.base_archive)).build(request, print)
    assert "PORT=9090" in Archive(image.archive).runtime["Env"]


class _Bases:
    def __init__(self, archive: Path) -> None:
        self.archive = archive

    def identity(self, ref: str) -> str:
        return ref

    def resolve(self, ref: str, **_kwargs: object) -> Path:
        return self.archive


def test_from_scratch_is_the_empty_base_and_nothing_is_fetched(builder: Builder) -> None:
    """`FROM scratch` + a static binary, as Go services ship: one layer, no base asked for (it was fetched
    as an image named `scratch` and failed with "manifest unknown")."""
    (builder.context / "app.py").write_text("a static binary stands here\n")
    image = builder.build('FROM scratch\nCOPY app.py /server\nUSER 65532\nENTRYPOINT ["/server"]\n')
    assert builder.resolved == []
    base = read_archive(image.archive)
    assert len(base.layers) == 1
    assert base.config["Entrypoint"] == ["/server"]
    assert base.config["User"] == "65532"
    with tarfile.open(fileobj=io.BytesIO(base.layers[0])) as layer:
        assert "server" in layer.getnames()
