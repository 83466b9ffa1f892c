"""What the intercept router's HTTP/1.1 relay (``serve_http1``) costs per request, against going direct.

Three processes on this machine: a keep-alive HTTP/1.1 upstream (asyncio),
the router (``serve_http1`` over asyncio streams, choosing a route with a
real header rule on every request, as the intercept table does), and the
client in this process. The client measures, both direct to the upstream
and through the router:

- latency: sequential GETs on one kept-alive connection (p50, p99, mean);
- throughput: ``--concurrency`` kept-alive connections in parallel (req/s);
- bulk: one large response body (MB/s).

Run:

    .venv/bin/python bench/router_http1_bench.py [--requests 5000] [--concurrency 8] [--bulk-mib 256]

Prints a markdown table and one JSON line. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from innerloop.router.http1 import BufferedConn, Conn, RequestHead, SocketConn
from innerloop.router.match import matches, parse_rule
from innerloop.router.routing import RouteKey, serve_http1

BODY = b"x" * 128
BULK_BLOCK = b"b" * (1024 * 1024)


# -- upstream process ------------------------------------------------------------


async def upstream_main(ready: Connection, bulk_mib: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /bulk"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (bulk_mib * len(BULK_BLOCK)))
                    for _ in range(bulk_mib):
                        writer.write(BULK_BLOCK)
                        await writer.drain()
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 128\r\n\r\n" + BODY)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    ready.send(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


def run_upstream(ready: Connection, bulk_mib: int) -> None:
    asyncio.run(upstream_main(ready, bulk_mib))


# -- router process ---------------------------------------------------------------


async def router_main(ready: Connection, upstream_port: int) -> None:
    rules = [parse_rule("x-dev=alice")]

    def choose(head: RequestHead) -> RouteKey:
        return "alice" if matches(rules, head.headers) else "origin"

    async def connect(route: RouteKey) -> Conn:
        return SocketConn(*await asyncio.open_connection("127.0.0.1", upstream_port))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_http1(BufferedConn(SocketConn(reader, writer)), choose=choose, connect=connect)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    ready.send(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


def run_router(ready: Connection, upstream_port: int) -> None:
    asyncio.run(router_main(ready, upstream_port))


# -- client -----------------------------------------------------------------------------

REQUEST = b"GET /item/42 HTTP/1.1\r\nHost: shop\r\nUser-Agent: bench\r\nAccept: */*\r\nX-Request-Id: 1234\r\n\r\n"


async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
    await reader.readexactly(length)


async def latency(port: int, requests: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(200):  # warm up
        await one(reader, writer)
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        await one(reader, writer)
        samples.append(time.perf_counter() - start)
    writer.close()
    return samples


async def throughput(port: int, requests: int, concurrency: int) -> float:
    async def worker(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            await one(reader, writer)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    return (requests // concurrency) * concurrency / (time.perf_counter() - start)


async def bulk(port: int, mib: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * 1024 * 1024)
    start = time.perf_counter()
    writer.write(b"GET /bulk HTTP/1.1\r\nHost: shop\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    remaining = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
    while remaining:
        remaining -= len(await reader.read(min(remaining, 1024 * 1024)))
    elapsed = time.perf_counter() - start
    writer.close()
    return mib / elapsed


def start(target: object, *args: object) -> tuple[multiprocessing.Process, int]:
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.Process(target=target, args=(theirs, *args), daemon=True)  # type: ignore[arg-type]
    process.start()
    return process, int(ours.recv())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bulk-mib", type=int, default=256)
    args = parser.parse_args()

    upstream, upstream_port = start(run_upstream, args.bulk_mib)
    router, router_port = start(run_router, upstream_port)
    try:

        async def measure() -> dict[str, dict[str, float]]:
            results: dict[str, dict[str, float]] = {}
            for name, port in (("direct", upstream_port), ("router", router_port)):
                samples = await latency(port, args.requests)
                results[name] = {
                    "p50_ms": statistics.median(samples) * 1000,
                    "p99_ms": statistics.quantiles(samples, n=100)[98] * 1000,
                    "mean_ms": statistics.fmean(samples) * 1000,
                    "req_per_s": await throughput(port, args.requests, args.concurrency),
                    "bulk_mib_per_s": await bulk(port, args.bulk_mib),
                }
            return results

        results = asyncio.run(measure())
    finally:
        for process in (router, upstream):
            process.terminate()
            process.join()

    direct, routed = results["direct"], results["router"]
    print(f"| path | p50 ms | p99 ms | mean ms | req/s (x{args.concurrency} conns) | bulk MiB/s |")
    print("|---|---|---|---|---|---|")
    for name, row in results.items():
        print(
            f"| {name} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['mean_ms']:.3f} "
            f"| {row['req_per_s']:.0f} | {row['bulk_mib_per_s']:.0f} |"
        )
    added = {
        "added_p50_ms": routed["p50_ms"] - direct["p50_ms"],
        "added_mean_ms": routed["mean_ms"] - direct["mean_ms"],
    }
    print(
        f"\nadded per request by the router: p50 {added['added_p50_ms']:.3f} ms, mean {added['added_mean_ms']:.3f} ms"
    )
    print(json.dumps({"results": results, **added}))


if __name__ == "__main__":
    main()
