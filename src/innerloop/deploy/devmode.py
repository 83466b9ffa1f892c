"""The dev-mode patch: make a workload's container syncable and restartable (pure).

Nothing is rebuilt and nothing needs a shell or tar in the image:

- an init container copies the agent's self-contained runtime (see
  :mod:`innerloop.builders.agent_image`) into an emptyDir mounted at ``/.innerloop``;
- for every sync target, an init container running *the app's own image*
  seeds an emptyDir with what the image has at that path, and the app
  container mounts that emptyDir there: the path becomes writable while the
  root filesystem stays read-only;
- the app container's command becomes the agent, which runs the original
  command as its child, serves the CLI on a loopback port inside the pod, and
  restarts the child after a sync without the container ever exiting (so no
  CrashLoopBackOff and no liveness failure);
- the agent's token *hash* comes from a Secret mounted read-only (the token
  itself stays with the CLI: see :mod:`innerloop.agent.server`);
- a debugging service (:class:`DebugPatch`) runs its debug launch instead of
  the original command and loses its liveness and startup probes while it
  debugs: a process paused at a breakpoint must not be killed. Readiness
  stays, so a paused pod only leaves its Service's endpoints. The next plain
  `up` (or `down`) applies the manifest's workload again, probes included.
  What the launch replaced (the original command, the app's own entries of
  the variables it sets) is kept in the container's ``INNERLOOP_DEBUG_ORIGINAL``
  (in the pod spec, which nobody can change on a running pod), so
  :func:`app_pod` gives a local command the app's context, not the debugger's.

Every added container passes the *restricted* Pod Security Standard.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from innerloop.builders.agent_image import IMAGE_ROOT, MOUNT_ROOT, runtime_command, runtime_env
from innerloop.deploy.render import pod_spec

TOKEN_DIR = "/.innerloop-token"
TOKEN_KEY = "sha256"  # the token Secret's one key: the hash of the token, never the token
SYNC_SEED_DIR = "/.innerloop-sync"
DEV_MODE_ANNOTATION = "innerloop.dev/dev-mode"
DEBUG_ANNOTATION = "innerloop.dev/debug"  # the debugger's language and port, e.g. "python 5678"
AGENT_PORT_ANNOTATION = "innerloop.dev/agent-port"
# The names the patch adds; :func:`app_pod` removes exactly these.
RUNTIME_VOLUME = "innerloop-runtime"
TOKEN_VOLUME = "innerloop-token"
SYNC_VOLUME_PREFIX = "innerloop-sync-"
INSTALL_CONTAINER = "innerloop-install"
SEED_CONTAINER_PREFIX = "innerloop-seed-"


class DevModeError(ValueError):
    """The workload cannot be put in dev mode; the message says what to change."""


@dataclass(frozen=True, kw_only=True)
class DebugPatch:
    """What a debugging service's container runs: see :class:`innerloop.debug.languages.DebugLaunch`."""

    command: Sequence[str]
    env: Mapping[str, str]
    language: str
    port: int


# Options variables that a debug launch adds to rather than replaces (the manifest may set its own).
_JOINED_ENV = ("JAVA_TOOL_OPTIONS", "NODE_OPTIONS", "JDK_JAVA_OPTIONS")
DEBUG_DROPPED_PROBES = ("livenessProbe", "startupProbe")
# JSON {"command": the original command, "set": the names the launch set, "env": the app's own entries of them}.
DEBUG_ORIGINAL_ENV = "INNERLOOP_DEBUG_ORIGINAL"


@dataclass(frozen=True, kw_only=True)
class DevMode:
    agent_image: str
    token_secret: str
    command: Sequence[str]  # the app's original command (entrypoint + args)
    sync_targets: Sequence[str]  # absolute container paths
    container: str | None = None
    agent_port: int = 47600
    env: Mapping[str, str] = field(default_factory=dict)
    debug: DebugPatch | None = None


