"""What the intercept router's HTTP/1.1 relay (``serve_http1``) costs per request, against going direct.

Three processes on this machine: a keep-alive HTTP/1.1 upstream (asyncio),
the router (the router's own per-connection path, ``Router.handler``:
protocol sniffing, limits, then ``serve_http1``, choosing a route with a
real header rule on every request through the intercept registry), and the
client in this process. The client measures, both direct to the upstream
and through the router:

- latency: sequential GETs on one kept-alive connection (p50, p99, mean);
- throughput: ``--concurrency`` kept-alive connections in parallel (req/s),
  and through the router, requests per second of the router's own CPU time
  (the router is one asyncio process: that is req/s per core);
- bulk: one large response body (MB/s);
- memory: the router process's resident set (RSS) after the load, and its
  peak (VmHWM) while ``--concurrency`` connections were served.

Run:

    .venv/bin/python bench/router_http1_bench.py [--requests 5000] [--concurrency 8] [--bulk-mib 256]

Prints a markdown table and one JSON line. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from innerloop.router.main import PortRoute, Router, RouterConfig
from innerloop.router.match import parse_rule

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


class _NoApi:
    """The router never calls the Kubernetes API here (no intercept ends, nothing is restored)."""


async def router_main(ready: Connection, upstream_port: int) -> None:
    route = PortRoute(port=80, listen=0, origin_host="127.0.0.1", origin_port=upstream_port)
    config = RouterConfig(
        service="bench",
        namespace="bench",
        deployment="bench-router",
        router_selector={},
        original={},
        ports=[route],
        control_port=0,
        grace=15.0,
        startup=60.0,
        settle=0.0,
        drain=0.0,
    )
    router = Router(config, api=_NoApi())  # type: ignore[arg-type]
    # A personal intercept whose rule every request is matched against (none matches: all go to the origin).
    router.registry.register(
        name="alice",
        secret="s" * 32,
        owner="alice",
        mode="personal",
        rules=[parse_rule("x-dev=alice")],
        ports=[80],
        now=time.monotonic(),
    )
    server = await asyncio.start_server(router.handler(route), "127.0.0.1", 0, backlog=1024)
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
                cpu_before = cpu_seconds(router.pid) if name == "router" and router.pid else 0.0
                row = {
                    "p50_ms": statistics.median(samples) * 1000,
                    "p99_ms": statistics.quantiles(samples, n=100)[98] * 1000,
                    "mean_ms": statistics.fmean(samples) * 1000,
                    "req_per_s": await throughput(port, args.requests, args.concurrency),
                }
                if name == "router" and router.pid:
                    requests = (args.requests // args.concurrency) * args.concurrency
                    row["req_per_cpu_s"] = requests / max(cpu_seconds(router.pid) - cpu_before, 1e-9)
                    row["rss_mib"], row["peak_rss_mib"] = memory_mib(router.pid)
                row["bulk_mib_per_s"] = await bulk(port, args.bulk_mib)
                results[name] = row
            return results

        results = asyncio.run(measure())
    finally:
        for process in (router, upstream):
            process.terminate()
            process.join()

    direct, routed = results["direct"], results["router"]
    print(
        f"| path | p50 ms | p99 ms | mean ms | req/s (x{args.concurrency} conns) | req/s per router core "
        "| bulk MiB/s | router RSS MiB (peak) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in results.items():
        per_core = f"{row['req_per_cpu_s']:.0f}" if "req_per_cpu_s" in row else "-"
        memory = f"{row['rss_mib']:.1f} ({row['peak_rss_mib']:.1f})" if "rss_mib" in row else "-"
        print(
            f"| {name} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['mean_ms']:.3f} "
            f"| {row['req_per_s']:.0f} | {per_core} | {row['bulk_mib_per_s']:.0f} | {memory} |"
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
