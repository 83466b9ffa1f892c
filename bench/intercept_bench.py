"""Intercepts: set-up time, added latency, tunnel throughput, pass-through rps, restore after a crash.

Needs a running cluster (`innerloop cluster up`); run on its node (ClusterIPs are reachable there):

    .venv/bin/python bench/intercept_bench.py [--requests 1000] [--runs 3]

Baselines are measured in the same run:
- pass-through: the same GET straight to the Service (kube-proxy to the pod)
  against the same GET while a personal intercept for *another* header is
  active (kube-proxy to the router, the router to the pod);
- routed to the local process: GET through Service, router, tunnel and CLI
  to a local server, against the same GET through `kubectl port-forward` to
  the pod (one API-server stream each way, like the tunnel);
- throughput: a 64 MiB POST through the intercept against the same POST
  through `kubectl port-forward`, five interleaved rounds, medians.
Pass-through requests per second per core: 32 keep-alive clients for 10 s,
divided by the CPU seconds the router process used (read from /proc on this
node). Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.intercepts import InterceptProcess, LocalApp, deploy_echo, leftovers, request
from e2e.kube import Kube, eventually, free_port
from innerloop.cluster.node import BundledCluster

CLI = [str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "innerloop")]
BODY = 64 << 20


def timed_gets(host: str, port: int, n: int, headers: dict[str, str], *, keepalive: bool) -> list[float]:
    out = []
    conn = http.client.HTTPConnection(host, port, timeout=15)
    for _ in range(n):
        if not keepalive:
            conn = http.client.HTTPConnection(host, port, timeout=15)
        started = time.perf_counter()
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        response.read()
        out.append((time.perf_counter() - started) * 1000)
        if not keepalive:
            conn.close()
    conn.close()
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) >= 100 else max(values)


def post_seconds(host: str, port: int, headers: dict[str, str]) -> float:
    body = os.urandom(BODY)
    conn = http.client.HTTPConnection(host, port, timeout=120)
    started = time.perf_counter()
    conn.request("POST", "/upload", body=body, headers=headers)
    answer = json.loads(conn.getresponse().read())
    elapsed = time.perf_counter() - started
    conn.close()
    assert answer["received"] == BODY, answer
    return elapsed


def router_pid() -> int:
    """The router process on this node (the bench runs one router at a time)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"route" in cmdline and b"innerloop.agent" in cmdline:
                return int(entry)
    raise RuntimeError("router process not found on this node")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(host: str, port: int, seconds: float, clients: int) -> int:
    done = 0
    deadline = time.monotonic() + seconds
    request_bytes = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        while time.monotonic() < deadline:
            writer.write(request_bytes)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            done += 1
        writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return done


