"""The debugger's local port: debug.local bound before anything is deployed, its refusal in one line."""

from __future__ import annotations

import os
import socket

import pytest

from innerloop.debug.services import bind_debug_port, debug_port_in_use


def test_a_taken_debug_local_names_its_holder_and_what_to_set() -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        with pytest.raises(OSError) as caught:
            bind_debug_port(port)
        line = debug_port_in_use(port, caught.value)
    assert line.startswith(f"the debugger's local port {port} on 127.0.0.1 is in use by ")
    assert f"(pid {os.getpid()}" in line
    assert "set debug.local to another port" in line


def test_a_free_debug_local_is_held_on_loopback_until_the_forward_takes_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with bind_debug_port(port) as sock:
        assert sock.getsockname() == ("127.0.0.1", port)
        with pytest.raises(OSError), socket.create_server(("127.0.0.1", port)):
            pass
