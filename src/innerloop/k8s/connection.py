"""How to reach one cluster: kubeconfig -> lightkube client and websocket settings.

lightkube (typed, async, small) serves the REST side: apply, patch, watch,
logs. It has no exec or port-forward streams, so those are written on aiohttp
websockets (the fastest websocket client measured here), and this module
gives both the same credentials: the SSL context comes from lightkube's own
kubeconfig handling, so client certificates, CA data and files resolve
identically.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from lightkube import AsyncClient, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.kubeconfig import SingleConfig


class ClusterUnreachable(RuntimeError):
    """The cluster cannot be reached or the kubeconfig is unusable; the message says what to do."""


def default_kubeconfig() -> Path:
    env = os.environ.get("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0])
    return Path.home() / ".kube" / "config"


@dataclass(frozen=True, kw_only=True)
class ClusterConnection:
    config: SingleConfig
    kubeconfig: Path

    @classmethod
    def from_kubeconfig(cls, path: Path | None = None, *, context: str | None = None) -> ClusterConnection:
        path = path or default_kubeconfig()
        if not path.exists():
            raise ClusterUnreachable(
                f"no kubeconfig at {path}: set KUBECONFIG, or start the bundled cluster with `innerloop cluster up`"
            )
        try:
            config = KubeConfig.from_file(path).get(context_name=context)
        except Exception as err:
            raise ClusterUnreachable(f"cannot use kubeconfig {path}: {err}") from err
        if config is None:
            raise ClusterUnreachable(f"kubeconfig {path} has no current context; pass a context name")
        return cls(config=config, kubeconfig=path)

    @property
    def server(self) -> str:
        return str(self.config.cluster.server).rstrip("/")

    @property
    def namespace(self) -> str:
        return self.config.namespace or "default"

    def client(self) -> AsyncClient:
        return AsyncClient(config=self.config, namespace=self.namespace)

    def ssl_context(self) -> ssl.SSLContext:
        assert self.config.user is not None
        return verify_cluster(self.config.cluster, self.config.user, self.config.abs_file)

    def auth_headers(self) -> dict[str, str]:
        user = self.config.user
        if user is None:
            return {}
        token = user.token
        if user.token_file:
            token = Path(str(self.config.abs_file(user.token_file))).read_text().strip()
        if token is None and user.exec:
            argv = [user.exec.command, *(user.exec.args or [])]
            env = dict(os.environ, **{v.name: v.value for v in user.exec.env or []})
            out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            if out.returncode != 0:
                raise ClusterUnreachable(f"kubeconfig exec credential plugin {argv[0]} failed: {out.stderr.strip()}")
            token = json.loads(out.stdout)["status"]["token"]
        return {"Authorization": f"Bearer {token}"} if token else {}

    def websocket_session(self) -> aiohttp.ClientSession:
        """A session for exec/port-forward websockets; the caller owns and closes it."""
        connector = aiohttp.TCPConnector(ssl=self.ssl_context())
        return aiohttp.ClientSession(connector=connector, headers=self.auth_headers())