def until(check: Callable[[], bool], timeout: float = 30, interval: float = 0.01) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(interval)
    raise TimeoutError("condition not met")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--throughput-only", action="store_true", help="only the tunnel vs kubectl POSTs")
    args = parser.parse_args()
    info = BundledCluster(report=print).info()
    if info is None:
        sys.exit("start the cluster first: innerloop cluster up")
    kube = Kube(kubectl_bin=info.kubectl, kubeconfig=info.kubeconfig, images=info.images)
    ns = f"bench-intercept-{secrets.token_hex(3)}"
    kube.run("create", "namespace", ns)
    kube.run("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    state = Path(f"/tmp/{ns}")
    local = LocalApp("local")
    results: dict[str, Any] = {}
    try:
        ip = deploy_echo(kube, ns, replicas=1)
        until(lambda: request(ip, 80)["where"] == "cluster", 30)  # kube-proxy has the endpoints
        timed_gets(ip, 80, 50, {}, keepalive=False)  # warm up
        direct = timed_gets(ip, 80, args.requests, {}, keepalive=False)
        direct_ka = timed_gets(ip, 80, args.requests, {}, keepalive=True)

        setups, restores = [], []
        for _ in range(0 if args.throughput_only else args.runs):
            cli = InterceptProcess.start(
                CLI, "echo", "-n", ns, "--to", str(local.port), "--header", "x-dev=bench", "--grace", "3", state=state
            )
            setups.append(until(lambda: request(ip, 80, headers={"x-dev": "bench"})["where"] == "local", 60))
            killed = time.monotonic()
            cli.proc.send_signal(signal.SIGKILL)
            cli.proc.wait()
            until(lambda: request(ip, 80, headers={"x-dev": "bench"})["where"] == "cluster", 30)
            restores.append(time.monotonic() - killed)
            eventually(lambda: not leftovers(kube, ns), timeout_s=60)
        results["setup_s"] = setups
        results["restore_after_sigkill_s"] = restores

        other = InterceptProcess.start(
            CLI, "echo", "-n", ns, "--to", str(local.port), "--header", "x-dev=other", state=state
        )
        other.wait_for("intercepting svc/echo")
        time.sleep(2)
        joined = time.monotonic()
        mine = InterceptProcess.start(
            CLI, "echo", "-n", ns, "--to", str(local.port), "--header", "x-dev=bench", state=state
        )
        until(lambda: request(ip, 80, headers={"x-dev": "bench"})["where"] == "local", 30)
        results["setup_join_s"] = time.monotonic() - joined
        time.sleep(2)
        if args.throughput_only:
            args.requests = 100
        timed_gets(ip, 80, 50, {}, keepalive=False)
        passthrough = timed_gets(ip, 80, args.requests, {}, keepalive=False)
        passthrough_ka = timed_gets(ip, 80, args.requests, {}, keepalive=True)
        routed = timed_gets(ip, 80, args.requests, {"x-dev": "bench"}, keepalive=True)

        pod = kube.get_json("pods", "-n", ns, "-l", "app=echo")["items"][0]["metadata"]["name"]
        port = free_port()
        pf = subprocess.Popen(
            kube.argv("port-forward", "-n", ns, f"pod/{pod}", f"{port}:8080"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            until(lambda: request("127.0.0.1", port)["where"] == "cluster", 20)
            kubectl_ka = timed_gets("127.0.0.1", port, args.requests, {}, keepalive=True)
            # Interleaved rounds, medians: this machine's 2 cores make single runs noisy.
            tunnel_posts, kubectl_posts = [], []
            for _ in range(5):
                tunnel_posts.append(post_seconds(ip, 80, {"x-dev": "bench"}))
                kubectl_posts.append(post_seconds("127.0.0.1", port, {}))
            tunnel_post = statistics.median(tunnel_posts)
            kubectl_post = statistics.median(kubectl_posts)
        finally:
            pf.terminate()
            pf.wait()

        pid = router_pid()
        before = cpu_seconds(pid)
        started = time.monotonic()
        served = asyncio.run(load(ip, 80, 1.0 if args.throughput_only else 10.0, 32))
        wall = time.monotonic() - started
        used = cpu_seconds(pid) - before
        results["passthrough_rps"] = served / wall
        results["passthrough_rps_per_core"] = served / used if used else None
        results["router_cpu_share"] = used / wall
        mine.stop()
        other.stop()
    finally:
        local.close()
        kube.run("delete", "namespace", ns, "--wait=false", check=False)

    rows = [
        ("direct to the pods (new connection)", direct),
        ("pass-through, another dev's intercept active (new connection)", passthrough),
        ("direct to the pods (keep-alive)", direct_ka),
        ("pass-through (keep-alive)", passthrough_ka),
        ("routed to the local process (keep-alive)", routed),
        ("kubectl port-forward to the pod (keep-alive)", kubectl_ka),
    ]
    print("| path | p50 ms | p99 ms |")
    print("|---|---|---|")
    for label, values in rows:
        print(f"| {label} | {statistics.median(values):.2f} | {p(values, 99):.2f} |")
        results[label] = {"p50": statistics.median(values), "p99": p(values, 99)}
    added = statistics.median(passthrough) - statistics.median(direct)
    added_ka = statistics.median(passthrough_ka) - statistics.median(direct_ka)
    tunnel_mib_s = BODY / (1 << 20) / tunnel_post
    kubectl_mib_s = BODY / (1 << 20) / kubectl_post
    results |= {
        "passthrough_added_p50_ms": added,
        "passthrough_added_p50_keepalive_ms": added_ka,
        "tunnel_mib_s": tunnel_mib_s,
        "kubectl_mib_s": kubectl_mib_s,
        "tunnel_vs_kubectl": tunnel_mib_s / kubectl_mib_s,
    }
    print()
    print(f"set-up (command to first request routed locally): {', '.join(f'{x:.2f}' for x in setups)} s")
    print(f"set-up joining a router another developer started: {results['setup_join_s']:.2f} s")
    print(f"SIGKILL of the CLI to traffic back on the pods: {', '.join(f'{x:.2f}' for x in restores)} s")
    print(f"pass-through adds {added:.2f} ms at p50 (new connection), {added_ka:.2f} ms (keep-alive)")
    print(
        f"tunnel throughput: {tunnel_mib_s:.1f} MiB/s vs kubectl port-forward {kubectl_mib_s:.1f} MiB/s"
        f" ({tunnel_mib_s / kubectl_mib_s:.2f}x)"
    )
    print(
        f"pass-through: {results['passthrough_rps']:.0f} req/s with the router at"
        f" {results['router_cpu_share'] * 100:.0f}% of a core"
        f" -> {results['passthrough_rps_per_core']:.0f} req/s per core"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
