"""The images the bundled cluster needs, built locally and imported.

There is no container registry here, so every image is assembled from what the
machine can fetch: a static ``pause`` compiled from ten lines of C, CoreDNS from
its Go build, and a distroless-style Python base assembled from Debian
packages (``apt-get download`` + ``dpkg-deb -x``, no maintainer scripts, no
shell), the way distroless itself is built. A ``busybox`` image gives tests a
shell and coreutils.

Each archive is cached under ``<cache>/images`` by a hash of its inputs, and
tags carry that hash, so nothing is rebuilt or re-tagged while inputs stay the
same.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

from innerloop.cluster.paths import ClusterPaths
from innerloop.cluster.progress import Report, StepFailed
from innerloop.oci.archive import (
    BuiltImage,
    FileEntry,
    ImageConfig,
    entries_from_directory,
    layer_from_entries,
    write_archive,
)
from innerloop.oci.bytecode import with_bytecode

NONROOT_UID = 65532

PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, stop); signal(SIGTERM, stop); signal(SIGCHLD, reap);
    for (;;) pause();
}
"""

# The Python runtime and the shared libraries it loads, from Debian 12.
PYTHON_PACKAGES = (
    "libc6",
    "libgcc-s1",
    "libssl3",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libbz2-1.0",
    "liblzma5",
    "libsqlite3-0",
    "libuuid1",
    "libcrypt1",
    "libncursesw6",
    "libtinfo6",
    "libreadline8",
    "libdb5.3",
    "libnsl2",
    "libtirpc3",
    "libgssapi-krb5-2",
    "libkrb5-3",
    "libk5crypto3",
    "libkrb5support0",
    "libcom-err2",
    "libkeyutils1",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3.11-minimal",
    "media-types",
    "netbase",
    "tzdata",
    "ca-certificates",
)


def _passwd_entries() -> list[FileEntry]:
    passwd = (
        "root:x:0:0:root:/root:/sbin/nologin\n"
        f"nonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/home/nonroot:/sbin/nologin\n"
    )
    group = f"root:x:0:\nnonroot:x:{NONROOT_UID}:\n"
    return [
        FileEntry.directory("/etc"),
        FileEntry(path="/etc/passwd", data=passwd.encode()),
        FileEntry(path="/etc/group", data=group.encode()),
        FileEntry.directory("/tmp", mode=0o1777),
        FileEntry.directory("/home"),
        FileEntry.directory("/home/nonroot", mode=0o700, uid=NONROOT_UID, gid=NONROOT_UID),
    ]


def _key(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:12]


