"""What watching a 100,000-file tree costs: time to ready, idle CPU, memory, save-to-batch latency.

No cluster needed. Run:

    .venv/bin/python bench/watcher_bench.py [--dirs 1000] [--files 100] [--idle 60] [--samples 50]

Builds ``dirs x files`` small files in a temporary folder (removed at the
end), compiles the sync scope of that root, starts a :class:`FileWatch` on it
(step 10 ms) and measures:

- ready: from entering the watch to every inotify watch registered (the
  folders are counted and checked against ``fs.inotify.max_user_watches``
  first; the figure includes that);
- idle CPU: this process's CPU time (``time.process_time``, all threads,
  the watch thread included) over ``--idle`` seconds with no file activity
  while a consumer waits for the next batch (as a sync session does), as a
  percentage of one core;
- RSS: this process's resident memory from /proc/self/status, before and
  after the watch starts (the 100,000-entry tree is not held during this);
- latency: a write to one existing file, then the time until the batch is
  in Python (``Batch.arrived``) and until ``anext`` returns it filtered and
  sorted by root (median, p90, max of ``--samples`` writes, each to another
  folder);
- a burst: 1,000 new files written as fast as possible: how many batches,
  and how long after the last write the last one arrives;
- for scale, the cost of scanning the tree into path -> sha256 once (every
  file read) and again (the stat cache: no file read).

If the tree has more folders than the inotify budget allows, the watch
refuses to start and this script prints the error (with the ``sysctl``
command to raise the limit) instead of changing the machine.

Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from innerloop.sync.ignore import load_scope
from innerloop.sync.tree import Scanner
from innerloop.sync.watcher import Batch, FileWatch, WatchError, WatchRoot, read_watch_limits


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_tree(root: Path, dirs: int, files: int) -> None:
    for d in range(dirs):
        folder = root / f"pkg{d // 100:02}" / f"mod{d:04}"
        folder.mkdir(parents=True)
        for f in range(files):
            (folder / f"file{f:03}.py").write_text(f"# {d}/{f}\nVALUE = {d * files + f}\n")
    (root / ".gitignore").write_text("__pycache__/\n*.pyc\n")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(root: Path, args: argparse.Namespace) -> dict[str, object]:
    started = time.perf_counter()
    scope = load_scope(root, exclude=["node_modules/"])
    scope_s = time.perf_counter() - started
    rss_before = rss_mib()
    async with FileWatch([WatchRoot(root, scope)], step_ms=args.step_ms) as watch:
        ready_s = watch.ready_seconds
        folders = watch.folders
        rss_watching = rss_mib()
        # The caller side of a sync session: always waiting for the next batch.
        batches: asyncio.Queue[tuple[Batch, float]] = asyncio.Queue()

        async def consume() -> None:
            async for batch in watch:
                await batches.put((batch, time.monotonic()))

        consumer = asyncio.create_task(consume())
        try:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(args.idle)
            idle_cpu = 100 * (time.process_time() - cpu0) / (time.perf_counter() - wall0)
            idle_batches = batches.qsize()

            to_python: list[float] = []
            to_caller: list[float] = []
            for i in range(args.samples):
                d = (i * 37) % args.dirs
                target = root / f"pkg{d // 100:02}" / f"mod{d:04}" / "file000.py"
                relative = target.relative_to(root).as_posix()
                written = time.monotonic()
                target.write_text(f"# edited {i}\n")
                while True:
                    batch, received = await asyncio.wait_for(batches.get(), 5)
                    if any(c.path == relative for c in batch.changes.get(root, [])):
                        break
                to_python.append(1000 * (batch.arrived - written))
                to_caller.append(1000 * (received - written))
                # Saves come at any moment: vary the gap so writes do not fall
                # at the same point of the watch thread's 10 ms step.
                await asyncio.sleep(0.03 + (i * 7919 % 50) / 1000)

            burst_dir = root / "burst"
            burst_dir.mkdir()
            await asyncio.wait_for(batches.get(), 5)  # the folder itself
            burst_started = time.monotonic()
            for i in range(1000):
                (burst_dir / f"new{i:04}.py").write_text(str(i))
            burst_written = time.monotonic()
            seen: set[str] = set()
            burst_batches = 0
            while len(seen) < 1000:
                batch, received = await asyncio.wait_for(batches.get(), 5)
                burst_batches += 1
                seen |= {c.path for c in batch.changes.get(root, []) if c.path.startswith("burst/")}
            burst_write_ms = 1000 * (burst_written - burst_started)
            burst_after_ms = 1000 * (received - burst_written)
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)

    scanner = Scanner()
    t0 = time.perf_counter()
    tree = scanner.scan(root, scope)
    cold_s = time.perf_counter() - t0
    reads_cold = scanner.reads
    t0 = time.perf_counter()
    scanner.scan(root, scope)
    warm_s = time.perf_counter() - t0
    return {
        "files": len(tree),
        "folders": folders,
        "max_user_watches": limits.max_user_watches if (limits := read_watch_limits()) else None,
        "scope_s": round(scope_s, 3),
        "ready_s": round(ready_s, 3),
        "idle_seconds": args.idle,
        "idle_cpu_percent": round(idle_cpu, 3),
        "idle_batches": idle_batches,
        "rss_mib_before_watch": round(rss_before, 1),
        "rss_mib_watching": round(rss_watching, 1),
        "latency_ms_to_python": {
            "median": round(statistics.median(to_python), 1),
            "p90": round(percentile(to_python, 0.9), 1),
            "max": round(max(to_python), 1),
        },
        "latency_ms_to_caller": {
            "median": round(statistics.median(to_caller), 1),
            "p90": round(percentile(to_caller, 0.9), 1),
            "max": round(max(to_caller), 1),
        },
        "samples": args.samples,
        "burst_files": 1000,
        "burst_batches": burst_batches,
        "burst_write_ms": round(burst_write_ms, 1),
        "burst_last_batch_after_last_write_ms": round(burst_after_ms, 1),
        "scan_cold_s": round(cold_s, 2),
        "scan_cold_files_read": reads_cold,
        "rescan_cached_s": round(warm_s, 2),
        "rescan_files_read": scanner.reads - reads_cold,
        "step_ms": args.step_ms,
    }


def table(r: dict[str, object]) -> str:
    to_python = r["latency_ms_to_python"]
    to_caller = r["latency_ms_to_caller"]
    assert isinstance(to_python, dict) and isinstance(to_caller, dict)
    rows = [
        ("tree", f"{r['files']:,} files in {r['folders']:,} folders (inotify budget {r['max_user_watches']:,})"),
        ("sync scope compiled (.gitignore walk)", f"{r['scope_s']} s"),
        ("watch ready (count + register)", f"{r['ready_s']} s"),
        (f"idle CPU over {r['idle_seconds']} s", f"{r['idle_cpu_percent']} % of one core"),
        ("RSS before / while watching", f"{r['rss_mib_before_watch']} / {r['rss_mib_watching']} MiB"),
        (
            f"write -> batch in Python (median / p90 / max of {r['samples']})",
            f"{to_python['median']} / {to_python['p90']} / {to_python['max']} ms",
        ),
        (
            "write -> batch filtered, to the caller",
            f"{to_caller['median']} / {to_caller['p90']} / {to_caller['max']} ms",
        ),
        (
            "burst of 1,000 new files",
            f"written in {r['burst_write_ms']} ms; {r['burst_batches']} batch(es), the last"
            f" {r['burst_last_batch_after_last_write_ms']} ms after the last write",
        ),
        ("scan into path -> sha256, cold", f"{r['scan_cold_s']} s ({r['scan_cold_files_read']:,} files read)"),
        (
            "rescan, stat cache",
            f"{r['rescan_cached_s']} s ({r['rescan_files_read']:,} files read: hashed within 2 s of a change)",
        ),
    ]
    lines = ["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dirs", type=int, default=1000)
    parser.add_argument("--files", type=int, default=100, help="files per folder")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement")
    parser.add_argument("--samples", type=int, default=50, help="latency samples")
    parser.add_argument("--step-ms", type=int, default=10)
    parser.add_argument("--where", type=Path, default=None, help="parent folder for the tree (default: $TMPDIR)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="innerloop-watch-bench-", dir=args.where))
    try:
        t0 = time.perf_counter()
        build_tree(root, args.dirs, args.files)
        built = f"built {args.dirs * args.files:,} files in {time.perf_counter() - t0:.1f} s under {root}"
        print(built, file=sys.stderr)
        try:
            result = asyncio.run(measure(root, args))
        except WatchError as error:
            print(f"cannot watch the tree: {error}", file=sys.stderr)
            return 2
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(table(result))
    print(json.dumps({"bench": "watcher", "python": sys.version.split()[0], "cpus": os.cpu_count(), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
