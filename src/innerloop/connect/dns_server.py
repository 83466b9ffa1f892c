"""The DNS server of a command's namespace: bytes in, ``dns.answer`` decides, bytes out.

It serves sockets created inside the namespace (UDP and TCP 127.0.0.1:53
there) from the CLI's event loop, in the host's network namespace. That is
what lets it forward the names that are not the cluster's to the host's own
resolvers (read from the host's ``/etc/resolv.conf``, 127.0.0.53 included):
the query leaves from the host, exactly as the host would send it.

Forwarding: UDP queries go to each upstream in turn (2 s each, one fresh
socket per query so replies cannot be confused), TCP queries over TCP. No
answer at all gives SERVFAIL, so the client's resolver moves on rather than
waiting out its own timeout.

Ownership: ``run()`` owns a task group holding every forwarded query and TCP
connection; cancelling it closes the sockets' servers and ends them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

from innerloop.connect.dns import ClusterNames, Forward, answer, servfail

_UPSTREAM_TIMEOUT_S = 2.0
_TCP_IDLE_S = 30.0


class _UpstreamReply(asyncio.DatagramProtocol):
    def __init__(self, query_id: bytes) -> None:
        self.query_id = query_id
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if data[:2] == self.query_id and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


class _Queries(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            reply = answer(data, self.server.names)
        except Exception:  # a packet dnslib cannot handle must not stop the server
            reply = servfail(data)
        if reply is None or self.transport is None:
            return
        if isinstance(reply, Forward):
            transport = self.transport
            self.server._spawn(self.server._forward_udp(data, lambda out: transport.sendto(out, addr)))
            return
        self.transport.sendto(reply, addr)


class DnsServer:
    """Answers cluster names from ``names``; forwards the rest to ``upstreams`` (the host's resolvers)."""

    def __init__(
        self,
        *,
        names: ClusterNames,
        upstreams: Sequence[tuple[str, int]],
        udp: socket.socket,
        tcp: socket.socket | None = None,
    ) -> None:
        self.names = names
        self._upstreams = list(upstreams)
        self._udp = udp
        self._tcp = tcp
        self._tg: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        """Serve until cancelled."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Queries(self), sock=self._udp)
        server = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                if self._tcp is not None:
                    server = await asyncio.start_server(self._accept, sock=self._tcp)
                try:
                    await loop.create_future()  # until cancelled
                finally:
                    self._tg = None
                    if server is not None:
                        server.close()
        finally:
            transport.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._tg is None:
            work.close()
            return
        try:
            self._tg.create_task(work)
        except RuntimeError:  # shutting down
            work.close()

    # ---- TCP -----------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._spawn(self._tcp_connection(reader, writer))

    async def _tcp_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    size = await asyncio.wait_for(reader.readexactly(2), _TCP_IDLE_S)
                    query = await asyncio.wait_for(reader.readexactly(int.from_bytes(size, "big")), _TCP_IDLE_S)
                except (asyncio.IncompleteReadError, TimeoutError, OSError):
                    return
                try:
                    reply = answer(query, self.names)
                except Exception:  # as for UDP: one odd query never ends the connection's service
                    reply = servfail(query)
                if isinstance(reply, Forward):
                    reply = await self._forward_tcp(query)
                if reply is None:
                    continue
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except OSError:
            return
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # ---- upstream ------------------------------------------------------

    async def _forward_udp(self, query: bytes, send: Callable[[bytes], None]) -> None:
        loop = asyncio.get_running_loop()
        for upstream in self._upstreams:
            try:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: _UpstreamReply(query[:2]), remote_addr=upstream
                )
            except OSError:
                continue
            try:
                transport.sendto(query)
                reply = await asyncio.wait_for(protocol.reply, _UPSTREAM_TIMEOUT_S)
            except (OSError, TimeoutError):
                continue
            finally:
                transport.close()
            send(reply)
            return
        failed = servfail(query)
        if failed is not None:
            send(failed)

    async def _forward_tcp(self, query: bytes) -> bytes | None:
        for host, port in self._upstreams:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _UPSTREAM_TIMEOUT_S)
            except (OSError, TimeoutError):
                continue
            try:
                writer.write(len(query).to_bytes(2, "big") + query)
                size = await asyncio.wait_for(reader.readexactly(2), _UPSTREAM_TIMEOUT_S)
                return await asyncio.wait_for(reader.readexactly(int.from_bytes(size, "big")), _UPSTREAM_TIMEOUT_S)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                continue
            finally:
                writer.close()
        return servfail(query)
