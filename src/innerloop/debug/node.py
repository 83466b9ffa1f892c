"""Node under its inspector, ``node --inspect=127.0.0.1:PORT`` (pure).

The flag goes on ``node``'s own argv: through ``NODE_OPTIONS`` a runner
(npm, yarn) would open the inspector in itself and its ``node`` child would
find the port taken, so a command that is not ``node ...`` is refused with
what to set instead.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from innerloop.debug.languages import LOOPBACK, DebugError, DebugLaunch, register, workspace_path

_NODE = {"node", "nodejs"}


def node_launch(original: list[str], *, port: int, wait: bool, mappings: list[tuple[str, str]]) -> DebugLaunch:
    if PurePosixPath(original[0]).name not in _NODE:
        raise DebugError(
            f"{' '.join(original)!r} does not start node itself (the inspector would open in "
            f"{PurePosixPath(original[0]).name}): set the container's command to `node SCRIPT` for debugging"
        )
    flag = f"--inspect{'-brk' if wait else ''}={LOOPBACK}:{port}"
    rest = [a for a in original[1:] if not a.startswith(("--inspect", "--debug"))]
    config: dict[str, object] = {
        "type": "node",
        "request": "attach",
        "address": LOOPBACK,
        "port": port,
        "restart": True,  # a sync restarts the process: VS Code attaches again by itself
        "skipFiles": ["<node_internals>/**"],
    }
    if mappings:
        # One pair is all Node's attach takes: the first sync rule's.
        config["localRoot"] = workspace_path(mappings[0][0])
        config["remoteRoot"] = mappings[0][1]
    return DebugLaunch(
        command=[original[0], flag, *rest],
        env={},
        port=port,
        tools=(),
        launch_json=config,
        note=f"WebStorm: Attach to Node.js/Chrome at {LOOPBACK}:{port}; Chrome: chrome://inspect, {LOOPBACK}:{port}",
        language="node",
    )


register("node", node_launch)
