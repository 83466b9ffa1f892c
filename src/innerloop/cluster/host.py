"""What the bundled cluster changes on the host, and how it puts it back.

``prepare`` records the host's original settings before touching them (IP
forwarding, the propagation of ``/``) in ``<state>/host-original.json``;
``restore`` puts them back and removes everything the cluster left: pod
processes and containerd shims, cgroups, mounts, network namespaces, the CNI
bridge, and the ``KUBE-*``/``CNI-*`` iptables chains. Rules of other programs
are kept: iptables tables are rewritten without only our chains.

The pure parts (which mounts, which iptables lines) are functions over text so
they are unit-tested; the rest runs commands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from innerloop.cluster.components import BRIDGE
from innerloop.cluster.progress import Report, StepFailed

DEBIAN_PACKAGES = (
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "conntrack",
    "busybox-static",
    "gcc",
    "libc6-dev",
    "iproute2",
    "mount",
    # Not the cluster's: `innerloop run`/`intercept` give the local command outbound network with it
    # when present (optional for users); installed here so the tests on this machine exercise it.
    "slirp4netns",
    # The OCI registry beside the cluster (distribution 2.8), and skopeo to push to it.
    "docker-registry",
    "skopeo",
    # Real builders that run RUN steps, rootless or as root, and what they need.
    "buildah",
    "podman",
    "crun",
    "fuse-overlayfs",
    "uidmap",
    # The base images that look like public ones (python:3.11-slim, node, golang, distroless).
    "debootstrap",
    # Runs the arm64 agent runtime's interpreter in the tests, named on the command line: nothing is
    # registered with binfmt_misc (its postinst does that only through binfmt-support, not installed,
    # and systemd's binfmt trigger only on a host that runs systemd).
    "qemu-user-static",
)

# Debian packages whose maintainer scripts enable a service of their own: installing them for the
# cluster must not leave a daemon running or starting at boot (docker-registry would listen on :5000).
PACKAGE_SERVICES = {"docker-registry": "docker-registry"}

# Debian's switch that tells maintainer scripts (invoke-rc.d, deb-systemd-invoke) not to start
# services; exit status 101 means "action forbidden".
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")

# Places outside the state directory that containerd, CNI and the kubelet
# write to whatever their configuration says. `prepare` records what each held
# before; `restore` removes only what was added since.
SHARED_DIRS = (
    Path("/run/containerd"),
    Path("/run/netns"),
    Path("/var/lib/cni"),
    Path("/var/lib/kubelet"),
    Path("/var/log/pods"),
    Path("/var/log/containers"),
)

OUR_CHAIN = re.compile(r"^(KUBE-|CNI-)")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")


def missing_packages(packages: tuple[str, ...] = DEBIAN_PACKAGES) -> list[str]:
    missing = []
    for pkg in packages:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False)
        if "install ok installed" not in out.stdout:
            missing.append(pkg)
    return missing


def ensure_packages(report: Report) -> None:
    missing = missing_packages()
    if not missing:
        return
    report(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with services_not_started():
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if out.returncode != 0:
                raise StepFailed(f"`{' '.join(cmd)}` failed:\n{out.stderr.strip()[-2000:]}")
    for pkg in missing:
        if pkg in PACKAGE_SERVICES:
            _disable_service(PACKAGE_SERVICES[pkg])


@contextmanager
def services_not_started(policy: Path = POLICY_RC_D) -> Iterator[None]:
    """While installing, forbid maintainer scripts to start services, unless the admin has a policy already.

    The cluster runs its own daemons by pid; a package's own daemon started by ``apt-get install``
    would outlive ``down`` (and hold the port it defaults to).
    """
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\n# innerloop cluster up is installing packages: no service starts\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def _disable_service(name: str) -> None:
    """Keep a service a package enabled from starting at boot (and stop it if it runs under systemd)."""
    if Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "disable", "--now", f"{name}.service"], capture_output=True, check=False)
    elif Path(f"/etc/init.d/{name}").exists():
        subprocess.run(["update-rc.d", name, "disable"], capture_output=True, check=False)


def strip_our_chains(iptables_save: str) -> str:
    """``iptables-save`` output without the KUBE-*/CNI-* chains and every rule that jumps to them."""
    kept: list[str] = []
    for line in iptables_save.splitlines():
        if line.startswith(":") and OUR_CHAIN.match(line[1:]):
            continue
        if line.startswith("-A "):
            parts = line.split()
            if OUR_CHAIN.match(parts[1]):
                continue
            if any(
                p in ("-j", "-g", "--jump", "--goto") and i + 1 < len(parts) and OUR_CHAIN.match(parts[i + 1])
                for i, p in enumerate(parts)
            ):
                continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def has_our_chains(iptables_save: str) -> bool:
    return any(
        (line.startswith(":") and OUR_CHAIN.match(line[1:]))
        or (line.startswith("-A ") and OUR_CHAIN.match(line.split()[1]))
        for line in iptables_save.splitlines()
    )


def mounts_under(mountinfo: str, roots: list[Path]) -> list[str]:
    """Mount points at or below any of ``roots``, deepest first (the order to unmount)."""
    found = []
    for line in mountinfo.splitlines():
        target = line.split()[4].replace("\\040", " ")
        if any(target == str(r) or target.startswith(str(r).rstrip("/") + "/") for r in roots):
            found.append(target)
    return sorted(set(found), key=lambda t: (t.count("/"), t), reverse=True)


def root_propagation(mountinfo: str) -> str:
    """'shared' or 'private': how ``/`` propagates mounts now."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if fields[4] == "/":
            optional = fields[6 : fields.index("-")]
            return "shared" if any(f.startswith("shared:") for f in optional) else "private"
    return "private"


