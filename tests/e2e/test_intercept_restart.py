"""Intercepts survive their router: a deleted (or OOM-killed) router pod loses nothing for good.

The router keeps its registry in memory. When its pod goes, the Deployment
starts another with an empty registry; every CLI notices its tunnel drop,
sees a router process it did not register with, and registers again with the
same name, secret and rules. One namespace per test; restricted Pod Security.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from .intercepts import InterceptProcess, LocalApp, deploy_echo, request
from .kube import Kube, eventually

BACK_WITHIN_S = 30  # a new pod on the bundled cluster takes a few seconds; this allows for a busy machine


@pytest.fixture
def restricted(kube: Kube, namespace: str) -> str:
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    return namespace


def _where(ip: str, headers: dict[str, str]) -> str:
    try:
        return str(request(ip, 80, headers=headers, timeout=2)["where"])
    except OSError as err:  # no endpoint while the router pod is replaced
        return f"failed: {err}"


def test_a_deleted_router_pod_comes_back_with_every_developers_intercept(
    innerloop_cli: list[str], kube: Kube, restricted: str, tmp_path: Path
) -> None:
    """The attack (or an accident): delete the router pod, or flood it until it is OOM-killed. Before, every
    developer's intercept was gone with it: the CLIs' resumes were refused as unknown and the intercepts
    ended. Now both CLIs register again by themselves, their requests reach their laptops again and the
    rest the cluster's pods. Then the race: bob's laptop sleeps through a second restart and alice, back
    first, leaves: the new router, which would have restored the Service and removed itself with no
    intercept left, waits for bob's CLI to come back.

    A second CLI claiming a header is refused in tests/unit/intercept/test_tunnel.py (a real router over
    sockets); a restarted router nobody comes back to removes itself in tests/unit/router/test_lifecycle.py.
    """
    ns = restricted
    ip = deploy_echo(kube, ns, replicas=1)
    alice, bob = LocalApp("alice"), LocalApp("bob")
    headers = {"alice": {"x-dev": "alice"}, "bob": {"baggage": "tenant=acme, dev=bob"}, "nobody": {}}

    def all_home(*away: str) -> bool:
        return all(_where(ip, h) == (who if who not in ("nobody", *away) else "cluster") for who, h in headers.items())

    def restart_router() -> None:
        (pod,) = kube.get_json("pods", "-n", ns, "-l", "innerloop.dev/intercept-router=echo")["items"]
        kube.run("delete", "pod", "-n", ns, pod["metadata"]["name"], "--wait=false")
        # Until the old pod has stopped serving, the requests it answers prove nothing.
        kube.run("wait", "--for=delete", "-n", ns, f"pod/{pod['metadata']['name']}", "--timeout=60s", timeout=70)

    try:
        a = InterceptProcess.start(
            innerloop_cli, "echo", "-n", ns, "--to", str(alice.port), "--header", "x-dev=alice", "--name", "alice",
            state=tmp_path / "alice",
        )  # fmt: skip
        b = InterceptProcess.start(
            innerloop_cli, "echo", "-n", ns, "--to", str(bob.port), "--header", "baggage[dev]=bob", "--name", "bob",
            state=tmp_path / "bob",
        )  # fmt: skip
        a.wait_for("intercepting svc/echo")
        b.wait_for("intercepting svc/echo")
        eventually(all_home, interval_s=0.05)

        deleted = time.monotonic()
        restart_router()
        a.wait_for("tunnel lost", timeout=30)
        b.wait_for("tunnel lost", timeout=30)
        eventually(all_home, timeout_s=BACK_WITHIN_S + 30, interval_s=0.1)
        back_after = time.monotonic() - deleted
        assert back_after < BACK_WITHIN_S, f"both intercepts came back {back_after:.1f}s after the pod was deleted"
        for cli in (a, b):
            cli.wait_for("restarted without its intercepts", timeout=10)
            assert cli.proc.poll() is None, cli.output

        b.proc.send_signal(signal.SIGSTOP)
        restart_router()
        eventually(lambda: all_home("bob"), timeout_s=BACK_WITHIN_S, interval_s=0.1)

        assert a.stop() == 0, a.output
        assert "waits" in a.output.splitlines()[-1] and "for other developers' intercepts" in a.output, a.output
        b.proc.send_signal(signal.SIGCONT)
        eventually(lambda: all_home("alice"), timeout_s=BACK_WITHIN_S, interval_s=0.1)
        assert b.stop() == 0, b.output
        # The last one out: the Service is restored now, or once the new router's wait for CLIs is over
        # (not waited for here: the same shut-down as every other test's, only later).
        assert "selects its own pods again" in b.output or "waits" in b.output.splitlines()[-1], b.output
    finally:
        alice.close()
        bob.close()