class ClusterImages:
    """Builds (or finds in the cache) every image the cluster itself runs."""

    def __init__(self, *, paths: ClusterPaths, report: Report) -> None:
        self._paths = paths
        self._report = report

    def _archive(self, name: str, version: str, key: str) -> tuple[str, Path]:
        tag = f"innerloop.local/{name}:{version}-{key}"
        return tag, self._paths.images / f"{name}-{version}-{key}.tar"

    def pause(self) -> BuiltImage:
        tag, archive = self._archive("pause", "3.10", _key(PAUSE_C.encode()))
        if not archive.exists():
            self._report(f"building image {tag}")
            with tempfile.TemporaryDirectory() as tmp:
                src, out = Path(tmp) / "pause.c", Path(tmp) / "pause"
                src.write_text(PAUSE_C)
                _run(["gcc", "-static", "-Os", "-s", "-o", str(out), str(src)], what="compiling pause")
                layer = layer_from_entries([FileEntry(path="/pause", data=out.read_bytes(), mode=0o755)])
            write_archive(archive, tag=tag, layers=[layer], config=ImageConfig(entrypoint=["/pause"], user="65535"))
        return BuiltImage(tag=tag, archive=archive)

    def coredns(self, binary: Path, version: str) -> BuiltImage:
        data = binary.read_bytes()
        tag, archive = self._archive("coredns", version, _key(data))
        if not archive.exists():
            self._report(f"building image {tag}")
            entries = [*_passwd_entries(), FileEntry(path="/coredns", data=data, mode=0o755)]
            write_archive(
                archive,
                tag=tag,
                layers=[layer_from_entries(entries)],
                config=ImageConfig(entrypoint=["/coredns"], user=str(NONROOT_UID)),
            )
        return BuiltImage(tag=tag, archive=archive)

    def _debs(self, packages: tuple[str, ...]) -> list[Path]:
        """Download Debian packages into the cache (once), return their files."""
        debs = self._paths.cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        missing = [p for p in packages if not list(debs.glob(f"{p}_*.deb"))]
        if missing:
            self._report(f"downloading Debian packages: {' '.join(missing)}")
            _run(["apt-get", "download", "-q", *missing], what="apt-get download", cwd=debs)
        files: list[Path] = []
        for p in packages:
            found = sorted(debs.glob(f"{p}_*.deb"))
            if not found:
                raise StepFailed(f"Debian package {p} did not download; run `apt-get update` and retry")
            files.append(found[-1])
        return files

    def _rootfs_image(
        self, name: str, version: str, packages: tuple[str, ...], config: ImageConfig, extra: list[FileEntry]
    ) -> BuiltImage:
        debs = self._debs(packages)
        tag, archive = self._archive(
            name, version, _key(*(d.name.encode() for d in debs), repr(extra).encode(), repr(config).encode(), b"pyc")
        )
        if archive.exists():
            return BuiltImage(tag=tag, archive=archive)
        self._report(f"building image {tag} from {len(debs)} Debian packages")
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "rootfs"
            root.mkdir()
            for deb in debs:
                _run(["dpkg-deb", "-x", str(deb), str(root)], what=f"unpacking {deb.name}")
            for doc in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian"):
                subprocess.run(["rm", "-rf", str(root / doc)], check=True)
            entries = [e for e in entries_from_directory(root) if e.path not in {"/etc", "/tmp", "/home"}]
            # Debian's postinst would compile the stdlib; without it every Python start compiles from source.
            entries = with_bytecode(entries, under="/usr/lib/python3")
            base = layer_from_entries([*entries, *_passwd_entries(), *extra])
        write_archive(archive, tag=tag, layers=[base], config=config)
        return BuiltImage(tag=tag, archive=archive)

    def python(self) -> BuiltImage:
        """A distroless-style Python 3.11: no shell, non-root by default."""
        return self._rootfs_image(
            "python",
            "3.11",
            PYTHON_PACKAGES,
            ImageConfig(
                entrypoint=["/usr/bin/python3.11"],
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"},
                user=str(NONROOT_UID),
                workdir="/home/nonroot",
            ),
            [FileEntry.symlink("/usr/bin/python3", "python3.11")],
        )

    def busybox(self) -> BuiltImage:
        """busybox with every applet linked into /bin: a shell and coreutils for tests."""
        debs = self._debs(("busybox-static",))
        tag, archive = self._archive("busybox", "1.35", _key(debs[0].name.encode()))
        if archive.exists():
            return BuiltImage(tag=tag, archive=archive)
        self._report(f"building image {tag}")
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "rootfs"
            _run(["dpkg-deb", "-x", str(debs[0]), str(root)], what="unpacking busybox-static")
            binary = (root / "bin" / "busybox").read_bytes()
            applets = subprocess.run(
                [str(root / "bin" / "busybox"), "--list"], capture_output=True, text=True, check=True
            ).stdout.split()
        entries = [
            *_passwd_entries(),
            FileEntry.directory("/bin"),
            FileEntry(path="/bin/busybox", data=binary, mode=0o755),
            *(FileEntry.symlink(f"/bin/{a}", "busybox") for a in applets if a != "busybox"),
        ]
        write_archive(
            archive,
            tag=tag,
            layers=[layer_from_entries(entries)],
            config=ImageConfig(cmd=["/bin/sh"], env={"PATH": "/bin"}, user=str(NONROOT_UID)),
        )
        return BuiltImage(tag=tag, archive=archive)


def _run(cmd: list[str], *, what: str, cwd: Path | None = None) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    if out.returncode != 0:
        raise StepFailed(f"{what} failed: {out.stderr.strip() or out.stdout.strip()}")
