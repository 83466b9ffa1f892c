"""The image builders for real, without a cluster: buildah, podman, a custom command and the built-in one.

A throwaway registry (Debian's ``docker-registry``, distribution 2.8, on
127.0.0.1 and a free port, storage in the test's folder) serves the bundled
busybox base, pushed there with skopeo; the builders pull ``FROM`` it as
they would from any registry, through a ``registries.conf`` that marks it
insecure (plain HTTP), the user's own way. Container storage is a
``storage.conf`` under the test's folder (``CONTAINERS_STORAGE_CONF``, and
``CONTAINERS_CONF`` for podman's scratch folders), so nothing is left in
/var/lib/containers.

What is proven: a Dockerfile with ``ARG``, a ``RUN`` that writes a file, a
multi-stage ``COPY --from``, ``--target`` and a ``.dockerignore`` that keeps
``.env`` and ``.git/`` out builds with buildah and with podman into a
docker-archive tagged ``<repository>:<input hash>``; the RUN output (with
the build arg) is in a layer, the ignored files are in none, the stage past
the target was not built; a second build of unchanged inputs returns at
once without running the tool, a changed input rebuilds; ``auto`` sends that
Dockerfile to buildah and says why. A custom command gets IMAGE, IMAGE_ARCHIVE
and the build args, its archive is retagged, and one that writes nothing is
one clear error. The built-in builder honours the ``.dockerignore``,
``--chown`` (by name, from the base's /etc/passwd) and ``--chmod``, fetches a
base from the registry with skopeo, and skopeo can push what it wrote.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from innerloop.builders.bases import BaseImages
from innerloop.builders.choice import build as build_with_choice
from innerloop.builders.custom import CustomBuilder
from innerloop.builders.image import BuiltinBuilder
from innerloop.builders.request import BuildError, BuildRequest
from innerloop.builders.tools import TOOLS, ToolBuilder
from innerloop.cluster.images import ClusterImages
from innerloop.cluster.paths import ClusterPaths
from innerloop.config import Service, load_config
from innerloop.engine.plan import PlanError
from innerloop.engine.sources import build_service_image
from innerloop.oci.archive import BuiltImage

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
SKOPEO = shutil.which("skopeo")

needs_registry = pytest.mark.skipif(
    not Path(REGISTRY).exists() or SKOPEO is None,
    reason="needs Debian's docker-registry and skopeo (apt install docker-registry skopeo)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker-registry on 127.0.0.1:<free port>, killed at the end; its address."""
    if not Path(REGISTRY).exists():
        pytest.skip("needs Debian's docker-registry (apt install docker-registry)")
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"docker-registry did not start: {(root / 'registry.log').read_text()}"
                    ) from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def busybox_archive() -> Path:
    return ClusterImages(paths=ClusterPaths.from_env(), report=lambda _m: None).busybox().archive


@pytest.fixture(scope="module")
def busybox_ref(registry: str, busybox_archive: Path) -> str:
    """The bundled busybox, pushed to the registry as library/busybox:1.35."""
    assert SKOPEO is not None
    ref = f"{registry}/library/busybox:1.35"
    subprocess.run(
        [SKOPEO, "copy", "--quiet", "--dest-tls-verify=false", f"docker-archive:{busybox_archive}", f"docker://{ref}"],
        check=True,
        capture_output=True,
    )
    return ref


