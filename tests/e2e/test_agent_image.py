"""The agent image built from a base image reference, for amd64 and arm64 nodes.

- arm64 for real on this amd64 machine: a Debian bookworm arm64 Python 3.11 root
  (``debootstrap --download-only --arch=arm64`` fetches and verifies the packages, ``dpkg-deb
  -x`` unpacks them; nothing runs and the host's dpkg architectures stay as they were) becomes a
  docker-archive; the agent runtime built from it has aarch64 ELF headers and its interpreter
  runs the agent's imports under ``qemu-aarch64-static``, named on the command line (no binfmt);
- the default base ``gcr.io/distroless/python3-debian12``, resolved through registries.conf to the
  bundled registry (where this module pushes a two-architecture index of Debian-layout Pythons),
  is fetched per architecture with skopeo, and the agent for an amd64+arm64 cluster is one OCI
  index pushed with its digest kept; each architecture pulled back is that architecture's code;
- ``innerloop up`` with a kubeconfig that does not name the bundled cluster builds the agent from
  that base, the dev-mode init container runs it by digest from the registry, and an edit syncs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from innerloop.builders.agent_image import (
    DEFAULT_AGENT_BASE,
    IMAGE_ROOT,
    AgentImageError,
    build_agent,
    build_agent_image,
    elf_machine,
    plan_agent,
    runtime_command,
    runtime_env,
)
from innerloop.cluster.base_images import SUITE, _host_mirrors
from innerloop.cluster.images import PYTHON_PACKAGES, ClusterImages
from innerloop.cluster.node import BundledCluster
from innerloop.cluster.paths import ClusterPaths
from innerloop.delivery import RegistryPush, RegistryTarget
from innerloop.oci.archive import FileEntry, ImageConfig, entries_from_directory, layer_from_entries, write_archive
from innerloop.oci.bytecode import with_bytecode
from innerloop.oci.layout import INDEX_MEDIA_TYPE, is_layout, write_index_layout

from .bookshop import copy_bookshop, running_up
from .kube import Kube, eventually
from .remote import remote_kubeconfig

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-aarch64-static") is None or shutil.which("debootstrap") is None,
    reason="needs qemu-user-static and debootstrap (`innerloop cluster up` installs them)",
)

ARM64_BUILD = "1"  # bump when what arm64_python() builds changes
AARCH64, X86_64 = 183, 62
BASE_REPOSITORY = "distroless/python3-debian12"


def _foreign_architectures() -> str:
    return subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True, check=False).stdout


def _debootstrap_version() -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "debootstrap"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


def arm64_python(paths: ClusterPaths) -> Path:
    """A docker-archive of Debian bookworm's python3.11 for arm64, laid out as ClusterImages.python() is.

    Cached under the image cache by its inputs (suite, packages, mirror, debootstrap version).
    """
    mirror = _host_mirrors().debian
    inputs = repr((ARM64_BUILD, SUITE, "arm64", PYTHON_PACKAGES, mirror, _debootstrap_version()))
    key = hashlib.sha256(inputs.encode()).hexdigest()[:12]
    archive = paths.images / f"python-3.11-arm64-{key}.tar"
    if archive.exists():
        return archive
    with tempfile.TemporaryDirectory(prefix="innerloop-arm64-") as tmp:
        download, root = Path(tmp) / "download", Path(tmp) / "root"
        subprocess.run(
            [
                "debootstrap",
                "--download-only",
                "--arch=arm64",
                "--variant=minbase",
                f"--include={','.join(PYTHON_PACKAGES)}",
                SUITE,
                str(download),
                mirror,
            ],
            capture_output=True,
            check=True,
            timeout=900,
        )
        debs = download / "var" / "cache" / "apt" / "archives"
        root.mkdir()
        for package in PYTHON_PACKAGES:
            [deb] = [p for p in debs.glob(f"{package}_*.deb") if p.name.endswith(("_arm64.deb", "_all.deb"))]
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        for doc in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian"):
            shutil.rmtree(root / doc, ignore_errors=True)
        entries = with_bytecode(entries_from_directory(root), under="/usr/lib/python3")
        passwd = FileEntry(path="/etc/passwd", data=b"root:x:0:0:root:/root:/sbin/nologin\n")
        layer = layer_from_entries([e for e in entries if e.path != "/etc/passwd"] + [passwd])
    config = ImageConfig(entrypoint=["/usr/bin/python3.11"], user="65532")
    write_archive(
        archive, tag=f"innerloop.local/python:3.11-arm64-{key}", layers=[layer], config=config, architecture="arm64"
    )
    return archive


def unpack(archive: Path, dest: Path) -> dict[str, object]:
    """Extract a docker-archive's layers into ``dest``; returns its image config."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        [entry] = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config: dict[str, object] = json.loads(tar.extractfile(entry["Config"]).read())  # type: ignore[union-attr]
        for name in entry["Layers"]:
            with tarfile.open(fileobj=tar.extractfile(name)) as layer:
                layer.extractall(dest, filter="tar")
    return config


