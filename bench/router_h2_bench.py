"""What the intercept router's HTTP/2 relay (``serve_h2``) costs per stream, against going direct.

Three processes on this machine: an h2c upstream (asyncio on the ``h2``
library, answering each stream the way a unary gRPC call is answered:
HEADERS, one DATA, trailers), the router (``serve_h2`` over asyncio streams,
choosing a route with a real header rule on every stream, as the intercept
table does), and the client in this process (also on ``h2``, so the bench
measures the router and not a frame codec of the router's own). The client
measures, both direct to the upstream and through the router:

- latency: sequential unary calls on one connection (p50, p99, mean);
- throughput: ``--concurrency`` calls in flight on one connection, as one
  gRPC channel multiplexes them (streams/s), and through the router, streams
  per second of the router's own CPU time (it is one asyncio process: that
  is streams/s per core);
- bulk: one large response body on a stream (MiB/s), flow control included;
- memory: the router process's resident set (RSS) after the load, and its
  peak (VmHWM).

Run:

    .venv/bin/python bench/router_h2_bench.py [--streams 5000] [--concurrency 32] [--bulk-mib 64]

Prints a markdown table and one JSON line. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from innerloop.router.h2 import RouteKey, serve_h2
from innerloop.router.http1 import BufferedConn, Conn, SocketConn
from innerloop.router.match import matches, parse_rule

Header = tuple[bytes, bytes]
MESSAGE = b"\0\0\0\0\x80" + b"x" * 128  # a gRPC length-prefixed message of 128 bytes
REQUEST: list[Header] = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/shop.Catalog/GetItem"),
    (b":authority", b"shop:50051"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"bench"),
]
BULK_CHUNK = 1 << 20
MAX_WINDOW = (1 << 31) - 1


class Endpoint:
    """One side of an h2 connection for the bench: large windows granted, the peer's respected, credit on receipt."""

    def __init__(self, writer: asyncio.StreamWriter, *, client_side: bool) -> None:
        self.writer = writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.conn.update_settings(
            {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: MAX_WINDOW, h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20}
        )
        self.conn.increment_flow_control_window(MAX_WINDOW - 65535)
        self.window_changed = asyncio.Event()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def received(self, event: h2.events.DataReceived) -> None:
        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    async def send_data(self, stream_id: int, data: bytes, *, end: bool) -> None:
        view = memoryview(data)
        while view:
            allowed = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size, len(view))
            if allowed <= 0:
                self.window_changed.clear()
                await self.window_changed.wait()
                continue
            self.conn.send_data(stream_id, bytes(view[:allowed]), end_stream=end and allowed == len(view))
            view = view[allowed:]
            self.flush()
            await self.writer.drain()


# -- upstream process ------------------------------------------------------------


