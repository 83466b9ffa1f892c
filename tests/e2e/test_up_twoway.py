"""Two-way sync: what the container writes into a two-way root comes back to the developer's disk."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from pathlib import Path

import yaml

from .bookshop import copy_bookshop
from .kube import Kube, eventually


def test_container_changes_come_home_and_local_edits_still_go_out(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    app, ports = copy_bookshop(tmp_path / "bookshop", only=["backend"])
    config = yaml.safe_load((app / "innerloop.yaml").read_text())
    config["services"]["backend"]["sync"][0]["mode"] = "two-way"
    (app / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    log = tmp_path / "up.log"
    proc = subprocess.Popen(
        [*innerloop_cli, "up", "-n", namespace, "--no-color"], cwd=app, stdout=log.open("w"), stderr=subprocess.STDOUT
    )

    def greeting() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['backend']}/books", timeout=30) as resp:
                return str(yaml.safe_load(resp.read())["greeting"])
        except OSError:
            return None

    def in_container(code: str) -> None:
        pods = kube.get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/name=backend")["items"]
        pod = next(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp"))
        kube.run("exec", "-n", namespace, pod, "-c", "backend", "--", "python3", "-c", code)

    try:
        eventually(lambda: proc.poll() is None and "in sync" in log.read_text() and greeting(), timeout_s=600)
        made = app / "backend" / "made-in-container.txt"
        in_container("open('/app/made-in-container.txt', 'w').write('generated\\n')")
        eventually(lambda: made.exists() and made.read_text() == "generated\n")
        in_container("open('/app/made-in-container.txt', 'w').write('generated again\\n')")
        eventually(lambda: made.read_text() == "generated again\n")
        in_container("import os; os.remove('/app/made-in-container.txt')")
        eventually(lambda: not made.exists())
        # The other direction still works, and copying a file home restarted nothing needlessly.
        source = app / "backend" / "app.py"
        source.write_text(source.read_text().replace('"hello from backend"', '"two-way edit"'))
        eventually(lambda: greeting() == "two-way edit")
        eventually(lambda: "made-in-container.txt changed in the container: copied here" in log.read_text())
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
