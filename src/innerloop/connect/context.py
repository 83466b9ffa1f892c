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

from innerloop.sync.contained import UnsafePath, relative_parts

# What describes this machine's session and toolchain rather than the app: where programs, libraries,
# interpreters and the user's files are, who and where the session is, and every variable that changes
# which code a local program runs (a preloaded library, interpreter options, a shell's startup file, the
# helper commands git, ssh, less or an editor start). A container's values name the container's
# filesystem (PYTHONHOME=/usr/local, PATH=/usr/local/bin:...), and a hostile pod spec's values would run
# its code here (LD_PRELOAD=evil.so, NODE_OPTIONS=--require=..., BASH_ENV, GIT_SSH_COMMAND): they are
# never taken from the pod (see ``command_environment``); --env sets one on purpose.
MACHINE_NAMES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "PWD", "OLDPWD", "HOSTNAME", "TMPDIR", "TMP", "TEMP",
        "DISPLAY", "LANG", "LANGUAGE", "TZ", "TZDIR", "VIRTUAL_ENV", "NODE_PATH", "NODE_OPTIONS",
        "NODE_EXTRA_CA_CERTS", "GOPATH", "GOROOT", "GOBIN", "GOCACHE", "GOMODCACHE", "GOTOOLCHAIN", "GOFLAGS",
        "GOPROXY", "GONOSUMDB", "GOPRIVATE", "GOINSECURE", "GOEXPERIMENT", "GOENV", "JAVA_HOME", "CLASSPATH",
        "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "GEM_HOME", "GEM_PATH", "RUBYLIB", "RUBYOPT",
        "PERL5LIB", "PERLLIB", "PERL5OPT", "PERL5DB", "CARGO_HOME", "RUSTUP_HOME", "RUSTFLAGS", "RUSTC_WRAPPER",
        "CC", "CXX", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "MAKEFLAGS", "SSL_CERT_FILE", "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "MANPATH", "INFOPATH", "ENV", "BASH_ENV", "PROMPT_COMMAND",
        "PS1", "PS2", "PS4", "IFS", "CDPATH", "GLOBIGNORE", "SHELLOPTS", "BASHOPTS", "ZDOTDIR", "INPUTRC",
        "HISTFILE", "TERMINFO", "GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "HOSTALIASES",
        "RES_OPTIONS", "LOCALDOMAIN", "EDITOR", "VISUAL", "PAGER", "MANPAGER", "LESSOPEN", "LESSCLOSE",
        "BROWSER", "SUDO_ASKPASS", "KUBECONFIG", "KUBE_EDITOR", "DOCKER_HOST", "DOCKER_CONFIG", "CONTAINER_HOST",
    }
)  # fmt: skip
MACHINE_PREFIXES = (
    "LC_", "LD_", "DYLD_", "PYTHON", "XDG_", "SSH_", "CONDA_", "GIT_", "BASH_FUNC_", "MALLOC_", "NPM_CONFIG_",
    "npm_config_", "PIP_", "UV_", "CGO_",
)  # fmt: skip
# The machine names a pod may set when this machine has none: values that run no code and name no file.
GAP_NAMES = frozenset({"TERM", "LANG", "LANGUAGE", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING"})
GAP_PREFIXES = ("LC_",)
# What a process environment can hold (Kubernetes allows these; a hostile API server may send others).
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")

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
            mount_path = mount_folder(mount.get("mountPath"))
            for rel in content:
                file_name(rel, mount=mount_path)
            sub = mount.get("subPath")
            if sub:
                folder, _, name = mount_path.rpartition("/")
                content = {name: content[sub]} if sub in content else {}
                files[folder or "/"] = {**files.get(folder or "/", {}), **content}
            else:
                files[mount_path] = content
    return RemoteContext(env=env, files=files, missing=missing)


def mount_folder(mount_path: object) -> str:
    """A volume's mount path, checked to stay where ``innerloop run`` writes (``/etc/app``), or ContextError.

    Kubernetes validates these; a hostile API server (or a spec edited in
    between) need not, and a ``..`` here would write the pod's files
    anywhere on this machine (``../../.bashrc``).
    """
    if not isinstance(mount_path, str) or not mount_path.startswith("/"):
        raise ContextError(f"mount path {mount_path!r} is not absolute; refusing to write its files")
    try:
        parts = relative_parts(mount_path.strip("/"))
    except UnsafePath as err:
        raise ContextError(f"mount path {mount_path!r} could leave .innerloop/run/ ({err}); refusing it") from None
    return "/" + "/".join(parts)


def file_name(rel: object, *, mount: str) -> str:
    """A ConfigMap or Secret key, or an item's ``path``, checked to stay below its mount, or ContextError."""
    try:
        relative_parts(rel)
    except UnsafePath as err:
        raise ContextError(f"file {rel!r} of the volume at {mount} could leave it ({err}); refusing it") from None
    return str(rel)


def describes_machine(name: str) -> bool:
    """Whether ``name`` is one of the variables that describe this machine's session and toolchain."""
    return name in MACHINE_NAMES or name.startswith(MACHINE_PREFIXES)


def fills_gap(name: str) -> bool:
    """Whether the pod's value of machine variable ``name`` may be used where this machine has none."""
    return name in GAP_NAMES or name.startswith(GAP_PREFIXES)


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
       for those the local value wins, and when the machine has none the pod's value is applied
       only for the few that run no code and name no file (``GAP_NAMES``: ``PYTHONUNBUFFERED=1``,
       ``LANG=C.UTF-8``, ``LC_*``), without a ``/``; a variable no process environment can hold
       (a name with ``=``, a NUL) is not applied either;
    3. ``explicit`` (``--env NAME=VALUE``) sets anything, last.

    ``withheld`` names the pod variables rule 2 did not apply (their value differs from the
    result), so the command can say so in one line.
    """
    env = dict(local)
    withheld: list[str] = []
    for name, value in pod.items():
        if not _ENV_NAME.fullmatch(name) or "\0" in value:
            withheld.append(name.encode("unicode_escape").decode())
        elif not describes_machine(name) or (name not in env and fills_gap(name) and "/" not in value):
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
        " session, or would change which code runs here: this machine's values stay; set one with"
        " --env NAME=VALUE if you mean it)"
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
