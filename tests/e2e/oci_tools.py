"""Real OCI tools for end-to-end tests: a throwaway registry, skopeo and buildah.

- ``local_registry``: Debian's ``docker-registry`` (distribution 2.8) serving plain HTTP on
  127.0.0.1:<free port>, its storage in a test folder; the process is killed (by its pid) when the
  block ends.
- ``push_archive``: ``skopeo copy`` of a docker-archive into a registry.
- ``Buildah``: buildah with its containers-storage under a test folder (overlay driver, chroot
  isolation), so nothing is written to /var/lib/containers or left mounted; ``run_image`` runs an
  image's entrypoint and command as its user; ``close`` removes every container and the storage.

Each tool's failure raises with its stderr, so a failing test says what the tool said.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

REGISTRY_BIN = "docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(cmd: Sequence[str], *, timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    if out.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` exited {out.returncode}:\n{out.stderr[-4000:]}\n{out.stdout[-2000:]}")
    return out


@dataclass(frozen=True)
class LocalRegistry:
    """A running registry: ``address`` is host:port, as image references name it."""

    address: str
    storage: Path
    pid: int

    def tags(self, repository: str) -> list[str]:
        with urllib.request.urlopen(f"http://{self.address}/v2/{repository}/tags/list", timeout=10) as resp:
            tags: list[str] = json.load(resp).get("tags") or []
            return tags


@contextmanager
def local_registry(folder: Path, *, htpasswd: Path | None = None) -> Iterator[LocalRegistry]:
    """``docker-registry serve`` on 127.0.0.1:<free port>, storage and config in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = folder / "storage"
    port = free_port()
    auth = f"auth:\n  htpasswd:\n    realm: innerloop-test\n    path: {htpasswd}\n" if htpasswd else ""
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log = (folder / "registry.log").open("w")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"docker-registry exited {proc.returncode}: {(folder / 'registry.log').read_text()}"
                )
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
                break
            except urllib.error.HTTPError as err:
                if err.code == 401:  # up, and asking for credentials
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("docker-registry did not answer on /v2/ within 30 s")
            time.sleep(0.1)
        yield LocalRegistry(address=f"127.0.0.1:{port}", storage=storage, pid=proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def push_archive(archive: Path, reference: str) -> None:
    """Push a docker-archive to ``reference`` (host:port/name:tag) over plain HTTP."""
    _run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"docker-archive:{archive}",
            f"docker://{reference}",
        ]
    )


class Buildah:
    """buildah over a private containers-storage (overlay, chroot isolation)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.root = folder / "root"
        self.runroot = folder / "runroot"
        self.tmpdir = folder / "tmp"
        for d in (self.root, self.runroot, self.tmpdir):
            d.mkdir(parents=True, exist_ok=True)
        self._storage = ["--root", str(self.root), "--runroot", str(self.runroot), "--storage-driver", "overlay"]

    def __enter__(self) -> Buildah:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def buildah(self, *args: str, timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return _run(["buildah", *self._storage, *args], timeout=timeout, cwd=cwd)

    def bud(self, context: Path, tag: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """``buildah bud`` of ``context`` (its Dockerfile), pulling bases over plain HTTP."""
        return self.buildah(
            "bud", "--isolation", "chroot", "--tls-verify=false", "--layers=false", "-t", tag, *args, str(context),
            timeout=timeout,
        )  # fmt: skip

    def run(self, image: str, *cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in a fresh container of ``image`` (its env, user and workdir), then remove it."""
        container = self.buildah("from", "--pull-never", image).stdout.strip()
        try:
            return self.buildah("run", "--isolation", "chroot", container, "--", *cmd, timeout=timeout)
        finally:
            self.buildah("rm", container)

    def run_image(self, image: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``image`` as a runtime would: its entrypoint and command (``args`` replace the command),
        its user, env and workdir (``buildah run`` applies those of the container's image).

        (``podman run`` would do the same, but crun and runc cannot set rlimits in this VM.)
        """
        config = self.inspect(image)["OCIv1"]["config"]  # type: ignore[index]
        command = [*(config.get("Entrypoint") or []), *(args or config.get("Cmd") or [])]
        return self.run(image, *command, timeout=timeout)

    def inspect(self, image: str) -> dict[str, object]:
        doc: dict[str, object] = json.loads(self.buildah("inspect", "--type", "image", image).stdout)
        return doc

    def close(self) -> None:
        subprocess.run(["buildah", *self._storage, "rm", "--all"], capture_output=True, check=False, timeout=120)
        subprocess.run(["buildah", *self._storage, "rmi", "--all", "--force"], capture_output=True, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
