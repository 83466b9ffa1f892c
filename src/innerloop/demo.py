"""The example app (examples/bookshop) on the bundled cluster.

Used by ``innerloop demo`` and by the end-to-end tests: build every service
image the way ``innerloop up`` builds it (its innerloop.yaml says which; the
Dockerfiles with ``RUN`` go to a real builder such as buildah, the others to
the built-in one), import them into the node, deploy them into a namespace
that enforces the *restricted* Pod Security Standard, and wait for the rollout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from innerloop.cluster.node import BundledCluster
from innerloop.cluster.progress import StepFailed
from innerloop.config import ConfigError, load_config
from innerloop.deploy.render import dump_all, load_all, pin_images
from innerloop.engine.plan import PlanError
from innerloop.engine.sources import build_service_image


def example_dir() -> Path:
    """examples/bookshop of the source tree innerloop runs from."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "examples" / "bookshop"
        if candidate.is_dir():
            return candidate
    raise StepFailed("examples/bookshop not found: run innerloop from a clone of its repository (pip install -e .)")


def example_services(app: Path) -> list[str]:
    """The example's services, in its innerloop.yaml's order."""
    try:
        return list(load_config(app / "innerloop.yaml").services)
    except ConfigError as err:
        raise StepFailed(str(err)) from None


def build_example_images(
    cluster: BundledCluster, app: Path, *, report: Callable[[str], None] | None = None
) -> dict[str, str]:
    """Build and import every service image; returns manifest image name -> tag."""
    try:
        project = load_config(app / "innerloop.yaml")
    except ConfigError as err:
        raise StepFailed(str(err)) from None
    tags: dict[str, str] = {}
    present = set(cluster.ctr("images", "ls", "-q").stdout.split())
    for name, service in project.services.items():
        if service.image is None:
            continue
        try:
            image, _info = build_service_image(app, name, service, paths=cluster.paths, report=report)
        except PlanError as err:
            raise StepFailed(str(err)) from None
        if image.tag not in present:
            cluster.import_image(image.archive)
        tags[service.image.name] = image.tag
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
    for name in example_services(app):
        out = cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=120s", timeout=130)
        if out.returncode != 0:
            raise StepFailed(f"deployment/{name} did not roll out: {out.stderr.strip() or out.stdout.strip()}")
