"""An OCI registry beside the bundled cluster: distribution 2.8 (Debian's ``docker-registry``).

Why a real registry on a cluster that can import images with ``ctr``: it is
what every other cluster needs, so the registry delivery path is tested on
the real protocol (a push by skopeo, a pull by the kubelet through
containerd), and it is advertised the way kind and k3d advertise theirs
(KEP-1755, ConfigMap ``local-registry-hosting`` in ``kube-public``).

It listens on the node's address over plain HTTP, the same ``host:port``
from this machine, from containerd and from pods. containerd reaches it
through ``hosts.toml`` files (its CRI ``config_path``, read at every pull):
one for the registry's own address, one that makes it ``docker.io``'s
mirror, so a manifest that says ``image: python:3.11-slim`` pulls what was
pushed as ``library/python:3.11-slim`` (Docker Hub stays the fallback, as for
any mirror; it is unreachable here).

Storage is in the cache, not the cluster's state: what it holds is
content-addressed (blobs by digest), the base images pushed at ``up`` are
tens to hundreds of megabytes that would be compressed and pushed again at
every warm ``up`` otherwise, and ``down`` leaves the cache by design. Its
config, log and pid file are in the state directory, removed by ``down``.

The rendering functions are pure; :class:`LocalRegistry` runs an extra
registry by pid (tests use one behind htpasswd) and the ``push`` helpers call
skopeo.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import yaml

from innerloop.cluster.components import ClusterSpec, Component
from innerloop.cluster.daemons import Daemons
from innerloop.cluster.progress import Report, StepFailed

BINARY = "/usr/bin/docker-registry"
NAME = "registry"  # of the bundled one's pid and log files
DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"
KEP_1755_CONFIGMAP = "local-registry-hosting"
KEP_1755_HELP = "https://github.com/kubernetes/enhancements/tree/master/keps/sig-cluster-lifecycle/generic/1755-communicating-a-local-registry"

# What the bundled cluster publishes in its registry at `up`, under the names of the public images
# they stand in for: image key in ClusterImages -> repository:tag.
PUBLISHED = {
    "busybox": "library/busybox:1.35",
    "python": "distroless/python3:3.11",
}


# ---- pure rendering -----------------------------------------------------


def registry_config(
    *, addr: str, storage: Path, htpasswd: Path | None = None, realm: str = "innerloop", read_only: bool = False
) -> str:
    """A distribution 2.8 ``config.yml``: plain HTTP on ``addr``, filesystem storage, optional htpasswd auth.

    ``read_only`` is distribution's maintenance mode: pulls work, every push is refused.

    htpasswd entries must be bcrypt (``$2y$``/``$2b$``), the only scheme distribution accepts.
    """
    stored: dict[str, object] = {
        "filesystem": {"rootdirectory": str(storage)},
        "cache": {"blobdescriptor": "inmemory"},
    }
    if read_only:
        stored["maintenance"] = {"readonly": {"enabled": True}}
    doc: dict[str, object] = {
        "version": "0.1",
        # Access logs and per-request info would fill the log with every blob HEAD of every push.
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": stored,
        "http": {"addr": addr, "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    if htpasswd is not None:
        doc["auth"] = {"htpasswd": {"realm": realm, "path": str(htpasswd)}}
    return yaml.safe_dump(doc, sort_keys=False)


def hosts_toml(*, server: str, mirrors: tuple[str, ...] = ()) -> str:
    """containerd's ``certs.d/<host>/hosts.toml``: try each mirror (pull, resolve), then ``server``.

    ``server`` and mirrors are URLs with their scheme; ``http://`` is how containerd is told a
    registry has no TLS.
    """
    lines = [f'server = "{server}"', ""]
    for mirror in mirrors:
        lines += [f'[host."{mirror}"]', '  capabilities = ["pull", "resolve"]', ""]
    return "\n".join(lines)


def containerd_hosts(address: str, *, mirror_docker_hub: bool) -> dict[str, str]:
    """The ``hosts.toml`` files that make containerd pull from the plain-HTTP registry at ``address``.

    Keyed by the ``certs.d`` folder name (the registry host as image names spell it); for
    ``docker.io`` the registry is a mirror tried before Docker Hub. The registry's own name needs
    its ``[host]`` entry too: with ``server = "http://..."`` alone, containerd 1.6.20 still
    resolved over https ("Head https://...: http: server gave HTTP response to HTTPS client").
    """
    url = f"http://{address}"
    files = {address: hosts_toml(server=url, mirrors=(url,))}
    if mirror_docker_hub:
        files[DOCKER_HUB] = hosts_toml(server=DOCKER_HUB_SERVER, mirrors=(url,))
    return files


def containers_registries_conf(address: str) -> str:
    """registries.conf(5) for buildah, podman and skopeo on this machine: Docker Hub and distroless from here.

    There is no public registry to pull ``FROM python:3.11-slim`` from, so
    the names a real Dockerfile writes resolve to what the bundled registry
    holds (``library/...``, ``distroless/...``), over plain HTTP.
    """
    return f"""# Written by `innerloop cluster up`: builders on this machine pull public bases from {address}.
