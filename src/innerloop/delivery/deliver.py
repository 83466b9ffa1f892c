"""Getting one built image onto the cluster, one implementation per path (the I/O edge).

Every :class:`Delivery` takes a docker-save archive (what every builder
writes) and returns the reference pods must use:

- :class:`BundledImport`: ``ctr images import`` into the bundled cluster's
  containerd, skipped when it has the tag; pods use the tag;
- :class:`RegistryPush`: ``skopeo copy`` to the registry, skipped when the
  registry already holds that tag *with the same image config* (one
  ``skopeo inspect --raw``, no local state to go stale); pods use
  ``<pull repo>/<name>@sha256:...``, so what runs is exactly what was built;
- :class:`LoaderRun`: the local cluster's own loader (``kind load
  image-archive``, ``minikube image load``, ...); pods use the tag, which
  carries a content hash.

Calls are blocking (subprocesses); the dev loop runs builds and deliveries
in a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from innerloop.cluster.node import BundledCluster
from innerloop.delivery.choice import INSTALL_HINTS, DeliveryPlan, Loader, Method, RegistryTarget
from innerloop.delivery.names import parse_image, rewrite_name
from innerloop.delivery.skopeo import (
    copy_argv,
    docker_authfile,
    explain_failure,
    fatal_message,
    inspect_argv,
    is_missing_manifest,
    missing_skopeo,
)
from innerloop.oci.archive import BuiltImage
from innerloop.oci.layout import is_layout, read_layout

Report = Callable[[str], None]
_MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json")


class DeliveryError(RuntimeError):
    """An image could not reach the cluster; the message is one line saying what to do."""


class Delivery(Protocol):
    def deliver(self, image: BuiltImage) -> str:
        """Put ``image`` where the cluster's nodes find it; returns the reference pods must use."""
        ...


def _quiet(_message: str) -> None:
    pass


class BundledImport:
    """The bundled cluster: its containerd runs here, so the archive is imported directly."""

    def __init__(self, cluster: BundledCluster, *, report: Report = _quiet) -> None:
        self._cluster = cluster
        self._report = report

    def deliver(self, image: BuiltImage) -> str:
        present = self._cluster.ctr("images", "ls", "-q").stdout.split()
        if image.tag not in present:
            self._report(f"importing {image.tag} into the bundled cluster")
            out = self._cluster.ctr("images", "import", str(image.archive))
            if out.returncode != 0:
                raise DeliveryError(f"importing {image.archive} failed: {out.stderr.strip()}")
        return image.tag