async def upstream_main(ready: Connection, bulk_mib: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        endpoint = Endpoint(writer, client_side=False)
        conn = endpoint.conn
        paths: dict[int, bytes] = {}
        tasks: set[asyncio.Task[None]] = set()

        async def bulk(stream_id: int) -> None:
            conn.send_headers(stream_id, [(b":status", b"200")])
            endpoint.flush()
            block = b"b" * BULK_CHUNK
            for i in range(bulk_mib):
                await endpoint.send_data(stream_id, block, end=i == bulk_mib - 1)

        def respond(stream_id: int) -> None:
            if paths.pop(stream_id, b"") == b"/bulk":
                task = asyncio.ensure_future(bulk(stream_id))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                return
            conn.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
            conn.send_data(stream_id, MESSAGE)
            conn.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)

        try:
            while data := await reader.read(1 << 18):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        paths[event.stream_id] = dict(event.headers).get(b":path", b"")
                    elif isinstance(event, h2.events.DataReceived):
                        endpoint.received(event)
                    elif isinstance(event, h2.events.StreamEnded):
                        respond(event.stream_id)
                    elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                        endpoint.window_changed.set()
                endpoint.flush()
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    ready.send(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


def run_upstream(ready: Connection, bulk_mib: int) -> None:
    asyncio.run(upstream_main(ready, bulk_mib))


# -- router process ---------------------------------------------------------------


async def router_main(ready: Connection, upstream_port: int) -> None:
    rules = [parse_rule("x-dev=alice")]

    def choose(headers: list[Header]) -> RouteKey:
        return "alice" if matches(rules, headers) else "origin"

    async def connect(route: RouteKey) -> Conn:
        return SocketConn(*await asyncio.open_connection("127.0.0.1", upstream_port))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_h2(BufferedConn(SocketConn(reader, writer)), choose=choose, connect=connect)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    ready.send(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


def run_router(ready: Connection, upstream_port: int) -> None:
    asyncio.run(router_main(ready, upstream_port))


# -- client -----------------------------------------------------------------------------


class Client:
    """One h2c connection carrying many concurrent calls."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.endpoint = Endpoint(writer, client_side=True)
        self.waiting: dict[int, asyncio.Future[int]] = {}
        self.received: dict[int, int] = {}
        self.reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        client = cls(reader, writer)
        client.reader_task = asyncio.ensure_future(client._read())
        return client

    async def _read(self) -> None:
        endpoint = self.endpoint
        while data := await self.reader.read(1 << 20):
            for event in endpoint.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    endpoint.received(event)
                    self.received[event.stream_id] = self.received.get(event.stream_id, 0) + len(event.data)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    future = self.waiting.pop(event.stream_id, None)
                    if future is not None and not future.done():
                        future.set_result(self.received.pop(event.stream_id, 0))
            endpoint.flush()

    async def call(self, path: bytes = b"/shop.Catalog/GetItem") -> int:
        """One unary call; the response body's size."""
        conn = self.endpoint.conn
        stream_id = conn.get_next_available_stream_id()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting[stream_id] = future
        headers = [(b":path", path) if name == b":path" else (name, value) for name, value in REQUEST]
        conn.send_headers(stream_id, headers)
        conn.send_data(stream_id, MESSAGE, end_stream=True)
        self.endpoint.flush()
        await self.writer.drain()
        return await future

    async def close(self) -> None:
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader_task
        self.writer.close()


async def latency(port: int, streams: int) -> list[float]:
    client = await Client.open(port)
    for _ in range(200):  # warm up (and open the router's upstream connection)
        await client.call()
    samples = []
    for _ in range(streams):
        start = time.perf_counter()
        await client.call()
        samples.append(time.perf_counter() - start)
    await client.close()
    return samples


async def throughput(port: int, streams: int, concurrency: int) -> float:
    client = await Client.open(port)
    await client.call()

    async def worker(count: int) -> None:
        for _ in range(count):
            await client.call()

    start = time.perf_counter()
    per_worker = streams // concurrency
    await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await client.close()
    return per_worker * concurrency / elapsed


async def bulk(port: int, mib: int) -> float:
    client = await Client.open(port)
    await client.call()
    start = time.perf_counter()
    size = await client.call(b"/bulk")
    elapsed = time.perf_counter() - start
    assert size == mib * BULK_CHUNK, size
    await client.close()
    return mib / elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> tuple[float, float]:
    """Resident set and its peak (VmRSS, VmHWM) of process ``pid``, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def start(target: object, *args: object) -> tuple[multiprocessing.Process, int]:
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.Process(target=target, args=(theirs, *args), daemon=True)  # type: ignore[arg-type]
    process.start()
    return process, int(ours.recv())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bulk-mib", type=int, default=64)
    args = parser.parse_args()

    upstream, upstream_port = start(run_upstream, args.bulk_mib)
    router, router_port = start(run_router, upstream_port)
    try:

        async def measure() -> dict[str, dict[str, float]]:
            results: dict[str, dict[str, float]] = {}
            for name, port in (("direct", upstream_port), ("router", router_port)):
                samples = await latency(port, args.streams)
                cpu_before = cpu_seconds(router.pid) if name == "router" and router.pid else 0.0
                row = {
                    "p50_ms": statistics.median(samples) * 1000,
                    "p99_ms": statistics.quantiles(samples, n=100)[98] * 1000,
                    "mean_ms": statistics.fmean(samples) * 1000,
                    "streams_per_s": await throughput(port, args.streams, args.concurrency),
                }
                if name == "router" and router.pid:
                    streams = (args.streams // args.concurrency) * args.concurrency
                    row["streams_per_cpu_s"] = streams / max(cpu_seconds(router.pid) - cpu_before, 1e-9)
                row["bulk_mib_per_s"] = await bulk(port, args.bulk_mib)
                if name == "router" and router.pid:
                    row["rss_mib"], row["peak_rss_mib"] = memory_mib(router.pid)
                results[name] = row
            return results

        results = asyncio.run(measure())
    finally:
        for process in (router, upstream):
            process.terminate()
            process.join()

    direct, routed = results["direct"], results["router"]
    print(
        f"| path | p50 ms | p99 ms | mean ms | streams/s (x{args.concurrency} on 1 conn) | streams/s per router core "
        "| bulk MiB/s | router RSS MiB (peak) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in results.items():
        per_core = f"{row['streams_per_cpu_s']:.0f}" if "streams_per_cpu_s" in row else "-"
        memory = f"{row['rss_mib']:.1f} ({row['peak_rss_mib']:.1f})" if "rss_mib" in row else "-"
        print(
            f"| {name} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['mean_ms']:.3f} "
            f"| {row['streams_per_s']:.0f} | {per_core} | {row['bulk_mib_per_s']:.0f} | {memory} |"
        )
    added = {
        "added_p50_ms": routed["p50_ms"] - direct["p50_ms"],
        "added_mean_ms": routed["mean_ms"] - direct["mean_ms"],
    }
    print(f"\nadded per stream by the router: p50 {added['added_p50_ms']:.3f} ms, mean {added['added_mean_ms']:.3f} ms")
    print(json.dumps({"results": results, **added}))


if __name__ == "__main__":
    main()
