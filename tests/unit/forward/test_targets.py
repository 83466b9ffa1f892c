"""Choosing the pod and port a forwarded connection goes to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from lightkube.models.core_v1 import Container, ContainerPort, PodCondition, PodSpec, PodStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from innerloop.forward.targets import (
    PodView,
    ServicePort,
    choose_pod,
    is_dial_failure,
    is_permanent_open_error,
    pod_view,
    resolve_port,
    service_target,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def view(name: str, *, age_s: int = 0, ready: bool = True, phase: str = "Running", deleting: bool = False) -> PodView:
    return PodView(
        name=name, phase=phase, ready=ready, deleting=deleting, created=T0 - timedelta(seconds=age_s), ports={}
    )


class TestChoosePod:
    def test_no_pods_no_choice(self) -> None:
        assert choose_pod([]) is None

    def test_the_newest_ready_pod_wins(self) -> None:
        assert choose_pod([view("old", age_s=60), view("new", age_s=5), view("mid", age_s=30)]) == "new"

    def test_a_pod_that_is_not_ready_is_skipped_even_if_newer(self) -> None:
        assert choose_pod([view("old", age_s=60), view("starting", age_s=1, ready=False)]) == "old"

    def test_a_terminating_pod_is_skipped_although_still_ready(self) -> None:
        pods = [view("going", age_s=1, deleting=True), view("staying", age_s=60)]
        assert choose_pod(pods) == "staying"

    @pytest.mark.parametrize("phase", ["Pending", "Succeeded", "Failed", "Unknown"])
    def test_only_running_pods(self, phase: str) -> None:
        assert choose_pod([view("p", phase=phase)]) is None

    def test_only_unusable_pods_means_waiting(self) -> None:
        pods = [view("a", deleting=True), view("b", ready=False), view("c", phase="Pending")]
        assert choose_pod(pods) is None

    def test_ties_on_creation_time_are_broken_by_name_stably(self) -> None:
        pods = [view("web-b"), view("web-a"), view("web-c")]
        assert choose_pod(pods) == choose_pod(reversed(pods)) == "web-c"

    def test_a_pod_without_creation_time_loses_to_one_with(self) -> None:
        undated = PodView(name="z-undated", phase="Running", ready=True)
        assert choose_pod([undated, view("dated", age_s=3600)]) == "dated"


class TestResolvePort:
    pod = PodView(name="p", ports={"http": 8000, "metrics": 9100})

    def test_numbers_are_used_as_they_are(self) -> None:
        assert resolve_port(self.pod, 5432) == 5432
        assert resolve_port(self.pod, "5432") == 5432

    def test_names_come_from_the_pod(self) -> None:
        assert resolve_port(self.pod, "http") == 8000
        assert resolve_port(self.pod, "metrics") == 9100

    def test_an_undeclared_name_does_not_resolve(self) -> None:
        assert resolve_port(self.pod, "grpc") is None


class TestServiceTarget:
    ports = (
        ServicePort(port=80, name="web", target_port="http"),
        ServicePort(port=443, name="tls", target_port=8443),
        ServicePort(port=9000, name=None, target_port=None),
    )

    def test_service_port_number_maps_to_its_target_port(self) -> None:
        assert service_target(self.ports, 80) == "http"
        assert service_target(self.ports, 443) == 8443

    def test_service_port_name_maps_too(self) -> None:
        assert service_target(self.ports, "web") == "http"
        assert service_target(self.ports, "tls") == 8443

    def test_without_target_port_the_service_port_is_the_pod_port(self) -> None:
        assert service_target(self.ports, 9000) == 9000

    def test_a_port_the_service_does_not_list_goes_to_the_pod_as_is(self) -> None:
        assert service_target(self.ports, 5005) == 5005
        assert service_target(self.ports, "debug") == "debug"


def make_pod(
    *,
    name: str = "web-1",
    ready: str = "True",
    phase: str = "Running",
    deleting: bool = False,
    ports: list[ContainerPort] | None = None,
) -> Pod:
    return Pod(
        metadata=ObjectMeta(
            name=name, creationTimestamp=T0, deletionTimestamp=T0 + timedelta(seconds=30) if deleting else None
        ),
        spec=PodSpec(
            containers=[
                Container(name="app", ports=ports or []),
                Container(name="sidecar", ports=[ContainerPort(containerPort=9100, name="metrics")]),
            ]
        ),
        status=PodStatus(
            phase=phase,
            conditions=[PodCondition(type="PodScheduled", status="True"), PodCondition(type="Ready", status=ready)],
        ),
    )


class TestPodView:
    def test_reads_readiness_phase_deletion_and_named_ports_of_all_containers(self) -> None:
        pod = make_pod(ports=[ContainerPort(containerPort=8000, name="http"), ContainerPort(containerPort=8001)])
        assert pod_view(pod) == PodView(
            name="web-1", phase="Running", ready=True, deleting=False, created=T0, ports={"http": 8000, "metrics": 9100}
        )

    def test_not_ready_and_terminating(self) -> None:
        got = pod_view(make_pod(ready="False", deleting=True))
        assert (got.ready, got.deleting, got.eligible) == (False, True, False)

    def test_a_pod_without_status_is_pending_and_not_ready(self) -> None:
        got = pod_view(Pod(metadata=ObjectMeta(name="new")))
        assert (got.name, got.phase, got.ready, got.eligible) == ("new", "Pending", False, False)


class TestErrors:
    # Verbatim from this cluster's kubelet (containerd 1.6) for a port nothing listens on.
    REFUSED = (
        "error forwarding port 9999 to pod a5bb57d0, uid : failed to execute portforward in network namespace "
        '"/var/run/netns/cni-108aa580": failed to connect to localhost:9999 inside namespace "a5bb57d0", '
        "IPv4: dial tcp4 127.0.0.1:9999: connect: connection refused IPv6 dial tcp6: address localhost: "
        "no suitable address found"
    )

    def test_a_refused_dial_is_a_dial_failure(self) -> None:
        assert is_dial_failure(self.REFUSED)

    def test_a_sandbox_that_is_gone_is_a_dial_failure(self) -> None:
        assert is_dial_failure('failed to find sandbox "abc" in store: not found')

    @pytest.mark.parametrize(
        "message",
        [
            "error forwarding port 8000 to pod abc, uid : read tcp4 127.0.0.1:41234->127.0.0.1:8000: "
            "read: connection reset by peer",
            "an error occurred forwarding 8000 -> 8000: error copying from remote stream to local connection",
            "",
        ],
    )
    def test_errors_after_the_dial_are_not(self, message: str) -> None:
        # The application may have received the request: replaying it could run it twice.
        assert not is_dial_failure(message)

    def test_credentials_and_rbac_are_permanent(self) -> None:
        assert is_permanent_open_error("403 Forbidden for wss://127.0.0.1:6443/api/v1/...: the user lacks this")
        assert is_permanent_open_error("401 Unauthorized for wss://...")
        assert not is_permanent_open_error("404 Not Found for wss://...: the pod does not exist (any more)")
