"""The example app (examples/bookshop) on the bundled cluster.

Used by ``innerloop demo`` and by the end-to-end tests: build the three
service images daemonlessly, import them into the node, deploy them into a
namespace that enforces the *restricted* Pod Security Standard, and wait for
the rollout. ``innerloop up`` (the dev loop) will replace the deploy part.
"""

from __future__ import annotations

from pathlib import Path

from innerloop.builders.image import build_image
from innerloop.cluster.images import ClusterImages
from innerloop.cluster.node import BundledCluster
from innerloop.cluster.progress import StepFailed
from innerloop.deploy.render import dump_all, load_all, pin_images

SERVICES = ("backend", "api", "frontend")


def example_dir() -> Path:
    """examples/bookshop of the source tree innerloop runs from."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "examples" / "bookshop"
        if candidate.is_dir():
            return candidate
    raise StepFailed("examples/bookshop not found: run innerloop from a clone of its repository (pip install -e .)")


def build_example_images(cluster: BundledCluster, app: Path) -> dict[str, str]:
    """Build and import every service image; returns manifest image name -> tag."""
    bases = ClusterImages(paths=cluster.paths, report=lambda _m: None)
    known = {"innerloop.local/python:3.11": bases.python, "innerloop.local/busybox:1.35": bases.busybox}

    def resolve(ref: str) -> Path:
        if ref not in known:
            raise StepFailed(f"base image {ref} is not built locally; known bases: {', '.join(sorted(known))}")
        return known[ref]().archive

    tags: dict[str, str] = {}
    present = set(cluster.ctr("images", "ls", "-q").stdout.split())
    for name in SERVICES:
        image = build_image(
            context=app / name,
            dockerfile=app / name / "Dockerfile",
            repository=f"innerloop.local/bookshop-{name}",
            resolve_base=resolve,
            out_dir=cluster.paths.images / "apps",
        )
        if image.tag not in present:
            cluster.import_image(image.archive)
        tags[f"bookshop-{name}"] = image.tag
    return tags


def restricted_namespace(name: str) -> str:
    return f"""apiVersion: v1
kind: Namespace
metadata:
  name: {name}
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
"""


def deploy_example(cluster: BundledCluster, *, app: Path, namespace: str, tags: dict[str, str]) -> None:
    out = cluster.kubectl("apply", "-f", "-", input_text=restricted_namespace(namespace))
    if out.returncode != 0:
        raise StepFailed(f"creating namespace {namespace} failed: {out.stderr.strip()}")
    docs = [d for f in sorted((app / "k8s").glob("*.yaml")) for d in load_all(f.read_text())]
    pin_images(docs, tags)
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=dump_all(docs))
    if out.returncode != 0:
        raise StepFailed(f"deploying the example app failed: {out.stderr.strip()}")
    for name in SERVICES:
        out = cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=120s", timeout=130)
        if out.returncode != 0:
            raise StepFailed(f"deployment/{name} did not roll out: {out.stderr.strip() or out.stdout.strip()}")