def machine_of(path: Path) -> int | None:
    return elf_machine(path.resolve().read_bytes()[:64])


@pytest.fixture(scope="module")
def paths() -> ClusterPaths:
    return ClusterPaths.from_env()


@pytest.fixture(scope="module")
def arm64_archive(paths: ClusterPaths) -> Path:
    before = _foreign_architectures()
    archive = arm64_python(paths)
    assert _foreign_architectures() == before, "the host's dpkg architectures changed"
    return archive


@pytest.fixture(scope="module")
def amd64_archive(paths: ClusterPaths) -> Path:
    return ClusterImages(paths=paths, report=lambda _m: None).python().archive


@pytest.fixture(scope="module")
def registries_conf(bundled_cluster: BundledCluster) -> Iterator[Path]:
    """The bundled cluster's registries.conf (gcr.io/distroless -> <registry>/distroless), for skopeo here."""
    conf = bundled_cluster.paths.state / "config" / "containers" / "registries.conf"
    assert conf.is_file(), "`innerloop cluster up` writes registries.conf"
    saved = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    os.environ["CONTAINERS_REGISTRIES_CONF"] = str(conf)
    yield conf
    if saved is None:
        os.environ.pop("CONTAINERS_REGISTRIES_CONF", None)
    else:
        os.environ["CONTAINERS_REGISTRIES_CONF"] = saved


