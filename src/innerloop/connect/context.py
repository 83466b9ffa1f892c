"""What a container sees, computed from its pod spec (pure): env vars and mounted config files.

Kubernetes builds a container's environment from literal values,
``valueFrom`` (ConfigMap and Secret keys, pod fields), ``envFrom`` (whole
ConfigMaps and Secrets, with an optional prefix) and, unless the pod turns
``enableServiceLinks`` off, one set of docker-link variables per Service of
the namespace. ConfigMap, Secret and projected volumes become files. This
module reproduces that from plain dicts, so ``innerloop run`` gives a local
process the same view without running anything in the cluster.

It also decides how that view meets the machine's own environment
(:func:`command_environment`): the app's variables are added, the ones that
describe the machine's session and toolchain (``PATH``, ``HOME``,
``PYTHONHOME``, ``LD_*``...) stay local, and ``--env`` sets anything.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# What describes this machine's session and toolchain rather than the app: where programs, libraries,
# interpreters and the user's files are, and who and where the session is. A container's values name
# the container's filesystem (PYTHONHOME=/usr/local, PATH=/usr/local/bin:...): applied here they
# break the local tools, so they are never taken from the pod wholesale (see ``command_environment``).
MACHINE_NAMES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "PWD", "OLDPWD", "HOSTNAME", "TMPDIR", "TMP", "TEMP",
        "DISPLAY", "LANG", "LANGUAGE", "VIRTUAL_ENV", "NODE_PATH", "GOPATH", "GOROOT", "GOBIN", "GOCACHE",
        "GOMODCACHE", "GOTOOLCHAIN", "JAVA_HOME", "CLASSPATH", "GEM_HOME", "GEM_PATH", "RUBYLIB", "PERL5LIB",
        "CARGO_HOME", "RUSTUP_HOME", "SSL_CERT_FILE", "SSL_CERT_DIR", "MANPATH", "INFOPATH",
    }
)  # fmt: skip
MACHINE_PREFIXES = ("LC_", "LD_", "PYTHON", "XDG_", "SSH_", "CONDA_")

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class ContextError(ValueError):
    """The pod refers to something missing; the message names it."""


@dataclass(frozen=True, kw_only=True)
class RemoteContext:
    env: dict[str, str]
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # mountPath -> {relative path: content}
    missing: list[str] = field(default_factory=list)  # optional references that were absent


def _data(obj: Mapping[str, Any] | None, *, secret: bool) -> dict[str, bytes]:
    if obj is None:
        return {}
    out = (
        {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        if secret
        else {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    )
    if not secret:
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


def service_links(services: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The docker-link variables the kubelet adds for each Service with a cluster IP."""
    env: dict[str, str] = {}
    for svc in services:
        ip = (svc.get("spec") or {}).get("clusterIP")
        ports = (svc.get("spec") or {}).get("ports") or []
        if not ip or ip == "None" or not ports:
            continue
        name = str(svc["metadata"]["name"]).upper().replace("-", "_")
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        env[f"{name}_PORT"] = f"{ports[0].get('protocol', 'TCP').lower()}://{ip}:{ports[0]['port']}"
        for port in ports:
            proto = str(port.get("protocol", "TCP"))
            key = f"{name}_PORT_{port['port']}_{proto}"
            env[key] = f"{proto.lower()}://{ip}:{port['port']}"
            env[f"{key}_PROTO"] = proto.lower()
            env[f"{key}_PORT"] = str(port["port"])
            env[f"{key}_ADDR"] = ip
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{str(port['name']).upper().replace('-', '_')}"] = str(port["port"])
    return env


def _field(pod: Mapping[str, Any], path: str) -> str:
    meta, status, spec = pod.get("metadata", {}), pod.get("status", {}), pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ContextError(f"fieldRef {path} is not supported")