def _debug_env(env: Sequence[Mapping[str, Any]], debug: DebugPatch, *, original: Sequence[str]) -> list[dict[str, Any]]:
    """The app's env with the debug launch's variables and the record of what they replaced.

    An options variable the app already sets keeps its value after ours
    (``NODE_OPTIONS="--inspect=... --max-old-space-size=100"``); any other
    entry of a name the launch sets is replaced, and kept in the record.
    """
    values = dict(debug.env)
    replaced = [dict(e) for e in env if e.get("name") in values]
    for entry in replaced:
        name, value = entry["name"], entry.get("value")
        if name in _JOINED_ENV and isinstance(value, str) and value:
            values[name] = f"{values[name]} {value}"
    record = {"command": list(original), "set": sorted(values), "env": replaced}
    return [
        *(dict(e) for e in env if e.get("name") not in values),
        *({"name": k, "value": v} for k, v in values.items()),
        {"name": DEBUG_ORIGINAL_ENV, "value": json.dumps(record, separators=(",", ":"))},
    ]


def _without_debug(container: dict[str, Any]) -> None:
    """Take a debug launch out of an app container (its command already the agent's child): see :func:`_debug_env`."""
    env = list(container.get("env") or [])
    entry = next((e for e in env if e.get("name") == DEBUG_ORIGINAL_ENV), None)
    if entry is None:
        return
    try:
        record = json.loads(str(entry.get("value")))
        command, names, replaced = record["command"], record["set"], record["env"]
        valid = (
            all(isinstance(part, list) for part in (command, names, replaced))
            and all(isinstance(a, str) for a in command)
            and all(isinstance(n, str) for n in names)
            and all(isinstance(e, dict) and e.get("name") in names for e in replaced)
        )
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:  # not innerloop's record: only the record itself goes
        container["env"] = [e for e in env if e is not entry]
        return
    container["command"] = list(command)
    container["env"] = [e for e in env if e.get("name") not in names and e is not entry] + list(replaced)


