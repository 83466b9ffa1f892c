"""The bundled registry's pure parts: its config, containerd's hosts.toml, the KEP-1755 ConfigMap, what to push."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import yaml

from innerloop.cluster import components, registry
from innerloop.cluster.components import REGISTRY_PORT, ClusterSpec
from innerloop.cluster.host import DEBIAN_PACKAGES, services_not_started
from innerloop.cluster.node import ALL_DAEMONS, ClusterInfo
from innerloop.cluster.paths import ClusterPaths
from innerloop.cluster.progress import StepFailed
from innerloop.oci.archive import FileEntry, ImageConfig, layer_from_entries, write_archive

ADDRESS = f"192.168.56.10:{REGISTRY_PORT}"


@pytest.fixture
def spec(tmp_path: Path) -> ClusterSpec:
    return ClusterSpec(
        node="dev-box",
        node_ip="192.168.56.10",
        paths=ClusterPaths(cache=tmp_path / "ca che", state=tmp_path / "st ate"),
        kubernetes_bin=tmp_path / "bin" / "kubernetes",
        etcd_bin=tmp_path / "bin" / "etcd",
        pause_image="innerloop.local/pause:3.10-abc",
    )


class TestConfig:
    def test_open_registry(self, tmp_path: Path) -> None:
        doc = yaml.safe_load(registry.registry_config(addr="10.0.0.1:5001", storage=tmp_path / "s"))
        assert doc["version"] == "0.1"
        assert doc["http"]["addr"] == "10.0.0.1:5001"
        assert doc["storage"]["filesystem"] == {"rootdirectory": str(tmp_path / "s")}
        assert "auth" not in doc
        # Plain HTTP: no TLS section, or containerd's http:// hosts would not reach it.
        assert "tls" not in doc["http"]
        assert "delete" not in doc["storage"]

    def test_htpasswd_auth(self, tmp_path: Path) -> None:
        doc = yaml.safe_load(
            registry.registry_config(addr=":5002", storage=tmp_path, htpasswd=tmp_path / "htpasswd", realm="tests")
        )
        assert doc["auth"] == {"htpasswd": {"realm": "tests", "path": str(tmp_path / "htpasswd")}}

    def test_access_log_is_off(self, tmp_path: Path) -> None:
        doc = yaml.safe_load(registry.registry_config(addr=":5001", storage=tmp_path))
        assert doc["log"]["accesslog"] == {"disabled": True}
        assert doc["log"]["level"] == "warn"

    def test_bundled_one_listens_on_the_node_ip_with_storage_in_the_cache(self, spec: ClusterSpec) -> None:
        doc = yaml.safe_load(registry.bundled_config(spec))
        assert doc["http"]["addr"] == ADDRESS == spec.registry
        storage = Path(doc["storage"]["filesystem"]["rootdirectory"])
        assert storage == spec.paths.registry_storage
        assert storage.is_relative_to(spec.paths.cache)
        assert "auth" not in doc

    def test_component(self, spec: ClusterSpec) -> None:
        c = registry.component(spec)
        assert c.name == "registry"
        assert c.argv == ["/usr/bin/docker-registry", "serve", str(spec.paths.state / "config" / "registry.yml")]
        # Its pid and log live with the other daemons', in the state that down removes.
        assert registry.config_path(spec).is_relative_to(spec.paths.state)

    def test_cluster_status_lists_it(self) -> None:
        assert "registry" in ALL_DAEMONS


class TestContainerdHosts:
    def test_config_path_is_set_in_the_cri_plugin(self, spec: ClusterSpec) -> None:
        cri = tomllib.loads(components.containerd_config(spec))["plugins"]["io.containerd.grpc.v1.cri"]
        assert cri["registry"] == {"config_path": str(spec.paths.state / "config" / "certs.d")}
        # Both ways of configuring registries at once are refused by containerd.
        assert "mirrors" not in cri["registry"]
        assert "configs" not in cri["registry"]

    def test_own_address_is_a_plain_http_host(self) -> None:
        files = registry.containerd_hosts(ADDRESS, mirror_docker_hub=False)
        assert list(files) == [ADDRESS]
        doc = tomllib.loads(files[ADDRESS])
        # containerd 1.6 needs the host entry for plain HTTP; server alone was resolved over https.
        assert doc == {
            "server": f"http://{ADDRESS}",
            "host": {f"http://{ADDRESS}": {"capabilities": ["pull", "resolve"]}},
        }

    def test_docker_hub_is_mirrored_to_it(self) -> None:
        files = registry.containerd_hosts(ADDRESS, mirror_docker_hub=True)
        assert sorted(files) == sorted([ADDRESS, "docker.io"])
        doc = tomllib.loads(files["docker.io"])
        assert doc["server"] == "https://registry-1.docker.io"
        assert doc["host"] == {f"http://{ADDRESS}": {"capabilities": ["pull", "resolve"]}}

    def test_mirrors_keep_their_order(self) -> None:
        doc = tomllib.loads(registry.hosts_toml(server="https://r.example", mirrors=("http://a:1", "http://b:2")))
        assert list(doc["host"]) == ["http://a:1", "http://b:2"]
        # A host address with a port is one quoted key, not a dotted path.
        assert all(set(h) == {"capabilities"} for h in doc["host"].values())


class TestLocalRegistryHosting:
    def test_kep_1755_configmap(self) -> None:
        doc = yaml.safe_load(registry.local_registry_hosting(ADDRESS))
        assert doc["apiVersion"] == "v1"
        assert doc["kind"] == "ConfigMap"
        assert doc["metadata"] == {"name": "local-registry-hosting", "namespace": "kube-public"}
        assert list(doc["data"]) == ["localRegistryHosting.v1"]
        hosting = yaml.safe_load(doc["data"]["localRegistryHosting.v1"])
        assert hosting["host"] == ADDRESS
        assert hosting["hostFromContainerRuntime"] == ADDRESS
        assert hosting["hostFromClusterNetwork"] == ADDRESS
        assert hosting["help"].startswith("https://")

    def test_value_is_a_string_of_yaml(self) -> None:
        # Tools (Tilt, Skaffold, ctlptl) parse the value as a YAML document of its own.
        doc = yaml.safe_load(registry.local_registry_hosting(ADDRESS))
        assert isinstance(doc["data"]["localRegistryHosting.v1"], str)


class TestDigests:
    def test_config_digest_of_v2s2_and_oci_manifests(self) -> None:
        docker = "application/vnd.docker.distribution.manifest.v2+json"
        for media in (docker, "application/vnd.oci.image.manifest.v1+json"):
            manifest = {"schemaVersion": 2, "mediaType": media, "config": {"digest": "sha256:ab"}, "layers": []}
            assert registry.manifest_config_digest(manifest) == "sha256:ab"

    def test_an_index_has_no_config(self) -> None:
        index = {"schemaVersion": 2, "manifests": [{"digest": "sha256:cd", "platform": {"architecture": "amd64"}}]}
        assert registry.manifest_config_digest(index) is None

    def test_archive_config_digest_is_the_image_id(self, tmp_path: Path) -> None:
        archive = tmp_path / "img.tar"
        layer = layer_from_entries([FileEntry(path="hello", data=b"hi")])
        image_id = write_archive(archive, tag="innerloop.local/x:1", layers=[layer], config=ImageConfig(cmd=["/x"]))
        assert registry.archive_config_digest(archive) == f"sha256:{image_id}"

    def test_not_an_archive(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.tar"
        bad.write_bytes(b"not a tar")
        with pytest.raises(StepFailed, match=r"bad\.tar is not a docker-save archive"):
            registry.archive_config_digest(bad)


class TestPushMissing:
    def test_pushes_only_what_differs(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        archives = {}
        for name, data in (("library/same:1", b"a"), ("library/changed:1", b"b"), ("library/absent:1", b"c")):
            archives[name] = tmp_path / f"{data.decode()}.tar"
            layer = layer_from_entries([FileEntry(path="f", data=data)])
            write_archive(archives[name], tag=f"innerloop.local/{name}", layers=[layer], config=ImageConfig())
        in_registry = {
            f"{ADDRESS}/library/same:1": registry.archive_config_digest(archives["library/same:1"]),
            f"{ADDRESS}/library/changed:1": "sha256:0000",
        }
        pushed: list[tuple[Path, str]] = []
        monkeypatch.setattr(registry, "pushed_config_digest", lambda ref, creds=None: in_registry.get(ref))
        monkeypatch.setattr(registry, "push_archive", lambda archive, ref, creds=None: pushed.append((archive, ref)))
        lines: list[str] = []
        refs = registry.push_missing(ADDRESS, archives, report=lines.append)
        assert refs == [f"{ADDRESS}/library/changed:1", f"{ADDRESS}/library/absent:1"]
        assert pushed == [(archives["library/changed:1"], refs[0]), (archives["library/absent:1"], refs[1])]
        assert len(lines) == 2

    def test_published_names_look_like_public_images(self) -> None:
        assert registry.PUBLISHED["busybox"] == "library/busybox:1.35"
        assert registry.PUBLISHED["python"] == "distroless/python3:3.11"


class TestInfo:
    def test_registry_round_trips_through_json(self, tmp_path: Path) -> None:
        info = ClusterInfo(kubeconfig=tmp_path / "k", kubectl=tmp_path / "kubectl", images={}, registry=ADDRESS)
        assert json.loads(info.to_json())["registry"] == ADDRESS


class TestPackages:
    def test_registry_builders_and_their_helpers_are_installed(self) -> None:
        for pkg in ("docker-registry", "skopeo", "buildah", "podman", "crun", "fuse-overlayfs", "uidmap"):
            assert pkg in DEBIAN_PACKAGES

    def test_no_service_starts_while_installing(self, tmp_path: Path) -> None:
        policy = tmp_path / "policy-rc.d"
        with services_not_started(policy):
            assert policy.read_text().rstrip().endswith("exit 101")
            assert policy.stat().st_mode & 0o111
        assert not policy.exists()

    def test_removed_even_when_the_install_fails(self, tmp_path: Path) -> None:
        policy = tmp_path / "policy-rc.d"
        with pytest.raises(StepFailed), services_not_started(policy):
            raise StepFailed("apt-get install failed")
        assert not policy.exists()

    def test_an_admins_policy_is_left_alone(self, tmp_path: Path) -> None:
        policy = tmp_path / "policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 0\n")
        with services_not_started(policy):
            pass
        assert policy.read_text() == "#!/bin/sh\nexit 0\n"


def test_builders_resolve_public_names_to_the_bundled_registry() -> None:
    conf = tomllib.loads(registry.containers_registries_conf("192.0.2.2:5001"))
    assert conf["unqualified-search-registries"] == ["docker.io"]
    assert conf["short-name-mode"] == "permissive"
    by_prefix = {r.get("prefix", r["location"]): r for r in conf["registry"]}
    assert by_prefix["docker.io"] == {"prefix": "docker.io", "location": "192.0.2.2:5001", "insecure": True}
    assert by_prefix["gcr.io/distroless"]["location"] == "192.0.2.2:5001/distroless"
    assert by_prefix["192.0.2.2:5001"]["insecure"] is True


def test_builders_storage_stays_in_the_cache(tmp_path: Path) -> None:
    conf = tomllib.loads(registry.containers_storage_conf(graphroot=tmp_path / "g", runroot=tmp_path / "r"))
    assert conf["storage"] == {"driver": "overlay", "graphroot": str(tmp_path / "g"), "runroot": str(tmp_path / "r")}


def test_a_read_only_registry_is_in_maintenance_mode(tmp_path: Path) -> None:
    doc = yaml.safe_load(registry.registry_config(addr="127.0.0.1:1", storage=tmp_path, read_only=True))
    assert doc["storage"]["maintenance"] == {"readonly": {"enabled": True}}
    writable = yaml.safe_load(registry.registry_config(addr="127.0.0.1:1", storage=tmp_path))
    assert "maintenance" not in writable["storage"]
