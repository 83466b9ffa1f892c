"""Self-healing port-forwards against the real cluster: pods are deleted under a live request loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from dataclasses import dataclass

import aiohttp
import pytest
from lightkube.resources.core_v1 import Pod

from innerloop.forward import ForwardError, ForwardEvent, PortForward
from innerloop.k8s.connection import ClusterConnection

from .kube import Kube, free_port
from .workloads import deployment_manifest, http_server_command, service_manifest

# A replacement that is Ready must serve the local port within this. The README says "within about a
# second" (bench/forward_bench.py measures it); 6 s allows for a busy machine and still fails a heal
# that waits for a timeout or a retry back-off instead of the pod's Ready.
HEAL_LIMIT_S = 6.0
POD_START_S = 180  # ceiling for a new pod to be scheduled, started and answering, on a busy machine


@dataclass(frozen=True)
class Result:
    started: float
    ended: float
    pod: str | None  # the pod that answered; None when the request failed
    error: str = ""


@pytest.fixture
def conn(kube: Kube) -> ClusterConnection:
    return ClusterConnection.from_kubeconfig(kube.kubeconfig)


def _deploy_web(kube: Kube, namespace: str, *, with_service: bool = False, start_delay_s: float = 0.0) -> None:
    port = {"containerPort": 8000, "name": "http"}
    command = http_server_command(start_delay_s=start_delay_s)
    kube.apply(namespace, deployment_manifest("web", kube.images["python"], command, ports=[port]))
    if with_service:
        kube.apply(namespace, service_manifest("web", port=80, target_port="http"))


async def _record_ready(conn: ClusterConnection, namespace: str, ready_at: dict[str, float]) -> None:
    """When each pod was first seen Ready, on this process's clock (an independent watch)."""
    client = conn.client()
    try:
        async for _kind, pod in client.watch(Pod, namespace=namespace):
            name = pod.metadata.name if pod.metadata else None
            conditions = pod.status.conditions if pod.status else None
            if (
                name
                and name not in ready_at
                and any(c.type == "Ready" and c.status == "True" for c in conditions or [])
            ):
                ready_at[name] = time.monotonic()
    finally:
        await client.close()


