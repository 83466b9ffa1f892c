"""Kubernetes objects as plain JSON, exactly as the API server sends them.

lightkube's typed models are the right tool for most calls, but an intercept
must put a Service back *byte for byte*, ``managedFields`` included, and JSON
patches with ``test`` operations are the way to change one field safely.
A model round trip may drop or reorder what it does not know, so these few
calls use raw JSON over the same credentials.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import aiohttp

from innerloop.k8s.connection import ClusterConnection

JsonPatch = list[dict[str, Any]]


class RestError(RuntimeError):
    """The API server refused a call; ``status`` and ``reason`` are its own."""

    def __init__(self, *, method: str, path: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class RawApi:
    def __init__(self, conn: ClusterConnection) -> None:
        self._conn = conn
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RawApi:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,  # noqa: ANN401 - any JSON
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if self._session is None:
            self._session = self._conn.websocket_session()
        url = self._conn.server.rstrip("/") + path + (f"?{urlencode(dict(query))}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        async with self._session.request(method, url, data=data, headers=headers) as response:
            raw = await response.read()
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"message": raw.decode(errors="replace")}
        if response.status >= 300:
            raise RestError(
                method=method,
                path=path,
                status=response.status,
                reason=str(decoded.get("reason", "")),
                message=str(decoded.get("message", "")),
            )
        result: dict[str, Any] = decoded
        return result

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.call("GET", path)
        except RestError as err:
            if err.status == 404:
                return None
            raise

    async def create(self, path: str, obj: Mapping[str, Any], *, field_manager: str) -> dict[str, Any]:
        return await self.call("POST", path, body=dict(obj), query={"fieldManager": field_manager})

    async def json_patch(self, path: str, patch: JsonPatch, *, field_manager: str) -> dict[str, Any]:
        return await self.call(
            "PATCH", path, body=patch, content_type="application/json-patch+json", query={"fieldManager": field_manager}
        )

    async def merge_patch(self, path: str, patch: Mapping[str, Any], *, field_manager: str) -> dict[str, Any]:
        return await self.call(
            "PATCH",
            path,
            body=dict(patch),
            content_type="application/merge-patch+json",
            query={"fieldManager": field_manager},
        )

    async def delete(self, path: str, *, propagation: str = "Background") -> bool:
        """Delete; False when it was already gone."""
        try:
            await self.call("DELETE", path, body={"propagationPolicy": propagation})
        except RestError as err:
            if err.status == 404:
                return False
            raise
        return True


def collection_path(kind: str, namespace: str) -> str:
    """The REST path of the namespaced collection of ``kind`` (the kinds intercepts use)."""
    paths = {
        "Service": f"/api/v1/namespaces/{namespace}/services",
        "ConfigMap": f"/api/v1/namespaces/{namespace}/configmaps",
        "ServiceAccount": f"/api/v1/namespaces/{namespace}/serviceaccounts",
        "Pod": f"/api/v1/namespaces/{namespace}/pods",
        "Role": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
        "RoleBinding": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
        "Deployment": f"/apis/apps/v1/namespaces/{namespace}/deployments",
    }
    try:
        return paths[kind]
    except KeyError:
        raise ValueError(f"no REST path known for kind {kind}") from None


def object_path(kind: str, namespace: str, name: str) -> str:
    return f"{collection_path(kind, namespace)}/{name}"