unqualified-search-registries = ["{DOCKER_HUB}"]
short-name-mode = "permissive"

[[registry]]
prefix = "{DOCKER_HUB}"
location = "{address}"
insecure = true

[[registry]]
prefix = "gcr.io/distroless"
location = "{address}/distroless"
insecure = true

[[registry]]
location = "{address}"
insecure = true
"""


def containers_storage_conf(*, graphroot: Path, runroot: Path) -> str:
    """storage.conf(5) that keeps builders' layers in innerloop's cache, not in /var/lib/containers.

    overlay, as containerd's snapshotter here: a rebuild after an edit takes ~3.5 s where vfs,
    which copies every layer for every step, took ~22 s (buildah, python:3.11-slim, measured
    on this machine under load). Its mounts last only while a build runs.
    """
    return f"""# Written by `innerloop cluster up`: builders' storage for this machine's tests and demo.
[storage]
driver = "overlay"
graphroot = "{graphroot}"
runroot = "{runroot}"
"""


def local_registry_hosting(address: str) -> str:
    """The KEP-1755 ConfigMap that tells tools where to push and what the cluster pulls."""
    hosting = {
        "host": address,
        "hostFromContainerRuntime": address,
        "hostFromClusterNetwork": address,
        "help": KEP_1755_HELP,
    }
    doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": KEP_1755_CONFIGMAP, "namespace": "kube-public"},
        "data": {"localRegistryHosting.v1": yaml.safe_dump(hosting, sort_keys=False)},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def config_path(spec: ClusterSpec) -> Path:
    return spec.paths.config / "registry.yml"


def bundled_config(spec: ClusterSpec) -> str:
    return registry_config(addr=spec.registry, storage=spec.paths.registry_storage)


def component(spec: ClusterSpec) -> Component:
    return Component(name=NAME, argv=[BINARY, "serve", str(config_path(spec))])


def manifest_config_digest(manifest: Mapping[str, object]) -> str | None:
    """The config digest of an image manifest (Docker v2s2 or OCI); None for an index or anything else."""
    config = manifest.get("config")
    if isinstance(config, dict) and isinstance(config.get("digest"), str):
        return str(config["digest"])
    return None


# ---- edges ----------------------------------------------------------------


def is_ready(address: str) -> bool:
    """GET /v2/ answers 200 (open) or 401 (auth required): the registry serves its API."""
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as resp:
            return int(resp.status) == 200
    except urllib.error.HTTPError as err:
        return err.code == 401
    except OSError:
        return False


def archive_config_digest(archive: Path) -> str:
    """The config digest of a docker-save archive, as a registry shows it once pushed."""
    try:
        with tarfile.open(archive) as tar:
            config_name = json.loads(_read(tar, "manifest.json"))[0]["Config"]
            return "sha256:" + hashlib.sha256(_read(tar, config_name)).hexdigest()
    except (OSError, KeyError, IndexError, ValueError, tarfile.TarError) as err:
        raise StepFailed(f"{archive} is not a docker-save archive ({err})") from err


def _read(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    if f is None:
        raise KeyError(f"{name} is not a file")
    return f.read()


def pushed_config_digest(ref: str, *, creds: str | None = None) -> str | None:
    """The config digest of ``ref`` (``host:port/name:tag``) in a plain-HTTP registry; None if absent."""
    cmd = ["skopeo", "inspect", "--raw", "--tls-verify=false"]
    if creds is not None:
        cmd.append(f"--creds={creds}")
    out = subprocess.run([*cmd, f"docker://{ref}"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return None
    try:
        return manifest_config_digest(json.loads(out.stdout))
    except json.JSONDecodeError:
        return None


def push_archive(archive: Path, ref: str, *, creds: str | None = None) -> None:
    """``skopeo copy`` a docker-save archive to ``ref`` in a plain-HTTP registry."""
    cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    if creds is not None:
        cmd.append(f"--dest-creds={creds}")
    out = subprocess.run(
        [*cmd, f"docker-archive:{archive}", f"docker://{ref}"], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise StepFailed(f"pushing {archive} to {ref} failed: {out.stderr.strip()}")


def push_missing(address: str, images: Mapping[str, Path], *, report: Report) -> list[str]:
    """Push each archive (``{"library/busybox:1.35": tar}``) unless ``address`` already has that very image.

    "That very image" is the same config digest, so a rebuilt archive is pushed again under its
    name. Returns the references pushed.
    """
    pushed = []
    for name, archive in images.items():
        ref = f"{address}/{name}"
        if pushed_config_digest(ref) == archive_config_digest(archive):
            continue
        report(f"pushing {name} to the registry at {address}")
        push_archive(archive, ref)
        pushed.append(ref)
    return pushed


class LocalRegistry:
    """A registry this program starts and stops by pid, with everything under ``root``.

    For tests that need a second registry (one behind htpasswd auth, say): ``start``, then
    ``wait_ready``; ``stop`` kills it. ``htpasswd`` is the text of an htpasswd file (bcrypt).
    """

    def __init__(
        self,
        *,
        address: str,
        root: Path,
        htpasswd: str | None = None,
        realm: str = "innerloop",
        read_only: bool = False,
    ) -> None:
        self.address = address
        self.root = root
        self._htpasswd = htpasswd
        self._realm = realm
        self._read_only = read_only
        self._daemons = Daemons(run_dir=root / "run", log_dir=root / "logs")

    @property
    def log(self) -> Path:
        return self._daemons.log(NAME)

    def start(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        htpasswd_file = None
        if self._htpasswd is not None:
            # Written first: distribution creates a file with a random admin password when it is missing.
            htpasswd_file = self.root / "htpasswd"
            htpasswd_file.write_text(self._htpasswd)
        config = self.root / "config.yml"
        config.write_text(
            registry_config(
                addr=self.address,
                storage=self.root / "storage",
                htpasswd=htpasswd_file,
                realm=self._realm,
                read_only=self._read_only,
            )
        )
        return self._daemons.start(Component(name=NAME, argv=[BINARY, "serve", str(config)]))

    def wait_ready(self, *, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not is_ready(self.address):
            tail = self._daemons.exited_early(NAME)
            if tail is not None:
                raise StepFailed(f"the registry at {self.address} exited; last lines of {self.log}:\n{tail}")
            if time.monotonic() > deadline:
                raise StepFailed(f"the registry at {self.address} did not answer /v2/ in {timeout_s:.0f}s")
            time.sleep(0.05)

    def running(self) -> int | None:
        return self._daemons.running(NAME)

    def stop(self) -> bool:
        return self._daemons.stop(NAME)
