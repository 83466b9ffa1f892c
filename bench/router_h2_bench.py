"""What the intercept router's HTTP/2 relay (``serve_h2``) costs per stream, against going direct.

Three processes on this machine: an h2c upstream (asyncio, built from the
router's own frame and HPACK code, answering each stream the way a unary
gRPC call is answered: HEADERS, one DATA, trailers), the router
(``serve_h2`` over asyncio streams, choosing a route with a real header rule
on every stream, as the intercept table does), and the client in this
process. The client measures, both direct to the upstream and through the
router:

- latency: sequential unary calls on one connection (p50, p99, mean);
- throughput: ``--concurrency`` calls in flight on one connection, as one
  gRPC channel multiplexes them (streams/s);
- bulk: one large response body on a stream (MiB/s), flow control included.

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
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from innerloop.router.h2 import (
    DATA,
    FLAG_ACK,
    FLAG_END_STREAM,
    HEADERS,
    MAX_WINDOW,
    PING,
    PREFACE,
    SETTINGS,
    SETTINGS_ACK,
    WINDOW_UPDATE,
    FrameParser,
    RouteKey,
    Setting,
    frame,
    headers_frames,
    parse_settings,
    parse_u31,
    ping_frame,
    serve_h2,
    settings_frame,
    window_update_frame,
)
from innerloop.router.hpack import Decoder, Encoder, Header
from innerloop.router.http1 import BufferedConn, Conn, SocketConn
from innerloop.router.match import matches, parse_rule

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


class Endpoint:
    """The bench's minimal HTTP/2 endpoint: large windows granted, the peer's respected, credit on receipt."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = FrameParser(max_frame_size=1 << 20)
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.send_window = 65535
        self.peer_initial = 65535
        self.peer_max_frame = 16384
        self.stream_windows: dict[int, int] = {}
        self.window_changed = asyncio.Event()
        self.unacked = 0

    def greeting(self) -> bytes:
        return settings_frame(
            [(Setting.INITIAL_WINDOW_SIZE, MAX_WINDOW), (Setting.MAX_FRAME_SIZE, 1 << 20)]
        ) + window_update_frame(0, MAX_WINDOW - 65535)

    def control(self, received_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        if received_type == SETTINGS and not flags & FLAG_ACK:
            for key, value in parse_settings(payload):
                if key == Setting.INITIAL_WINDOW_SIZE:
                    for sid in self.stream_windows:
                        self.stream_windows[sid] += value - self.peer_initial
                    self.peer_initial = value
                elif key == Setting.MAX_FRAME_SIZE:
                    self.peer_max_frame = value
            self.writer.write(SETTINGS_ACK)
            self.window_changed.set()
        elif received_type == WINDOW_UPDATE:
            if stream_id:
                self.stream_windows[stream_id] = self.stream_windows.get(stream_id, self.peer_initial) + parse_u31(
                    payload
                )
            else:
                self.send_window += parse_u31(payload)
            self.window_changed.set()
        elif received_type == PING and not flags & FLAG_ACK:
            self.writer.write(ping_frame(payload, ack=True))

    def received(self, size: int) -> None:
        self.unacked += size
        if self.unacked >= 1 << 24:
            self.writer.write(window_update_frame(0, self.unacked))
            self.unacked = 0

    async def send_data(self, stream_id: int, data: bytes, *, end: bool) -> None:
        view = memoryview(data)
        self.stream_windows.setdefault(stream_id, self.peer_initial)
        while view:
            allowed = min(self.send_window, self.stream_windows[stream_id], self.peer_max_frame, len(view))
            if allowed <= 0:
                self.window_changed.clear()
                await self.window_changed.wait()
                continue
            self.send_window -= allowed
            self.stream_windows[stream_id] -= allowed
            last = end and allowed == len(view)
            self.writer.write(frame(DATA, FLAG_END_STREAM if last else 0, stream_id, bytes(view[:allowed])))
            view = view[allowed:]
            await self.writer.drain()


# -- upstream process ------------------------------------------------------------


async def upstream_main(ready: Connection, bulk_mib: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        endpoint = Endpoint(reader, writer)
        if await reader.readexactly(len(PREFACE)) != PREFACE:
            writer.close()
            return
        writer.write(endpoint.greeting())
        paths: dict[int, bytes] = {}
        tasks: set[asyncio.Task[None]] = set()

        async def bulk(stream_id: int) -> None:
            writer.write(
                headers_frames(
                    stream_id,
                    endpoint.encoder.encode([(b":status", b"200")]),
                    end_stream=False,
                    max_frame=endpoint.peer_max_frame,
                )
            )
            block = b"b" * BULK_CHUNK
            for i in range(bulk_mib):
                await endpoint.send_data(stream_id, block, end=i == bulk_mib - 1)

        def respond(stream_id: int) -> None:
            path = paths.pop(stream_id, b"")
            if path == b"/bulk":
                task = asyncio.ensure_future(bulk(stream_id))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                return
            head = endpoint.encoder.encode([(b":status", b"200"), (b"content-type", b"application/grpc")])
            trailers = endpoint.encoder.encode([(b"grpc-status", b"0")])
            writer.write(
                headers_frames(stream_id, head, end_stream=False, max_frame=endpoint.peer_max_frame)
                + frame(DATA, 0, stream_id, MESSAGE)
                + headers_frames(stream_id, trailers, end_stream=True, max_frame=endpoint.peer_max_frame)
            )

        try:
            while data := await reader.read(1 << 18):
                for received in endpoint.parser.feed(data):
                    if received.type == HEADERS:
                        headers = endpoint.decoder.decode(received.payload)
                        paths.setdefault(received.stream_id, dict(headers).get(b":path", b""))
                        if received.end_stream:
                            respond(received.stream_id)
                    elif received.type == DATA:
                        endpoint.received(received.flow_size)
                        if received.end_stream:
                            respond(received.stream_id)
                    else:
                        endpoint.control(received.type, received.flags, received.stream_id, received.payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
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
        self.endpoint = Endpoint(reader, writer)
        self.writer = writer
        self.next_id = 1
        self.waiting: dict[int, asyncio.Future[int]] = {}
        self.received: dict[int, int] = {}
        self.reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        client = cls(reader, writer)
        writer.write(PREFACE + client.endpoint.greeting())
        client.reader_task = asyncio.ensure_future(client._read())
        return client

    async def _read(self) -> None:
        endpoint = self.endpoint
        while data := await endpoint.reader.read(1 << 20):
            for received in endpoint.parser.feed(data):
                if received.type == DATA:
                    endpoint.received(received.flow_size)
                    self.received[received.stream_id] = self.received.get(received.stream_id, 0) + len(received.payload)
                elif received.type == HEADERS:
                    endpoint.decoder.decode(received.payload)
                else:
                    endpoint.control(received.type, received.flags, received.stream_id, received.payload)
                    continue
                if received.end_stream:
                    future = self.waiting.pop(received.stream_id, None)
                    if future is not None and not future.done():
                        future.set_result(self.received.pop(received.stream_id, 0))

    async def call(self, path: bytes = b"/shop.Catalog/GetItem") -> int:
        """One unary call; the response body's size."""
        stream_id = self.next_id
        self.next_id += 2
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting[stream_id] = future
        headers = [(b":path", path) if name == b":path" else (name, value) for name, value in REQUEST]
        block = self.endpoint.encoder.encode(headers)
        self.writer.write(
            headers_frames(stream_id, block, end_stream=False, max_frame=self.endpoint.peer_max_frame)
            + frame(DATA, FLAG_END_STREAM, stream_id, MESSAGE)
        )
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
                results[name] = {
                    "p50_ms": statistics.median(samples) * 1000,
                    "p99_ms": statistics.quantiles(samples, n=100)[98] * 1000,
                    "mean_ms": statistics.fmean(samples) * 1000,
                    "streams_per_s": await throughput(port, args.streams, args.concurrency),
                    "bulk_mib_per_s": await bulk(port, args.bulk_mib),
                }
            return results

        results = asyncio.run(measure())
    finally:
        for process in (router, upstream):
            process.terminate()
            process.join()

    direct, routed = results["direct"], results["router"]
    print(f"| path | p50 ms | p99 ms | mean ms | streams/s (x{args.concurrency} on 1 conn) | bulk MiB/s |")
    print("|---|---|---|---|---|---|")
    for name, row in results.items():
        print(
            f"| {name} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['mean_ms']:.3f} "
            f"| {row['streams_per_s']:.0f} | {row['bulk_mib_per_s']:.0f} |"
        )
    added = {
        "added_p50_ms": routed["p50_ms"] - direct["p50_ms"],
        "added_mean_ms": routed["mean_ms"] - direct["mean_ms"],
    }
    print(f"\nadded per stream by the router: p50 {added['added_p50_ms']:.3f} ms, mean {added['added_mean_ms']:.3f} ms")
    print(json.dumps({"results": results, **added}))


if __name__ == "__main__":
    main()
