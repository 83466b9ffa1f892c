"""The command's namespace for real (unprivileged user + network + mount namespaces) and its DNS server.

No cluster: the sockets created inside are served here, as ``innerloop run``
serves them, and commands inside resolve through glibc (``getent``) and
reach what this process serves.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import dnslib
import pytest

from innerloop.connect.dns import ClusterNames, namespace_resolv_conf
from innerloop.connect.dns_server import DnsServer
from innerloop.connect.netns import Bind, NamespaceError, NetworkNamespace


def _namespaces_allowed() -> bool:
    try:
        return subprocess.run(["unshare", "-Urnm", "true"], capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        return False


pytestmark = pytest.mark.skipif(not _namespaces_allowed(), reason="unprivileged user namespaces are not allowed here")

RESOLV = namespace_resolv_conf(namespace="shop")
DNS_UDP = Bind(address="127.0.0.1", port=53, kind="udp")
DNS_TCP = Bind(address="127.0.0.1", port=53, kind="tcp")


async def _output(ns: NetworkNamespace, argv: Sequence[str], *, env: dict[str, str] | None = None) -> tuple[int, str]:
    read, write = os.pipe()
    try:
        process = await ns.spawn(argv, env=env or dict(os.environ), cwd="/", stdout=write, stderr=write)
    finally:
        os.close(write)
    loop = asyncio.get_running_loop()
    with os.fdopen(read, "rb") as pipe:
        data = await loop.run_in_executor(None, pipe.read)
    return await process.wait(), data.decode()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_the_command_sees_its_own_resolv_conf_and_runs_as_the_same_user() -> None:
    host = Path("/etc/resolv.conf").read_bytes()

    async def scenario() -> None:
        async with await NetworkNamespace.start(resolv_conf=RESOLV) as ns:
            assert ns.timings.ready_s < 5
            code, out = await _output(ns, ["sh", "-c", "id -u; cat /etc/resolv.conf; cat /proc/net/dev"])
            assert code == 0
            uid, rest = out.split("\n", 1)
            assert int(uid) == os.getuid()
            assert rest.startswith(RESOLV)
            interfaces = {line.split(":")[0].strip() for line in rest[len(RESOLV) :].splitlines() if ":" in line}
            assert interfaces == {"lo"}  # a network namespace of its own
            assert Path("/etc/resolv.conf").read_bytes() == host  # outside, nothing changed

    asyncio.run(scenario())
    assert Path("/etc/resolv.conf").read_bytes() == host


def test_sockets_made_inside_are_served_outside_and_only_reachable_inside() -> None:
    service = Bind(address="127.1.0.9", port=80)

    async def scenario() -> None:
        async with await NetworkNamespace.start(resolv_conf=RESOLV, binds=[service]) as ns:
            listener = ns.sockets[service]
            assert listener.getsockname() == ("127.1.0.9", 80)

            async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.write(b"served from outside: " + await reader.readline())
                await writer.drain()
                writer.close()

            server = await asyncio.start_server(greet, sock=listener)
            async with server:
                client = (
                    "import socket; s = socket.create_connection(('127.1.0.9', 80)); s.sendall(b'hi\\n');"
                    " print(s.recv(100).decode())"
                )
                code, out = await _output(ns, [sys.executable, "-c", client])
            assert (code, out.strip()) == (0, "served from outside: hi")
            with pytest.raises(ConnectionRefusedError):  # the same address here is another machine's loopback
                await asyncio.open_connection("127.1.0.9", 80)

    asyncio.run(scenario())


def test_dial_reaches_a_port_inside() -> None:
    app = (
        "import socket, sys\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True)\n"
        "c, _ = s.accept(); c.sendall(b'inside ' + c.recv(100)); c.close()\n"
    )

    async def scenario() -> None:
        async with await NetworkNamespace.start(resolv_conf=RESOLV) as ns:
            read, write = os.pipe()
            process = await ns.spawn([sys.executable, "-c", app], env=dict(os.environ), cwd="/", stdout=write)
            os.close(write)
            with os.fdopen(read, "rb") as pipe:
                port = int(await asyncio.get_running_loop().run_in_executor(None, pipe.readline))
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)  # not from here...
            reader, writer = await ns.dial(port)  # ...but through the namespace
            writer.write(b"hello")
            await writer.drain()
            assert await reader.read() == b"inside hello"
            writer.close()
            assert await process.wait() == 0
            with pytest.raises(ConnectionRefusedError, match="in the command's namespace"):
                await ns.dial(port)

    asyncio.run(scenario())


def test_exit_codes_signals_and_close_ends_everything() -> None:
    async def scenario() -> None:
        ns = await NetworkNamespace.start(resolv_conf=RESOLV)
        init = ns.pid
        assert (await _output(ns, ["sh", "-c", "exit 7"]))[0] == 7
        sleeper = await ns.spawn(["sleep", "30"], env=dict(os.environ), cwd="/")
        sleeper.send_signal(signal.SIGTERM)
        assert await sleeper.wait() == -signal.SIGTERM
        with pytest.raises(NamespaceError, match="cannot start no-such-program"):
            await ns.spawn(["no-such-program"], env={}, cwd="/")
        running = await ns.spawn(["sleep", "30"], env=dict(os.environ), cwd="/")
        assert _alive(running.pid)
        await ns.close()
        assert not _alive(running.pid)
        assert not _alive(init)
        assert running.returncode is not None

    asyncio.run(scenario())


def test_a_socket_that_cannot_be_made_is_a_setup_error() -> None:
    twice = Bind(address="127.0.0.1", port=8080)

    async def scenario() -> None:
        with pytest.raises(NamespaceError, match=r"cannot listen on tcp 127\.0\.0\.1:8080"):
            await NetworkNamespace.start(resolv_conf=RESOLV, binds=[twice, twice])

    asyncio.run(scenario())


class _Upstream(asyncio.DatagramProtocol):
    """A stand-in for the host's resolver: example.test is 192.0.2.7."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dnslib.DNSRecord.parse(data)
        reply = query.reply()
        if str(query.q.qname) == "example.test." and query.q.qtype == dnslib.QTYPE.A:
            reply.add_answer(dnslib.RR("example.test.", rdata=dnslib.A("192.0.2.7"), ttl=60))
        elif str(query.q.qname) != "example.test.":
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
        self.transport.sendto(reply.pack(), addr)  # type: ignore[attr-defined]


