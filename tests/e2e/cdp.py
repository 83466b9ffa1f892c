"""A small Chrome DevTools Protocol client for tests: what an editor does with ``node --inspect``.

Node's inspector speaks CDP over a WebSocket (VS Code's js-debug adapter
translates it to DAP for the editor): ``GET /json/list`` names the target,
and the socket carries JSON commands with ids, answered by id, and events.
Enough to prove a breakpoint end to end: Debugger.enable (every loaded
script is announced by ``Debugger.scriptParsed`` with its URL),
Debugger.setBreakpointByUrl, the ``Debugger.paused`` event,
Debugger.evaluateOnCallFrame, Runtime.getProperties, Debugger.resume.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

Message = dict[str, Any]


class CdpError(AssertionError):
    """The inspector refused a command, or an event did not come in time."""


class Inspector:
    """One CDP session over an open WebSocket; a reader task files answers by id and keeps every event."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.answers: dict[int, asyncio.Future[Message]] = {}
        self.events: list[Message] = []
        self.changed = asyncio.Condition()

    async def read(self) -> None:
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                break
            message: Message = frame.json()
            if "id" in message:
                future = self.answers.pop(int(message["id"]), None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            async with self.changed:
                self.events.append(message)
                self.changed.notify_all()

    async def call(self, method: str, params: Mapping[str, Any] | None = None, *, timeout_s: float = 30) -> Message:
        self.next_id += 1
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.answers[self.next_id] = future
        await self.ws.send_json({"id": self.next_id, "method": method, "params": dict(params or {})})
        try:
            answer = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise CdpError(f"no answer to {method} within {timeout_s:g}s") from None
        if "error" in answer:
            raise CdpError(f"{method} failed: {answer['error']}")
        result: Message = answer.get("result") or {}
        return result

    async def event(
        self, method: str, match: Callable[[Message], bool] = lambda _: True, *, timeout_s: float = 30
    ) -> Message:
        """The params of the first ``method`` event (already received or coming) that ``match`` accepts."""

        def found() -> Message | None:
            for event in self.events:
                if event.get("method") == method and match(event.get("params") or {}):
                    self.events.remove(event)
                    params: Message = event.get("params") or {}
                    return params
            return None

        deadline = asyncio.get_running_loop().time() + timeout_s
        async with self.changed:
            while (params := found()) is None:
                left = deadline - asyncio.get_running_loop().time()
                try:
                    await asyncio.wait_for(self.changed.wait(), max(left, 0))
                except TimeoutError:
                    seen = sorted({str(e.get("method")) for e in self.events})
                    raise CdpError(f"no {method} event within {timeout_s:g}s (seen: {seen})") from None
            return params

    async def local_names(self, frame: Message) -> set[str]:
        """The names in a paused call frame's local scope."""
        scope = next(s for s in frame["scopeChain"] if s["type"] == "local")
        props = await self.call(
            "Runtime.getProperties", {"objectId": scope["object"]["objectId"], "ownProperties": True}
        )
        return {p["name"] for p in props["result"]}


@contextlib.asynccontextmanager
async def inspect(http: aiohttp.ClientSession, host: str, port: int) -> AsyncIterator[Inspector]:
    """Connect to the first target of the inspector at ``host:port`` (as chrome://inspect does)."""
    async with http.get(f"http://{host}:{port}/json/list") as resp:
        targets = await resp.json(content_type=None)
    # The advertised URL names the container's port; the target's id is what matters here.
    async with http.ws_connect(f"ws://{host}:{port}/{targets[0]['id']}", max_msg_size=0) as ws:
        inspector = Inspector(ws)
        reader = asyncio.create_task(inspector.read())
        try:
            yield inspector
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
