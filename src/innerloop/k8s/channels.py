"""The channel framing Kubernetes uses on exec and port-forward websockets (pure).

Every websocket message starts with one byte naming its channel. Exec uses
0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 resize. Only the
``v5.channel.k8s.io`` subprotocol lets a client close stdin: the message
``0xFF <channel>``. Port-forward (``v4.channel.k8s.io``) gives each requested
port two channels, data ``2i`` and error ``2i+1``, and the server's first
message on each starts with the port as two little-endian bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
CLOSE = 0xFF
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
PORT_FORWARD_PROTOCOLS = ("v4.channel.k8s.io",)


class ChannelError(ValueError):
    """A message that does not follow the channel protocol."""


def frame(channel: int, data: bytes) -> bytes:
    return bytes((channel,)) + data


def close_frame(channel: int) -> bytes:
    return bytes((CLOSE, channel))


def split(message: bytes) -> tuple[int, bytes]:
    if not message:
        raise ChannelError("empty websocket message: every message starts with a channel byte")
    return message[0], message[1:]


@dataclass(frozen=True, kw_only=True)
class ExecStatus:
    """The final status the API server sends on the error channel."""

    exit_code: int
    message: str = ""


def parse_status(payload: bytes) -> ExecStatus:
    """Exit code from a v1.Status on channel 3 (Success, or NonZeroExitCode with an ExitCode cause)."""
    try:
        status = json.loads(payload)
    except json.JSONDecodeError:
        # v1 protocols send plain text errors.
        return ExecStatus(exit_code=-1, message=payload.decode(errors="replace"))
    if status.get("status") == "Success":
        return ExecStatus(exit_code=0)
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return ExecStatus(exit_code=int(cause.get("message", -1)), message=status.get("message", ""))
    return ExecStatus(exit_code=-1, message=status.get("message", "exec failed"))


def port_prefix(data: bytes) -> tuple[int, bytes]:
    """Strip the 2-byte little-endian port the server puts first on each port-forward channel."""
    if len(data) < 2:
        raise ChannelError("port-forward channel opened without its 2-byte port prefix")
    return int.from_bytes(data[:2], "little"), data[2:]
