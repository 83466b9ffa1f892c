"""`innerloop up`: build, deploy in dependency order, then sync, forward and follow logs.

One owner task per long-running thing, all inside one TaskGroup: a service's
sync session, each of its port-forwards, its log follower, and the local API.
Ctrl+C cancels the group; everything stops cleanly and the deployed objects
stay (``innerloop down`` removes them and restores what they replaced, from
the record :mod:`innerloop.deploy.apply` keeps in the cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import watchfiles
from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

from innerloop.alerts.terminal import attach as attach_alerts
from innerloop.alerts.watcher import AlertWatcher, WatchedService, wait_unless_stuck
from innerloop.builders.agent_image import AgentImageError, AgentPlan, ToolEntries, build_agent
from innerloop.config import ConfigError, Problem, Project, load_config, locate_problems
from innerloop.config import PortForward as PortConfig  # the name PortForward is the forward itself
from innerloop.dashboard import Listen
from innerloop.dashboard import listen as dashboard_listen
from innerloop.dashboard import serve as serve_dashboard
from innerloop.debug.editor import Attach, publish
from innerloop.debug.go import inspect_image as inspect_go_image
from innerloop.debug.languages import DebugError
from innerloop.debug.services import bind_debug_port, debug_port_in_use, debug_services, local_debug_port
from innerloop.debug.tools import tool_entries
from innerloop.deploy.apply import DeployError, DownResult, apply_all, project_keys, restore_all, wait_rollout
from innerloop.deploy.devmode import DevModeError
from innerloop.engine.plan import (
    BuiltImageInfo,
    PlanError,
    PlanProblems,
    ServicePlan,
    assign_objects,
    plan_service,
    start_order,
)
from innerloop.engine.sources import build_service_image, read_manifests
from innerloop.engine.target import Target, UpError
from innerloop.engine.tokens import session_tokens
from innerloop.forward.forward import ForwardError, ForwardEvent, PortForward
from innerloop.forward.local_port import port_in_use
from innerloop.intercept.plan import router_selector
from innerloop.k8s.watching import watch_pods
from innerloop.logs.follower import LogFollower
from innerloop.logs.lines import LogLine, color_index, format_line
from innerloop.protocol.client import AgentError
from innerloop.status.api import project_lock, serve
from innerloop.status.store import ActionError, Store
from innerloop.sync.session import SyncSession

Report = Callable[[str], None]
NEVER_BUILT = {".git", ".innerloop", "__pycache__"}


async def ensure_namespace(client: AsyncClient, name: str) -> None:
    """Create the namespace if it is missing; a namespaced-only user may not read it, and need not."""
    try:
        await client.get(Namespace, name)
    except ApiError as err:
        if err.status.code == 403:
            return  # least privilege: only a Role in the namespace (docs/RBAC.md)
        if err.status.code != 404:
            raise
        await client.create(Namespace(metadata=ObjectMeta(name=name)))


class DevLoop:
    def __init__(
        self,
        *,
        config_path: Path,
        target: Target,
        namespace: str | None,
        report: Report,
        print_log: Report = print,
        color: bool = True,
        debug: Sequence[str] | None = None,
        dashboard: Listen | None = None,
    ) -> None:
        """``debug``: the services `innerloop debug` names (``[]``: every one whose language is known);
        None for plain `up`, where only ``debug.enabled`` services run under their debugger."""
        self.config_path = config_path
        self.root = config_path.parent
        self.project: Project = load_config(config_path)
        self.target = target
        self.namespace = namespace or self.project.namespace or target.conn.namespace
        self.report = report
        self.print_log = print_log
        self.color = color
        self.store = Store(project=self.project.name, namespace=self.namespace)
        self.plans: dict[str, ServicePlan] = {}
        self.built: dict[str, BuiltImageInfo] = {}
        self.agent_tag = ""
        self.agent_plan: AgentPlan | None = None
        self.tokens: dict[str, list[str]] = {}  # per service: this up's agent token, then kept earlier ones
        self.applied: dict[str, list[ServicePlan]] = {}  # per service: every plan this up applied
        self.forwards: list[tuple[str, PortConfig, PortForward]] = []
        self.debug_sockets: dict[str, socket.socket] = {}  # per service: its debug.local, bound before deploying
        self.dashboard = dashboard  # None: no dashboard (--no-dashboard)
        self.debugging = debug_services(self.project, self.root, debug)  # service -> its synced files
        self.objects: dict[str, list[dict[str, Any]]] = {}
        self.sessions: dict[str, SyncSession] = {}  # per dev-mode service, while the loop runs
        self._unready: set[str] = set()  # services `up` went past without their rollout finishing
        self._loop_tasks: asyncio.TaskGroup | None = None
        self._redeploying: dict[str, asyncio.Lock] = {}  # one rebuild at a time per service
        self.store.actions["restart"] = self._restart_action
        self.store.actions["rebuild"] = self._rebuild_action
        self.store.actions["pause"] = self._pause_action
        self.store.actions["resume"] = self._resume_action

    # -- build and deploy -------------------------------------------------------

    def _build_service(self, name: str) -> None:
        """Build (or find by content hash) one service's image and load it into the cluster."""
        service = self.project.services[name]
        assert service.image is not None
        self.store.update(name, phase="building")
        started = time.monotonic()
        image, info = build_service_image(self.root, name, service, paths=self.target.paths, report=self.report)
        reference = self.target.deliver(image)  # a no-op when the cluster has this image already
        context = self.root / service.image.context
        if name in self.debugging and (context / "go.mod").is_file():
            # A compiled Go program: its own debug info says where it was built from (Delve's substitutePath).
            try:
                found = inspect_go_image(
                    archive=image.archive,
                    original=[*info.entrypoint, *info.cmd],
                    project_root=self.root,
                    context=context,
                )
                if found is not None:
                    info = dataclasses.replace(info, source_mappings=found.mappings, program_language="go")
            except DebugError as err:  # a Go binary Delve cannot debug
                info = dataclasses.replace(info, debug_problem=str(err), program_language="go")
        self.built[service.image.name] = dataclasses.replace(info, reference=reference)
        self.store.update(name, image=reference)
        took_ms = (time.monotonic() - started) * 1000
        self.report(f"{name}: image {reference} ({took_ms:.0f} ms)")
        self.store.record(name, "built", f"image {reference} ({took_ms:.0f} ms)")

    def build(self) -> None:
        for name, service in self.project.services.items():
            if service.image is not None:
                self._build_service(name)
        if self.project.agent_image is not None:
            self.agent_tag = self.project.agent_image  # pre-mirrored: nothing to build or push
            return
        if not any(s.sync for s in self.project.services.values()) and not self.debugging:
            return  # only dev mode runs the agent

        assert self.agent_plan is not None, "deploy() plans the agent before building"
        started = time.monotonic()
        plan = self.agent_plan
        try:
            self.report(plan.describe())
            agent = build_agent(plan, paths=self.target.paths, report=self.report, tools=self._debug_tools())
        except AgentImageError as err:
            raise UpError(str(err)) from None
        self.agent_tag = self.target.deliver(agent)
        self.report(f"agent: image {self.agent_tag} ({(time.monotonic() - started) * 1000:.0f} ms)")

    def _objects(self) -> dict[str, list[dict[str, Any]]]:
        """Every service's manifests, each object given to the one service that applies it.

        A file shared by several services is read for each and its objects
        assigned once (:func:`assign_objects`); what cannot be served is
        refused here with ``file:line:col``, before anything is deployed.
        """
        sources = {
            name: read_manifests(self.root, name, service, kubectl=self.target.kubectl, helm=self.target.helm)
            for name, service in self.project.services.items()
        }
        try:
            return assign_objects(self.project, sources)
        except PlanProblems as err:
            raise locate_problems(self.config_path, err.problems) from None

    def _debug_tools(self) -> ToolEntries | None:
        """The debug tools the debugging services' launches need (their images are built: commands known)."""
        names = set()
        for name in self.debugging:
            plan = self._plan(name, copy.deepcopy(self.objects[name]), token="", built=self.built)
            names |= set(plan.debug.tools if plan.debug is not None else ())
        return functools.partial(tool_entries, sorted(names)) if names else None

    def _plan(
        self,
        name: str,
        docs: list[dict[str, Any]],
        *,
        token: str,
        built: dict[str, BuiltImageInfo],
        debug: bool = True,
    ) -> ServicePlan:
        try:
            return plan_service(
                project=self.project,
                name=name,
                docs=docs,
                built=built,
                agent_image=self.agent_tag,
                token=token,
                # Before building, a command may be the image's (unknown): debug launches are planned after.
                debugging=self.debugging if debug else None,
            )
        except PlanProblems as err:
            raise locate_problems(self.config_path, err.problems) from None

    def check(self, objects: dict[str, list[dict[str, Any]]]) -> dict[str, ServicePlan]:
        """Plan every service without building anything: refuse what `up` cannot serve, learn the selectors."""
        # Images are not built yet: stand-ins with an entrypoint, since the Dockerfile may give the command.
        unbuilt = {
            s.image.name: BuiltImageInfo(reference=f"{s.image.name}:unbuilt", entrypoint=["(the image's)"])
            for s in self.project.services.values()
            if s.image is not None
        }
        return {
            name: self._plan(name, copy.deepcopy(objects[name]), token="", built=unbuilt, debug=False)
            for name in self.project.services
        }

    async def _apply_service(self, client: AsyncClient, name: str, docs: list[dict[str, Any]]) -> None:
        """Render one service's objects (built tags pinned, dev-mode patch) and apply them."""
        if name not in self.tokens:
            # Saved on this machine before the Secret (its hash) is applied: see engine/tokens.py.
            self.tokens[name] = await asyncio.to_thread(
                session_tokens, self.root, namespace=self.namespace, service=name
            )
        plan = self._plan(name, docs, token=self.tokens[name][0], built=self.built)
        self.plans[name] = plan
        self.applied.setdefault(name, []).append(plan)  # the pods the sync session may trust
        self.store.update(name, phase="deploying", dev_mode=plan.dev_mode)
        await apply_all(
            client, project=self.project.name, namespace=self.namespace, docs=plan.docs, project_dir=self.root
        )
        self.store.record(
            name, "deployed", f"applied {len(plan.docs)} objects" + (" in dev mode" if plan.dev_mode else "")
        )

    async def _wait_ready(self, client: AsyncClient, name: str) -> bool:
        plan = self.plans[name]
        if plan.ready_wait:
            rollout = wait_rollout(
                client,
                namespace=self.namespace,
                kind=plan.workload_kind,
                name=plan.workload_name,
                on_progress=functools.partial(self._progress, name),
            )
            # A missing image or an unschedulable pod never heals while we wait: an alert, not a hang.
            stuck = await wait_unless_stuck(
                rollout, client=client, namespace=self.namespace, selector=plan.selector, service=name
            )
            if stuck is not None:
                self.store.update(name, phase="error", message=stuck.cause)
                self.report(f"{name}: not ready, going on: {stuck.cause}")
                self._unready.add(name)
                if self._loop_tasks is not None:  # a redeploy while the loop runs: watch it from now
                    self._loop_tasks.create_task(self._ready_later(name), name=f"ready-{name}")
                return False
        self._unready.discard(name)
        self.store.update(name, phase="running", message="")
        return True

    async def _ready_later(self, name: str) -> None:
        """A service `up` went past (its alert says why) turns running once its rollout finishes after all."""
        plan = self.plans[name]
        client = self.target.conn.client()
        try:
            while name in self._unready:
                with contextlib.suppress(DeployError):
                    await wait_rollout(
                        client,
                        namespace=self.namespace,
                        kind=plan.workload_kind,
                        name=plan.workload_name,
                        timeout_s=600,
                        poll_s=2.0,
                    )
                    break
        finally:
            await client.close()
        if name in self._unready:
            self._unready.discard(name)
            self.store.update(name, phase="running", message="")
            self.report(f"{name}: ready")

    async def deploy(self, client: AsyncClient) -> None:
        # Talk to the cluster before building: an unreachable cluster or missing rights fail in a second.
        await ensure_namespace(client, self.namespace)
        # And how images reach it: a cluster with no way in says what would work before anything is built.
        if any(s.image is not None or s.sync for s in self.project.services.values()) or self.debugging:
            await self.target.images(registry=self.project.registry, report=self.report)
        if self.project.agent_image is None and (any(s.sync for s in self.project.services.values()) or self.debugging):
            # The nodes say their architectures; the agent is built for them (in build(), off the loop).
            self.agent_plan = await self.target.agent_plan(
                registry=self.project.registry, base=self.project.agent_base, report=self.report
            )
        # Then refuse what cannot work (the config against its manifests, a local port in use)
        # before building or deploying anything.
        objects = await asyncio.to_thread(self._objects)
        self.objects = objects
        await self._listen(self.check(objects))
        await asyncio.to_thread(self.build)
        for wave in start_order(self.project):
            for name in wave:
                await self._apply_service(client, name, objects[name])
            for name in wave:
                if await self._wait_ready(client, name):
                    self.report(f"{name}: ready")

    # -- the loop ---------------------------------------------------------------

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        with project_lock(self.root):
            # From the start (building and deploying show too); its port bound first, so a taken one fails at once.
            sock = dashboard_listen(self.dashboard) if self.dashboard is not None else None
            async with serve_dashboard(self.store, sock) as page:
                if page is not None:
                    self.report(f"dashboard: {page.url}")
                await self._run(ready)

    async def _listen(self, plans: dict[str, ServicePlan]) -> None:
        """Bind every forwarded local port now, so a port in use stops `up` before it deploys."""
        problems: list[Problem] = []
        for name, plan in plans.items():
            for i, port in enumerate(self.project.services[name].ports):
                forward = PortForward(
                    self.target.conn,
                    namespace=self.namespace,
                    selector=plan.selector,
                    remote_port=port.remote,
                    local_port=port.local_port,
                    address=port.address,
                    on_event=functools.partial(self._forward_event, name),
                )
                try:
                    await forward.start()
                except ForwardError as err:
                    field = "local" if port.local is not None else "remote"
                    problems.append(Problem(("services", name, "ports", i, field), port_in_use(port, err)))
                    continue
                self.forwards.append((name, port, forward))
        for name in self.debugging:
            local = self.project.services[name].debug.local
            if local is None:
                continue  # the container's debug port if it is free here, else any: chosen when forwarding
            try:
                self.debug_sockets[name] = bind_debug_port(local)
            except OSError as err:
                problems.append(Problem(("services", name, "debug", "local"), debug_port_in_use(local, err)))
        if problems:
            raise locate_problems(self.config_path, problems)  # _run gives the bound ports back

    async def _run(self, ready: asyncio.Event | None) -> None:
        client = self.target.conn.client()
        try:
            await self.deploy(client)
        except BaseException:
            for _, _, forward in self.forwards:
                forward.close()
            for sock in self.debug_sockets.values():
                sock.close()
            raise
        finally:
            await client.close()
        async with serve(self.store, self.root), asyncio.TaskGroup() as tg:
            self._loop_tasks = tg
            tg.create_task(self._watch_alerts(), name="alerts")
            for name in sorted(self._unready):
                tg.create_task(self._ready_later(name), name=f"ready-{name}")
            for name, port, forward in self.forwards:
                where = f"{port.address}:{forward.local_port} -> {port.remote}"
                tg.create_task(forward.run(), name=f"forward-{name}-{forward.local_port}")
                self.store.service(name).forwards.append(where)
                self.report(f"{name}: forwarding {where}")
            for name, plan in self.plans.items():
                service = self.project.services[name]
                if plan.dev_mode:
                    session = SyncSession(
                        conn=self.target.conn,
                        namespace=self.namespace,
                        service=name,
                        plan=plan,
                        tokens=self.tokens[name],
                        applied=self.applied[name],
                        root=self.root,
                        config=service,
                        store=self.store,
                        report=self.report,
                    )
                    self.sessions[name] = session
                    tg.create_task(session.run(), name=f"sync-{name}")
                tg.create_task(self._follow_logs(name, plan), name=f"logs-{name}")
                for svc in sorted(_service_names(plan)):
                    tg.create_task(self._watch_intercepts(name, svc), name=f"intercepts-{name}-{svc}")
                tg.create_task(self._redeploy_on_changes(name), name=f"redeploy-{name}")
            await self._debug_forwards(tg)
            if ready is not None:
                ready.set()
            self.report("watching for changes (Ctrl+C to stop)")

    def _watched(self) -> list[WatchedService]:
        """The alert watcher's view of each service: its pods, its workload, its log patterns."""
        found: list[WatchedService] = []
        for name, plan in self.plans.items():
            alerts = self.project.services[name].alerts
            found.append(
                WatchedService(
                    name=name,
                    selector=dict(plan.selector),
                    workload_kind=plan.workload_kind,
                    workload_name=plan.workload_name,
                    errors=tuple(alerts.errors),
                    ignore=tuple(alerts.ignore),
                    builtin=alerts.builtin,
                )
            )
        return found

    async def _watch_alerts(self) -> None:
        """Alerts raised and cleared in the store, printed apart from the logs (and on the desktop)."""
        desktop = attach_alerts(self.store, echo=self.print_log, color=self.color)
        services = self._watched()
        try:
            await AlertWatcher(
                conn=self.target.conn, namespace=self.namespace, store=self.store, services=services, report=self.report
            ).run()
        finally:
            if desktop is not None:
                desktop.close()

    async def _debug_forwards(self, tg: asyncio.TaskGroup) -> None:
        """A healing forward to each debugger (any running pod: a paused app is not Ready), and the editor's entry."""
        attaches = []
        for name, plan in self.plans.items():
            if plan.debug is None:
                continue
            service = self.project.services[name]
            sock = self.debug_sockets.pop(name, None)  # debug.local, bound since _listen
            forward = PortForward(
                self.target.conn,
                namespace=self.namespace,
                selector=plan.selector,
                remote_port=plan.debug.port,
                local_port=0 if sock is not None else local_debug_port(service, plan.debug.port),
                on_event=functools.partial(self._forward_event, name),
                ready_only=False,
                sock=sock,
            )
            try:
                await forward.start()
            except ForwardError as err:
                for held in self.debug_sockets.values():
                    held.close()
                problem = Problem(("services", name, "debug", "local"), f"cannot forward the debugger: {err}")
                raise locate_problems(self.config_path, [problem]) from None
            tg.create_task(forward.run(), name=f"debug-{name}-{forward.local_port}")
            self.store.update(name, debug=f"{plan.debug.language} on 127.0.0.1:{forward.local_port}")
            attaches.append(Attach(name, plan.debug, forward.local_port))
        for line in await asyncio.to_thread(publish, self.root, attaches):
            self.report(line)

    def _manifest_paths(self, name: str) -> list[Path]:
        m = self.project.services[name].manifests
        if m.files:
            return [(self.root / f).resolve() for f in m.files]
        if m.kustomize:
            return [(self.root / m.kustomize).resolve()]
        if m.helm:
            # A chart from a registry or repository has no local files to watch; its values files do.
            chart = [] if m.helm.remote else [(self.root / m.helm.chart).resolve()]
            return [*chart, *((self.root / v).resolve() for v in m.helm.values)]
        return []

    async def _redeploy_on_changes(self, name: str) -> None:
        """Redeploy a service when sync cannot serve a change: its manifests, its Dockerfile, or a
        build-context file outside every sync root (which also rebuilds the image)."""
        service = self.project.services[name]
        manifests = self._manifest_paths(name)
        context = (self.root / service.image.context).resolve() if service.image else None
        dockerfile: Path | None = None
        if service.image is not None and context is not None:
            dockerfile = (
                (self.root / service.image.dockerfile).resolve() if service.image.dockerfile else context / "Dockerfile"
            )
        rules = [(self.root / r.local).resolve() for r in service.sync]

        def needs_redeploy(path: Path) -> bool:
            if any(part in NEVER_BUILT for part in path.parts):
                return False
            if any(path == m or path.is_relative_to(m) for m in manifests) or path == dockerfile:
                return True
            if context is None or not path.is_relative_to(context):
                return False
            # Under a sync root: synced, or excluded on purpose (a *.pyc, node_modules/); never a rebuild.
            return not any(path.is_relative_to(local) for local in rules)

        watched = {str(m if m.is_dir() else m.parent) for m in manifests}
        if context is not None and dockerfile is not None:
            watched |= {str(context), str(dockerfile.parent)}
        async for changes in watchfiles.awatch(*sorted(watched), step=50, debounce=300):
            triggers = sorted({Path(p) for _, p in changes if needs_redeploy(Path(p))})
            if not triggers:
                continue
            shown = ", ".join(str(t.relative_to(self.root)) for t in triggers[:3])
            self.report(f"{name}: {shown} changed, which sync cannot serve: redeploying")
            try:
                async with self._redeploying.setdefault(name, asyncio.Lock()):
                    await self._redeploy(name)
            except (PlanError, UpError, DeployError, DevModeError, ConfigError, OSError, ValueError) as err:
                self.store.update(name, phase="error", message=str(err))
                self.report(f"{name}: redeploy failed: {err} (fix it and save again)")

    async def _redeploy(self, name: str) -> None:
        if self.project.services[name].image is not None:
            await asyncio.to_thread(self._build_service, name)
        client = self.target.conn.client()
        try:
            objects = await asyncio.to_thread(self._objects)
            await self._apply_service(client, name, objects[name])
            await self._wait_ready(client, name)
        finally:
            await client.close()
        self.report(f"{name}: redeployed")

    # -- actions (the dashboard's buttons, the local API's POSTs) ------------------

    def _session(self, name: str, doing: str) -> SyncSession:
        session = self.sessions.get(name)
        if session is None:
            raise ActionError(f"{name} does not run in dev mode (no sync rules), so it cannot {doing}: use rebuild")
        return session

    async def _restart_action(self, name: str) -> str:
        try:
            message = await self._session(name, "restart its process").restart()
        except AgentError as err:
            raise ActionError(str(err)) from None
        self.report(message)
        return message

    async def _pause_action(self, name: str) -> str:
        message = self._session(name, "pause its sync").pause()
        self.report(message)
        return message

    async def _resume_action(self, name: str) -> str:
        message = self._session(name, "resume its sync").resume()
        self.report(message)
        return message

    async def _rebuild_action(self, name: str) -> str:
        lock = self._redeploying.setdefault(name, asyncio.Lock())
        if lock.locked():
            raise ActionError(f"{name} is being redeployed already")
        async with lock:
            self.report(f"{name}: rebuilding and redeploying on request")
            try:
                await self._redeploy(name)
            except (PlanError, UpError, DeployError, DevModeError, ConfigError, OSError, ValueError) as err:
                self.store.update(name, phase="error", message=str(err))
                raise ActionError(f"{name}: redeploy failed: {err}") from None
        return f"{name}: redeployed"

    async def _watch_intercepts(self, name: str, svc: str) -> None:
        """Whether an intercept router serves Service ``svc`` of ``name`` (a teammate's `innerloop intercept`)."""
        entry = f"svc/{svc} through the intercept router"
        client = self.target.conn.client()
        try:
            async for snapshot in watch_pods(client, namespace=self.namespace, labels=router_selector(svc)):
                routed = any(
                    (p.status is not None and p.status.phase == "Running")
                    and not (p.metadata is not None and p.metadata.deletionTimestamp)
                    for p in snapshot.values()
                )
                shown = self.store.service(name).intercepts
                if routed == (entry in shown):
                    continue
                others = [i for i in shown if i != entry]
                self.store.update(name, intercepts=[*others, entry] if routed else others)
                self.store.record(name, "intercepted" if routed else "intercept ended", entry)
        finally:
            await client.close()

    def _progress(self, service: str, message: str) -> None:
        self.report(f"{service}: {message}")

    def _forward_event(self, service: str, event: ForwardEvent) -> None:
        self.report(f"{service}: {event.message}")

    async def _follow_logs(self, name: str, plan: ServicePlan) -> None:
        width = max(len(n) for n in self.project.services)
        colour = color_index(name) if self.color else None

        def on_line(line: LogLine) -> None:
            self.store.log(name, line.pod, line.text)
            self.print_log(format_line(line, colour, width))

        await LogFollower(
            self.target.conn,
            namespace=self.namespace,
            selector=plan.selector,
            service_name=name,
            on_line=on_line,
            container=plan.container,
        ).run()


async def down(
    *, config_path: Path, target: Target, namespace: str | None, trust_cluster_record: bool = False
) -> DownResult:
    """Delete what `up` created and restore what it replaced, for this project's objects only.

    The objects `down` may touch are computed here, as `up` would compute
    them (innerloop.yaml and its manifests, planned without building): the
    cluster's record is only trusted that far (see :mod:`innerloop.deploy.record`).
    """
    loop = DevLoop(config_path=config_path, target=target, namespace=namespace, report=lambda _m: None)
    plans = loop.check(await asyncio.to_thread(loop._objects))
    defined = project_keys([doc for plan in plans.values() for doc in plan.docs])
    client = target.conn.client()
    try:
        return await restore_all(
            client,
            project=loop.project.name,
            namespace=loop.namespace,
            defined=defined,
            project_dir=loop.root,
            trust_cluster=trust_cluster_record,
        )
    finally:
        await client.close()


def _service_names(plan: ServicePlan) -> set[str]:
    """The Kubernetes Services a service applies (what `innerloop intercept` switches)."""
    return {
        str(doc["metadata"]["name"])
        for doc in plan.docs
        if doc.get("kind") == "Service" and (doc.get("metadata") or {}).get("name")
    }
