"""The intercept router's HTTP/1.1 side: one client connection, each request to the route ``choose`` picks.

A keep-alive connection from a pod of the cluster can carry requests for
several developers (and for nobody, which go to the original pods), so the
decision is per request, not per connection. ``serve_http1`` reads a request
head, asks ``choose`` (pure, the intercept table's job) for a route, and
relays the exchange over an upstream connection it keeps open per route for
the lifetime of the client connection; the response goes back to the client
in order, so pipelined requests stay in order too.

Messages are relayed verbatim, hop-by-hop headers included: the router is
meant to be invisible, so a client's ``Connection: close`` reaches the
upstream and an upstream's reaches the client, and both connections agree on
keep-alive. The one rewrite is ``Connection: close`` on the response when
the router itself is ``draining`` (shutting down or handing over).

Stale upstreams: servers close idle keep-alive connections whenever they
like, and a request written just then gets an EOF or a reset without a
single response byte. When that happens on a *reused* upstream the router
opens a new connection and sends the request once more, but only when it
can: a request without a body, or with a ``Content-Length`` body of at most
``RETRY_BODY_LIMIT`` (64 KiB) that the router reads completely before
forwarding (it holds it for the replay). Larger, chunked and
``Expect: 100-continue`` bodies are streamed instead and a stale upstream
then costs the client a 502. As in browsers and Go's ``http.Transport``,
the retry assumes the server did not act on a request it never answered.

Limits (:class:`innerloop.router.limits.Limits`): a request head must be
complete within ``head_timeout`` of its first byte (the first one within
``head_timeout`` of the connection's start) or the client gets a 408 and
the connection closes; a connection waiting for its next request closes
after ``idle_timeout``; heads over ``max_head_bytes`` or ``max_headers`` are
431s. Both timeouts share one timer per connection, re-armed lazily, and a
head that arrived whole in one read is parsed without arming anything, so a
kept-alive request costs no timer of its own.

Streamed request bodies are sent by a task while the response is read, so an
early answer (a 100 Continue, or a 413 before the body is done) reaches the
client; if the upstream answers before taking the whole body, both
connections close afterwards, since the rest of that body is still on the
wire.

Standard library only: this runs in the router pod.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Literal, TypeAlias

from innerloop.router.http1 import (
    BufferedConn,
    Conn,
    HttpError,
    IncompleteMessage,
    RequestHead,
    ResponseHead,
    copy_body,
    error_response,
    frame_response,
    pipe,
    read_request_head,
    read_response_head,
)
from innerloop.router.limits import Limits

RouteKey: TypeAlias = Hashable
Choose: TypeAlias = Callable[[RequestHead], RouteKey]
Connect: TypeAlias = Callable[[RouteKey], Awaitable[Conn]]
OnExchange: TypeAlias = Callable[[RouteKey, RequestHead, int], None]

Phase: TypeAlias = Literal["idle", "head"]

RETRY_BODY_LIMIT = 64 * 1024
"""Largest ``Content-Length`` request body read before forwarding, so the request can be replayed."""


class _UpstreamSilent(Exception):
    """The upstream failed before sending one byte of a response: stale if it was a reused connection."""


class _UpstreamWriteFailed(Exception):
    """Writing a streamed request body upstream failed; the upstream may still have answered."""


class _UpstreamWriter:
    """The upstream as a body copy's destination, telling its write failures apart from the client's."""

    __slots__ = ("conn",)

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def read(self, n: int) -> bytes:
        return await self.conn.read(n)

    async def write(self, data: bytes) -> None:
        try:
            await self.conn.write(data)
        except OSError as error:
            raise _UpstreamWriteFailed(str(error)) from error

    async def close(self) -> None:
        await self.conn.close()


class _ClientConnection:
    """The state of one client connection: its cached upstreams, its one timer, and the draining flag's watcher.

    The timer cancels the serving task only while it waits for a client
    (``phase`` idle or head) past ``deadline``; never while a request is
    relayed.
    """

    def __init__(
        self,
        client: BufferedConn,
        *,
        choose: Choose,
        connect: Connect,
        draining: asyncio.Event | None,
        on_exchange: OnExchange | None,
        limits: Limits,
        head_deadline: float | None,
    ) -> None:
        self.client = client
        self.choose = choose
        self.connect = connect
        self.draining = draining
        self.on_exchange = on_exchange
        self.limits = limits
        self.head_deadline = head_deadline
        self.upstreams: dict[RouteKey, BufferedConn] = {}
        self.phase: Phase | None = None
        self.deadline = 0.0
        self.interrupted: Literal["drained", "idle", "head"] | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    async def run(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        watcher: asyncio.Task[bool] | None = None
        if self.draining is not None:
            # One watcher per connection (not a race per request): cancels us only while we wait for a new request.

            def drained(_: asyncio.Task[bool]) -> None:
                if self.phase == "idle":
                    self._interrupt("drained")

            watcher = asyncio.create_task(self.draining.wait())
            watcher.add_done_callback(drained)
        try:
            await self._serve()
        except (OSError, HttpError):
            pass  # a peer went away or broke framing mid-response: nothing left to tell anyone
        finally:
            if watcher is not None:
                watcher.cancel()
            if self._timer is not None:
                self._timer.cancel()
            for upstream in self.upstreams.values():
                with contextlib.suppress(OSError):
                    await upstream.close()
            self.upstreams.clear()
            with contextlib.suppress(OSError):
                await self.client.close()

    # -- the timer ------------------------------------------------------------------------------

    def _interrupt(self, why: Literal["drained", "idle", "head"]) -> None:
        task = self._task
        if task is not None and not task.done() and self.interrupted is None:
            self.interrupted = why
            task.cancel()

    def _wait_for_client(self, phase: Phase, deadline: float) -> None:
        """From now on, waiting for the client is limited to ``deadline`` (loop time)."""
        self.phase = phase
        self.deadline = deadline
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        if self.phase is None:
            return
        if asyncio.get_running_loop().time() >= self.deadline:
            self._interrupt(self.phase)
        else:  # the deadline moved on since the timer was set: sleep until the new one
            self._timer = asyncio.get_running_loop().call_at(self.deadline, self._on_timer)
            self._timer_at = self.deadline

    def _interrupted(self) -> Literal["drained", "idle", "head"] | None:
        """After a CancelledError: why our own timer or watcher cancelled us, None if someone else did."""
        task = self._task
        why = self.interrupted
        if why is not None and task is not None and task.uncancel() == 0:
            self.interrupted = None
            return why
        return None

    # -- serving --------------------------------------------------------------------------------

    async def _serve(self) -> None:
        client = self.client
        limits = self.limits
        loop = asyncio.get_running_loop()
        first = True
        head_deadline = self.head_deadline if self.head_deadline is not None else loop.time() + limits.head_timeout
        while True:
            if not client.buffered:
                if self.draining is not None and self.draining.is_set():
                    return
                self._wait_for_client("idle", head_deadline if first else loop.time() + limits.idle_timeout)
                try:
                    more = await client.fill()
                except asyncio.CancelledError:
                    why = self._interrupted()
                    if why is None:
                        raise
                    if why == "head":
                        await self._reply_error(408, "request head not received in time")
                    return
                finally:
                    self.phase = None
                if not more:
                    return
            if not first:
                head_deadline = loop.time() + limits.head_timeout
            first = False
            try:
                if client.has(b"\r\n\r\n") and not client.starts_with(b"\r\n"):
                    request = await read_request_head(client, limits=limits)  # all there: nothing to wait for
                else:
                    self._wait_for_client("head", head_deadline)
                    try:
                        request = await read_request_head(client, limits=limits)
                    except asyncio.CancelledError:
                        if self._interrupted() is None:
                            raise
                        await self._reply_error(408, f"request head not complete within {limits.head_timeout:g}s")
                        return
                    finally:
                        self.phase = None
            except IncompleteMessage:
                return
            except HttpError as error:
                await self._reply_error(error.status, str(error))
                return
            route = self.choose(request)
            if not await self._exchange(route, request):
                return

    async def _reply_error(self, status: int, message: str) -> None:
        with contextlib.suppress(OSError):
            await self.client.write(error_response(status, message))

    async def _open(self, route: RouteKey) -> BufferedConn:
        upstream = BufferedConn(await self.connect(route))
        self.upstreams[route] = upstream
        return upstream

    async def _drop(self, route: RouteKey) -> None:
        upstream = self.upstreams.pop(route, None)
        if upstream is not None:
            with contextlib.suppress(OSError):
                await upstream.close()

    async def _exchange(self, route: RouteKey, request: RequestHead) -> bool:
        """Relay one request and its response; whether the client connection can carry another."""
        replay: bytes | None = None
        if request.body == "none":
            replay = request.raw
        elif request.body == "length" and request.content_length <= RETRY_BODY_LIMIT and not request.expect_continue:
            replay = request.raw + await self.client.read_exactly(request.content_length)

        sent = await self._send(route, request, replay)
        if sent is None:
            return False
        upstream, response, sending = sent
        try:
            return await self._relay_response(route, upstream, request, response, sending)
        finally:
            if sending is not None:
                if not sending.done():
                    sending.cancel()
                    await asyncio.wait((sending,))
                if not sending.cancelled():
                    sending.exception()  # retrieved: its failure was handled (or is moot) by now

    async def _send(
        self, route: RouteKey, request: RequestHead, replay: bytes | None
    ) -> tuple[BufferedConn, ResponseHead, asyncio.Task[None] | None] | None:
        """Send the request upstream and read the final response head; None once the client got an error instead.

        Returns the task still sending a streamed body, if any.
        """
        upstream = self.upstreams.get(route)
        # A reused connection may have gone stale; only a request held whole can be sent again.
        retry = upstream is not None and replay is not None
        while True:
            if upstream is None:
                try:
                    upstream = await self._open(route)
                except Exception as error:
                    await self._reply_error(502, f"innerloop router: cannot connect to {route}: {error!r}")
                    return None
            try:
                if replay is not None:
                    return upstream, await self._send_whole(upstream, request, replay), None
                response, sending = await self._send_streaming(upstream, request)
                return upstream, response, sending
            except _UpstreamSilent as error:
                await self._drop(route)
                if retry:
                    retry = False
                    upstream = None
                    continue
                await self._reply_error(502, f"innerloop router: {route} {error}")
                return None
            except HttpError as error:
                await self._drop(route)
                await self._reply_error(error.status, f"innerloop router: {route}: {error}")
                return None

    async def _send_whole(self, upstream: BufferedConn, request: RequestHead, message: bytes) -> ResponseHead:
        try:
            await upstream.write(message)
        except OSError as error:
            raise _UpstreamSilent(f"failed while sending the request: {error}") from error
        return await self._read_final_response(upstream, request)

    async def _send_streaming(
        self, upstream: BufferedConn, request: RequestHead
    ) -> tuple[ResponseHead, asyncio.Task[None]]:
        sending = asyncio.ensure_future(
            copy_body(
                self.client,
                _UpstreamWriter(upstream),
                body=request.body,
                length=request.content_length,
                prefix=request.raw,
                limits=self.limits,
            )
        )
        receiving = asyncio.ensure_future(self._read_final_response(upstream, request))
        try:
            await asyncio.wait((sending, receiving), return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():
                error = sending.exception()
                if error is not None and not isinstance(error, _UpstreamWriteFailed):
                    # The client's body broke (closed early, bad chunk): the upstream waits for the rest forever.
                    receiving.cancel()
                    raise error
                await receiving
            return receiving.result(), sending
        except BaseException:
            for task in (sending, receiving):
                task.cancel()
            await asyncio.gather(sending, receiving, return_exceptions=True)
            raise

    async def _read_final_response(self, upstream: BufferedConn, request: RequestHead) -> ResponseHead:
        """The final response head, relaying interim 1xx ones (but never to an HTTP/1.0 client)."""
        interim = False
        while True:
            try:
                response = await read_response_head(upstream)
            except IncompleteMessage as error:
                if error.empty and not interim:
                    raise _UpstreamSilent("closed the connection without responding") from error
                raise HttpError(f"upstream response cut short: {error}", status=502) from error
            except OSError as error:
                if not interim:
                    raise _UpstreamSilent(f"failed before responding: {error}") from error
                raise HttpError(f"upstream failed: {error}", status=502) from error
            if response.status >= 200 or (response.status == 101 and request.upgrade):
                return response
            if response.status == 101:
                raise HttpError("upstream switched protocols without an Upgrade request", status=502)
            interim = True
            if request.version == "HTTP/1.1":
                await self.client.write(response.raw)

    async def _relay_response(
        self,
        route: RouteKey,
        upstream: BufferedConn,
        request: RequestHead,
        response: ResponseHead,
        sending: asyncio.Task[None] | None,
    ) -> bool:
        client = self.client
        status = response.status
        if status == 101 or (request.method == "CONNECT" and 200 <= status < 300):
            await client.write(response.raw)
            self._exchanged(route, request, status)
            self.upstreams.pop(route, None)
            if sending is not None:
                await sending
            await pipe(client, upstream)
            return False
        body = frame_response(response, method=request.method)
        keep_client = request.keep_alive and response.keep_alive
        head = response.raw
        if keep_client and self.draining is not None and self.draining.is_set():
            head = response.with_connection_close()
            keep_client = False
        try:
            await copy_body(upstream, client, body=body, length=response.content_length, prefix=head)
        except BaseException:
            await self._drop(route)
            raise
        self._exchanged(route, request, status)
        if not (request.keep_alive and response.keep_alive):
            await self._drop(route)
        # Answered before the whole request body was taken (or its sending failed): the rest of that body is
        # still between client and upstream, so neither connection can carry another exchange.
        if sending is not None and (not sending.done() or sending.cancelled() or sending.exception() is not None):
            await self._drop(route)
            return False
        return keep_client

    def _exchanged(self, route: RouteKey, request: RequestHead, status: int) -> None:
        if self.on_exchange is not None:
            self.on_exchange(route, request, status)


async def serve_http1(
    client: BufferedConn,
    *,
    choose: Choose,
    connect: Connect,
    draining: asyncio.Event | None = None,
    on_exchange: OnExchange | None = None,
    limits: Limits | None = None,
    head_deadline: float | None = None,
) -> None:
    """Serve one client connection until it ends, routing each request; closes the client and its upstreams.

    ``client`` may already hold bytes (the sniffed start). ``choose`` picks a
    route per request; ``connect`` opens an upstream for a route (one is kept
    per route while the client stays). A ``connect`` failure answers 502, a
    malformed request 400 (431 for a huge head), and both close the
    connection. Once ``draining`` is set the current response carries
    ``Connection: close`` and an idle connection closes at once.
    ``on_exchange(route, request, status)`` runs after each relayed response.
    ``limits`` bound heads and waiting (see the module); ``head_deadline``
    (loop time) is when the first request head must be complete, by default
    ``head_timeout`` from now (the router counts from the connection's start).
    """
    connection = _ClientConnection(
        client,
        choose=choose,
        connect=connect,
        draining=draining,
        on_exchange=on_exchange,
        limits=limits or Limits(),
        head_deadline=head_deadline,
    )
    await connection.run()
