"""Where an intercept's first set-up goes: the CLI's steps, timed from the process start.

Needs a running cluster and its node (ClusterIPs reachable). Run:

    .venv/bin/python bench/intercept_timeline.py

Deploys a one-replica HTTP Deployment in a fresh namespace, serves a local
HTTP server, then goes through `innerloop intercept`'s steps (the functions
the command uses) and prints when each finished: imports, router objects
created, registered through the starting router, Service switched (router
Ready), first request routed locally. Cleans up after itself.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # before the heavy imports: they are part of the set-up


def mark(step: str) -> None:
    print(f"{time.monotonic() - T0:6.2f} s  {step}", flush=True)


import asyncio  # noqa: E402 - timed on purpose
import secrets  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from innerloop.engine.target import connect  # noqa: E402
from innerloop.intercept.session import InterceptRequest, start, switch  # noqa: E402
from innerloop.router.match import parse_rule  # noqa: E402

mark("imports")
IMPORTS_S = time.monotonic() - T0

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.intercepts import LocalApp, deploy_echo, request  # noqa: E402
from e2e.kube import Kube  # noqa: E402
from innerloop.cluster.node import BundledCluster  # noqa: E402


async def timeline(namespace: str, ip: str, local: LocalApp) -> None:
    target = connect(lambda _m: None)
    intercept = InterceptRequest(
        service="echo",
        namespace=namespace,
        mode="personal",
        rules=[parse_rule("x-dev=timeline")],
        local_ports={},
        default_local=local.port,
        name=None,
        grace=3,
    )
    tunnel = await start(target, intercept, report=lambda _m: None)
    mark("router objects created")
    runner = asyncio.create_task(tunnel.run())

    async def registered() -> None:
        await tunnel.ready.wait()
        mark("registered through the starting router pod")

    noted = asyncio.create_task(registered())
    await switch(target, intercept, registered=tunnel.ready)
    mark("router Ready, Service switched")
    await noted

    def routed() -> bool:
        try:
            return bool(request(ip, 80, headers={"x-dev": "timeline"})["where"] == "local")
        except OSError:
            return False

    while not await asyncio.to_thread(routed):
        await asyncio.sleep(0.01)
    mark("first request routed locally")
    await tunnel.leave()
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


def main() -> None:
    global T0  # noqa: PLW0603
    info = BundledCluster(report=print).info()
    if info is None:
        sys.exit("start the cluster first: innerloop cluster up")
    kube = Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)
    namespace = f"bench-timeline-{secrets.token_hex(3)}"
    kube.run("create", "namespace", namespace)
    local = LocalApp("local")
    try:
        ip = deploy_echo(kube, namespace, replicas=1)
        T0 = time.monotonic() - IMPORTS_S  # the clock counts the imports, not the test app's deployment
        asyncio.run(timeline(namespace, ip, local))
    finally:
        local.close()
        kube.run("delete", "namespace", namespace, "--wait=false", check=False)


if __name__ == "__main__":
    main()
