"""``innerloop demo``: the example app on the bundled cluster, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import click

from innerloop.cluster.node import BundledCluster
from innerloop.cluster.progress import StepFailed, stderr_report
from innerloop.demo import build_example_images, deploy_example, example_dir


@click.command()
@click.option("--namespace", default="innerloop-demo", show_default=True)
@click.option("--port", default=8080, show_default=True, help="Local port for the front end.")
@click.option("--check", is_flag=True, help="Exit after one request instead of serving until Ctrl+C.")
def demo(namespace: str, port: int, check: bool) -> None:
    """Start the bundled cluster, deploy examples/bookshop, and open it on localhost."""
    cluster = BundledCluster(report=stderr_report)
    try:
        cluster.up()
        app = example_dir()
        stderr_report("building the example images")
        tags = build_example_images(cluster, app, report=stderr_report)
        stderr_report(f"deploying {app} into namespace {namespace} (restricted Pod Security)")
        deploy_example(cluster, app=app, namespace=namespace, tags=tags)
    except StepFailed as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    forward = subprocess.Popen(
        [
            str(cluster.kubectl_path),
            f"--kubeconfig={cluster.paths.kubeconfig}",
            "-n",
            namespace,
            "port-forward",
            "svc/frontend",
            f"{port}:8080",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        chain = _first_response(f"http://127.0.0.1:{port}/api.json", forward)
        click.echo(json.dumps(chain, indent=2))
        if check:
            return
        click.echo(f"bookshop is at http://127.0.0.1:{port}/ (Ctrl+C to stop)", err=True)
        forward.wait()
    except KeyboardInterrupt:
        pass
    finally:
        forward.terminate()
        forward.wait()


def _broken_hop(chain: object) -> str | None:
    """The error of the first hop that could not reach the next one, or None when every hop answered."""
    while isinstance(chain, dict):
        if "error" in chain:
            return str(chain["error"])
        via = chain.get("via")
        chain = via[0] if isinstance(via, list) and via else None
    return None


def _first_response(url: str, forward: subprocess.Popen[bytes]) -> object:
    """The first answer of the whole chain: a hop whose Service has no endpoint yet answers with an error entry."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                chain = json.load(resp)
            broken = _broken_hop(chain)
            if broken is None:
                return chain
            if time.monotonic() > deadline:
                click.echo(f"error: the chain did not answer end to end: {broken}", err=True)
                sys.exit(1)
            time.sleep(0.3)
        except OSError as err:
            if forward.poll() is not None:
                stderr = forward.stderr.read().decode() if forward.stderr else ""
                click.echo(f"error: port-forward exited: {stderr.strip()}", err=True)
                sys.exit(1)
            if time.monotonic() > deadline:
                click.echo(f"error: no answer from {url}: {err}", err=True)
                sys.exit(1)
            time.sleep(0.3)