@pytest.fixture(scope="module")
def containers_env(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Storage and registries for buildah/podman/skopeo under a temporary folder, set the user's way (env)."""
    root = tmp_path_factory.mktemp("containers")
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n'
    )
    # podman's own scratch places (libpod's tmp_dir, network configs) under the same folder.
    (root / "containers.conf").write_text(
        f'[engine]\ntmp_dir = "{root / "libpod"}"\nvolume_path = "{root / "volumes"}"\n'
        f'[network]\nnetwork_config_dir = "{root / "networks"}"\n'
    )
    (root / "registries.conf").write_text(
        f'unqualified-search-registries = []\n[[registry]]\nlocation = "{registry}"\ninsecure = true\n'
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTAINERS_STORAGE_CONF", str(root / "storage.conf"))
        patch.setenv("CONTAINERS_REGISTRIES_CONF", str(root / "registries.conf"))
        patch.setenv("CONTAINERS_CONF", str(root / "containers.conf"))
        yield root
    shutil.rmtree(root, ignore_errors=True)


class Archive:
    """A docker-archive opened for assertions: its tags, config and every layer's files."""

    def __init__(self, path: Path) -> None:
        with tarfile.open(path) as tar:
            manifest = json.loads(self._read(tar, "manifest.json"))[0]
            self.tags: list[str] = manifest["RepoTags"]
            self.config: dict[str, Any] = json.loads(self._read(tar, manifest["Config"]))
            self.layers: list[dict[str, tuple[tarfile.TarInfo, bytes]]] = []
            for name in manifest["Layers"]:
                with tarfile.open(fileobj=io.BytesIO(self._read(tar, name))) as layer:
                    files = {}
                    for member in layer.getmembers():
                        handle = layer.extractfile(member) if member.isreg() else None
                        files[member.name.removeprefix("./").rstrip("/")] = (member, handle.read() if handle else b"")
                    self.layers.append(files)

    @staticmethod
    def _read(tar: tarfile.TarFile, name: str) -> bytes:
        handle = tar.extractfile(name)
        assert handle is not None, name
        return handle.read()

    def paths(self) -> set[str]:
        return {p for layer in self.layers for p in layer}

    def file(self, path: str) -> tuple[tarfile.TarInfo, bytes]:
        for layer in reversed(self.layers):
            if path in layer:
                return layer[path]
        raise KeyError(path)


def write_app(context: Path, base: str) -> None:
    (context / ".git").mkdir(parents=True)
    (context / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (context / ".env").write_text("DATABASE_PASSWORD=hunter2\n")
    (context / "main.py").write_text("print('hello')\n")
    (context / ".dockerignore").write_text(".env\n.git/\n")
    (context / "Dockerfile").write_text(
        f"ARG BASE={base}\n"
        "FROM ${BASE} AS build\n"
        "ARG GREETING=hello\n"
        'RUN echo "$GREETING from RUN" > /tmp/greeting.txt\n'
        "FROM ${BASE} AS app\n"
        "COPY --from=build /tmp/greeting.txt /app/greeting.txt\n"
        "COPY . /app/src/\n"
        'CMD ["/bin/sh", "-c", "cat /app/greeting.txt"]\n'
        "FROM app AS debug\n"
        "RUN echo debug > /app/debug.txt\n"
    )


def request_for(context: Path, out: Path, **changes: Any) -> BuildRequest:
    fields: dict[str, Any] = {
        "context": context,
        "dockerfile": context / "Dockerfile",
        "repository": "innerloop.local/shop",
        "build_args": {"GREETING": "bonjour"},
        "target": "app",
        "out_dir": out,
    }
    fields.update(changes)
    return BuildRequest(**fields)


def assert_app_image(image: BuiltImage) -> Archive:
    archive = Archive(image.archive)
    assert archive.tags == [image.tag]
    assert image.tag.startswith("innerloop.local/shop:")
    # The RUN step ran, with the build arg, and its output came through COPY --from.
    assert archive.file("app/greeting.txt")[1] == b"bonjour from RUN\n"
    paths = archive.paths()
    assert {"app/src/main.py", "app/src/Dockerfile", "app/src/.dockerignore"} <= paths
    assert not any(p.endswith(".env") or "/.git" in p for p in paths), sorted(paths)
    assert "app/debug.txt" not in paths  # the stage after the target was not built
    assert archive.config["config"]["Cmd"] == ["/bin/sh", "-c", "cat /app/greeting.txt"]
    return archive


@needs_registry
@pytest.mark.parametrize("tool", ["buildah", "podman"])
def test_a_real_builder_builds_run_multi_stage_target_and_dockerignore(
    tool: str, busybox_ref: str, containers_env: Path, tmp_path: Path
) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (apt install {tool})")
    context = tmp_path / "shop"
    write_app(context, busybox_ref)
    builder = ToolBuilder(TOOLS[tool])
    lines: list[str] = []
    image = builder.build(request_for(context, tmp_path / "out"), lines.append)
    assert_app_image(image)
    assert any(f"with {tool}" in line for line in lines)
    assert any((containers_env / "graph").iterdir())  # the storage the test named was used

    # Unchanged inputs: the archive is returned without running the tool at all.
    stamp = image.archive.stat().st_mtime_ns
    started = time.monotonic()
    again = ToolBuilder(TOOLS[tool], run=_fail_if_run).build(request_for(context, tmp_path / "out"), lines.append)
    assert again == image
    assert time.monotonic() - started < 1.0
    assert image.archive.stat().st_mtime_ns == stamp

    # A file the .dockerignore excludes does not count; a file it keeps does.
    (context / ".env").write_text("DATABASE_PASSWORD=changed\n")
    assert ToolBuilder(TOOLS[tool], run=_fail_if_run).build(request_for(context, tmp_path / "out"), print) == image
    (context / "main.py").write_text("print('changed')\n")
    changed = builder.build(request_for(context, tmp_path / "out"), lines.append)
    assert changed.tag != image.tag
    assert Archive(changed.archive).file("app/src/main.py")[1] == b"print('changed')\n"


def _fail_if_run(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"the builder ran {args}: unchanged inputs must not rebuild")


@needs_registry
def test_auto_sends_a_dockerfile_with_run_to_a_real_builder_and_says_why(
    busybox_ref: str, containers_env: Path, tmp_path: Path
) -> None:
    if shutil.which("buildah") is None:
        pytest.skip("needs buildah (apt install buildah)")
    context = tmp_path / "shop"
    write_app(context, busybox_ref)
    builtin = BuiltinBuilder(bases=BaseImages(bundled={}, cache=tmp_path / "bases"))
    lines: list[str] = []
    image, choice = build_with_choice(
        "auto", request_for(context, tmp_path / "out"), builtin=builtin, report=lines.append
    )
    assert choice.builder.name == "buildah"
    # The target stage copies from another stage: that is what the built-in builder refuses first.
    assert lines[0] == f"{context / 'Dockerfile'}:6: COPY --from needs a real builder: using buildah"
    assert_app_image(image)


CUSTOM_SCRIPT = """#!/bin/sh
set -eu
# A build script as a team would write one: it gets the tag and where to write the archive.
echo "building $IMAGE (also $EXPECTED_REF) from $BUILD_CONTEXT for '${PLATFORM}' with GREETING=$GREETING"
test "$IMAGE" = "$EXPECTED_REF"
test "$BUILD_CONTEXT" = "$(pwd)"
skopeo copy --quiet "docker-archive:$BASE_ARCHIVE" "docker-archive:$IMAGE_ARCHIVE:other.example/name:latest"
"""


@pytest.mark.skipif(SKOPEO is None, reason="needs skopeo (apt install skopeo)")
def test_custom_command_writes_the_archive_and_it_is_retagged(
    busybox_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = tmp_path / "shop"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\n")
    script = context / "build.sh"
    script.write_text(CUSTOM_SCRIPT)
    script.chmod(0o755)
    monkeypatch.setenv("BASE_ARCHIVE", str(busybox_archive))
    builder = CustomBuilder(["./build.sh"])
    image = builder.build(request_for(context, tmp_path / "out", target=None, platform="linux/amd64"), print)
    archive = Archive(image.archive)
    assert archive.tags == [image.tag]  # the script wrote another name; innerloop's tag is what is delivered
    assert "bin/sh" in archive.paths()
    # The command is an input: changing it rebuilds under another tag.
    other = CustomBuilder(["sh", "./build.sh"]).build(request_for(context, tmp_path / "out", target=None), print)
    assert other.tag != image.tag


def test_custom_command_that_writes_nothing_is_one_clear_error(tmp_path: Path) -> None:
    context = tmp_path / "shop"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(BuildError, match=r"succeeded but wrote nothing at \$IMAGE_ARCHIVE") as err:
        CustomBuilder(["true"]).build(request_for(context, tmp_path / "out"), print)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "out").glob("*.tar"))


def test_builtin_builder_honours_dockerignore_chown_and_chmod(busybox_archive: Path, tmp_path: Path) -> None:
    context = tmp_path / "shop"
    (context / "static" / "cache").mkdir(parents=True)
    (context / ".git").mkdir()
    (context / ".git" / "HEAD").write_text("ref\n")
    (context / ".env").write_text("SECRET=1\n")
    (context / "app.py").write_text("print(1)\n")
    (context / "run.sh").write_text("#!/bin/sh\n")
    (context / "static" / "index.html").write_text("<h1>hi</h1>\n")
    (context / "static" / "cache" / "x.bin").write_text("junk")
    (context / "static" / "cache" / "keep.txt").write_text("kept")
    (context / ".dockerignore").write_text(".env\n.git\n**/cache\n!static/cache/keep.txt\n")
    (context / "Dockerfile").write_text(
        "FROM innerloop.local/busybox:1.35\n"
        "WORKDIR /app\n"
        "COPY --chown=nonroot:nonroot . /app/\n"
        "COPY --chmod=0755 run.sh /usr/local/bin/run\n"
        "COPY --chown=1000:2000 --chmod=600 app.py /srv/\n"
    )
    builtin = BuiltinBuilder(
        bases=BaseImages(bundled={"innerloop.local/busybox:1.35": lambda: busybox_archive}, cache=tmp_path / "bases")
    )
    image = builtin.build(request_for(context, tmp_path / "out", build_args={}, target=None), print)
    archive = Archive(image.archive)
    app = archive.layers[-1]
    assert {"app/app.py", "app/static/index.html", "app/static/cache/keep.txt", "app/Dockerfile"} <= set(app)
    assert not {"app/.env", "app/.git", "app/.git/HEAD", "app/static/cache/x.bin"} & set(app)
    info, _ = app["app/app.py"]
    assert (info.uid, info.gid) == (65532, 65532)  # nonroot, looked up in the base's /etc/passwd
    assert app["usr/local/bin/run"][0].mode == 0o755
    srv = app["srv/app.py"][0]
    assert (srv.uid, srv.gid, srv.mode) == (1000, 2000, 0o600)
    # Folders the base has are left to the base (its /home/nonroot keeps its owner); new ones are created.
    assert "tmp" not in app and "usr" in app


@needs_registry
def test_builtin_builder_fetches_a_base_from_a_registry_and_skopeo_pushes_the_result(
    busybox_ref: str, containers_env: Path, tmp_path: Path
) -> None:
    context = tmp_path / "shop"
    context.mkdir()
    (context / "app.py").write_text("print(1)\n")
    (context / "Dockerfile").write_text(f"FROM {busybox_ref}\nCOPY app.py /app/\n")
    bases = BaseImages(bundled={}, cache=tmp_path / "bases")
    lines: list[str] = []
    image = BuiltinBuilder(bases=bases).build(
        request_for(context, tmp_path / "out", build_args={}, target=None), lines.append
    )
    assert any(line.startswith(f"fetching base {busybox_ref}") for line in lines)
    assert "bin/sh" in Archive(image.archive).paths()
    assert len(list((tmp_path / "bases").glob("*.tar"))) == 1
    assert SKOPEO is not None
    pushed = subprocess.run(
        [
            SKOPEO,
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"docker-archive:{image.archive}",
            f"docker://{busybox_ref.rsplit('/', 2)[0]}/shop:dev",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr


PROJECT = """version: 1
name: shop
services:
  shop:
    image:
      name: shop
      context: shop
      builder: {builder}
      target: app
      buildArgs:
        GREETING: bonjour
    manifests:
      files: [k8s]
"""


def project(tmp_path: Path, busybox_ref: str, builder: str) -> tuple[Path, Service]:
    write_app(tmp_path / "shop", busybox_ref)
    (tmp_path / "k8s").mkdir()
    (tmp_path / "innerloop.yaml").write_text(PROJECT.format(builder=builder))
    return tmp_path, load_config(tmp_path / "innerloop.yaml").services["shop"]


@needs_registry
def test_innerloop_yaml_builder_target_and_build_args_reach_the_build(
    busybox_ref: str, containers_env: Path, tmp_path: Path
) -> None:
    if shutil.which("buildah") is None:
        pytest.skip("needs buildah (apt install buildah)")
    root, service = project(tmp_path, busybox_ref, "auto")
    paths = ClusterPaths(cache=tmp_path / "cache", state=tmp_path / "state")
    lines: list[str] = []
    image, info = build_service_image(root, "shop", service, paths=paths, report=lines.append)
    assert lines[0] == f"shop: {root / 'shop' / 'Dockerfile'}:6: COPY --from needs a real builder: using buildah"
    assert image.tag.startswith("innerloop.local/shop:")
    assert image.archive.parent == paths.images / "apps"
    assert info.cmd == ["/bin/sh", "-c", "cat /app/greeting.txt"]
    assert_app_image(image)
    assert not (tmp_path / "cache" / "images" / "bases").exists()  # no bundled base was built for nothing


def test_a_named_builder_that_is_not_installed_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, service = project(tmp_path, "127.0.0.1:1/library/busybox:1.35", "nerdctl")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    paths = ClusterPaths(cache=tmp_path / "cache", state=tmp_path / "state")
    with pytest.raises(PlanError) as err:
        build_service_image(root, "shop", service, paths=paths)
    assert str(err.value) == (
        "services.shop.image: image.builder nerdctl: nerdctl is not installed: "
        "install nerdctl (with containerd and BuildKit)"
    )
