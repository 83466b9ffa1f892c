"""The bundled cluster seen as somebody else's: a kubeconfig that does not name it.

Its server is the node's address (not 127.0.0.1) and its context, cluster and
user names are a team's, so innerloop cannot tell it is the bundled cluster
and must get images there the way it would on a remote one: through the
registry the cluster advertises (KEP-1755) or one the user names.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import yaml

from innerloop.cluster.components import API_PORT
from innerloop.cluster.node import BundledCluster, detect_node_ip

CONTEXT = "team-dev"


def remote_kubeconfig(bundled: BundledCluster, dest: Path, *, context: str = CONTEXT) -> Path:
    """A copy of the bundled kubeconfig under a team's names, pointing at the node's address."""
    config = yaml.safe_load(bundled.paths.kubeconfig.read_text())
    [cluster] = config["clusters"]
    [user] = config["users"]
    cluster["name"] = f"{context}-cluster"
    cluster["cluster"]["server"] = f"https://{detect_node_ip()}:{API_PORT}"
    user["name"] = f"{context}-admin"
    config["contexts"] = [
        {"name": context, "context": {"cluster": cluster["name"], "user": user["name"], "namespace": "default"}}
    ]
    config["current-context"] = context
    dest.write_text(yaml.safe_dump(config))
    dest.chmod(0o600)
    return dest


def imported_refs(bundled: BundledCluster) -> list[str]:
    """Every image reference the node's containerd holds (what `ctr images ls` lists)."""
    return bundled.ctr("images", "ls", "-q").stdout.split()


def docker_config(dest: Path, host: str, user: str, password: str) -> Path:
    """A docker config folder holding credentials for ``host``, as `docker login` writes them."""

    dest.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (dest / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return dest


def pulled_from(kubectl: list[str], namespace: str, selector: str) -> list[tuple[str, str]]:
    """(image, imageID) of the running containers the selector matches: what the kubelet pulled."""
    out = subprocess.run(
        [*kubectl, "get", "pods", "-n", namespace, "-l", selector, "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    found = []
    for pod in json.loads(out.stdout)["items"]:
        for status in pod["status"].get("containerStatuses", []):
            found.append((status["image"], status["imageID"]))
    return found