def archive_config_digest(archive: Path, tag: str) -> str:
    """``sha256:...`` of the image config in a docker-save archive (the image id): what a registry keeps as is."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            if member is None:
                raise DeliveryError(f"{archive} has no manifest.json: not a docker-save archive")
            entries = json.loads(member.read())
            entry = next((e for e in entries if tag in (e.get("RepoTags") or [])), entries[0])
            config = tar.extractfile(entry["Config"])
            if config is None:
                raise DeliveryError(f"{archive}: its image config {entry['Config']} is missing")
            return "sha256:" + hashlib.sha256(config.read()).hexdigest()
    except (OSError, tarfile.TarError, KeyError, IndexError, ValueError) as err:
        raise DeliveryError(f"cannot read image archive {archive}: {err}") from None


LOCAL_PREFIX = "innerloop.local/"


class RegistryPush:
    """skopeo copy to a registry; pods reference the image by digest."""

    def __init__(
        self,
        target: RegistryTarget,
        *,
        env: Mapping[str, str] | None = None,
        home: Path | None = None,
        skopeo: str = "skopeo",
        report: Report = _quiet,
    ) -> None:
        self.target = target
        self._env = dict(os.environ if env is None else env)
        self._authfile = docker_authfile(self._env, home=home or Path.home())
        self._skopeo = skopeo
        self._report = report
        self.copies = 0  # skopeo copy runs (a delivery the registry already had runs none)

    @property
    def host(self) -> str:
        return self.target.push.split("/", 1)[0]

    def names(self, image: BuiltImage) -> tuple[str, str, str]:
        """(push name, pull name, tag) for ``image`` under the target, by Skaffold's rewriting."""
        parsed = parse_image(image.tag)
        # innerloop.local/ is where innerloop keeps what it builds; under a registry the user's own name counts.
        push = rewrite_name(parsed.name.removeprefix(LOCAL_PREFIX), self.target.push)
        pull = push
        push_prefix = self.target.push.rstrip("/")
        if self.target.pull != self.target.push and push.startswith(push_prefix):
            pull = self.target.pull.rstrip("/") + push[len(push_prefix) :]
        return push, pull, parsed.tag or "latest"

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(argv, capture_output=True, env=self._env, check=False)
        except FileNotFoundError:
            raise DeliveryError(missing_skopeo(self.host)) from None

    def _digest_there(self, ref: str, config_digest: str) -> str | None:
        """The registry's manifest digest for ``ref`` when it holds this very image; None when it must be pushed."""
        argv = inspect_argv(ref=ref, insecure=self.target.insecure, authfile=self._authfile, skopeo=self._skopeo)
        out = self._run(argv)
        if out.returncode != 0:
            stderr = out.stderr.decode(errors="replace")
            if is_missing_manifest(stderr):
                return None
            raise DeliveryError(explain_failure(stderr, host=self.host, ref=ref, action="reading"))
        try:
            manifest = json.loads(out.stdout)
        except ValueError:
            return None
        media = manifest.get("mediaType") if isinstance(manifest, dict) else None
        config = manifest.get("config") if isinstance(manifest, dict) else None
        if media not in _MANIFEST_TYPES or not isinstance(config, dict) or config.get("digest") != config_digest:
            return None  # another image under the same tag (or an index): push ours over it
        return "sha256:" + hashlib.sha256(out.stdout).hexdigest()

    def _copy(self, image: BuiltImage, ref: str, *, source: str | None = None, extra: tuple[str, ...] = ()) -> str:
        """One skopeo copy of ``image`` to ``ref``; the manifest digest it reports."""
        with tempfile.TemporaryDirectory(prefix="innerloop-push-") as tmp:
            digestfile = Path(tmp) / "digest"
            argv = copy_argv(
                archive=image.archive,
                dest=ref,
                digestfile=digestfile,
                insecure=self.target.insecure,
                authfile=self._authfile,
                skopeo=self._skopeo,
                source=source,
                extra=extra,
            )
            out = self._run(argv)
            self.copies += 1
            if out.returncode != 0:
                raise DeliveryError(explain_failure(out.stderr.decode(errors="replace"), host=self.host, ref=ref))
            return digestfile.read_text().strip()

    def deliver(self, image: BuiltImage) -> str:
        if is_layout(image.archive):
            return self._deliver_index(image)
        push, pull, tag = self.names(image)
        ref = f"{push}:{tag}"
        config_digest = archive_config_digest(image.archive, image.tag)
        digest = self._digest_there(ref, config_digest)
        if digest is not None:
            self._report(f"{ref} is in the registry already")
            return f"{pull}@{digest}"
        self._report(f"pushing {image.tag} to {ref}")
        digest = self._copy(image, ref)
        if not digest.startswith("sha256:"):
            raise DeliveryError(f"skopeo pushed {ref} but reported no digest ({digest!r})")
        return f"{pull}@{digest}"

    def _deliver_index(self, image: BuiltImage) -> str:
        """A multi-architecture image (an OCI layout holding an index): pushed as it is, digests kept.

        Its layers are compressed already, so ``--preserve-digests`` holds and the index's digest
        is known before pushing: the registry holds it when it answers for ``<name>@<digest>``.
        """
        push, pull, tag = self.names(image)
        layout = read_layout(image.archive)
        ref = f"{push}:{tag}"
        inspect = inspect_argv(
            ref=f"{push}@{layout.digest}", insecure=self.target.insecure, authfile=self._authfile, skopeo=self._skopeo
        )
        there = self._run(inspect)
        if there.returncode == 0:
            self._report(f"{ref} is in the registry already")
            return f"{pull}@{layout.digest}"
        stderr = there.stderr.decode(errors="replace")
        if not is_missing_manifest(stderr):
            raise DeliveryError(explain_failure(stderr, host=self.host, ref=ref, action="reading"))
        self._report(f"pushing {image.tag} (one index: every architecture) to {ref}")
        # Every image of the index, from the layout's one entry, digests unchanged.
        digest = self._copy(
            image, ref, source=f"oci:{image.archive}:{layout.ref}", extra=("--all", "--preserve-digests")
        )
        if digest != layout.digest:
            raise DeliveryError(f"skopeo pushed {ref} as {digest!r}, not as the index {layout.digest}")
        return f"{pull}@{layout.digest}"


class LoaderRun:
    """A local cluster's own loader; pods use the (content-hash) tag."""

    def __init__(self, loader: Loader, *, report: Report = _quiet) -> None:
        self.loader = loader
        self._report = report

    def deliver(self, image: BuiltImage) -> str:
        command = self.loader.command(image.archive)
        self._report(f"loading {image.tag}: {' '.join(command.argv)}")
        try:
            if command.stdin is not None:
                with command.stdin.open("rb") as stdin:
                    out = subprocess.run(command.argv, stdin=stdin, capture_output=True, check=False)
            else:
                out = subprocess.run(command.argv, capture_output=True, check=False)
        except FileNotFoundError:
            hint = INSTALL_HINTS.get(self.loader.tool, f"install {self.loader.tool}")
            raise DeliveryError(f"loading {image.tag} needs {self.loader.tool}: {hint}") from None
        if out.returncode != 0:
            detail = fatal_message(out.stderr.decode(errors="replace") or out.stdout.decode(errors="replace"))
            raise DeliveryError(f"{self.loader.tool} could not load {image.tag}: {detail}")
        return image.tag


def delivery_for(plan: DeliveryPlan, *, bundled: BundledCluster | None = None, report: Report = _quiet) -> Delivery:
    """The implementation of ``plan``; the bundled path needs the cluster's handle."""
    if plan.method is Method.BUNDLED:
        return BundledImport(bundled or BundledCluster(report=report), report=report)
    if plan.method is Method.REGISTRY:
        assert plan.registry is not None
        return RegistryPush(plan.registry, report=report)
    assert plan.loader is not None
    return LoaderRun(plan.loader, report=report)
