"""``python -m innerloop.agent``: the container entrypoint in dev mode.

``run --listen HOST:PORT --token-sha256-file F -- CMD...`` starts the app, serves the
CLI (which reaches HOST:PORT through a port-forward; F holds the sha256 of
the token it must present, see ``server.py``) and, on SIGTERM or
SIGINT, forwards the signal to the app, waits for it and exits with its exit
code, as if the app itself had been the entrypoint. A second signal kills
the app at once.

``seed SRC DST`` copies a directory tree for an init container (``seed.py``).

Start time: the agent starts on every pod start, so this module imports only
what ``run`` needs. On this machine ``import asyncio`` alone is ~50 ms on top
of a ~12 ms interpreter start; the agent's own modules add ~25 ms more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shlex
import signal
import sys
import time
from collections.abc import Mapping, Sequence

from innerloop.agent.log import log
from innerloop.agent.server import AgentServer
from innerloop.agent.supervisor import ChildReaper, StartError, Supervisor, describe_exit, shell_exit_code

DEFAULT_GRACE = 5.0
RUNTIME_ENV = "INNERLOOP_RUNTIME_ENV"


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def read_token_sha256(path: str) -> str:
    """The token hash in ``path`` (64 lowercase hex digits); ``ValueError`` or ``OSError`` otherwise."""
    with open(path) as file:
        digest = file.read().strip()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{path} does not hold a sha256 in lowercase hex")
    return digest


def check_token_file(path: str) -> None:
    """Fail at start, with one line, when the token file is missing or malformed."""
    try:
        read_token_sha256(path)
    except OSError as exc:
        raise SystemExit(f"innerloop-agent: cannot read the token file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SystemExit(f"innerloop-agent: {exc}") from None


def app_environment(environ: Mapping[str, str], runtime_prefix: str) -> dict[str, str]:
    """The container's environment as the app would see it without the agent in front.

    The agent is the entrypoint, so the variables its own Python runtime needs
    (``PYTHONHOME`` above all) are in the container's environment; the app
    must not inherit them: a Python app would load the agent's standard
    library. The dev-mode patch names them in ``INNERLOOP_RUNTIME_ENV``
    (comma-separated); a ``PYTHONHOME`` that points at the agent's own runtime
    is dropped even without it.
    """
    env = dict(environ)
    names = {name for name in env.pop(RUNTIME_ENV, "").split(",") if name}
    home = env.get("PYTHONHOME")
    if home is not None and os.path.realpath(home) == os.path.realpath(runtime_prefix):
        names.add("PYTHONHOME")
    for name in names:
        env.pop(name, None)
    return env


async def run_agent(
    *,
    host: str,
    port: int,
    token_file: str,
    command: Sequence[str],
    grace: float = DEFAULT_GRACE,
    reap_all: bool = True,
) -> int:
    """Serve and supervise until SIGTERM/SIGINT; returns the exit status for the container."""
    started_at = time.time()
    loop = asyncio.get_running_loop()
    reaper = ChildReaper(reap_all=reap_all)
    reaper.install()
    supervisor = Supervisor(command, reaper=reaper, grace=grace, env=app_environment(os.environ, sys.prefix))
    agent = AgentServer(
        trusted=functools.partial(read_token_sha256, token_file), supervisor=supervisor, started_at=started_at
    )
    stop = asyncio.Event()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        if len(received) == 1:
            stop.set()
        else:
            log(f"second {sig.name}: killing the app")
            supervisor.kill()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        server = await asyncio.start_server(agent.handle_tcp, host, port)
        bound = server.sockets[0].getsockname()[1]
        log(f"listening on {host}:{bound}; app: {shlex.join(command)}")
        # A failed start is reported; the agent stays up so the CLI can sync a fix.
        with contextlib.suppress(StartError):
            await supervisor.start()
        await stop.wait()
        sig = received[0]
        log(f"{sig.name}: stopping the app")
        server.close()
        await agent.close()
        code = await supervisor.stop(sig)
        await server.wait_closed()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        reaper.uninstall()
    if code is None:
        return 0
    log(f"app {describe_exit(code)}; exiting")
    return shell_exit_code(code)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m innerloop.agent", description="innerloop's in-pod agent")
    commands = parser.add_subparsers(dest="action", required=True)
    run = commands.add_parser("run", help="supervise the app and serve the CLI")
    run.add_argument("--listen", type=parse_listen, required=True, metavar="HOST:PORT")
    run.add_argument("--token-sha256-file", required=True, help="holds the sha256 of the token the CLI presents")
    run.add_argument(
        "--grace", type=float, default=DEFAULT_GRACE, help="seconds between SIGTERM and SIGKILL on restart"
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- the app command")
    route = commands.add_parser("route", help="the intercept router of one Service")
    route.add_argument("--config", required=True, help="the router's JSON config (from its ConfigMap)")
    seeder = commands.add_parser("seed", help="copy a directory tree, keeping modes")
    seeder.add_argument("source")
    seeder.add_argument("destination")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.action == "seed":
        # Only the init container seeds; `run`, on every pod start, skips shutil and pathlib.
        from innerloop.agent.seed import seed  # noqa: PLC0415

        seed(args.source, args.destination)
        return 0
    if args.action == "route":
        from innerloop.router.main import load_config, run_router  # noqa: PLC0415

        return asyncio.run(run_router(load_config(args.config)))
    command: list[str] = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("run: the app command is missing (after --)")
    host, port = args.listen
    check_token_file(args.token_sha256_file)
    return asyncio.run(
        run_agent(host=host, port=port, token_file=args.token_sha256_file, command=command, grace=args.grace)
    )
