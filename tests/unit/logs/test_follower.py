"""The log follower against a scripted API: reconnects, restarts, pods that come and go.

The end-to-end tests prove the follower on the real cluster, where a dropped
log connection cannot be provoked on purpose; here the API is a script, so the
reconnect overlap (the case de-duplication exists for) happens every time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from lightkube import AsyncClient
from lightkube.models.core_v1 import (
    Container,
    ContainerStateRunning,
    ContainerStateTerminated,
    ContainerStateWaiting,
    ContainerStatus,
    PodSpec,
    PodStatus,
)
from lightkube.models.core_v1 import ContainerState as K8sContainerState
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from innerloop.k8s.connection import ClusterConnection
from innerloop.logs import LogFollower, LogLine
from innerloop.logs.follower import ContainerState, container_state


def stamp(seconds_ago: float) -> str:
    at = datetime.fromtimestamp(time.time() - seconds_ago, tz=UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # nanoseconds, as the kubelet writes them


def pod(name: str, *, uid: str = "", container_id: str | None = "c1", phase: str = "running") -> Pod:
    if phase == "running":
        state = K8sContainerState(running=ContainerStateRunning())
    elif phase == "terminated":
        state = K8sContainerState(terminated=ContainerStateTerminated(exitCode=1))
    else:
        state = K8sContainerState(waiting=ContainerStateWaiting(reason="ContainerCreating"))
    status = ContainerStatus(
        name="app",
        image="i",
        imageID="",
        ready=phase == "running",
        restartCount=0,
        containerID=container_id,
        state=state,
    )
    return Pod(
        metadata=ObjectMeta(name=name, uid=uid or f"uid-{name}"),
        spec=PodSpec(containers=[Container(name="app")]),
        status=PodStatus(phase="Running", containerStatuses=[status]),
    )


@dataclass
class Session:
    """What one log request returns: some lines, then the end (when ``end`` is set) or nothing more."""

    lines: Sequence[str]
    end: asyncio.Event | None = None


@dataclass
class FakeApi:
    """Just the parts of lightkube's AsyncClient the follower uses, with the kubelet's log semantics:
    a request reads the pod's current container instance; for an exited one it ends after its lines."""

    pods: list[Pod]
    sessions: dict[tuple[str, str], list[Session]] = field(default_factory=dict)  # by (pod, container id)
    calls: list[dict[str, Any]] = field(default_factory=list)
    events: asyncio.Queue[tuple[str, Pod]] = field(default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        self.current = {p.metadata.name: p for p in self.pods if p.metadata and p.metadata.name}

    async def push(self, kind: str, p: Pod) -> None:
        assert p.metadata and p.metadata.name
        if kind == "DELETED":
            self.current.pop(p.metadata.name, None)
        else:
            self.current[p.metadata.name] = p
        await self.events.put((kind, p))

    def list(self, _res: type, **_kw: Any) -> Listing:
        return Listing(list(self.pods))

    async def watch(self, _res: type, **_kw: Any) -> AsyncIterator[tuple[str, Pod]]:
        while True:
            yield await self.events.get()

    def log(self, name: str, **kw: Any) -> AsyncIterator[str]:
        state = container_state(self.current[name], kw["container"])
        assert state.container_id is not None, "logs asked for before the container started"
        self.calls.append({"pod": name, "instance": state.container_id, **kw})
        script = self.sessions.get((name, state.container_id), [])
        session = script.pop(0) if len(script) > 1 else (script[0] if script else Session([]))
        return self._session(session, exited=state.phase == "terminated")

    async def _session(self, session: Session, *, exited: bool) -> AsyncIterator[str]:
        for raw in session.lines:
            await asyncio.sleep(0)
            yield raw
        if not exited:
            await (session.end or asyncio.Event()).wait()

    async def close(self) -> None:
        pass


class Listing:
    resourceVersion = "1"

    def __init__(self, pods: list[Pod]) -> None:
        self.pods = pods

    async def __aiter__(self) -> AsyncIterator[Pod]:
        for p in self.pods:
            yield p


class FakeConnection:
    def __init__(self, api: FakeApi) -> None:
        self.api = api

    def client(self) -> AsyncClient:
        return cast(AsyncClient, self.api)


def follower(api: FakeApi, got: list[LogLine], **kw: Any) -> LogFollower:
    return LogFollower(
        cast(ClusterConnection, FakeConnection(api)),
        namespace="dev",
        selector={"app": "api"},
        service_name="api",
        on_line=got.append,
        **kw,
    )


async def until(check: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_dropped_follow_reconnects_without_repeating_lines() -> None:
    a, b, c = stamp(3) + " a", stamp(2) + " b", stamp(1) + " c"
    dropped = asyncio.Event()
    dropped.set()
    got: list[LogLine] = []

    async def scenario() -> FakeApi:
        api = FakeApi(pods=[pod("api-1")])
        # The first connection drops after two lines; the reconnect starts a whole second early.
        api.sessions["api-1", "c1"] = [Session([a, b], end=dropped), Session([a, b, c])]
        async with follower(api, got, tail_lines=5):
            await until(lambda: len(got) >= 3 and len(api.calls) >= 2)
            await asyncio.sleep(0.05)
        return api

    api = asyncio.run(scenario())
    assert [line.text for line in got] == ["a", "b", "c"]
    assert {(line.service, line.pod, line.container) for line in got} == {("api", "api-1", "app")}
    first, second = api.calls
    assert (first["tail_lines"], first["since"], first["follow"], first["timestamps"]) == (5, None, True, True)
    assert second["tail_lines"] is None and second["since"] >= 2 + 2  # b was written 2 s ago, plus the margin


def test_a_restarted_container_is_followed_again_from_where_it_left_off() -> None:
    got: list[LogLine] = []
    run1 = [stamp(3) + " run1 first", stamp(2) + " run1 last"]

    async def scenario() -> FakeApi:
        exits = asyncio.Event()
        api = FakeApi(pods=[pod("api-1", container_id="c1")])
        api.sessions["api-1", "c1"] = [Session(run1, end=exits)]
        api.sessions["api-1", "c2"] = [Session([stamp(0.5) + " run2 first", stamp(0.4) + " run2 second"])]
        async with follower(api, got):
            await until(lambda: len(got) == 2)
            exits.set()  # the container exits: the kubelet ends the follow, the status follows later
            await asyncio.sleep(0.05)
            await api.push("MODIFIED", pod("api-1", container_id="c1", phase="terminated"))
            await asyncio.sleep(0.7)  # longer than the re-check after a follow ends
            await api.push("MODIFIED", pod("api-1", container_id="c2"))
            await until(lambda: len(got) == 4)
            await asyncio.sleep(0.05)
        return api

    api = asyncio.run(scenario())
    assert [line.text for line in got] == ["run1 first", "run1 last", "run2 first", "run2 second"]
    instances = [call["instance"] for call in api.calls]
    # The exited instance may be read once more (its exit raced the status), then never again.
    assert instances in (["c1", "c2"], ["c1", "c1", "c2"]), instances
    assert api.calls[-1]["since"] is not None and api.calls[-1]["tail_lines"] is None


def test_a_new_pod_is_followed_from_its_first_line_and_a_deleted_one_stops() -> None:
    got: list[LogLine] = []
    exited = asyncio.Event()

    async def scenario() -> tuple[FakeApi, frozenset[tuple[str, str]], frozenset[tuple[str, str]]]:
        api = FakeApi(pods=[])
        api.sessions["api-2", "c1"] = [Session([stamp(1) + " booting", stamp(0.5) + " ready"], end=exited)]
        async with follower(api, got) as logs:
            await api.push("ADDED", pod("api-2", container_id=None, phase="waiting"))
            await asyncio.sleep(0.1)
            assert not api.calls, "no logs are asked for before the container runs"
            await api.push("MODIFIED", pod("api-2"))
            await until(lambda: len(got) == 2)
            during = logs.following
            exited.set()
            await api.push("MODIFIED", pod("api-2", phase="terminated"))
            await api.push("DELETED", pod("api-2", phase="terminated"))
            await until(lambda: not logs.following)
            after = logs.following
        return api, during, after

    api, during, after = asyncio.run(scenario())
    assert [(line.pod, line.text) for line in got] == [("api-2", "booting"), ("api-2", "ready")]
    assert (api.calls[0]["since"], api.calls[0]["tail_lines"]) == (None, None)
    assert during == {("api-2", "app")} and after == frozenset()


def test_async_callbacks_are_awaited_in_order() -> None:
    seen: list[str] = []

    async def slow(line: LogLine) -> None:
        await asyncio.sleep(0.01)
        seen.append(line.text)

    async def scenario() -> None:
        api = FakeApi(pods=[pod("api-1")])
        api.sessions["api-1", "c1"] = [Session([f"{stamp(1 - i / 10)} {i}" for i in range(5)])]
        logs = LogFollower(
            cast(ClusterConnection, FakeConnection(api)),
            namespace="dev",
            selector={"app": "api"},
            service_name="api",
            on_line=slow,
        )
        async with logs:
            await until(lambda: len(seen) == 5)

    asyncio.run(scenario())
    assert seen == ["0", "1", "2", "3", "4"]


def test_container_state_reads_the_current_instance() -> None:
    assert container_state(pod("p", container_id="c7"), "app") == ContainerState("c7", "running")
    assert container_state(pod("p", phase="terminated"), "app") == ContainerState("c1", "terminated")
    assert container_state(pod("p", container_id=None, phase="waiting"), "app") == ContainerState(None, "waiting")
    assert container_state(pod("p"), "other") == ContainerState(None, "waiting")
    assert container_state(Pod(metadata=ObjectMeta(name="p")), "app") == ContainerState(None, "waiting")
