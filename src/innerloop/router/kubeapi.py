"""The few Kubernetes API calls the router makes itself, with its ServiceAccount.

The router must clean up after a CLI that died: put the Service back and
delete its own Deployment (the rest it created goes with it, through owner
references). That takes three calls, so a client library in the agent image
is not worth its weight: this is ``http.client`` with the pod's mounted
token and CA, run in a thread so the event loop keeps routing.

The token is re-read on every call: kubelet rotates projected tokens.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import ssl
from collections.abc import Mapping
from typing import Any

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class InClusterApi:
    def __init__(self, *, host: str | None = None, port: int | None = None, sa_dir: str = SA_DIR) -> None:
        self.host = host or os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
        self.port = port or int(os.environ.get("KUBERNETES_SERVICE_PORT", "443"))
        self.sa_dir = sa_dir
        self._ssl = ssl.create_default_context(cafile=os.path.join(sa_dir, "ca.crt"))

    def _token(self) -> str:
        with open(os.path.join(self.sa_dir, "token")) as file:
            return file.read().strip()

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:  # noqa: ANN401
        conn = http.client.HTTPSConnection(self.host, self.port, context=self._ssl, timeout=10)
        try:
            headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = content_type
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        if response.status >= 300:
            try:
                message = json.loads(raw).get("message", raw.decode(errors="replace"))
            except ValueError:
                message = raw.decode(errors="replace")
            raise KubeError(response.status, message)
        return json.loads(raw) if raw else None

    async def get(self, path: str) -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.to_thread(self._call, "GET", path)
        return result

    async def json_patch(self, path: str, patch: list[dict[str, Any]], *, field_manager: str) -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.to_thread(
            self._call, "PATCH", f"{path}?fieldManager={field_manager}", patch, "application/json-patch+json"
        )
        return result

    async def delete(self, path: str, *, options: Mapping[str, Any] | None = None) -> None:
        await asyncio.to_thread(self._call, "DELETE", path, dict(options or {}))