def test_glibc_inside_resolves_services_and_forwarded_names() -> None:
    names = ClusterNames(namespace="shop", addresses={"backend": "127.1.2.3"})
    tcp_query = (
        "import socket, sys, dnslib\n"
        "q = dnslib.DNSRecord.question('backend.shop', 'A').pack()\n"
        "s = socket.create_connection(('127.0.0.1', 53)); s.sendall(len(q).to_bytes(2, 'big') + q)\n"
        "size = int.from_bytes(s.recv(2), 'big'); data = b''\n"
        "while len(data) < size: data += s.recv(size - len(data))\n"
        "print(dnslib.DNSRecord.parse(data).a.rdata)\n"
    )

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_datagram_endpoint(_Upstream, local_addr=("127.0.0.1", 0))
        port = upstream.get_extra_info("sockname")[1]
        try:
            async with await NetworkNamespace.start(resolv_conf=RESOLV, binds=[DNS_UDP, DNS_TCP]) as ns:
                server = DnsServer(
                    names=names,
                    upstreams=[("127.0.0.1", port)],
                    udp=ns.sockets[DNS_UDP],
                    tcp=ns.sockets[DNS_TCP],
                )
                serving = asyncio.create_task(server.run())
                try:
                    for name in ("backend", "backend.shop", "backend.shop.svc", "BACKEND.shop.svc.cluster.local"):
                        code, out = await _output(ns, ["getent", "hosts", name])
                        assert (code, out.split()[0]) == (0, "127.1.2.3"), (name, out)
                    code, out = await _output(ns, ["getent", "ahosts", "backend"])  # A and AAAA in parallel
                    assert {line.split()[0] for line in out.splitlines()} == {"127.1.2.3"}
                    assert (await _output(ns, ["getent", "hosts", "nope"]))[0] == 2  # not found
                    assert (await _output(ns, ["getent", "hosts", "example.test"]))[1].split()[0] == "192.0.2.7"
                    code, out = await _output(ns, [sys.executable, "-c", tcp_query])
                    assert (code, out.strip()) == (0, "127.1.2.3")
                finally:
                    serving.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await serving
        finally:
            upstream.close()
        with pytest.raises(socket.gaierror):  # never outside the namespace
            socket.getaddrinfo("backend.shop.svc.cluster.local", 80)

    asyncio.run(scenario())
