"""The pods matching a label selector, as a stream of complete snapshots.

Port-forwards and log followers both need "which pods match, and in what
state", kept current without polling. A raw watch gives edge-triggered events
and loses them across a reconnect (a 410 Gone restarts from scratch without
DELETED events for what vanished in between). Here every change yields the
whole current set instead (level-triggered, like Tilt's store), rebuilt from a
fresh list after any watch error, so a consumer can never hold a stale pod.

The cost is one dict copy per event, which is nothing next to a network
round trip for the handful of pods a developer's service runs.

What is retried: anything that can heal by itself (a 5xx, a dropped
connection, 410 Gone, 429). What is not: 401 and 403. Retrying a refusal
never heals it and used to fill the log forever; the ``ApiError`` is raised
once, and its message (``cannot watch resource "pods" ... in the namespace
"dev"``) names what is missing, which the CLI turns into one line pointing
at the documented Role.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Pod

REFUSALS = frozenset({401, 403})  # the credentials or the Role: retrying cannot help

PodSnapshot = Mapping[str, Pod]
"""Pods by name, as the API server last reported them."""


async def watch_pods(
    client: AsyncClient,
    *,
    namespace: str,
    labels: Mapping[str, str],
    on_error: Callable[[str], None] | None = None,
    retry_max_s: float = 2.0,
) -> AsyncIterator[PodSnapshot]:
    """Yield the matching pods once listed, then after every change, until cancelled.

    Errors (API server restarting, network drop, expired resource version)
    are reported through ``on_error`` and retried with a short backoff
    (capped at ``retry_max_s``) from a fresh list. A refusal (401, 403) ends
    the stream: its ``ApiError`` is raised.
    """
    pods: dict[str, Pod] = {}
    delay = 0.1
    while True:
        try:
            listing = client.list(Pod, namespace=namespace, labels=dict(labels))
            pods = {pod.metadata.name: pod async for pod in listing if pod.metadata and pod.metadata.name}
            version = listing.resourceVersion
            yield dict(pods)
            delay = 0.1
            async for kind, pod in client.watch(
                Pod, namespace=namespace, labels=dict(labels), resource_version=version
            ):
                name = pod.metadata.name if pod.metadata else None
                if not name:
                    continue
                if kind == "DELETED":
                    pods.pop(name, None)
                else:
                    pods[name] = pod
                yield dict(pods)
        except ApiError as err:
            if err.status.code in REFUSALS:
                raise
            if on_error is not None:
                on_error(f"watching pods in {namespace}: {err}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry_max_s)
        except Exception as err:
            # Whatever broke (HTTP status, transport, expired resource version,
            # a half-read event), the remedy is the same: list again. Cancellation
            # is a BaseException and still ends the stream.
            if on_error is not None:
                on_error(f"watching pods in {namespace}: {err}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry_max_s)
