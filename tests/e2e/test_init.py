"""`innerloop init` on a folder with a plain Python app, then `innerloop up` on what it wrote: a newcomer's path."""

from __future__ import annotations

import signal
import subprocess
import textwrap
import urllib.request
from pathlib import Path

import yaml

from .kube import Kube, eventually, free_port

APP = textwrap.dedent(
    """\
    import os
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    ANSWER = "first answer"


    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            body = ANSWER.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


    if __name__ == "__main__":
        ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
    """
)


def test_init_then_up_serves_the_app_and_syncs_an_edit(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    folder = tmp_path / "Hello_App"
    folder.mkdir()
    (folder / "app.py").write_text(APP)

    init = subprocess.run([*innerloop_cli, "init"], cwd=folder, capture_output=True, text=True, timeout=60, check=False)
    assert init.returncode == 0, init.stderr
    assert "innerloop up" in init.stdout
    assert (folder / "Dockerfile").is_file() and (folder / "k8s" / "hello-app.yaml").is_file()

    config = yaml.safe_load((folder / "innerloop.yaml").read_text())
    forward = config["services"]["hello-app"]["ports"][0]
    assert forward["remote"] == 8080
    port = free_port()
    forward["local"] = port
    (folder / "innerloop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    log = tmp_path / "up.log"

    def answer() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            return str(resp.read().decode())

    proc = subprocess.Popen(
        [*innerloop_cli, "up", "-n", namespace, "--no-color"],
        cwd=folder,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        eventually(lambda: proc.poll() is None and "in sync" in log.read_text() and answer(), timeout_s=180)
        assert answer() == "first answer"
        [pod] = kube.get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/name=hello-app")["items"]
        assert pod["status"]["containerStatuses"][0]["ready"] is True  # the generated tcpSocket probe passes

        source = folder / "app.py"
        source.write_text(source.read_text().replace('"first answer"', '"an edited answer"'))
        eventually(lambda: answer() == "an edited answer", timeout_s=30, interval_s=0.1)
        [same] = kube.get_json("pods", "-n", namespace, "-l", "app.kubernetes.io/name=hello-app")["items"]
        assert same["metadata"]["name"] == pod["metadata"]["name"]  # synced and restarted, not redeployed
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, log.read_text()

    down = subprocess.run(
        [*innerloop_cli, "down", "-n", namespace], cwd=folder, capture_output=True, text=True, timeout=60, check=False
    )
    assert down.returncode == 0, down.stderr
    assert kube.get_json("deployments", "-n", namespace)["items"] == []
    assert kube.get_json("services", "-n", namespace)["items"] == []
