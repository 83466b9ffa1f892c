"""One replica's link of `up`'s sync session against a real agent over TCP: when it stops instead of retrying.

The port-forward is the one edge replaced: ``PortForwardByteStream.open``
connects to an agent server on a loopback port instead of going through
the API server. Everything else (the pod check, hello, the agent's answer)
is the real code.
"""

from __future__ import annotations

import asyncio
import copy
import signal
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from lightkube.resources.core_v1 import Pod

from innerloop.agent.server import AgentServer
from innerloop.agent.supervisor import ChildReaper, Supervisor
from innerloop.config import Service
from innerloop.deploy.devmode import DevMode, apply_dev_mode
from innerloop.engine.plan import ServicePlan
from innerloop.k8s.connection import ClusterConnection
from innerloop.k8s.streams import PortForwardByteStream
from innerloop.protocol.transport import connect_tcp
from innerloop.status.store import Store
from innerloop.sync.session import Replica, SyncSession

WORKLOAD: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:1", "command": ["python", "app.py"]}]},
        },
    },
}


def _planned() -> dict[str, Any]:
    dev = DevMode(agent_image="agent:1", token_secret="s", command=["python", "app.py"], sync_targets=["/app"])
    return apply_dev_mode(WORKLOAD, dev)


def _pod(workload: dict[str, Any]) -> Pod:
    return cast(
        Pod,
        Pod.from_dict(
            {
                "metadata": {
                    "name": "web-5d8f7-abcde",
                    "labels": {"app": "web", "pod-template-hash": "5d8f7"},
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "ReplicaSet",
                            "name": "web-5d8f7",
                            "controller": True,
                            "uid": "u",
                        }
                    ],
                },
                "spec": copy.deepcopy(workload["spec"]["template"]["spec"]),
            }
        ),
    )


def _session(tmp_path: Path, lines: list[str], tokens: list[str]) -> SyncSession:
    (tmp_path / "src").mkdir()
    config = Service.model_validate(
        {"manifests": {"files": ["k8s.yaml"]}, "sync": [{"local": "src", "remote": "/app"}]}, by_alias=True
    )
    plan = ServicePlan(
        name="web",
        docs=[_planned()],
        workload_kind="Deployment",
        workload_name="web",
        selector={"app": "web"},
        container="web",
        dev_mode=True,
    )
    return SyncSession(
        conn=cast(ClusterConnection, None),
        namespace="dev",
        service="web",
        plan=plan,
        tokens=tokens,
        root=tmp_path,
        config=config,
        store=Store(project="p", namespace="dev"),
        report=lines.append,
    )


async def _link_against_agent(
    session: SyncSession, replica: Replica, agent_token: str, monkeypatch: pytest.MonkeyPatch
) -> int:
    """Run the link until it ends (10 s at most); returns how many connections it opened."""
    reaper = ChildReaper(reap_all=False)
    reaper.install()
    supervisor = Supervisor([sys.executable, "-c", "import time; time.sleep(60)"], reaper=reaper, grace=1.0)
    agent = AgentServer(token=agent_token, supervisor=supervisor, keepalive_interval=None)
    server = await asyncio.start_server(agent.handle_tcp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    opened = 0

    async def open_forward(*_args: object, **_kwargs: object) -> object:
        nonlocal opened
        opened += 1
        return await connect_tcp("127.0.0.1", port)

    monkeypatch.setattr(PortForwardByteStream, "open", open_forward)
    try:
        await asyncio.wait_for(session._link(replica), 10)
    finally:
        await agent.close()
        server.close()
        await server.wait_closed()
        supervisor.kill()
        await supervisor.stop(signal.SIGKILL)
        reaper.uninstall()
    return opened


def test_a_denied_token_stops_the_link_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack/accident: the pod's agent belongs to another `up` (a teammate took it over).

    Before the fix the link reconnected every 0.2-2 s forever, one log line each time.
    """
    lines: list[str] = []
    session = _session(tmp_path, lines, ["ours"])
    replica = Replica(pod="web-5d8f7-abcde", sent=[{}], seen=_pod(_planned()))
    opened = asyncio.run(_link_against_agent(session, replica, "someone else's", monkeypatch))
    assert opened == 1
    assert len(lines) == 1, lines
    assert "refused this `up`" in lines[0] and "innerloop down" in lines[0]


def test_a_pod_that_is_not_ours_gets_no_connection_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: a teammate patched the Deployment to run a fake agent; the CLI must not send it its tokens."""
    tampered = _planned()
    tampered["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", "fake-agent"]
    lines: list[str] = []
    session = _session(tmp_path, lines, ["ours"])
    replica = Replica(pod="web-5d8f7-abcde", sent=[{}], seen=_pod(tampered))
    opened = asyncio.run(_link_against_agent(session, replica, "ours", monkeypatch))
    assert opened == 0
    assert len(lines) == 1, lines
    assert "is not the one innerloop deployed" in lines[0] and "innerloop down" in lines[0]
