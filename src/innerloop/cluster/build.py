"""Build the cluster's binaries from the Go module proxy, cached by version.

``k8s.io/kubernetes`` and etcd's server module cannot be ``go install``ed:
their go.mod files replace sibling modules with relative paths. Each is built
through a small *wrapper module* that requires the real module and replaces
every sibling with its published version. The sibling list is read from the
downloaded go.mod, so it can never drift from the pinned release.

Each component is built in its own wrapper so one component's dependency
versions cannot drag another's. Finished binaries land in
``<cache>/bin/<component>-<version>/`` with a ``.complete`` marker written last:
a build that was interrupted is simply redone.

Helm is built here too, though the cluster does not run it: it comes from the
same proxy the same way, and ``innerloop up`` renders charts with it when
PATH has no helm.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from innerloop.cluster.paths import ClusterPaths
from innerloop.cluster.progress import Report, StepFailed, run_logged
from innerloop.cluster.versions import Versions

KUBERNETES_COMMANDS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
)
ETCD_COMMANDS = ("etcd", "etcdctl")
COREDNS_COMMANDS = ("coredns",)
HELM_COMMANDS = ("helm",)

_Build = Callable[[Path], None]

_REPLACE_LOCAL = re.compile(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+\.\.?/\S*\s*$")


def local_replacements(gomod: str) -> list[str]:
    """Modules that a go.mod replaces with a relative path (``=> ./x`` or ``=> ../x``)."""
    found: list[str] = []
    for line in gomod.splitlines():
        m = _REPLACE_LOCAL.match(line)
        if m and "FORBIDDEN" not in line:
            found.append(m.group(1))
    return found


def wrapper_gomod(*, module: str, require: str, version: str, siblings: Mapping[str, str]) -> str:
    """go.mod text of a wrapper that requires ``require@version`` and pins its siblings."""
    lines = [f"module {module}", "", "go 1.26", "", f"require {require} {version}", ""]
    if siblings:
        lines.append("replace (")
        lines.extend(f"\t{path} => {path} {ver}" for path, ver in sorted(siblings.items()))
        lines.append(")")
    return "\n".join(lines) + "\n"


def helm_ldflags(version: str, gomod: str) -> str:
    """-X flags as helm's own Makefile sets them.

    Besides the version, helm bakes in the Kubernetes version that ``helm
    template`` reports as ``.Capabilities.KubeVersion``, derived from the
    client-go it is built with (v0.34.2 -> 1.34); left out, it says 1.20 and a
    chart with ``kubeVersion: ">=1.25.0-0"`` refuses to render.
    """
    m = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", gomod, re.MULTILINE)
    if m is None:
        raise StepFailed(f"helm {version}: its go.mod requires no k8s.io/client-go v0.x; cannot tell its Kubernetes")
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={version}"]
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {pkg}.k8sVersionMajor=1", f"-X {pkg}.k8sVersionMinor={m.group(1)}"]
    return " ".join(flags)


def version_ldflags(version: str) -> str:
    """-X flags so clients see the real version instead of v0.0.0-master."""
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


class BinaryBuilder:
    """Builds and caches the cluster's Go binaries."""

    def __init__(self, *, paths: ClusterPaths, versions: Versions, report: Report) -> None:
        self._paths = paths
        self._versions = versions
        self._report = report

    def _go_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GOMODCACHE=str(self._paths.gomodcache),
            GOCACHE=str(self._paths.gocache),
            CGO_ENABLED="0",
            GOFLAGS="-mod=mod -buildvcs=false",
            GOTOOLCHAIN="local",
        )
        return env

    def _download_gomod(self, module: str, version: str) -> str:
        out = subprocess.run(
            ["go", "mod", "download", "-json", f"{module}@{version}"],
            env=self._go_env(),
            capture_output=True,
            text=True,
            check=False,
            cwd=self._paths.cache,
        )
        if out.returncode != 0:
            raise StepFailed(
                f"could not download {module}@{version} from the Go module proxy: "
                f"{out.stdout.strip()} {out.stderr.strip()}\nCheck GOPROXY and the network."
            )
        info = json.loads(out.stdout)
        return Path(info["GoMod"]).read_text()

    def ensure_all(self) -> dict[str, Path]:
        """Every binary the cluster needs, building what the cache lacks."""
        self._paths.cache.mkdir(parents=True, exist_ok=True)
        v = self._versions
        dirs = {
            "kubernetes": self._ensure(
                component="kubernetes",
                version=v.kubernetes,
                commands=KUBERNETES_COMMANDS,
                build=self._build_kubernetes,
            ),
            "etcd": self._ensure(component="etcd", version=v.etcd, commands=ETCD_COMMANDS, build=self._build_etcd),
            "coredns": self._ensure(
                component="coredns", version=v.coredns, commands=COREDNS_COMMANDS, build=self._build_coredns
            ),
            "helm": self.ensure_helm(),
        }
        return dirs

    def ensure_helm(self) -> Path:
        """The folder of the helm that renders charts, built when the cache lacks it (a minute or two)."""
        self._paths.cache.mkdir(parents=True, exist_ok=True)
        return self._ensure(
            component="helm", version=self._versions.helm, commands=HELM_COMMANDS, build=self._build_helm
        )

    def _ensure(self, *, component: str, version: str, commands: tuple[str, ...], build: _Build) -> Path:
        out = self._paths.bin_dir(component, version)
        marker = out / ".complete"
        if marker.exists() and all((out / c).exists() for c in commands):
            self._report(f"{component} {version}: cached in {out}")
            return out
        self._report(f"{component} {version}: building {', '.join(commands)} (cold builds take minutes)")
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        build(staging)
        missing = [c for c in commands if not (staging / c).exists()]
        if missing:
            raise StepFailed(f"{component} build produced no {', '.join(missing)}; see logs in {staging}")
        (staging / ".complete").write_text(version + "\n")
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
        return out

    def _wrapper(self, name: str, gomod: str) -> Path:
        wrapper = self._paths.cache / "wrappers" / name
        wrapper.mkdir(parents=True, exist_ok=True)
        (wrapper / "go.mod").write_text(gomod)
        return wrapper

    def _go_build(
        self, *, wrapper: Path, out: Path, binaries: Mapping[str, str], version: str, ldflags: str, label: str
    ) -> None:
        """Build each ``name -> package`` of ``binaries`` into ``out/name``.

        One ``go build`` per binary: naming outputs explicitly avoids Go's
        major-version naming (``.../server/v3`` would become ``server``), and the
        shared GOCACHE makes the later builds mostly linking.
        """
        # `go get` without @version would upgrade the main module to its latest.
        run_logged(
            ["go", "get", *(f"{pkg}@{version}" for pkg in binaries.values())],
            label=f"{label}: resolving modules",
            log=out / "go-get.log",
            report=self._report,
            env=self._go_env(),
            cwd=wrapper,
        )
        for name, package in binaries.items():
            run_logged(
                ["go", "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", str(out / name), package],
                label=f"{label}: compiling {name}",
                log=out / f"go-build-{name}.log",
                report=self._report,
                env=self._go_env(),
                cwd=wrapper,
            )

    def _build_kubernetes(self, out: Path) -> None:
        v = self._versions
        gomod = self._download_gomod("k8s.io/kubernetes", v.kubernetes)
        siblings = {path: v.kubernetes_staging for path in local_replacements(gomod)}
        wrapper = self._wrapper(
            f"kubernetes-{v.kubernetes}",
            wrapper_gomod(
                module="innerloop.local/build/kubernetes",
                require="k8s.io/kubernetes",
                version=v.kubernetes,
                siblings=siblings,
            ),
        )
        self._go_build(
            wrapper=wrapper,
            out=out,
            binaries={c: f"k8s.io/kubernetes/cmd/{c}" for c in KUBERNETES_COMMANDS},
            version=v.kubernetes,
            ldflags=version_ldflags(v.kubernetes),
            label=f"kubernetes {v.kubernetes}",
        )

    def _build_etcd(self, out: Path) -> None:
        v = self._versions
        gomod = self._download_gomod("go.etcd.io/etcd/server/v3", v.etcd)
        siblings = {path: v.etcd for path in local_replacements(gomod)}
        # etcdctl lives in its own module, a sibling of the server.
        siblings.setdefault("go.etcd.io/etcd/etcdctl/v3", v.etcd)
        wrapper = self._wrapper(
            f"etcd-{v.etcd}",
            wrapper_gomod(
                module="innerloop.local/build/etcd",
                require="go.etcd.io/etcd/server/v3",
                version=v.etcd,
                siblings=siblings,
            ),
        )
        self._go_build(
            wrapper=wrapper,
            out=out,
            binaries={"etcd": "go.etcd.io/etcd/server/v3", "etcdctl": "go.etcd.io/etcd/etcdctl/v3"},
            version=v.etcd,
            ldflags="-s -w",
            label=f"etcd {v.etcd}",
        )

    def _build_coredns(self, out: Path) -> None:
        v = self._versions
        gomod = self._download_gomod("github.com/coredns/coredns", v.coredns)
        siblings = {path: v.coredns for path in local_replacements(gomod)}
        wrapper = self._wrapper(
            f"coredns-{v.coredns}",
            wrapper_gomod(
                module="innerloop.local/build/coredns",
                require="github.com/coredns/coredns",
                version=v.coredns,
                siblings=siblings,
            ),
        )
        self._go_build(
            wrapper=wrapper,
            out=out,
            binaries={"coredns": "github.com/coredns/coredns"},
            version=v.coredns,
            ldflags="-s -w",
            label=f"coredns {v.coredns}",
        )

    def _build_helm(self, out: Path) -> None:
        # helm's go.mod replaces nothing with a relative path today; the wrapper
        # still pins any sibling it ever does, like the other components.
        v = self._versions
        gomod = self._download_gomod("helm.sh/helm/v3", v.helm)
        siblings = {path: v.helm for path in local_replacements(gomod)}
        wrapper = self._wrapper(
            f"helm-{v.helm}",
            wrapper_gomod(
                module="innerloop.local/build/helm", require="helm.sh/helm/v3", version=v.helm, siblings=siblings
            ),
        )
        self._go_build(
            wrapper=wrapper,
            out=out,
            binaries={"helm": "helm.sh/helm/v3/cmd/helm"},
            version=v.helm,
            ldflags=helm_ldflags(v.helm, gomod),
            label=f"helm {v.helm}",
        )