def _kubepods_procs() -> list[Path]:
    """Every ``cgroup.procs`` under the kubepods trees; cgroups that vanish during the walk are skipped.

    (``Path.glob`` raises when a folder it is listing disappears, as pods' cgroups do while the
    kubelet stops; ``os.walk`` reports that to ``onerror`` instead.)
    """
    found: list[Path] = []
    for controller in CGROUP_ROOT.iterdir():
        for dirpath, _dirnames, files in os.walk(controller / "kubepods", onerror=lambda _err: None):
            if "cgroup.procs" in files:
                found.append(Path(dirpath) / "cgroup.procs")
    return found


class Host:
    def __init__(self, *, state: Path, containerd_socket: Path, report: Report) -> None:
        self._state = state
        self._socket = containerd_socket
        self._report = report
        self._original = state / "host-original.json"

    def prepare(self) -> None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        if not self._original.exists():
            self._state.mkdir(parents=True, exist_ok=True)
            original = {
                "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
                "root_propagation": root_propagation(mountinfo),
                "dirs": {str(d): sorted(e.name for e in d.iterdir()) if d.is_dir() else None for d in SHARED_DIRS},
            }
            self._original.write_text(json.dumps(original))
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        if root_propagation(mountinfo) != "shared":
            # The kubelet needs mounts it makes for pods to propagate.
            _run(["mount", "--make-rshared", "/"])

    def kill_workloads(self) -> int:
        """SIGKILL every pod process and every containerd shim of this cluster."""
        killed = 0
        for procs in _kubepods_procs():
            for pid in _read_pids(procs):
                killed += _kill(pid)
        for pid in self._shim_pids():
            killed += _kill(pid)
        return killed

    def _shim_pids(self) -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and str(self._socket).encode() in cmdline:
                pids.append(int(proc.name))
        return pids

    def remove_cgroups(self) -> None:
        """Remove the kubepods cgroup trees, deepest first, in every controller.

        Directories may vanish while we walk (the kernel releases emptied
        cgroups, a stopping kubelet removes some): a missing one is done.
        """
        for controller in CGROUP_ROOT.iterdir():
            top = controller / "kubepods"
            if not top.is_dir():
                continue
            found: list[Path] = []
            for dirpath, _dirnames, _files in os.walk(top, onerror=lambda _err: None):
                found.append(Path(dirpath))
            for d in sorted(found, key=lambda p: len(p.parts), reverse=True):
                _rmdir_cgroup(d)

    def unmount_all(self) -> None:
        for _ in range(3):
            targets = mounts_under(Path("/proc/self/mountinfo").read_text(), [self._state, NETNS_DIR])
            if not targets:
                break
            for target in targets:
                subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        for ns in NETNS_DIR.glob("cni-*"):
            ns.unlink(missing_ok=True)

    def remove_network(self) -> None:
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        for tool in ("iptables", "ip6tables"):
            saved = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=False)
            if saved.returncode != 0 or not has_our_chains(saved.stdout):
                continue
            restore = subprocess.run(
                [f"{tool}-restore"], input=strip_our_chains(saved.stdout), capture_output=True, text=True, check=False
            )
            if restore.returncode != 0:
                self._report(f"warning: could not remove KUBE-/CNI- chains with {tool}-restore: {restore.stderr}")

    def restore_settings(self) -> None:
        if not self._original.exists():
            return
        original = json.loads(self._original.read_text())
        Path("/proc/sys/net/ipv4/ip_forward").write_text(original["ip_forward"])
        if original["root_propagation"] == "private":
            subprocess.run(["mount", "--make-rprivate", "/"], capture_output=True, check=False)
        for directory, entries in original["dirs"].items():
            for added in added_paths(Path(directory), entries):
                _remove(added)
        self._original.unlink()

    def leftovers(self) -> list[str]:
        """What of the cluster is still on the machine (empty after a clean ``down``)."""
        found: list[str] = []
        found += [f"shim process {pid}" for pid in self._shim_pids()]
        found += [f"cgroup {c}" for c in CGROUP_ROOT.glob("*/kubepods")]
        found += [f"mount {m}" for m in mounts_under(Path("/proc/self/mountinfo").read_text(), [self._state])]
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            found.append(f"network interface {BRIDGE}")
        for tool in ("iptables", "ip6tables"):
            saved = subprocess.run([f"{tool}-save"], capture_output=True, text=True, check=False)
            if has_our_chains(saved.stdout):
                found.append(f"{tool} KUBE-/CNI- chains")
        return found


def added_paths(directory: Path, before: list[str] | None) -> list[Path]:
    """Entries of ``directory`` that were not in ``before`` (the whole directory if it did not exist)."""
    if not directory.exists():
        return []
    if before is None:
        return [directory]
    return [e for e in sorted(directory.iterdir()) if e.name not in set(before)]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _read_pids(procs: Path) -> list[int]:
    try:
        return [int(p) for p in procs.read_text().split()]
    except OSError:
        return []


def _kill(pid: int) -> int:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return 0
    return 1


def _rmdir_cgroup(d: Path) -> None:
    for _ in range(50):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)  # processes just killed may not have left yet


def _run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise StepFailed(f"`{' '.join(cmd)}` failed: {out.stderr.strip()}")