@pytest.fixture(scope="module")
def distroless_base(
    registry: str, amd64_archive: Path, arm64_archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """``<registry>/distroless/python3-debian12:latest``: an index of the amd64 and arm64 Debian-layout Pythons."""
    layout = write_index_layout(
        tmp_path_factory.mktemp("base") / "layout", ref="latest", archives=[amd64_archive, arm64_archive]
    )
    dest = f"{registry}/{BASE_REPOSITORY}:latest"
    subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "--quiet", "--all", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{layout.path}:{layout.ref}", f"docker://{dest}"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return dest


def test_the_arm64_runtime_is_aarch64_code_and_runs_the_agent_under_qemu(
    arm64_archive: Path, paths: ClusterPaths, tmp_path: Path
) -> None:
    image = build_agent_image(python_archive=arm64_archive, out_dir=paths.images, arch="arm64")
    config = unpack(image.archive, tmp_path / "root")
    assert config["architecture"] == "arm64"
    root = tmp_path / "root" / IMAGE_ROOT.lstrip("/")
    assert os.readlink(root / "lib" / "ld.so") == "ld-linux-aarch64.so.1"
    assert machine_of(root / "lib" / "ld.so") == AARCH64
    assert machine_of(root / "bin" / "python3") == AARCH64
    # The argv every node runs, through the emulator: the same loader path, library path and interpreter.
    argv = runtime_command(str(root))[:4]
    probe = "import innerloop.agent.main, innerloop.protocol.session, ssl, zlib, platform; print(platform.machine())"
    out = subprocess.run(
        ["qemu-aarch64-static", *argv, "-c", probe],
        capture_output=True,
        text=True,
        env={**runtime_env(str(root)), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "aarch64"
    # Not a lucky fallback to the host: the kernel cannot run these files (and no binfmt handler hands them to qemu).
    with pytest.raises(OSError) as refused:
        subprocess.run([*argv, "-c", "pass"], capture_output=True, env=runtime_env(str(root)), check=False)
    assert refused.value.errno == errno.ENOEXEC


def test_a_base_of_the_wrong_architecture_is_refused_in_one_line(amd64_archive: Path, tmp_path: Path) -> None:
    with pytest.raises(AgentImageError) as err:
        build_agent_image(python_archive=amd64_archive, out_dir=tmp_path, arch="arm64", what="python:test")
    assert str(err.value).startswith("python:test is a linux/amd64 image, the nodes need linux/arm64")


def test_the_default_base_through_registries_conf_gives_one_index_of_both_architectures(
    registry: str, distroless_base: str, registries_conf: Path, tmp_path: Path
) -> None:
    plan = plan_agent(bundled=False, registry=True, node_architectures=["arm64", "amd64"])
    assert plan.base == DEFAULT_AGENT_BASE and plan.index
    cold = ClusterPaths(cache=tmp_path / "cache", state=tmp_path / "state")  # nothing fetched or built yet
    said: list[str] = []
    started = time.monotonic()
    image = build_agent(plan, paths=cold, report=said.append)
    cold_s = time.monotonic() - started
    started = time.monotonic()
    assert build_agent(plan, paths=cold, report=said.append) == image
    warm_s = time.monotonic() - started
    print(f"agent image from {DEFAULT_AGENT_BASE}, amd64+arm64: cold {cold_s:.1f} s, warm {warm_s:.2f} s")
    assert is_layout(image.archive)
    fetched = [line for line in said if line.startswith(f"fetching base {DEFAULT_AGENT_BASE}")]
    assert len(fetched) == 2 and {"linux/amd64" in f for f in fetched} == {True, False}, said

    push = RegistryPush(RegistryTarget(push=registry, pull=registry, insecure=True, source="test"))
    reference = push.deliver(image)
    assert reference.startswith(f"{registry}/innerloop-agent@sha256:")
    copies = push.copies  # 0 when the registry (its storage is a cache) kept this index from an earlier run
    assert push.deliver(image) == reference and push.copies == copies  # the registry has that index: nothing pushed
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    index = json.loads(raw)
    assert index["mediaType"] == INDEX_MEDIA_TYPE
    assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == ["amd64", "arm64"]

    # What a node of each architecture pulls is its own code; the amd64 one runs here.
    for arch, machine in (("arm64", AARCH64), ("amd64", X86_64)):
        archive = tmp_path / f"pulled-{arch}.tar"
        subprocess.run(
            ["skopeo", "--override-arch", arch, "--override-os", "linux", "copy", "--quiet", "--src-tls-verify=false",
             f"docker://{reference}", f"docker-archive:{archive}"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        root = tmp_path / f"root-{arch}"
        assert unpack(archive, root)["architecture"] == arch
        runtime = root / IMAGE_ROOT.lstrip("/")
        assert machine_of(runtime / "lib" / "ld.so") == machine
        assert machine_of(runtime / "bin" / "python3") == machine
    runtime = tmp_path / "root-amd64" / IMAGE_ROOT.lstrip("/")
    if platform.machine() == "x86_64":
        out = subprocess.run(
            [*runtime_command(str(runtime))[:4], "-c", "import innerloop.agent.main; print('ok')"],
            capture_output=True, text=True, env=runtime_env(str(runtime)), check=False,
        )  # fmt: skip
        assert out.stdout.strip() == "ok", out.stderr


def test_up_on_a_remote_cluster_runs_the_agent_built_from_the_default_base(  # noqa: PLR0917 - pytest fixtures
    innerloop_cli: list[str],
    bundled_cluster: BundledCluster,
    kube: Kube,
    namespace: str,
    registry: str,
    distroless_base: str,
    registries_conf: Path,
    tmp_path: Path,
) -> None:
    kubeconfig = remote_kubeconfig(bundled_cluster, tmp_path / "team.kubeconfig")
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    storage = bundled_cluster.paths.state / "config" / "containers" / "storage.conf"
    env = {
        "KUBECONFIG": str(kubeconfig),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
        "CONTAINERS_STORAGE_CONF": str(storage),
    }
    app, ports = copy_bookshop(tmp_path / "bookshop", only=["backend"])
    log = tmp_path / "up.log"
    with running_up(
        innerloop_cli, app, ports, namespace=namespace, log=log, env=env, probe=("backend", "/books")
    ) as up:
        up.logged(f"agent: runtime from {DEFAULT_AGENT_BASE} for linux/amd64 (the nodes are amd64)")
        [deployment] = kube.get_json("deployments", "-n", namespace)["items"]
        [install] = [
            c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "innerloop-install"
        ]
        image = install["image"]
        assert image.startswith(f"{registry}/innerloop-agent@sha256:"), image
        digest = image.split("@", 1)[1]

        def install_pulled_by_digest() -> bool:
            pods = kube.get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/name=backend")["items"]
            statuses = [
                s
                for p in pods
                for s in p["status"].get("initContainerStatuses", [])
                if s["name"] == "innerloop-install"
            ]
            return bool(statuses) and all(s.get("imageID", "").endswith(digest) for s in statuses)

        eventually(install_pulled_by_digest, timeout_s=120)
        source = up.dir / "backend" / "app.py"
        source.write_text(source.read_text().replace('"hello from backend"', '"hello from a distroless agent"'))
        eventually(lambda: up.get("backend", "/books")["greeting"] == "hello from a distroless agent", interval_s=0.2)
