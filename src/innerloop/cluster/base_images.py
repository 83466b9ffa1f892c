"""Base images that look like the official ones, built from Debian packages on this machine.

Real Dockerfiles start ``FROM python:3.11-slim``, ``FROM node:18-slim``, ``FROM golang:1.19 AS
build`` ... ``FROM gcr.io/distroless/static-debian12``, and run ``pip install`` or ``npm ci`` on
top. No container registry on the internet is reachable here, so these bases are made the way
Debian's and Docker's official images are: ``debootstrap --variant=minbase`` of bookworm from the
machine's own Debian mirror (that is ``library/debian:bookworm-slim``), then, per flavour, a copy
of it where ``apt-get install`` runs in a chroot, as the official Dockerfiles install on top of
debian:bookworm-slim. The versions are Debian bookworm's (Python 3.11, Node 18, Go 1.19) and the
names say so; each image's labels say it was made here from Debian packages.

Layers: the minbase is one layer every flavour shares (a registry stores it once); each flavour
adds one layer holding what its install changed (new or changed files, whiteouts for removed
ones). The distroless images are one layer of files picked by package from an installed root
(the certificate bundle that ca-certificates' postinst generates, tzdata, netbase, and for
``base`` glibc and libssl), plus passwd and group with ``nonroot`` (65532) and no shell.

Every archive is cached under ``<cache>/images/bases`` by a hash of its inputs: the suite, the
package lists and image settings, the debootstrap version and ``BUILD_VERSION`` (bump it when
this module changes what it builds). Package versions within the suite move with point releases
and security updates; the key leaves them out on purpose, so a warm machine stays warm and
``apt-get update`` is never needed to find an archive.

Determinism: every layer entry carries the same mtime (bookworm's release date), owner ids as on
disk and no user or group names; timestamp-based ``.pyc`` headers are rewritten to that mtime so
Python still trusts them. The same root gives the same layer and the same digest.

The pure parts (package lists, image configs, cache keys, which files a layer holds, mirrors from
apt's sources, which files a distroless image takes) are plain functions tested without a chroot;
``base_images`` is the I/O edge (debootstrap, chroot, tar).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import fnmatch
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from innerloop.cluster.paths import ClusterPaths
from innerloop.cluster.progress import Report, StepFailed, run_logged
from innerloop.oci.archive import BuiltImage, ImageConfig

# Bump when what this module builds changes (layout, cleaning, configs): every base is rebuilt.
BUILD_VERSION = "1"
SUITE = "bookworm"
# Bookworm's release day (2023-06-10): every entry's mtime, so the same root gives the same digest.
EPOCH = 1686355200
NONROOT_UID = 65532
# Flavours built at once (each an apt-get install in its own chroot).
PARALLEL_BUILDS = 3
NOBODY_UID = 65534

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# Where Debian keeps locally added CA certificates (update-ca-certificates adds them to the bundle).
LOCAL_CAS = Path("/usr/local/share/ca-certificates")

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What Debian's slim images leave out (debuerreotype's --slim), as dpkg filters: installs in the
# image skip them too, as they do in debian:bookworm-slim.
SLIM_DPKG_FILTERS = (
    ("exclude", "/usr/share/doc/*"),
    ("include", "/usr/share/doc/*/copyright"),
    ("exclude", "/usr/share/info/*"),
    ("exclude", "/usr/share/linda/*"),
    ("exclude", "/usr/share/lintian/overrides/*"),
    ("exclude", "/usr/share/locale/*"),
    ("include", "/usr/share/locale/locale.alias"),
    ("exclude", "/usr/share/man/*"),
    ("exclude", "/usr/share/groff/*"),
)

# The apt settings of Docker's Debian images: no package caches left in layers, no translations.
APT_CONF = {
    "docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    ),
    "docker-no-languages": 'Acquire::Languages "none";\n',
    "docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "docker-autoremove-suggests": 'Apt::AutoRemove::SuggestsImportant "false";\n',
}


# ---------------------------------------------------------------------------------------------
# What is built (pure data)


@dataclass(frozen=True, kw_only=True)
class Flavour:
    """An image made by ``apt-get install`` on top of the minbase, like an official Dockerfile."""

    reference: str  # as pushed to a registry: "library/python:3.11-slim"
    packages: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = (("PATH", PATH),)
    # (ENV name, Debian package): the package's upstream version, as the official images' ENV says.
    version_env: tuple[str, str] | None = None
    cmd: tuple[str, ...] = ("bash",)
    workdir: str = ""
    users: tuple[tuple[str, int], ...] = ()  # (name, uid): groupadd + useradd with a home and bash
    remove: tuple[str, ...] = ()  # paths removed after the install
    symlinks: tuple[tuple[str, str], ...] = ()  # (path, target)
    directories: tuple[tuple[str, int], ...] = ()  # (path, mode), made after the install
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class Distroless:
    """A shell-less runtime: the files of a few packages from an installed root, plus passwd."""

    reference: str
    packages: tuple[str, ...]  # whose files (``dpkg -L``) the image holds
    files: tuple[str, ...] = ()  # more paths, made by maintainer scripts (no package owns them)
    user: str = ""
    description: str = ""


DEBIAN = Flavour(
    reference=f"library/debian:{SUITE}-slim",
    description="Debian bookworm minbase (debootstrap --variant=minbase), slim like debian:bookworm-slim",
)
PYTHON = Flavour(
    reference="library/python:3.11-slim",
    packages=("python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates"),
    env=(("PATH", PATH), ("LANG", "C.UTF-8")),
    version_env=("PYTHON_VERSION", "python3.11"),
    cmd=("python3",),
    # Debian marks its Python externally managed (PEP 668); the official image's Python is not,
    # so `pip install -r requirements.txt` works there as root, and must here.
    remove=("/usr/lib/python3.11/EXTERNALLY-MANAGED",),
    description="Debian bookworm's Python 3.11 with pip and venv, like python:3.11-slim",
)
NODE = Flavour(
    reference="library/node:18-slim",
    packages=("nodejs", "npm", "ca-certificates"),
    version_env=("NODE_VERSION", "nodejs"),
    cmd=("node",),
    users=(("node", 1000),),
    description="Debian bookworm's Node.js 18 and npm, like node:18-slim",
)
GOLANG = Flavour(
    reference="library/golang:1.19",
    # The official image has a C toolchain for cgo and git for `go get`; so does this one.
    packages=("golang-go", "git", "ca-certificates", "gcc", "libc6-dev", "make", "pkg-config", "openssh-client"),
    env=(
        ("PATH", f"/go/bin:/usr/local/go/bin:{PATH}"),
        ("GOPATH", "/go"),
        # The go command must never try to download another toolchain (no proxy may serve one).
        ("GOTOOLCHAIN", "local"),
    ),
    version_env=("GOLANG_VERSION", "golang-1.19-go"),
    workdir="/go",
    # Where the official image keeps Go, so Dockerfiles that name /usr/local/go/bin keep working.
    symlinks=(("/usr/local/go", "/usr/lib/go"),),
    directories=(("/go", 0o1777), ("/go/src", 0o1777), ("/go/bin", 0o1777)),
    description="Debian bookworm's Go 1.19 with gcc and git, like golang:1.19",
)
FLAVOURS = (DEBIAN, PYTHON, NODE, GOLANG)

_STATIC_PACKAGES = ("tzdata", "netbase")
_STATIC_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/nsswitch.conf", "/etc/os-release", "/usr/lib/os-release")
_BASE_PACKAGES = (*_STATIC_PACKAGES, "libc6", "libssl3")
DISTROLESS = (
    Distroless(
        reference="distroless/static-debian12:latest",
        packages=_STATIC_PACKAGES,
        files=_STATIC_FILES,
        description="CA certificates, tzdata, netbase, passwd: like gcr.io/distroless/static-debian12",
    ),
    Distroless(
        reference="distroless/static-debian12:nonroot",
        packages=_STATIC_PACKAGES,
        files=_STATIC_FILES,
        user=str(NONROOT_UID),
        description="distroless/static-debian12 running as nonroot (65532)",
    ),
    Distroless(
        reference="distroless/base-debian12:latest",
        packages=_BASE_PACKAGES,
        files=_STATIC_FILES,
        description="static plus glibc and libssl: like gcr.io/distroless/base-debian12",
    ),
    Distroless(
        reference="distroless/base-debian12:nonroot",
        packages=_BASE_PACKAGES,
        files=_STATIC_FILES,
        user=str(NONROOT_UID),
        description="distroless/base-debian12 running as nonroot (65532)",
    ),
)
# What the distroless images' source root installs on top of the minbase.
DISTROLESS_SOURCE_PACKAGES = ("ca-certificates", "tzdata", "netbase", "libssl3")

REFERENCES = tuple(f.reference for f in FLAVOURS) + tuple(d.reference for d in DISTROLESS)


# ---------------------------------------------------------------------------------------------
# Pure helpers


@dataclass(frozen=True, kw_only=True)
class Mirrors:
    """Where the image's apt gets packages: the suite's mirror and its security mirror."""

    debian: str = DEFAULT_MIRROR
    security: str = DEFAULT_SECURITY_MIRROR


def _one_line_sources(text: str) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line.split()[1:]
        if words and words[0].startswith("["):  # [arch=amd64 signed-by=...] options
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            yield words[0], words[1], tuple(words[2:])


def _deb822_sources(text: str) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw.startswith("#") or ":" not in raw or raw[:1].isspace():
                continue
            key, value = raw.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                yield uri, suite, components


def debian_mirrors(sources: Mapping[str, str], *, suite: str = SUITE) -> Mirrors:
    """The mirrors apt on this machine uses for ``suite`` (file name -> text of apt's sources).

    One-line ``.list`` files and deb822 ``.sources`` files are read; a machine that has none for the
    suite (not Debian, or another release) gets deb.debian.org.
    """
    debian = security = ""
    for name, text in sorted(sources.items()):
        entries = _deb822_sources(text) if name.endswith(".sources") else _one_line_sources(text)
        for uri, entry_suite, components in entries:
            if "main" not in components:
                continue
            if entry_suite == suite and not debian:
                debian = uri.rstrip("/")
            elif entry_suite == f"{suite}-security" and not security:
                security = uri.rstrip("/")
    return Mirrors(debian=debian or DEFAULT_MIRROR, security=security or DEFAULT_SECURITY_MIRROR)


def image_sources(mirrors: Mirrors, *, suite: str = SUITE) -> str:
    """The image's ``/etc/apt/sources.list.d/debian.sources``, as in Debian's own images."""
    stanzas = ((mirrors.debian, f"{suite} {suite}-updates"), (mirrors.security, f"{suite}-security"))
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    return "\n".join(
        f"Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: main\nSigned-By: {keyring}\n"
        for uri, suites in stanzas
    )


def dpkg_filters_text() -> str:
    return "".join(f"path-{kind} {pattern}\n" for kind, pattern in SLIM_DPKG_FILTERS)


def slim_excluded(path: str) -> bool:
    """Whether the slim filters leave ``path`` out (dpkg semantics: the last matching filter wins)."""
    excluded = False
    for kind, pattern in SLIM_DPKG_FILTERS:
        if fnmatch.fnmatchcase(path, pattern):
            excluded = kind == "exclude"
    return excluded


def upstream_version(debian_version: str) -> str:
    """'3.11.2-6+deb12u8' -> '3.11.2'; '18.20.4+dfsg-1~deb12u1' -> '18.20.4'; '2:1.2-3' -> '1.2'."""
    version = debian_version.split(":", 1)[-1]
    if "-" in version:
        version = version.rsplit("-", 1)[0]
    for mark in ("+", "~"):
        version = version.split(mark, 1)[0]
    return version


def flavour_config(flavour: Flavour, *, versions: Mapping[str, str]) -> ImageConfig:
    """The image config of a flavour; ``versions`` maps Debian packages to their installed versions."""
    env = dict(flavour.env)
    labels = {
        "org.opencontainers.image.description": flavour.description,
        "org.opencontainers.image.vendor": f"innerloop (built locally from Debian {SUITE} packages)",
    }
    if flavour.version_env is not None:
        name, package = flavour.version_env
        version = versions.get(package, "")
        env[name] = upstream_version(version)
        labels["org.opencontainers.image.version"] = version
    return ImageConfig(cmd=list(flavour.cmd), env=env, workdir=flavour.workdir, labels=labels)


def distroless_config(image: Distroless) -> ImageConfig:
    return ImageConfig(
        env={"PATH": PATH, "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"},
        user=image.user,
        workdir="/home/nonroot" if image.user == str(NONROOT_UID) else "",
        labels={
            "org.opencontainers.image.description": image.description,
            "org.opencontainers.image.vendor": f"innerloop (built locally from Debian {SUITE} packages)",
        },
    )


def cache_key(
    spec: Flavour | Distroless,
    *,
    suite: str,
    arch: str,
    debootstrap_version: str,
    trusted: Mapping[str, bytes] | None = None,
) -> str:
    """What an archive depends on; a change to any of it builds the image again.

    ``trusted`` are the machine's own CA certificates (name -> PEM) the images trust too.
    """
    minbase = (DEBIAN, SLIM_DPKG_FILTERS, APT_CONF, sorted(CLEANED))
    cas = sorted((name, hashlib.sha256(pem).hexdigest()) for name, pem in (trusted or {}).items())
    parts = [BUILD_VERSION, suite, arch, debootstrap_version, repr(minbase), repr(spec), repr(cas)]
    if isinstance(spec, Distroless):
        parts.append(repr(DISTROLESS_SOURCE_PACKAGES))
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part.encode()).digest())
    return h.hexdigest()[:12]


def archive_name(reference: str, key: str) -> str:
    """'library/python:3.11-slim' -> 'library-python-3.11-slim-<key>.tar'."""
    return f"{reference.replace('/', '-').replace(':', '-')}-{key}.tar"


@dataclass(frozen=True)
class Meta:
    """What a layer records of one path (ids as on disk; the mtime only decides what changed)."""

    kind: str  # "file" | "dir" | "symlink"
    mode: int
    uid: int
    gid: int
    size: int = 0
    mtime_ns: int = 0
    target: str = ""

    def same_as(self, other: Meta) -> bool:
        if self.kind != other.kind or (self.mode, self.uid, self.gid) != (other.mode, other.uid, other.gid):
            return False
        if self.kind == "file":
            return (self.size, self.mtime_ns) == (other.size, other.mtime_ns)
        if self.kind == "symlink":
            return self.target == other.target
        return True  # a directory's own mtime changes with its entries; what it holds decides


@dataclass(frozen=True, kw_only=True)
class LayerPlan:
    """The paths a layer holds (with their parents) and the whiteouts for what it removes."""

    paths: tuple[str, ...]
    whiteouts: tuple[str, ...] = ()


def _parents(path: str) -> Iterator[str]:
    p = PurePosixPath(path).parent
    while str(p) != "/":
        yield str(p)
        p = p.parent


def layer_plan(upper: Mapping[str, Meta], lower: Mapping[str, Meta] | None = None) -> LayerPlan:
    """What a layer over ``lower`` must hold so the image's root is ``upper`` (paths are absolute).

    Changed or new paths are written with their parent directories (a runtime then recreates
    them with the right modes); a path ``lower`` has and ``upper`` lacks gets a whiteout, only at
    the top of a removed tree. Without ``lower`` every path is written.
    """
    if lower is None:
        return LayerPlan(paths=tuple(sorted(upper)))
    changed = {p for p, meta in upper.items() if p not in lower or not meta.same_as(lower[p])}
    for p in list(changed):
        changed.update(parent for parent in _parents(p) if parent in upper)
    whiteouts = sorted(
        p
        for p in lower
        if p not in upper and all(parent in upper and upper[parent].kind == "dir" for parent in _parents(p))
    )
    return LayerPlan(paths=tuple(sorted(changed)), whiteouts=tuple(whiteouts))


def whiteout_name(path: str) -> str:
    """The OCI whiteout entry for a removed path: '/a/b' -> 'a/.wh.b'."""
    p = PurePosixPath(path.lstrip("/"))
    return str(p.parent / f".wh.{p.name}") if str(p.parent) != "." else f".wh.{p.name}"


def canonical(path: str, merged: Mapping[str, str]) -> str:
    """``path`` with the merged-/usr top-level links resolved: '/lib/x/libc.so.6' -> '/usr/lib/x/libc.so.6'."""
    parts = PurePosixPath(path).parts
    if len(parts) > 1 and f"/{parts[1]}" in merged:
        return str(PurePosixPath(merged[f"/{parts[1]}"], *parts[2:]))
    return path


_NOT_RUNTIME = ("/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/lintian", "/usr/share/locale")


def distroless_selection(listed: Iterable[str], merged: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Which paths of packages' file lists (``dpkg -L``) a distroless image takes.

    Returns the canonical paths (documentation left out) and the merged-/usr top-level links
    (``/lib64`` -> ``/usr/lib64``) that some listed path goes through, so the ELF interpreter at
    ``/lib64/ld-linux-x86-64.so.2`` resolves and nothing else is added.
    """
    paths: set[str] = set()
    links: set[str] = set()
    for raw in listed:
        path = raw.strip()
        if not path.startswith("/") or path in ("/", "/."):
            continue
        top = "/" + PurePosixPath(path).parts[1]
        if top in merged:
            if path == top:
                continue  # the link itself, which a package lists as its directory
            links.add(top)
        path = canonical(path, merged)
        if any(path == d or path.startswith(d + "/") for d in _NOT_RUNTIME):
            continue
        paths.add(path)
    return sorted(paths), sorted(links)


def passwd_files(*, login_shell: str = "/sbin/nologin") -> dict[str, str]:
    """/etc/passwd and /etc/group of a distroless image (root, nobody, nonroot)."""
    return {
        "/etc/passwd": (
            f"root:x:0:0:root:/root:{login_shell}\n"
            f"nobody:x:{NOBODY_UID}:{NOBODY_UID}:nobody:/nonexistent:{login_shell}\n"
            f"nonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/home/nonroot:{login_shell}\n"
        ),
        "/etc/group": f"root:x:0:\nnobody:x:{NOBODY_UID}:\nnonroot:x:{NONROOT_UID}:\n",
    }


def pyc_with_epoch(data: bytes) -> bytes:
    """A timestamp-based .pyc whose recorded source mtime is ``EPOCH`` (hash-based ones unchanged)."""
    if len(data) < 16 or int.from_bytes(data[4:8], "little") != 0:
        return data
    return data[:8] + EPOCH.to_bytes(4, "little") + data[12:]


def config_blob(*, diff_ids: Sequence[str], config: ImageConfig, arch: str, history: Sequence[str]) -> bytes:
    """The image config JSON (deterministic: sorted keys, fixed creation time)."""
    created = dt.datetime.fromtimestamp(EPOCH, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created": created, "created_by": h} for h in history],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


# Paths the cleaning removes or empties in every root (also part of the cache key).
CLEANED = (
    "/etc/resolv.conf",
    "/etc/hostname",
    "/usr/sbin/policy-rc.d",
    "/var/cache/ldconfig/aux-cache",
    "/var/lib/apt/lists/*",
    "/var/cache/apt/*.bin",
    "/var/cache/apt/archives/*.deb",
    "/var/cache/apt/archives/partial/*",
    "/var/cache/debconf/*-old",
    "/var/lib/dpkg/*-old",
    "/root/.cache",
    "/tmp/*",
    "/var/tmp/*",
    "/var/log/**/*.log",
)
# Directories whose contents never go into a layer (the runtime mounts them).
VIRTUAL = ("/dev", "/proc", "/sys")


# ---------------------------------------------------------------------------------------------
# The I/O edge


@dataclass(frozen=True, kw_only=True)
class _Build:
    paths: ClusterPaths
    report: Report
    work: Path
    arch: str
    mirrors: Mirrors
    log_dir: Path


def base_images(paths: ClusterPaths, report: Report) -> dict[str, BuiltImage]:
    """Every base image, by reference ("library/python:3.11-slim" -> its docker-archive).

    Cached archives are returned at once; missing ones are built (needs root, debootstrap and the
    Debian mirror; a few minutes cold). Each archive's tag is ``innerloop.local/<reference>``.
    """
    arch = _dpkg_architecture()
    debootstrap = _debootstrap_version()
    trusted = _local_cas()
    store = paths.images / "bases"
    wanted: dict[str, tuple[Flavour | Distroless, Path]] = {}
    for spec in (*FLAVOURS, *DISTROLESS):
        key = cache_key(spec, suite=SUITE, arch=arch, debootstrap_version=debootstrap, trusted=trusted)
        wanted[spec.reference] = (spec, store / archive_name(spec.reference, key))
    if any(not archive.exists() for _, archive in wanted.values()):
        with _locked(store / ".lock"):
            missing = {ref: item for ref, item in wanted.items() if not item[1].exists()}
            if missing:
                # Archives of earlier inputs are never read again: they go, so the cache does not grow.
                current = {archive for _, archive in wanted.values()}
                for stale in store.glob("*.tar"):
                    if stale not in current:
                        stale.unlink()
                _build_missing(missing, paths=paths, report=report, arch=arch, debootstrap=debootstrap, trusted=trusted)
    return {ref: BuiltImage(tag=f"innerloop.local/{ref}", archive=archive) for ref, (_, archive) in wanted.items()}


def _build_missing(
    missing: dict[str, tuple[Flavour | Distroless, Path]],
    *,
    paths: ClusterPaths,
    report: Report,
    arch: str,
    debootstrap: str,
    trusted: Mapping[str, bytes],
) -> None:
    if debootstrap == "none":
        raise StepFailed("building the base images needs debootstrap: run `apt-get install debootstrap`")
    if os.geteuid() != 0:
        raise StepFailed("building the base images needs root (debootstrap and chroot): run as root")
    store = paths.images / "bases"
    work = store / f".work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    build = _Build(paths=paths, report=report, work=work, arch=arch, mirrors=_host_mirrors(), log_dir=store / "logs")
    started = time.monotonic()
    try:
        minbase = _minbase(build, debootstrap_cache=paths.cache / "debootstrap", trusted=trusted)
        slim = work / "slim"
        _copy_tree(minbase, slim)
        _clean(slim)
        slim_listing = _listing(slim)
        slim_layer = work / "slim.layer.tar"
        slim_diff = _write_layer(slim, layer_plan(slim_listing), slim_layer)
        slim_history = f"debootstrap --variant=minbase {SUITE} ({build.mirrors.debian})"
        lower = (slim_listing, slim_layer, slim_diff, slim_history)

        def build_one(ref: str, spec: Flavour | Distroless, archive: Path) -> None:
            t0 = time.monotonic()
            if isinstance(spec, Distroless):
                _build_distroless(build, spec, archive, minbase=minbase)
            elif spec is DEBIAN:
                config = flavour_config(spec, versions={})
                _write_image(archive, tag=f"innerloop.local/{ref}", layers=[lower[1:]], config=config, arch=arch)
            else:
                _build_flavour(build, spec, archive, minbase=minbase, lower=lower)
            size = archive.stat().st_size / 1e6
            report(f"base image {ref}: built in {time.monotonic() - t0:.0f}s, {size:.0f} MB")

        def build_all(items: list[tuple[str, tuple[Flavour | Distroless, Path]]]) -> None:
            for ref, (spec, archive) in items:
                build_one(ref, spec, archive)

        # Installs wait on the mirror as much as on the CPU: the flavours run side by side, the
        # distroless images one after another (they share one source root).
        groups = [[item] for item in missing.items() if isinstance(item[1][0], Flavour)]
        groups.append([item for item in missing.items() if isinstance(item[1][0], Distroless)])
        with ThreadPoolExecutor(max_workers=PARALLEL_BUILDS) as pool:
            for future in [pool.submit(build_all, group) for group in groups if group]:
                future.result()
        report(f"base images: {len(missing)} built in {time.monotonic() - started:.0f}s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _minbase(build: _Build, *, debootstrap_cache: Path, trusted: Mapping[str, bytes]) -> Path:
    """debootstrap minbase, configured like Debian's slim images, security updates applied, lists kept.

    The machine's own CAs go where Debian's update-ca-certificates adds local ones, so the flavours'
    ca-certificates trusts them: behind a TLS-inspecting proxy (a company's, or this machine's
    egress) `pip install`, `npm ci` and `go mod download` in a Dockerfile reach their registries.
    """
    root = build.work / "minbase"
    debootstrap_cache.mkdir(parents=True, exist_ok=True)
    build.report(f"base images: debootstrap --variant=minbase {SUITE} from {build.mirrors.debian}")
    run_logged(
        [
            "debootstrap",
            "--variant=minbase",
            f"--arch={build.arch}",
            f"--cache-dir={debootstrap_cache}",
            SUITE,
            root,
            build.mirrors.debian,
        ],
        label="debootstrap",
        log=build.log_dir / "debootstrap.log",
        report=build.report,
        env=_chroot_env(),
    )
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(image_sources(build.mirrors))
    (root / "etc/dpkg/dpkg.cfg.d/docker").write_text(dpkg_filters_text())
    for name, text in APT_CONF.items():
        (root / "etc/apt/apt.conf.d" / name).write_text(text)
    _prune_slim(root)
    if trusted:
        build.report(f"base images: trusting this machine's CAs from {LOCAL_CAS}: {' '.join(sorted(trusted))}")
    for name, pem in trusted.items():
        target = root / LOCAL_CAS.relative_to("/") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pem)
        target.chmod(0o644)
    _prepare_chroot(root)
    _apt(build, root, "update", label="minbase apt-get update")
    _apt(build, root, "upgrade", label="minbase apt-get upgrade")
    return root


def _build_flavour(
    build: _Build,
    flavour: Flavour,
    archive: Path,
    *,
    minbase: Path,
    lower: tuple[dict[str, Meta], Path, str, str],
) -> None:
    lower_listing, lower_layer, lower_diff, lower_history = lower
    root = build.work / archive.stem
    _copy_tree(minbase, root)
    try:
        build.report(f"base image {flavour.reference}: apt-get install {' '.join(flavour.packages)}")
        _apt(build, root, "install", "--no-install-recommends", *flavour.packages, label=flavour.reference)
        for name, uid in flavour.users:
            _chroot(root, "groupadd", "--gid", str(uid), name)
            _chroot(root, "useradd", "--uid", str(uid), "--gid", name, "--shell", "/bin/bash", "--create-home", name)
        for path in flavour.remove:
            target = root / path.lstrip("/")
            if not target.exists():
                raise StepFailed(f"base image {flavour.reference}: {path} was expected after the install")
            target.unlink()
        for path, link in flavour.symlinks:
            (root / path.lstrip("/")).symlink_to(link)
        for path, mode in flavour.directories:
            d = root / path.lstrip("/")
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(mode)
        versions = {pkg: _installed_version(root, pkg) for pkg in _version_packages(flavour)}
        _clean(root)
        layer = build.work / f"{archive.stem}.layer.tar"
        diff = _write_layer(root, layer_plan(_listing(root), lower_listing), layer)
        _write_image(
            archive,
            tag=f"innerloop.local/{flavour.reference}",
            layers=[
                (lower_layer, lower_diff, lower_history),
                (layer, diff, f"apt-get install --no-install-recommends {' '.join(flavour.packages)}"),
            ],
            config=flavour_config(flavour, versions=versions),
            arch=build.arch,
        )
        layer.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _version_packages(flavour: Flavour) -> list[str]:
    return [flavour.version_env[1]] if flavour.version_env else []


def _build_distroless(build: _Build, image: Distroless, archive: Path, *, minbase: Path) -> None:
    root = build.work / "distroless-source"
    if not root.exists():  # one source root serves every distroless image
        _copy_tree(minbase, root)
        build.report(f"base images: distroless source root: apt-get install {' '.join(DISTROLESS_SOURCE_PACKAGES)}")
        _apt(build, root, "install", "--no-install-recommends", *DISTROLESS_SOURCE_PACKAGES, label="distroless source")
    merged = {
        f"/{entry.name}": "/" + os.readlink(entry).lstrip("/")
        for entry in root.iterdir()
        if entry.is_symlink() and entry.name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
    }
    listed = _chroot(root, "dpkg", "-L", *image.packages).splitlines()
    chosen, links = distroless_selection([*listed, *image.files], merged)
    members: dict[str, Meta] = {}
    for path in chosen:
        meta = _meta(root / path.lstrip("/"))
        if meta is None:
            continue  # dpkg lists a diverted or removed path
        members[path] = meta
        for parent in _parents(path):
            if parent not in members:
                members[parent] = _meta(root / parent.lstrip("/")) or Meta("dir", 0o755, 0, 0)
    layer = build.work / f"{archive.stem}.layer.tar"
    extra: dict[str, tuple[Meta, bytes]] = {}
    for link in links:
        extra[link] = (Meta("symlink", 0o777, 0, 0, target=merged[link].lstrip("/")), b"")
    for path, text in passwd_files().items():
        extra[path] = (Meta("file", 0o644, 0, 0), text.encode())
    for pkg in image.packages:  # what scanners read in distroless images
        status = _chroot(root, "dpkg-query", "-s", pkg).encode()
        extra[f"/var/lib/dpkg/status.d/{pkg}"] = (Meta("file", 0o644, 0, 0), status)
    for path in ("/var", "/var/lib", "/var/lib/dpkg", "/var/lib/dpkg/status.d", "/home"):
        extra.setdefault(path, (Meta("dir", 0o755, 0, 0), b""))
    extra["/tmp"] = (Meta("dir", 0o1777, 0, 0), b"")
    extra["/root"] = (Meta("dir", 0o700, 0, 0), b"")
    extra["/home/nonroot"] = (Meta("dir", 0o700, NONROOT_UID, NONROOT_UID), b"")
    for path in list(members):
        if path in extra:
            del members[path]
    diff = _write_layer(root, LayerPlan(paths=tuple(sorted(members))), layer, extra=extra)
    _write_image(
        archive,
        tag=f"innerloop.local/{image.reference}",
        layers=[(layer, diff, f"files of {' '.join(image.packages)} from Debian {SUITE}")],
        config=distroless_config(image),
        arch=build.arch,
    )
    layer.unlink()


# --- chroot and apt


def _chroot_env() -> dict[str, str]:
    return {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}


def _prepare_chroot(root: Path) -> None:
    """Name resolution for apt, and no service starts from maintainer scripts (both removed by _clean)."""
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)


def _chroot(root: Path, *cmd: str) -> str:
    out = subprocess.run(
        ["chroot", str(root), *cmd], capture_output=True, text=True, env=_chroot_env(), check=False, timeout=1800
    )
    if out.returncode != 0:
        raise StepFailed(f"`{' '.join(cmd)}` in {root.name} failed: {(out.stderr or out.stdout).strip()[-1500:]}")
    return out.stdout


def _apt(build: _Build, root: Path, *args: str, label: str) -> None:
    slug = label.replace("/", "-").replace(":", "-").replace(" ", "-")
    run_logged(
        ["chroot", root, "apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", *args],
        label=label,
        log=build.log_dir / f"{slug}-{args[0]}.log",
        report=build.report,
        env=_chroot_env(),
    )


def _installed_version(root: Path, package: str) -> str:
    return _chroot(root, "dpkg-query", "-W", "-f=${Version}", package).strip()


def _clean(root: Path) -> None:
    """Remove what a layer must not carry (apt lists and caches, logs, host files). Idempotent."""
    for pattern in CLEANED:
        for found in root.glob(pattern.lstrip("/")):
            if found.is_dir() and not found.is_symlink():
                shutil.rmtree(found)
            else:
                found.unlink()
    for log in (root / "var/log").rglob("*"):
        if log.is_file() and not log.is_symlink() and log.stat().st_size > 0:
            log.write_bytes(b"")  # btmp, wtmp, lastlog: the files stay, empty, as in Debian's images
    _prune_slim(root)


def _prune_slim(root: Path) -> None:
    """Remove what the slim dpkg filters exclude (debootstrap unpacks before the filters exist)."""
    for _kind, pattern in SLIM_DPKG_FILTERS:
        _prune_under(root, root / pattern.lstrip("/").split("/*", 1)[0])


def _prune_under(root: Path, top: Path) -> None:
    if not top.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in [*filenames, *dirnames]:
            full = Path(dirpath) / name
            if slim_excluded("/" + full.relative_to(root).as_posix()):
                if full.is_dir() and not full.is_symlink():
                    if not any(full.iterdir()):
                        full.rmdir()
                else:
                    full.unlink()


def _copy_tree(src: Path, dst: Path) -> None:
    # cp -a keeps owners, modes, hard links and nanosecond mtimes, which the layer diff relies on.
    subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True)


