"""The preview URL: the whole app as the cluster runs it, with your intercepted service in it.

A personal intercept only sees requests that carry the developer's header,
and a browser sends no such header. The preview URL is a small local HTTP
proxy that adds it to every request and forwards to the app's entry Service
(the front end, say) through a self-healing port-forward. Services pass the
header on (the example app does; W3C ``baggage`` is the usual carrier), so
the request reaches the intercepted service and, from there, the local
process. Bound to 127.0.0.1 unless the developer shares it on purpose.

Only rules with a literal value can be turned into a header: exact values,
and a prefix (sent as is). A regex has no single value to send.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from innerloop.forward.forward import PortForward
from innerloop.k8s.connection import ClusterConnection
from innerloop.router.match import HeaderRule

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


def preview_headers(rules: Sequence[HeaderRule]) -> dict[str, str] | None:
    """The headers that make a request match all ``rules``, or None when a rule has no literal value."""
    headers: dict[str, str] = {}
    baggage: list[str] = []
    for rule in rules:
        if rule.op == "regex":
            return None
        if rule.baggage_member is not None:
            baggage.append(f"{urllib.parse.quote(rule.baggage_member)}={urllib.parse.quote(rule.value)}")
        else:
            headers[rule.header] = rule.value
    if baggage:
        headers["baggage"] = ",".join(baggage)
    return headers


class Preview:
    """``async with Preview(...) as preview: preview.url`` serves until the block ends."""

    def __init__(
        self,
        conn: ClusterConnection,
        *,
        namespace: str,
        service: str,
        port: int,
        headers: dict[str, str],
        local_port: int = 0,
        address: str = "127.0.0.1",
    ) -> None:
        self._forward = PortForward(conn, namespace=namespace, service=service, remote_port=port)
        self._headers = headers
        self._local_port = local_port
        self._address = address
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._forward_task: asyncio.Task[None] | None = None
        self.url = ""

    async def __aenter__(self) -> Preview:
        await self._forward.start()
        self._forward_task = asyncio.create_task(self._forward.run(), name="preview-forward")
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._address, self._local_port).start()
        port = self._runner.addresses[0][1]  # the bound port, when local_port was 0
        self.url = f"http://{self._address}:{port}/"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        if self._forward_task is not None:
            self._forward_task.cancel()
            await asyncio.gather(self._forward_task, return_exceptions=True)

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        for name, value in self._headers.items():
            if name.lower() == "baggage" and "baggage" in {k.lower() for k in headers}:
                key = next(k for k in headers if k.lower() == "baggage")
                headers[key] = f"{headers[key]},{value}"
            else:
                headers[name] = value
        url = f"http://127.0.0.1:{self._forward.local_port}{request.rel_url}"
        body = request.content if request.can_read_body else None
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        response.headers.add(name, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError as err:
            return web.Response(status=502, text=f"innerloop preview: the entry service did not answer: {err}\n")
