"""``innerloop intercept|leave|clean``: a Service's traffic to a local process, and back."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from innerloop.cli.options import default_repo_option, insecure_registry_option
from innerloop.cli.output import explain_error, report
from innerloop.cli.stopping import Stopping, run_until_signal
from innerloop.cluster.progress import StepFailed
from innerloop.config import ConfigError, find_config, load_config
from innerloop.config.model import Intercept as ConfigIntercept
from innerloop.config.model import Project
from innerloop.connect.context import parse_env_options, withheld_line
from innerloop.connect.netns import NamespaceProcess
from innerloop.connect.network import ClusterNetwork
from innerloop.connect.run import RunError, command_env, fetch_context, materialized
from innerloop.delivery import DeliveryError
from innerloop.engine.target import Target, UpError, connect
from innerloop.intercept.cluster import InterceptSetupError, clean
from innerloop.intercept.plan import InterceptPlanError, origin_name
from innerloop.intercept.preview import Preview, preview_headers
from innerloop.intercept.session import (
    InterceptRequest,
    default_rules,
    forget,
    saved_intercepts,
    start,
    switch,
    wait_restored,
)
from innerloop.intercept.tunnel import InterceptDenied, InterceptEnded, InterceptTunnel, RouterSession
from innerloop.k8s.connection import ClusterUnreachable
from innerloop.k8s.rest import RawApi, object_path
from innerloop.router.intercepts import DEFAULT_HEADER, Mode
from innerloop.router.match import HeaderRule, parse_rule

INTERCEPT_ERRORS = (
    InterceptSetupError,
    InterceptPlanError,
    InterceptDenied,
    InterceptEnded,
    RunError,
    ValueError,
    DeliveryError,
)


def _fail(err: BaseException) -> None:
    message = explain_error(err, (*INTERCEPT_ERRORS, ConfigError, UpError, ClusterUnreachable, StepFailed))
    if message is None:
        raise err
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _port_pair(value: str) -> tuple[int, int]:
    service, sep, local = value.partition(":")
    if not sep or not service.isdigit() or not local.isdigit():
        raise click.BadParameter(f"expected SERVICE_PORT:LOCAL_PORT, got {value!r}")
    return int(service), int(local)


def _describe(rules: Sequence[HeaderRule]) -> str:
    ops = {"exact": "=", "prefix": "^=", "regex": "~="}
    parts = []
    for rule in rules:
        name = f"baggage[{rule.baggage_member}]" if rule.baggage_member else rule.header
        parts.append(f"{name}{ops[rule.op]}{rule.value}")
    return " and ".join(parts)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("service")
@click.option("-n", "--namespace", help="Namespace (default: innerloop.yaml, then the kubeconfig's).")
@click.option("--to", "to_port", type=int, help="Local port that receives the traffic (every intercepted port).")
@click.option("--port", "port_pairs", multiple=True, help="SERVICE_PORT:LOCAL_PORT; repeat for several ports.")
@click.option(
    "--header",
    "headers",
    multiple=True,
    help=f"Personal: route only matching requests. NAME=VALUE, NAME^=PREFIX, NAME~=REGEX, baggage[MEMBER]=VALUE; "
    f"repeat to require all (default: {DEFAULT_HEADER}=$USER-<random>, the same on every run).",
)
@click.option("--global", "global_mode", is_flag=True, help="Take all traffic of the port(s), any protocol.")
@click.option("--name", help="Intercept name (default: $USER plus a random suffix).")
@click.option("--grace", type=float, default=15.0, show_default=True, help="Seconds a lost tunnel may resume.")
@click.option("--pod", help="Borrow env/ConfigMaps/Secrets from this pod (default: one of the Service's).")
@click.option(
    "--env",
    "env_options",
    multiple=True,
    help="NAME=VALUE for COMMAND, over the pod's and this machine's (repeatable).",
)
@click.option("--preview", "preview_target", help="ENTRY_SERVICE:PORT: print a local URL that adds your header.")
@click.option("--share", is_flag=True, help="Serve the preview URL on every interface, for teammates.")
@click.option("-f", "--file", "config_file", help="innerloop.yaml (default: found upwards from here, if any).")
@default_repo_option
@insecure_registry_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def intercept(  # noqa: PLR0917 - click passes options positionally
    service: str,
    namespace: str | None,
    to_port: int | None,
    port_pairs: tuple[str, ...],
    headers: tuple[str, ...],
    global_mode: bool,
    name: str | None,
    grace: float,
    pod: str | None,
    preview_target: str | None,
    share: bool,
    config_file: str | None,
    env_options: tuple[str, ...],
    default_repo: str | None,
    insecure_registry: bool,
    command: tuple[str, ...],
) -> None:
    """Send SERVICE's cluster traffic to a local port, or to COMMAND (after --) started here with the
    pod's env, ConfigMaps and Secrets. Personal by default: only requests carrying your header come
    here; everyone else's keep going to the cluster's pods. Ctrl+C ends it and restores the Service.

    SERVICE may also name an entry of `intercepts:` in innerloop.yaml; flags override it."""
    if global_mode and headers:
        raise click.UsageError("--global takes all traffic; --header is for personal intercepts")
    try:
        configured, project, project_root = _configured(service, config_file)
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    workdir = Path.cwd()
    preview_port = 0
    if configured is not None:
        workdir = project_root or workdir
        preview_port = (configured.preview.local or 0) if configured.preview else 0
        service = configured.service or service
        global_mode = global_mode or (configured.mode == "global" and not headers)
        headers = headers or tuple(configured.headers)
        to_port = to_port if to_port is not None or port_pairs else configured.local
        command = command or tuple(configured.command)
        if preview_target is None and configured.preview is not None:
            preview_target = f"{configured.preview.service}:{configured.preview.port}"
    try:
        rules = [parse_rule(text) for text in headers] or ([] if global_mode else default_rules())
        pairs = dict(_port_pair(p) for p in port_pairs)
        explicit_env = parse_env_options(env_options)
        preview = _entry(preview_target) if preview_target else None
        target = connect(report, default_repo=default_repo, insecure_registry=insecure_registry)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    except Exception as err:
        _fail(err)
        return
    if not pairs and to_port is None and not command:
        raise click.UsageError("say where the traffic goes: --to LOCAL_PORT, --port S:L, or a command after --")
    mode: Mode = "global" if global_mode else "personal"
    request = InterceptRequest(
        service=service,
        namespace=namespace or (project.namespace if project else None) or target.conn.namespace,
        mode=mode,
        rules=rules,
        local_ports=pairs,
        default_local=to_port,
        name=name,
        grace=grace,
        registry=project.registry if project else None,
        agent_image=project.agent_image if project else None,
        agent_base=project.agent_base if project else None,
    )
    options = _Options(
        command=list(command),
        env=explicit_env,
        pod=pod,
        preview=preview,
        preview_port=preview_port,
        share=share,
        workdir=workdir,
    )
    try:
        code = run_until_signal(
            functools.partial(_intercept, target, request, options), what=f"the intercept of svc/{request.service}"
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        report(f"stopped before svc/{request.service} was switched (`innerloop clean` removes a router left behind)")
        sys.exit(130)
    except Exception as err:
        _fail(err)
        return
    sys.exit(code)


@dataclass(frozen=True, kw_only=True)
class _Options:
    command: list[str]
    env: dict[str, str]  # --env NAME=VALUE for the command
    pod: str | None
    preview: tuple[str, int] | None
    preview_port: int
    share: bool
    workdir: Path  # where the command runs: the project's folder when it comes from innerloop.yaml


def _configured(name: str, config_file: str | None) -> tuple[ConfigIntercept | None, Project | None, Path | None]:
    """The `intercepts:` entry NAME of innerloop.yaml, the project and its folder, if there is one."""
    if config_file is not None:
        path = Path(config_file)
    else:
        try:
            path = find_config(Path.cwd())
        except ConfigError:
            return None, None, None  # no project here: flags only
    project = load_config(path)
    return project.intercepts.get(name), project, path.resolve().parent


def _entry(value: str) -> tuple[str, int]:
    service, sep, port = value.rpartition(":")
    if not sep or not service or not port.isdigit():
        raise ValueError(f"--preview expects ENTRY_SERVICE:PORT (e.g. frontend:8080), got {value!r}")
    return service, int(port)


async def _intercept(target: Target, request: InterceptRequest, options: _Options, stopping: Stopping) -> int:
    """Set up, serve until a signal (``stopping``) or the command's exit, leave; the exit status.

    Before the intercept is registered a signal cancels (nothing to leave);
    from then on it leaves first, so the Service is restored.
    """
    started = time.monotonic()
    process: NamespaceProcess | None = None
    if options.command and request.default_local is None and not request.local_ports:
        request = dataclasses.replace(request, default_local=_free_port())
    stopping.what = f"setting up the intercept of svc/{request.service}"
    tunnel = await start(target, request, report=report)
    stop = asyncio.Event()
    stopping.what = f"the intercept of svc/{request.service}: leaving"
    stopping.stop = lambda _sig: stop.set()
    if stopping.requested:
        stop.set()
    code = 0
    try:
        async with contextlib.AsyncExitStack() as stack:
            if options.command:
                process = await _start_command(stack, target, request, tunnel, options=options, stopping=stopping)
            runner = asyncio.create_task(tunnel.run())
            # Registering and the router pod's start overlap; the Service is switched once both are done.
            switching = asyncio.create_task(switch(target, request, registered=tunnel.ready))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({runner, switching, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if runner.done():
                switching.cancel()
                runner.result()  # raises why it could not register
            if stop.is_set() and not switching.done():
                switching.cancel()  # stopped during set-up: leave now, the router restores what was switched
                await asyncio.gather(switching, return_exceptions=True)
            else:
                await switching  # raises why the router cannot start
                ports = ", ".join(f"{p}->127.0.0.1:{local}" for p, local in sorted(tunnel.local_ports.items()))
                what = "all traffic" if request.mode == "global" else f"requests with {_describe(request.rules)}"
                report(
                    f"intercepting svc/{request.service} ({ports}): {what}"
                    f" [{tunnel.registration.name}, ready in {time.monotonic() - started:.1f}s]"
                )
                if options.preview is not None:
                    await _open_preview(stack, target, request, options)
            waiters: set[asyncio.Task[Any]] = {runner, stopped}
            if process is not None:
                waiters.add(asyncio.create_task(process.wait()))
            done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                with contextlib.suppress(InterceptEnded):
                    runner.result()
                report(f"intercept {tunnel.registration.name} ended")
            if process is not None and process.returncode is not None:
                code = process.returncode
                report(f"the command exited with {code}; leaving")
            # Within the stop deadline (cli/stopping.py), leaving room for the router's answer.
            drain_s = max(0.5, min(3.0, stopping.remaining() - 1.5)) if stopping.requested else 5.0
            runner_ended = runner.done()
            remaining = await tunnel.leave(drain_s=drain_s) if not runner_ended else None
            runner.cancel()
            for task in pending:
                task.cancel()
            await asyncio.gather(runner, *pending, return_exceptions=True)
        if remaining == 0 and tunnel.router_waits > 0:
            report(
                f"left; the router of {request.service} restarted moments ago: it waits {tunnel.router_waits:.0f}s"
                f" for other developers' intercepts to come back, then restores svc/{request.service}"
            )
        elif remaining == 0:
            report(f"restoring svc/{request.service}")
            # The router restores the Service by itself once told; waiting is only to say it is done.
            stopping.extend(10.0, f"waiting for the router to restore svc/{request.service}")
            wait_s = stopping.remaining() - 0.5 if stopping.requested else 30.0
            if await wait_restored(target, namespace=request.namespace, service=request.service, timeout=wait_s):
                report(f"svc/{request.service} selects its own pods again; the router is gone")
            else:
                report(f"the router of {request.service} did not finish in time; `innerloop clean` removes it")
        elif remaining is not None:
            report(f"left; {remaining} other intercept(s) keep the router of {request.service}")
        elif not runner_ended:
            report(
                f"could not reach the router of {request.service} to leave; it removes itself within a minute "
                f"(`innerloop clean -n {request.namespace}` does it now)"
            )
    finally:
        forget(request.namespace, request.service, tunnel.registration.name)

    return code


async def _open_preview(
    stack: contextlib.AsyncExitStack, target: Target, request: InterceptRequest, options: _Options
) -> None:
    assert options.preview is not None
    headers = preview_headers(request.rules) if request.mode == "personal" else {}
    if headers is None:
        report("no preview URL: a regex header rule has no single value to send")
        return
    service, port = options.preview
    preview = await stack.enter_async_context(
        Preview(
            target.conn,
            namespace=request.namespace,
            service=service,
            port=port,
            headers=headers,
            address="0.0.0.0" if options.share else "127.0.0.1",
        )
    )
    url = preview.url.replace("0.0.0.0", socket.gethostname()) if options.share else preview.url
    adds = ", ".join(f"{name}: {value}" for name, value in headers.items())
    report(
        f"preview: {url} (svc/{service}:{port}, adding {adds})" if adds else f"preview: {url} (svc/{service}:{port})"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start_command(
    stack: contextlib.AsyncExitStack,
    target: Target,
    request: InterceptRequest,
    tunnel: InterceptTunnel,
    *,
    options: _Options,
    stopping: Stopping,
) -> NamespaceProcess:
    """The local process: the pod's env, ConfigMaps and Secrets, and the cluster's Services by name.

    It runs in its own network namespace (:mod:`innerloop.connect.network`), so
    the tunnel reaches its port through that namespace too.
    """
    # The Service now selects the router; the original selector is on the shadow ("origin") Service.
    async with RawApi(target.conn) as api:
        origin = await api.get(object_path("Service", request.namespace, origin_name(request.service)))
    selector = dict(((origin or {}).get("spec") or {}).get("selector") or {})
    name, context = await fetch_context(
        target.conn,
        namespace=request.namespace,
        pod=options.pod,
        selector=None if options.pod else selector,
        container=None,
    )
    files = stack.enter_context(materialized(context, options.workdir, name))  # deleted when the intercept ends
    stopping.at_exit.append(files.remove)  # the hard exit (stop deadline, second Ctrl+C) skips the stack
    root, mounts = files.root, files.mounts
    local = request.default_local or next(iter(request.local_ports.values()))
    decided = command_env(context, mounts, root, explicit={"PORT": str(local), **options.env})
    env = decided.env
    if (line := withheld_line(decided.withheld)) is not None:
        report(line)
    net = await stack.enter_async_context(ClusterNetwork.open(target.conn, namespace=request.namespace))
    tunnel.dial = net.netns.dial
    report(f"starting {options.command[0]} with the context of {request.namespace}/{name}; PORT={local}")
    report(net.names.summary())
    process = await net.netns.spawn(options.command, env=env, cwd=str(options.workdir))
    stack.push_async_callback(_stop, process)  # before the namespace closes
    return process


async def _stop(process: NamespaceProcess) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 2)  # inside the stop deadline (cli/stopping.py)
    except TimeoutError:
        process.send_signal(signal.SIGKILL)
        await process.wait()


@click.command()
@click.argument("name", required=False)
@click.option("-n", "--namespace", help="Only intercepts in this namespace.")
def leave(name: str | None, namespace: str | None) -> None:
    """End your intercept NAME (or all of yours) from any terminal."""
    saved = [s for s in saved_intercepts(namespace) if name is None or s["name"] == name]
    if not saved:
        click.echo("error: no intercept of yours found" + (f" named {name}" if name else ""), err=True)
        sys.exit(1)
    try:
        target = connect(report)
        for item in saved:
            asyncio.run(_leave(target, item))
    except Exception as err:
        _fail(err)


async def _leave(target: Target, item: dict[str, str]) -> None:
    try:
        router = await RouterSession.open(target.conn, namespace=item["namespace"], service=item["service"])
    except InterceptEnded:
        report(f"{item['name']}: its router is already gone")
        forget(item["namespace"], item["service"], item["name"])
        return
    try:
        answer = await router.request({"op": "leave", "name": item["name"], "secret": item["secret"]})
    finally:
        await router.close("left")
    if answer.get("op") != "left":
        report(f"{item['name']}: {answer.get('reason', answer)}")
    else:
        report(f"{item['name']}: left ({answer.get('remaining')} intercept(s) remain on svc/{item['service']})")
    forget(item["namespace"], item["service"], item["name"])


@click.command(name="clean")
@click.option("-n", "--namespace", help="Namespace (default: the kubeconfig's).")
def clean_command(namespace: str | None) -> None:
    """End every intercept in the namespace now: restore the Services, remove the routers."""
    try:
        target = connect(report)
        ns = namespace or target.conn.namespace

        async def work() -> list[str]:
            async with RawApi(target.conn) as api:
                return await clean(api, namespace=ns, report=report)

        removed = asyncio.run(work())
    except Exception as err:
        _fail(err)
        return
    for item in saved_intercepts(ns):
        forget(ns, item["service"], item["name"])
    report(f"removed {len(removed)} object(s): {', '.join(removed)}" if removed else "nothing to clean")
