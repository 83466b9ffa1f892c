"""The JVM under JDWP, enabled through ``JAVA_TOOL_OPTIONS`` (pure).

Every JVM reads the variable, whatever starts it (``java -jar``, a shell
script, Gradle), so the command stays the image's. The agent listens on the
pod's loopback (``address=127.0.0.1:PORT``, JDK 8 and newer), reached by the
CLI's forward.
"""

from __future__ import annotations

from innerloop.debug.languages import LOOPBACK, DebugLaunch, register


def jdwp_option(port: int, *, wait: bool) -> str:
    return f"-agentlib:jdwp=transport=dt_socket,server=y,suspend={'y' if wait else 'n'},address={LOOPBACK}:{port}"


def java_launch(original: list[str], *, port: int, wait: bool, mappings: list[tuple[str, str]]) -> DebugLaunch:
    config: dict[str, object] = {"type": "java", "request": "attach", "hostName": LOOPBACK, "port": port}
    return DebugLaunch(
        command=list(original),
        env={"JAVA_TOOL_OPTIONS": jdwp_option(port, wait=wait)},
        port=port,
        tools=(),
        launch_json=config,
        note=f"IntelliJ IDEA: Run > Edit Configurations > Remote JVM Debug, host {LOOPBACK}, port {port}",
        language="java",
        replaces_command=False,
    )


register("java", java_launch)