# --- listing and layers


def _meta(full: Path) -> Meta | None:
    try:
        st = full.lstat()
    except FileNotFoundError:
        return None
    perm = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return Meta("dir", perm, st.st_uid, st.st_gid)
    if stat.S_ISLNK(st.st_mode):
        return Meta("symlink", perm, st.st_uid, st.st_gid, target=os.readlink(full))
    if stat.S_ISREG(st.st_mode):
        return Meta("file", perm, st.st_uid, st.st_gid, size=st.st_size, mtime_ns=st.st_mtime_ns)
    return None  # device nodes, fifos, sockets: the runtime provides /dev


def _listing(root: Path) -> dict[str, Meta]:
    """Every path under ``root`` a layer may hold (absolute, as in the image), with its metadata."""
    found: dict[str, Meta] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = "/" + Path(dirpath).relative_to(root).as_posix().lstrip(".")
        if rel_dir in VIRTUAL:
            dirnames.clear()
            continue
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            meta = _meta(full)
            if meta is not None:
                found[str(PurePosixPath(rel_dir) / name)] = meta
    return found


def _write_layer(
    root: Path, plan: LayerPlan, out: Path, *, extra: Mapping[str, tuple[Meta, bytes]] | None = None
) -> str:
    """Write the layer tar of ``plan`` (files read from ``root``, streamed); returns its sha256 (diff_id)."""
    items: list[tuple[str, str]] = [(p.lstrip("/"), "path") for p in plan.paths]
    items += [(whiteout_name(p), "whiteout") for p in plan.whiteouts]
    items += [(p.lstrip("/"), "extra") for p in (extra or {})]
    first_of_inode: dict[tuple[int, int], str] = {}
    with out.open("wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind in sorted(items):
            info = tarfile.TarInfo(name)
            info.mtime = EPOCH
            info.uname = info.gname = ""
            if kind == "whiteout":
                info.mode = 0o644
                tar.addfile(info)
                continue
            if kind == "extra":
                given, data = (extra or {})["/" + name]
                _fill(info, given)
                info.size = len(data) if given.kind == "file" else 0
                tar.addfile(info, io.BytesIO(data) if given.kind == "file" else None)
                continue
            full = root / name
            st = full.lstat()
            meta = _meta(full)
            if meta is None:
                continue
            _fill(info, meta)
            if meta.kind != "file":
                tar.addfile(info)
                continue
            if st.st_nlink > 1:
                inode = (st.st_dev, st.st_ino)
                if inode in first_of_inode:
                    info.type, info.linkname, info.size = tarfile.LNKTYPE, first_of_inode[inode], 0
                    tar.addfile(info)
                    continue
                first_of_inode[inode] = name
            info.size = st.st_size
            if "/__pycache__/" in f"/{name}" and name.endswith(".pyc"):
                data = pyc_with_epoch(full.read_bytes())
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                with full.open("rb") as f:
                    tar.addfile(info, f)
    return _sha256_file(out)


def _fill(info: tarfile.TarInfo, meta: Meta) -> None:
    info.mode, info.uid, info.gid = meta.mode, meta.uid, meta.gid
    if meta.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif meta.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, meta.target


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_image(
    archive: Path, *, tag: str, layers: Sequence[tuple[Path, str, str]], config: ImageConfig, arch: str
) -> None:
    """A docker-save archive of one image whose layers are files on disk (streamed, never in memory)."""
    blob = config_blob(diff_ids=[d for _, d, _ in layers], config=config, arch=arch, history=[h for _, _, h in layers])
    config_name = f"{hashlib.sha256(blob).hexdigest()}.json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{d}/layer.tar" for _, d, _ in layers]}]
    tmp = archive.with_suffix(f".{os.getpid()}.tmp")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((config_name, blob), ("manifest.json", json.dumps(manifest).encode())):
            tar.addfile(_member(name, len(data)), io.BytesIO(data))
        for path, diff, _ in layers:
            directory = _member(diff, 0)
            directory.type, directory.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(directory)
            with path.open("rb") as f:
                tar.addfile(_member(f"{diff}/layer.tar", path.stat().st_size), f)
    tmp.replace(archive)


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, EPOCH, 0o644
    return info


# --- the machine


def _host_mirrors() -> Mirrors:
    texts: dict[str, str] = {}
    for source in APT_SOURCES:
        for f in sorted(source.glob("*")) if source.is_dir() else [source]:
            if f.is_file() and f.suffix in (".list", ".sources"):
                texts[f.name] = f.read_text(errors="replace")
    return debian_mirrors(texts)


def _local_cas() -> dict[str, bytes]:
    """The CA certificates this machine's administrator added (relative name -> PEM)."""
    if not LOCAL_CAS.is_dir():
        return {}
    return {
        p.relative_to(LOCAL_CAS).as_posix(): p.read_bytes() for p in sorted(LOCAL_CAS.rglob("*.crt")) if p.is_file()
    }


def _dpkg_architecture() -> str:
    try:
        out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "amd64"
    return out.stdout.strip() or "amd64"


def _debootstrap_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "debootstrap"], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return "none"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "none"


@contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """One build at a time per cache (two test runs may start at once)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