def container_context(
    pod: Mapping[str, Any],
    container: str | None,
    *,
    configmaps: Mapping[str, Mapping[str, Any]],
    secrets: Mapping[str, Mapping[str, Any]],
    services: Sequence[Mapping[str, Any]],
) -> RemoteContext:
    spec = pod.get("spec", {})
    containers = spec.get("containers") or []
    chosen = next((c for c in containers if container is None or c.get("name") == container), None)
    if chosen is None:
        raise ContextError(f"no container {container!r} in pod {pod.get('metadata', {}).get('name')}")
    missing: list[str] = []
    env: dict[str, str] = {}
    if spec.get("enableServiceLinks", True):
        env.update(service_links(services))

    def lookup(kind: str, name: str, key: str | None, optional: bool) -> dict[str, bytes] | bytes | None:
        source = configmaps if kind == "configMap" else secrets
        data = _data(source.get(name), secret=kind == "secret") if name in source else None
        if data is None or (key is not None and key not in data):
            what = f"{kind} {name}" + (f" key {key}" if key else "")
            if optional:
                missing.append(what)
                return None
            raise ContextError(f"the pod needs {what}, which does not exist")
        return data[key] if key is not None else data

    for source in chosen.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind in ("configMap", "secret"):
            ref = source.get(f"{kind}Ref")
            if ref:
                values = lookup(kind, ref["name"], None, bool(ref.get("optional")))
                if isinstance(values, dict):
                    env.update({prefix + k: v.decode(errors="replace") for k, v in values.items()})
    for var in chosen.get("env") or []:
        if "value" in var:
            env[var["name"]] = _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), str(var["value"]))
            continue
        value_from = var.get("valueFrom") or {}
        for kind in ("configMap", "secret"):
            ref = value_from.get(f"{kind}KeyRef")
            if ref:
                value = lookup(kind, ref["name"], ref["key"], bool(ref.get("optional")))
                if isinstance(value, bytes):
                    env[var["name"]] = value.decode(errors="replace")
        if "fieldRef" in value_from:
            env[var["name"]] = _field(pod, value_from["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in value_from:
            missing.append(f"resourceFieldRef of {var['name']}")
    files: dict[str, dict[str, bytes]] = {}
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for mount in chosen.get("volumeMounts") or []:
        volume = volumes.get(mount["name"], {})
        sources: list[tuple[str, Mapping[str, Any]]] = []
        if "configMap" in volume:
            sources.append(("configMap", volume["configMap"]))
        if "secret" in volume:
            sources.append(("secret", {**volume["secret"], "name": volume["secret"].get("secretName")}))
        for projected in (volume.get("projected") or {}).get("sources") or []:
            for kind in ("configMap", "secret"):
                if kind in projected:
                    sources.append((kind, projected[kind]))
        content: dict[str, bytes] = {}
        for kind, ref in sources:
            data = lookup(kind, str(ref.get("name")), None, bool(ref.get("optional")))
            if not isinstance(data, dict):
                continue
            items = ref.get("items")
            if items:
                content.update({item["path"]: data[item["key"]] for item in items if item["key"] in data})
            else:
                content.update(data)
        if sources:
            sub = mount.get("subPath")
            if sub:
                content = {mount["mountPath"].rsplit("/", 1)[-1]: content[sub]} if sub in content else {}
                files[mount["mountPath"].rsplit("/", 1)[0] or "/"] = {**files.get(mount["mountPath"], {}), **content}
            else:
                files[mount["mountPath"]] = content
    return RemoteContext(env=env, files=files, missing=missing)


def describes_machine(name: str) -> bool:
    """Whether ``name`` is one of the variables that describe this machine's session and toolchain."""
    return name in MACHINE_NAMES or name.startswith(MACHINE_PREFIXES)


@dataclass(frozen=True, kw_only=True)
class CommandEnvironment:
    env: dict[str, str]
    withheld: list[str]  # pod variables not applied (sorted): the machine's value, or none, stays


def command_environment(
    local: Mapping[str, str], pod: Mapping[str, str], explicit: Mapping[str, str] | None = None
) -> CommandEnvironment:
    """The environment of a local command that borrows a pod's context.

    The rules, in order:

    1. start from this machine's environment (never replaced wholesale);
    2. add the app's variables from the pod (env, envFrom, valueFrom, service links), overriding
       local ones of the same name, except those that describe the machine (``describes_machine``):
       for those the local value wins; when the machine has none, the pod's value is applied
       only if it names no path (no ``/``: ``PYTHONUNBUFFERED=1``, ``LANG=C.UTF-8``), because a
       path is one in the container's filesystem;
    3. ``explicit`` (``--env NAME=VALUE``) sets anything, last.

    ``withheld`` names the pod variables rule 2 did not apply (their value differs from the
    result), so the command can say so in one line.
    """
    env = dict(local)
    withheld: list[str] = []
    for name, value in pod.items():
        if not describes_machine(name) or (name not in env and "/" not in value):
            env[name] = value
        elif env.get(name) != value:
            withheld.append(name)
    explicit = dict(explicit or {})
    env.update(explicit)
    return CommandEnvironment(env=env, withheld=sorted(n for n in withheld if n not in explicit))


def withheld_line(withheld: Sequence[str]) -> str | None:
    """The one line a command prints about pod variables it did not apply, or None."""
    if not withheld:
        return None
    return (
        f"not applied from the pod: {', '.join(withheld)} (they describe the container's filesystem or"
        " session, this machine's values stay; set one with --env NAME=VALUE if you mean it)"
    )


def parse_env_options(values: Sequence[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` options as a mapping; a ValueError names a malformed one."""
    out: dict[str, str] = {}
    for text in values:
        name, sep, value = text.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
            raise ValueError(f"--env expects NAME=VALUE, got {text!r}")
        out[name] = value
    return out
