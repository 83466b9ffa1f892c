"""skopeo's command lines and what its failures mean (pure).

All registry traffic goes through skopeo (containers/image): it reads the
user's docker ``config.json`` with its ``auths``, ``credHelpers`` and
``credsStore``, speaks the distribution protocol with token auth, retries
and HTTP fallback for insecure registries. innerloop only builds argv and
turns skopeo's ``level=fatal msg="..."`` into one line a user can act on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from innerloop.delivery.choice import INSTALL_HINTS

_FATAL = re.compile(r'level=fatal msg="(?P<msg>(?:[^"\\]|\\.)*)"')


def docker_authfile(env: Mapping[str, str], *, home: Path) -> Path | None:
    """The docker config to pass as ``--authfile``; None when REGISTRY_AUTH_FILE is set or there is none.

    ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (docker's own lookup).
    REGISTRY_AUTH_FILE is skopeo's own setting: then skopeo chooses.
    """
    if env.get("REGISTRY_AUTH_FILE"):
        return None
    folder = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
    candidate = folder / "config.json"
    return candidate if candidate.is_file() else None


def _common(*, tls_flag: str, insecure: bool, authfile: Path | None) -> list[str]:
    args: list[str] = []
    if authfile is not None:
        args += ["--authfile", str(authfile)]
    if insecure:
        args.append(f"{tls_flag}=false")
    return args


def copy_argv(
    *,
    archive: Path,
    dest: str,
    digestfile: Path,
    insecure: bool,
    authfile: Path | None,
    skopeo: str = "skopeo",
    source: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """Push a docker-save archive to ``dest`` (``host/name:tag``); the manifest digest goes to ``digestfile``.

    ``source`` replaces ``docker-archive:<archive>`` (an ``oci:<layout>:<ref>`` index, pushed with
    ``extra`` = ``--all --preserve-digests``).
    """
    return [
        skopeo,
        "copy",
        *extra,
        "--quiet",
        "--retry-times",
        "2",
        *_common(tls_flag="--dest-tls-verify", insecure=insecure, authfile=authfile),
        "--digestfile",
        str(digestfile),
        source or f"docker-archive:{archive}",
        f"docker://{dest}",
    ]


def inspect_argv(*, ref: str, insecure: bool, authfile: Path | None, skopeo: str = "skopeo") -> list[str]:
    """The raw manifest of ``ref`` as the registry stores it (its sha256 is the digest)."""
    return [
        skopeo,
        "inspect",
        "--raw",
        *_common(tls_flag="--tls-verify", insecure=insecure, authfile=authfile),
        f"docker://{ref}",
    ]


def fatal_message(stderr: str) -> str:
    """skopeo's error without the logging frame: the last ``level=fatal msg=...``, else the last line."""
    found: list[str] = _FATAL.findall(stderr)
    if found:
        return found[-1].replace('\\"', '"').removesuffix("\\n").strip()
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def is_missing_manifest(stderr: str) -> bool:
    text = fatal_message(stderr).lower()
    return "manifest unknown" in text or "not found" in text or "name unknown" in text


def explain_failure(stderr: str, *, host: str, ref: str, action: str = "pushing") -> str:
    """One line for a failed skopeo call against registry ``host``."""
    detail = fatal_message(stderr)
    text = detail.lower()
    if "unauthorized" in text or "authentication required" in text or "401" in text or "incorrect username" in text:
        return (
            f"registry {host} refused {action} {ref}: unauthorized. "
            f"Log in with `docker login {host}` or put credentials in ~/.docker/config.json"
        )
    if "denied" in text or "forbidden" in text or "403" in text:
        return f"registry {host} refused {action} {ref}: {detail}. Check that your account may push there"
    if "405" in text or "method not allowed" in text or "read-only" in text or "readonly" in text:
        return (
            f"registry {host} refused {action} {ref}: it takes no pushes (read-only, a mirror or under maintenance). "
            "Name a registry you may push to with --default-repo or `registry:` in innerloop.yaml"
        )
    if "server gave http response to https client" in text:
        return (
            f"registry {host} speaks plain HTTP, not HTTPS: set `registry: {{insecure: true}}` in innerloop.yaml, "
            "or serve it over TLS"
        )
    if "x509" in text or "certificate" in text:
        reason = detail[text.index("x509:") :] if "x509:" in text else detail
        return (
            f"registry {host}'s TLS certificate is not trusted ({reason}): add its CA to this machine's trust store, "
            "or set `registry: {insecure: true}` in innerloop.yaml"
        )
    unreachable = ("connection refused", "no such host", "i/o timeout", "network is unreachable", "no route to host")
    if any(word in text for word in unreachable) or "dial tcp" in text:
        return f"cannot reach registry {host} ({detail}): check the address and that the registry runs"
    return f"{action} {ref} failed: {detail}"


def missing_skopeo(host: str) -> str:
    return f"pushing images to {host} needs skopeo: {INSTALL_HINTS['skopeo']}"