def _restricted(existing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    ctx: dict[str, Any] = dict(existing or {})
    ctx.update(
        allowPrivilegeEscalation=False,
        readOnlyRootFilesystem=True,
        runAsNonRoot=True,
        capabilities={"drop": ["ALL"]},
    )
    ctx.setdefault("runAsUser", 65532)
    return ctx


def find_container(spec: Mapping[str, Any], name: str | None) -> dict[str, Any]:
    containers = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    if name is None:
        if len(containers) != 1:
            names = ", ".join(str(c.get("name")) for c in containers)
            raise DevModeError(
                f"the pod has {len(containers)} containers ({names}): set `container:` in innerloop.yaml"
            )
        return containers[0]
    for c in containers:
        if c.get("name") == name:
            return c
    raise DevModeError(f"no container named {name!r} in the pod")


def original_command(
    container: Mapping[str, Any], image_entrypoint: Sequence[str], image_cmd: Sequence[str]
) -> list[str]:
    """What the container would run without innerloop, as Kubernetes computes it."""
    command = container.get("command")
    args = container.get("args")
    if command:
        return [*command, *(args or [])]
    if args is not None:
        return [*image_entrypoint, *args]
    return [*image_entrypoint, *image_cmd]


def apply_dev_mode(workload: Mapping[str, Any], dev: DevMode) -> dict[str, Any]:
    """A copy of ``workload`` with the dev-mode patch applied."""
    doc = copy.deepcopy(dict(workload))
    spec = pod_spec(doc)
    if spec is None:
        raise DevModeError(f"{doc.get('kind')} has no pod template; dev mode needs a Deployment or StatefulSet")
    if not dev.command:
        raise DevModeError("the container has no command and its image no entrypoint: set `command` in the manifest")
    app = find_container(spec, dev.container)
    for target in dev.sync_targets:
        if not target.startswith("/"):
            raise DevModeError(f"sync target {target!r} must be an absolute container path")

    volumes = spec.setdefault("volumes", [])
    volumes.append({"name": RUNTIME_VOLUME, "emptyDir": {}})
    volumes.append({"name": TOKEN_VOLUME, "secret": {"secretName": dev.token_secret, "defaultMode": 0o444}})
    runtime_mount = {"name": RUNTIME_VOLUME, "mountPath": MOUNT_ROOT, "readOnly": True}

    init = [
        {
            "name": INSTALL_CONTAINER,
            "image": dev.agent_image,
            "imagePullPolicy": "IfNotPresent",
            "command": [*runtime_command(IMAGE_ROOT), "seed", IMAGE_ROOT, MOUNT_ROOT],
            "env": [{"name": k, "value": v} for k, v in runtime_env(IMAGE_ROOT).items()],
            "volumeMounts": [{"name": RUNTIME_VOLUME, "mountPath": MOUNT_ROOT}],
            "securityContext": _restricted(),
        }
    ]
    app_mounts = app.setdefault("volumeMounts", [])
    for i, target in enumerate(dev.sync_targets):
        volume = f"{SYNC_VOLUME_PREFIX}{i}"
        volumes.append({"name": volume, "emptyDir": {}})
        seed_dir = f"{SYNC_SEED_DIR}/{i}"
        init.append(
            {
                "name": f"{SEED_CONTAINER_PREFIX}{i}",
                "image": app["image"],
                "imagePullPolicy": app.get("imagePullPolicy", "IfNotPresent"),
                "command": [*runtime_command(MOUNT_ROOT), "seed", target, seed_dir],
                "env": [{"name": k, "value": v} for k, v in runtime_env(MOUNT_ROOT).items()],
                "volumeMounts": [runtime_mount, {"name": volume, "mountPath": seed_dir}],
                "securityContext": _restricted(app.get("securityContext")),
            }
        )
        app_mounts.append({"name": volume, "mountPath": target.rstrip("/") or "/"})
    app_mounts.append(runtime_mount)
    app_mounts.append({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True})
    spec["initContainers"] = [*init, *(spec.get("initContainers") or [])]

    app["command"] = [
        *runtime_command(MOUNT_ROOT),
        "run",
        "--listen",
        f"127.0.0.1:{dev.agent_port}",
        "--token-sha256-file",
        f"{TOKEN_DIR}/{TOKEN_KEY}",
        "--",
        *(dev.debug.command if dev.debug is not None else dev.command),
    ]
    app.pop("args", None)
    # The app's env as plain dev mode gives it (innerloop.yaml's env over the manifest's), then the debugger's.
    env = [e for e in app.get("env") or [] if e.get("name") not in dev.env]
    env += [{"name": k, "value": v} for k, v in dev.env.items()]
    if dev.debug is not None:
        env = _debug_env(env, dev.debug, original=dev.command)
        for probe in DEBUG_DROPPED_PROBES:
            app.pop(probe, None)
    env += [{"name": k, "value": v} for k, v in runtime_env(MOUNT_ROOT).items()]
    app["env"] = env

    template_meta = doc["spec"]["template"].setdefault("metadata", {}) if "template" in doc.get("spec", {}) else None
    if template_meta is not None:
        annotations = template_meta.setdefault("annotations", {})
        annotations[DEV_MODE_ANNOTATION] = "true"
        annotations[AGENT_PORT_ANNOTATION] = str(dev.agent_port)
        if dev.debug is not None:
            annotations[DEBUG_ANNOTATION] = f"{dev.debug.language} {dev.debug.port}"
    return doc


def _ours(volume: str) -> bool:
    return volume in (RUNTIME_VOLUME, TOKEN_VOLUME) or volume.startswith(SYNC_VOLUME_PREFIX)


def app_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a pod (or pod template) with the dev-mode patch taken out: the app as its manifest declares it.

    What a local process borrows from a dev-mode pod (``innerloop run``,
    ``intercept -- CMD``) must be the app's context, never the agent's: its
    runtime variables (``PYTHONHOME`` names the agent's interpreter), the
    runtime, token and synced emptyDir mounts, the token's Secret, the init
    containers. This removes exactly what :func:`apply_dev_mode` adds, by the
    names above, and gives back the original command (the agent's argv after
    ``--``). A pod without the annotation is returned unchanged. ``env`` from
    innerloop.yaml stays: it is the app's configuration, not innerloop's.

    A debugging pod also gives back the command the debug launch replaced
    and the app's own values of the variables it set (``NODE_OPTIONS``,
    ``JAVA_TOOL_OPTIONS``, ``PYDEVD_*``...): a local command must not start
    a second debugger, or wait for one. Its dropped probes are not put back
    (a local command has none).
    """
    doc = copy.deepcopy(dict(pod))
    meta = doc.get("metadata") or {}
    if (meta.get("annotations") or {}).get(DEV_MODE_ANNOTATION) != "true":
        return doc
    spec = doc.get("spec") or {}
    runtime = runtime_env(MOUNT_ROOT)
    agent = runtime_command(MOUNT_ROOT)
    for container in spec.get("containers") or []:
        mounts = [m for m in container.get("volumeMounts") or [] if not _ours(str(m.get("name")))]
        if "volumeMounts" in container:
            container["volumeMounts"] = mounts
        command = container.get("command") or []
        if command[: len(agent)] == agent and "--" in command:
            container["command"] = command[command.index("--") + 1 :]
            # The runtime's variables were appended last, so an app's own entry of the same name stays.
            env = list(container.get("env") or [])
            for name, value in runtime.items():
                for i in range(len(env) - 1, -1, -1):
                    if env[i].get("name") == name and env[i].get("value") == value:
                        del env[i]
                        break
            container["env"] = env
            _without_debug(container)
    if "volumes" in spec:
        spec["volumes"] = [v for v in spec["volumes"] if not _ours(str(v.get("name")))]
    if "initContainers" in spec:
        spec["initContainers"] = [
            c
            for c in spec["initContainers"]
            if c.get("name") != INSTALL_CONTAINER and not str(c.get("name")).startswith(SEED_CONTAINER_PREFIX)
        ]
    return doc


# -- is this pod the one `up` deployed? ------------------------------------------------

# What the API server fills in on a container (not in our plan), and may differ from it.
_DEFAULTED_CONTAINER_KEYS = frozenset({"terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy"})
_SKIPPED_CONTAINER_KEYS = frozenset({"resources"})  # quantities are normalized ("0.1" -> "100m"); not identity
_SA_VOLUME_PREFIX = "kube-api-access-"  # the token volume the ServiceAccount admission adds to every pod
_SA_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
_POD_FLAGS = ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace")


def _empty(value: object) -> bool:
    return value is None or value is False or value in ("", {}, [])


def _covers(planned: object, actual: object) -> bool:
    """``actual`` has everything ``planned`` says (defaults may add keys; a missing key equals an empty value)."""
    if isinstance(planned, Mapping):
        if not isinstance(actual, Mapping):
            return _empty(actual) and all(_empty(v) for v in planned.values())
        # ``{}`` is kept by the API server where it means something (``emptyDir: {}``): it must be there.
        return all(
            _covers(value, actual[key]) if key in actual else _empty(value) and value != {}
            for key, value in planned.items()
        )
    if isinstance(planned, list):
        actual_list = actual if isinstance(actual, list) else [] if _empty(actual) else None
        return actual_list is not None and len(planned) == len(actual_list) and all(map(_covers, planned, actual_list))
    return planned == actual or (_empty(planned) and _empty(actual))


def _sa_mount(mount: Mapping[str, Any]) -> bool:
    return str(mount.get("name", "")).startswith(_SA_VOLUME_PREFIX) and mount.get("mountPath") == _SA_MOUNT_PATH


def _container_difference(planned: Mapping[str, Any], actual: Mapping[str, Any]) -> str | None:
    name = planned.get("name")
    added = set(actual) - set(planned) - _DEFAULTED_CONTAINER_KEYS - _SKIPPED_CONTAINER_KEYS
    added = {key for key in added if not _empty(actual[key])}
    if added:
        return f"container {name} has {', '.join(sorted(added))}, which innerloop did not set"
    for key, value in planned.items():
        if key in _SKIPPED_CONTAINER_KEYS:
            continue
        got = actual.get(key)
        if key == "volumeMounts":
            got = [m for m in got or [] if not _sa_mount(m)]
        if not _covers(value, got):
            return f"container {name}: its {key} is not the one innerloop deployed"
    return None


def _pod_difference(planned: Mapping[str, Any], actual: Mapping[str, Any]) -> str | None:
    for group in ("initContainers", "containers"):
        ours = [c for c in planned.get(group) or [] if isinstance(c, Mapping)]
        theirs = [c for c in actual.get(group) or [] if isinstance(c, Mapping)]
        if [c.get("name") for c in ours] != [c.get("name") for c in theirs]:
            names = ", ".join(str(c.get("name")) for c in theirs) or "none"
            return f"its {group} are {names}, not the ones innerloop deployed"
        for mine, found in zip(ours, theirs, strict=True):
            difference = _container_difference(mine, found)
            if difference is not None:
                return difference
    volumes = [
        v
        for v in actual.get("volumes") or []
        if not (str(v.get("name", "")).startswith(_SA_VOLUME_PREFIX) and "projected" in v)
    ]
    if not _covers(list(planned.get("volumes") or []), volumes):
        return "its volumes are not the ones innerloop deployed"
    for flag in _POD_FLAGS:
        if bool(actual.get(flag)) != bool(planned.get(flag)):
            return f"its {flag} is {bool(actual.get(flag))}"
    return None


def _owned_by(pod: Mapping[str, Any], workload: Mapping[str, Any]) -> bool:
    """The pod was made by this workload's controller (nobody with the documented Role can create pods)."""
    meta = pod.get("metadata") or {}
    name = (workload.get("metadata") or {}).get("name")
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller")]
    if len(owners) != 1:
        return False
    owner = owners[0]
    if workload.get("kind") == "StatefulSet":
        return bool(owner.get("kind") == "StatefulSet" and owner.get("name") == name)
    # The Deployment controller names each ReplicaSet <deployment>-<pod-template-hash> and labels its pods
    # with that hash; a Deployment of another name (say web-x) yields web-x-<hash>, never web-<hash>.
    template_hash = (meta.get("labels") or {}).get("pod-template-hash")
    return bool(owner.get("kind") == "ReplicaSet" and template_hash and owner.get("name") == f"{name}-{template_hash}")


def check_agent_pod(pod: Mapping[str, Any], workloads: Sequence[Mapping[str, Any]]) -> str | None:
    """None if ``pod`` runs what one of ``workloads`` (the dev-mode workloads `up` applied) says; else why not.

    The CLI sends its tokens, and then the developer's files, only to a pod
    that passes: made by the workload's own controller, and whose containers,
    init containers and volumes are the planned ones (images, commands,
    environment, mounts, security context; what the API server only
    defaults is allowed). A teammate who patches the Deployment to serve a
    fake agent (another image, command, an added container or volume) gets
    pods that fail this, also after restoring the template while such a pod
    still runs.
    """
    reason = "no workload was applied"
    for workload in workloads:
        template = ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}
        if not _owned_by(pod, workload):
            reason = f"it was not created by {workload.get('kind')} {(workload.get('metadata') or {}).get('name')}"
            continue
        difference = _pod_difference(template, pod.get("spec") or {})
        if difference is None:
            return None
        reason = difference
    return reason
