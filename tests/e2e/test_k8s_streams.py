"""innerloop's own exec and port-forward streams against the real API server."""

from __future__ import annotations

import asyncio
import os

import pytest

from innerloop.k8s.connection import ClusterConnection
from innerloop.k8s.streams import ExecProcess, PortForwardStream, StreamError, exec_process, run

from .kube import Kube, pod_manifest

ECHO_SERVER = """
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("", 9000)); s.listen(16)
def serve(c):
    while (d := c.recv(65536)):
        c.sendall(d)
    c.close()
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""


@pytest.fixture
def conn(kube: Kube) -> ClusterConnection:
    return ClusterConnection.from_kubeconfig(kube.kubeconfig)


@pytest.fixture
def shell_pod(kube: Kube, namespace: str) -> str:
    kube.apply(namespace, pod_manifest("shell", kube.images["busybox"], ["sleep", "3600"]))
    kube.wait_ready(namespace, "shell")
    return "shell"


def test_exec_is_binary_safe_and_closes_stdin(conn: ClusterConnection, namespace: str, shell_pod: str) -> None:
    payload = os.urandom(4 * 1024 * 1024) + bytes(range(256))
    code, out, err = asyncio.run(run(conn, namespace=namespace, pod=shell_pod, command=["cat"], input=payload))
    # `cat` only exits because the v5 CLOSE frame closed its stdin.
    assert code == 0, err
    assert out == payload


def test_exec_separates_stderr_and_reports_exit_codes(conn: ClusterConnection, namespace: str, shell_pod: str) -> None:
    script = "echo to-out; echo to-err >&2; exit 7"
    code, out, err = asyncio.run(run(conn, namespace=namespace, pod=shell_pod, command=["sh", "-c", script]))
    assert (code, out, err) == (7, b"to-out\n", b"to-err\n")


def test_exec_streams_stdin_interactively(conn: ClusterConnection, namespace: str, shell_pod: str) -> None:
    async def scenario() -> list[bytes]:
        answers = []
        async with exec_process(conn, namespace=namespace, pod=shell_pod, command=["sh"]) as proc:
            for i in range(3):
                await proc.write(f"echo line-{i}\n".encode())
                answers.append(await asyncio.wait_for(proc.stdout.readline(), 60))
            await proc.write(b"exit 3\n")
            assert await asyncio.wait_for(proc.wait(), 60) == 3
        return answers

    assert asyncio.run(scenario()) == [b"line-0\n", b"line-1\n", b"line-2\n"]


def test_exec_into_a_missing_pod_says_so(conn: ClusterConnection, namespace: str) -> None:
    async def scenario() -> None:
        await ExecProcess.start(conn, namespace=namespace, pod="no-such-pod", command=["true"])

    with pytest.raises(StreamError, match=r"404.*does not exist"):
        asyncio.run(scenario())


def test_port_forward_streams_carry_bytes_both_ways(kube: Kube, conn: ClusterConnection, namespace: str) -> None:
    kube.apply(namespace, pod_manifest("echo", kube.images["python"], ["python3", "-c", ECHO_SERVER], port=9000))
    kube.wait_ready(namespace, "echo")

    async def one_connection(size: int) -> bytes:
        stream = await PortForwardStream.open(conn, namespace=namespace, pod="echo", port=9000)
        try:
            payload = os.urandom(size)
            writer = asyncio.create_task(stream.write(payload))
            echoed = await asyncio.wait_for(stream.reader.readexactly(size), 120)
            await writer
            assert echoed == payload
            return echoed
        finally:
            await stream.close()

    async def scenario() -> list[bytes]:
        # Several connections at once, each its own websocket, one of them large.
        return await asyncio.gather(*(one_connection(n) for n in (1, 1000, 65536, 3 * 1024 * 1024)))

    results = asyncio.run(scenario())
    assert [len(r) for r in results] == [1, 1000, 65536, 3 * 1024 * 1024]


def test_port_forward_to_a_closed_port_reports_the_error(
    kube: Kube, conn: ClusterConnection, namespace: str, shell_pod: str
) -> None:
    async def scenario() -> str:
        stream = await PortForwardStream.open(conn, namespace=namespace, pod=shell_pod, port=9999)
        try:
            with pytest.raises(StreamError, match="9999"):
                # The refusal arrives on the error channel; it surfaces on the write when the
                # server has already closed the stream, else on the read.
                await stream.write(b"hello")
                await asyncio.wait_for(stream.reader.read(), 60)
            return stream.error
        finally:
            await stream.close()

    assert "connection refused" in asyncio.run(scenario()).lower()
