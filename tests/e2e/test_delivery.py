"""delivery's paths for real: the registry path against Debian's docker-registry (distribution 2.8) and skopeo.

Each registry test starts its own registry on 127.0.0.1 with storage in
tmp_path and stops it by pid; one is behind htpasswd (bcrypt) auth. The
bundled cluster's image archives are what gets pushed. The bundled path
imports into the bundled cluster's containerd.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from innerloop.cluster.node import BundledCluster
from innerloop.delivery.choice import RegistryTarget
from innerloop.delivery.deliver import BundledImport, DeliveryError, RegistryPush
from innerloop.oci.archive import BuiltImage, FileEntry, ImageConfig, layer_from_entries, write_archive

from .kube import eventually, free_port


@dataclass(frozen=True)
class Registry:
    host: str
    storage: Path


def _start_registry(tmp_path: Path, *, htpasswd: str | None = None) -> Iterator[Registry]:
    port = free_port()
    storage = tmp_path / "registry-storage"
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(storage)}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "test-only"},
    }
    if htpasswd is not None:
        (tmp_path / "htpasswd").write_text(htpasswd)
        config["auth"] = {"htpasswd": {"realm": "innerloop-test", "path": str(tmp_path / "htpasswd")}}
    path = tmp_path / "registry.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(config))
    log = (tmp_path / "registry.log").open("wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(path)], stdout=log, stderr=subprocess.STDOUT)
    try:

        def answers() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
            except urllib.error.HTTPError as err:
                return err.code == 401  # up, and asking for credentials
            assert proc.poll() is None, (tmp_path / "registry.log").read_text()
            return True

        eventually(answers, timeout_s=30)
        yield Registry(host=f"127.0.0.1:{port}", storage=storage)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    yield from _start_registry(tmp_path)


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[Registry]:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=5)).decode()
    yield from _start_registry(tmp_path, htpasswd=f"dev:{hashed}\n")


def _archive(bundled_cluster: BundledCluster, name: str) -> BuiltImage:
    info = bundled_cluster.info()
    assert info is not None
    tag = info.images[name]
    archive = bundled_cluster.paths.images / (tag.rsplit("/", 1)[-1].replace(":", "-") + ".tar")
    assert archive.exists(), archive
    return BuiltImage(tag=tag, archive=archive)


def _docker_config(folder: Path, auths: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"auths": {host: {"auth": base64.b64encode(cred.encode()).decode()} for host, cred in auths.items()}}
    (folder / "config.json").write_text(json.dumps(doc))
    return folder


def _push(registry: Registry, *, env: dict[str, str], messages: list[str] | None = None) -> RegistryPush:
    target = RegistryTarget(push=f"{registry.host}/team", pull=f"{registry.host}/team", insecure=True, source="test")
    report = messages.append if messages is not None else (lambda _m: None)
    return RegistryPush(target, env=env, home=Path("/nonexistent-home"), report=report)


def _base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
    env["DOCKER_CONFIG"] = str(tmp_path / "no-docker-config")  # no credentials unless a test writes some
    return env


def _skopeo_inspect(ref: str, *, authfile: Path | None = None) -> dict[str, object]:
    argv = ["skopeo", "inspect", "--tls-verify=false", "--no-tags"]
    if authfile is not None:
        argv += ["--authfile", str(authfile)]
    out = subprocess.run([*argv, f"docker://{ref}"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_push_returns_a_digest_reference_and_a_second_delivery_pushes_nothing(
    bundled_cluster: BundledCluster, registry: Registry, tmp_path: Path
) -> None:
    image = _archive(bundled_cluster, "busybox")
    messages: list[str] = []
    push = _push(registry, env=_base_env(tmp_path), messages=messages)

    ref = push.deliver(image)
    assert re.fullmatch(rf"{re.escape(registry.host)}/team/busybox@sha256:[0-9a-f]{{64}}", ref), ref
    assert push.copies == 1
    inspected = _skopeo_inspect(ref)
    assert inspected["Digest"] == ref.split("@", 1)[1]
    # The tag is there too, pointing at the same manifest.
    tag = image.tag.rsplit(":", 1)[1]
    assert _skopeo_inspect(f"{registry.host}/team/busybox:{tag}")["Digest"] == inspected["Digest"]

    again = _push(registry, env=_base_env(tmp_path), messages=messages)  # a new process would start like this
    assert again.deliver(image) == ref
    assert again.copies == 0
    assert messages[-1].endswith("is in the registry already")


def test_the_same_tag_holding_another_image_is_pushed_over(
    bundled_cluster: BundledCluster, registry: Registry, tmp_path: Path
) -> None:
    busybox = _archive(bundled_cluster, "busybox")
    pause = _archive(bundled_cluster, "pause")
    push = _push(registry, env=_base_env(tmp_path))
    first = push.deliver(busybox)
    # Same name and tag, other content (a non-content tag reused): the registry's copy is not trusted.
    second = push.deliver(BuiltImage(tag=busybox.tag, archive=pause.archive))
    assert push.copies == 2
    assert first.split("@")[0] == second.split("@")[0]
    assert first != second


def test_a_registry_behind_auth_refuses_without_credentials_in_one_clear_line(
    bundled_cluster: BundledCluster, auth_registry: Registry, tmp_path: Path
) -> None:
    image = _archive(bundled_cluster, "busybox")
    with pytest.raises(DeliveryError) as err:
        _push(auth_registry, env=_base_env(tmp_path)).deliver(image)
    message = str(err.value)
    assert message.startswith(f"registry {auth_registry.host} refused reading {auth_registry.host}/team/")
    assert f"Log in with `docker login {auth_registry.host}` or put credentials in ~/.docker/config.json" in message
    assert "\n" not in message

    env = _base_env(tmp_path)
    env["DOCKER_CONFIG"] = str(_docker_config(tmp_path / "wrong", {auth_registry.host: "dev:wrong"}))
    with pytest.raises(DeliveryError, match=r"unauthorized\. Log in with `docker login"):
        _push(auth_registry, env=env).deliver(image)


def test_a_registry_behind_auth_takes_the_credentials_of_a_docker_config(
    bundled_cluster: BundledCluster, auth_registry: Registry, tmp_path: Path
) -> None:
    image = _archive(bundled_cluster, "busybox")
    config = _docker_config(tmp_path / "docker", {auth_registry.host: "dev:s3cret"})
    env = _base_env(tmp_path)
    env["DOCKER_CONFIG"] = str(config)
    push = _push(auth_registry, env=env)
    ref = push.deliver(image)
    assert "@sha256:" in ref
    assert _skopeo_inspect(ref, authfile=config / "config.json")["Digest"] == ref.split("@", 1)[1]
    assert _push(auth_registry, env=env).deliver(image) == ref  # the skip check reads with the credentials too


def test_an_unreachable_registry_and_a_missing_skopeo_are_one_line_each(
    bundled_cluster: BundledCluster, tmp_path: Path
) -> None:
    image = _archive(bundled_cluster, "busybox")
    nobody = Registry(host=f"127.0.0.1:{free_port()}", storage=tmp_path)
    with pytest.raises(DeliveryError) as err:
        _push(nobody, env=_base_env(tmp_path)).deliver(image)
    assert str(err.value).startswith(f"cannot reach registry {nobody.host} (")
    assert "connection refused" in str(err.value)

    target = RegistryTarget(push=f"{nobody.host}/x", pull=f"{nobody.host}/x", insecure=True, source="test")
    missing = RegistryPush(target, env=_base_env(tmp_path), skopeo=str(tmp_path / "no-skopeo-here"))
    with pytest.raises(
        DeliveryError, match=r"needs skopeo: install skopeo \(apt install skopeo / brew install skopeo\)"
    ):
        missing.deliver(image)


def test_bundled_import_returns_the_tag_and_imports_only_when_absent(
    bundled_cluster: BundledCluster, tmp_path: Path
) -> None:
    tag = f"innerloop.test/delivery:{secrets.token_hex(4)}"
    layer = layer_from_entries([FileEntry(path="/hello", data=b"hello")])
    archive = tmp_path / "image.tar"
    write_archive(archive, tag=tag, layers=[layer], config=ImageConfig(cmd=["/hello"]))
    messages: list[str] = []
    delivery = BundledImport(bundled_cluster, report=messages.append)
    try:
        assert delivery.deliver(BuiltImage(tag=tag, archive=archive)) == tag
        assert messages == [f"importing {tag} into the bundled cluster"]
        assert tag in bundled_cluster.ctr("images", "ls", "-q").stdout.split()
        assert delivery.deliver(BuiltImage(tag=tag, archive=archive)) == tag
        assert len(messages) == 1  # present: not imported again
    finally:
        bundled_cluster.ctr("images", "rm", tag)
