"""What a container sees, computed from its pod spec (pure): env vars and mounted config files.

Kubernetes builds a container's environment from literal values,
``valueFrom`` (ConfigMap and Secret keys, pod fields), ``envFrom`` (whole
ConfigMaps and Secrets, with an optional prefix) and, unless the pod turns
``enableServiceLinks`` off, one set of docker-link variables per Service of
the namespace. ConfigMap, Secret and projected volumes become files. This
module reproduces that from plain dicts, so ``innerloop run`` gives a local
process the same view without running anything in the cluster.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