class RequestLoop:
    """GETs to 127.0.0.1 only, one new TCP connection each, bounded in count and time."""

    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http = http
        self.port = port
        self.results: list[Result] = []
        self.answered = asyncio.Event()  # set after every successful answer

    async def once(self) -> Result:
        started = time.monotonic()
        try:
            async with self.http.get(f"http://127.0.0.1:{self.port}/", timeout=aiohttp.ClientTimeout(total=30)) as r:
                body = await r.text()
                result = Result(started, time.monotonic(), body if r.status == 200 else None, f"HTTP {r.status}")
        except (aiohttp.ClientError, TimeoutError) as err:
            result = Result(started, time.monotonic(), None, repr(err))
        self.results.append(result)
        if result.pod is not None:
            self.answered.set()
        return result

    async def run(self, *, max_s: float, max_requests: int, pause_s: float = 0.02) -> None:
        deadline = time.monotonic() + max_s
        for _ in range(max_requests):
            if time.monotonic() > deadline:
                return
            await self.once()
            await asyncio.sleep(pause_s)

    async def until_served_by_other_than(self, pods: set[str], *, timeout_s: float) -> str:
        """Wait (while ``run`` goes on) for an answer from a pod not in ``pods``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for result in reversed(self.results):
                if result.pod is not None:
                    if result.pod not in pods:
                        return result.pod
                    break
            self.answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.answered.wait(), 0.5)
        raise AssertionError(f"no pod other than {sorted(pods)} answered within {timeout_s}s: {self.results[-5:]}")


def _until_gone(kube: Kube, namespace: str, pod: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while (out := kube.run("get", "pod", pod, "-n", namespace, "-o", "name", check=False)).returncode == 0:
        assert time.monotonic() < deadline, f"pod {pod} still exists {timeout_s}s after its deletion"
        time.sleep(0.1)
    assert "NotFound" in out.stderr, out.stderr


def _timeline(results: list[Result], ready_at: dict[str, float]) -> str:
    """Pod switches, failures and Ready times, relative to the first request: for failure messages."""
    t0 = results[0].started if results else 0.0
    rows = [f"{t - t0:7.3f} ready {pod}" for pod, t in ready_at.items()]
    previous = None
    for r in results:
        if r.pod != previous or r.pod is None:
            rows.append(f"{r.started - t0:7.3f}-{r.ended - t0:.3f} {r.pod or 'FAILED ' + r.error[:100]}")
        previous = r.pod
    return "\n".join(sorted(rows))


def _heal_times(results: list[Result], ready_at: dict[str, float]) -> list[float]:
    """For every first answer from a new pod: how long after that pod was Ready it came."""
    heals = []
    previous: str | None = None
    for result in results:
        if result.pod is None:
            continue
        if previous is not None and result.pod != previous:
            assert result.pod in ready_at, f"{result.pod} answered but was never seen Ready"
            heals.append(result.ended - ready_at[result.pod])
        previous = result.pod
    return heals


def _failure_gaps(results: list[Result]) -> list[tuple[float, float]]:
    """Runs of failed requests, as (first failure's start, next success's end)."""
    gaps = []
    start: float | None = None
    for result in results:
        if result.pod is None and start is None:
            start = result.started
        elif result.pod is not None and start is not None:
            gaps.append((start, result.ended))
            start = None
    assert start is None, f"requests still failing at the end: {results[-3:]}"
    return gaps


def test_forward_survives_deleting_the_pod_twice(kube: Kube, conn: ClusterConnection, namespace: str) -> None:
    # The server listens 0.5 s after its pod is Ready (no probe): connections in that window are
    # refused inside the pod, and must be replayed to it rather than fail.
    _deploy_web(kube, namespace, start_delay_s=0.5)
    local_port = free_port()
    events: list[ForwardEvent] = []

    async def scenario() -> tuple[list[Result], dict[str, float], list[str], list[float]]:
        ready_at: dict[str, float] = {}
        deleted_at: list[float] = []
        recorder = asyncio.create_task(_record_ready(conn, namespace, ready_at))
        try:
            pf = PortForward(
                conn,
                namespace=namespace,
                selector={"app": "web"},
                remote_port=8000,
                local_port=local_port,
                on_event=events.append,
            )
            async with pf, aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                assert pf.local_port == local_port
                loop = RequestLoop(http, local_port)
                requests = asyncio.create_task(loop.run(max_s=4 * POD_START_S, max_requests=100_000))
                try:
                    served = [await loop.until_served_by_other_than(set(), timeout_s=POD_START_S)]
                    await asyncio.sleep(0.5)  # a few answers from the first pod before it goes
                    for _ in range(2):
                        # Deleted under load: requests are in flight to this pod when it goes.
                        deleted_at.append(time.monotonic())
                        await asyncio.to_thread(kube.run, "delete", "pod", served[-1], "-n", namespace, "--wait=false")
                        served.append(await loop.until_served_by_other_than(set(served), timeout_s=POD_START_S))
                        assert pf.local_port == local_port and pf.status.local_port == local_port
                        # The old pod is killed (after its 1 s grace period) and its connections break
                        # while requests go on: wait until it is gone.
                        await asyncio.to_thread(_until_gone, kube, namespace, served[-2])
                finally:
                    requests.cancel()
                    await asyncio.gather(requests, return_exceptions=True)
                for _ in range(10):
                    await loop.once()
                assert pf.status.pod == served[-1]
                deadline = time.monotonic() + 30
                while pf.status.connections and time.monotonic() < deadline:  # the last teardown may still run
                    await asyncio.sleep(0.02)
                assert pf.status.connections == 0
            return loop.results, ready_at, served, deleted_at
        finally:
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)

    results, ready_at, served, deleted_at = asyncio.run(scenario())
    timeline = _timeline(results, ready_at)

    assert len(set(served)) == 3, served
    assert all(r.pod == served[-1] for r in results[-10:]), timeline
    heals = _heal_times(results, ready_at)
    assert len(heals) == 2, timeline
    assert all(h < HEAL_LIMIT_S for h in heals), f"answers came {heals}s after the replacement was Ready\n{timeline}"
    for start, end in _failure_gaps(results):
        replacement_ready = max((t for t in ready_at.values() if t <= end), default=start)
        assert end - max(replacement_ready, start) < HEAL_LIMIT_S, timeline
    # Once a replacement is Ready (and until it is deleted in turn), nothing fails, although it
    # refuses connections for its first 0.5 s: those are replayed, not dropped.
    windows = [(ready_at[served[1]], deleted_at[1]), (ready_at[served[2]], float("inf"))]
    late = [r for r in results if r.pod is None and any(a <= r.started < b for a, b in windows)]
    assert not late, f"requests failed while a Ready replacement was serving\n{timeline}"
    kinds = [(e.kind, e.pod) for e in events]
    assert kinds[0] == ("listening", None)
    assert ("connected", served[0]) in kinds
    assert ("retargeted", served[1]) in kinds and ("retargeted", served[2]) in kinds, kinds


def test_forward_to_a_named_target_port_through_a_service(kube: Kube, conn: ClusterConnection, namespace: str) -> None:
    _deploy_web(kube, namespace, with_service=True)

    async def scenario() -> tuple[list[str], list[str]]:
        # Service port 80 -> targetPort "http" -> containerPort 8000; and the container port by name.
        via_service = PortForward(conn, namespace=namespace, service="web", remote_port=80)
        by_name = PortForward(conn, namespace=namespace, selector={"app": "web"}, remote_port="http")
        async with (
            via_service,
            by_name,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
        ):
            ports = (via_service.local_port, by_name.local_port)
            loops = [RequestLoop(http, p) for p in ports]
            async with asyncio.TaskGroup() as tg:
                running = [
                    tg.create_task(lp.run(max_s=3 * POD_START_S, max_requests=100_000, pause_s=0.05)) for lp in loops
                ]
                first = [await lp.until_served_by_other_than(set(), timeout_s=POD_START_S) for lp in loops]
                assert first[0] == first[1]
                await asyncio.to_thread(kube.run, "delete", "pod", first[0], "-n", namespace, "--wait=false")
                second = [await lp.until_served_by_other_than({first[0]}, timeout_s=POD_START_S) for lp in loops]
                for task in running:
                    task.cancel()
            assert (via_service.local_port, by_name.local_port) == ports
            assert via_service.status.pod == second[0]
        return first, second

    first, second = asyncio.run(scenario())
    assert second[0] == second[1] != first[0]


def test_forward_without_pods_fails_the_connection_and_closes_cleanly(conn: ClusterConnection, namespace: str) -> None:
    events: list[ForwardEvent] = []

    async def scenario() -> tuple[bytes, float, bytes, int]:
        pf = PortForward(
            conn,
            namespace=namespace,
            selector={"app": "nothing"},
            remote_port=8000,
            retry_window_s=1.0,
            on_event=events.append,
        )
        async with pf:
            port = pf.local_port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            started = time.monotonic()
            given_up = await asyncio.wait_for(reader.read(), 60)
            waited = time.monotonic() - started
            writer.close()
            # A connection open while the forward closes is closed with it.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        at_close = await asyncio.wait_for(reader.read(), 60)
        writer.close()
        return given_up, waited, at_close, port

    given_up, waited, at_close, port = asyncio.run(scenario())
    assert given_up == b"" and at_close == b""
    # It gives up after its retry window (1 s): not before, and not much later (generous for a busy machine).
    assert 0.9 <= waited < 10.0, waited
    failed = [e for e in events if e.kind == "connection-failed"]
    assert failed and "no running, ready pod matches app=nothing:8000" in failed[0].message, events
    assert any(e.kind == "waiting" for e in events), events
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_forward_to_a_service_without_selector_says_why(kube: Kube, conn: ClusterConnection, namespace: str) -> None:
    manual = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "manual"}, "spec": {"ports": [{"port": 80}]}}
    kube.apply(namespace, json.dumps(manual))
    events: list[ForwardEvent] = []

    async def scenario() -> None:
        async with PortForward(
            conn, namespace=namespace, service="manual", remote_port=80, on_event=events.append
        ) as pf:
            deadline = time.monotonic() + 60
            while not pf.status.last_error and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

    with pytest.raises(ForwardError, match=r"service .*/manual has no pod selector"):
        asyncio.run(scenario())
    assert [e.kind for e in events] == ["listening", "error"], events
