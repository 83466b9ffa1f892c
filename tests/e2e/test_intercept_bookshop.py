"""Hybrid development on the example app: two developers run their own backend locally at once.

Each intercepts the cluster's `backend` with their own header value and runs
a changed copy of backend/app.py as a local process (`intercept -- CMD`).
Requests enter through the front end's Service, travel frontend -> api ->
backend in the cluster, and the backend hop comes to the developer whose
header the request carries. The local backend also calls the cluster's `api`
Service by its DNS name, which only works through innerloop's per-process
cluster network. A preview URL adds the header for a browser.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from pathlib import Path

from innerloop.cluster.node import BundledCluster
from innerloop.demo import build_example_images, deploy_example, example_dir

from .bookshop import copy_bookshop
from .intercepts import InterceptProcess, leftovers, service_snapshot
from .kube import Kube, eventually

# The local backend: the example's Flask app, greeting changed, and calling a cluster Service by name.
LOCAL_BACKEND = """
import json, os, sys, urllib.request
sys.path.insert(0, {app!r})
import app
app.GREETING = {greeting!r}
books = app.app.view_functions["books"]
def books_from_laptop():
    body = books().get_json()
    with urllib.request.urlopen("http://api:8080/healthz", timeout=30) as r:
        return dict(body, api_from_laptop=json.load(r), secret=os.environ.get("BACKEND_SECRET_FILE_SEEN"))
app.app.view_functions["books"] = books_from_laptop
port = int(os.environ["PORT"])
print(f"local backend on :{{port}}", flush=True)
app.app.run(host="127.0.0.1", port=port, threaded=True)
"""
# Flask on this machine: the interpreter running the tests has it (a developer's virtualenv would).
PYTHON = sys.executable


def _chain(url: str, user: str | None) -> dict[str, object]:
    headers = {"x-innerloop-user": user} if user else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
        chain = json.loads(resp.read())
    backend: dict[str, object] = chain["via"][0]["via"][0]
    return backend


def test_two_developers_run_their_backend_locally_behind_the_real_frontend(
    bundled_cluster: BundledCluster, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    app = example_dir()
    deploy_example(bundled_cluster, app=app, namespace=namespace, tags=build_example_images(bundled_cluster, app))
    before = service_snapshot(kube, namespace, "backend")
    ip = kube.get_json("svc", "frontend", "-n", namespace)["spec"]["clusterIP"]
    url = f"http://{ip}:8080/api.json"
    eventually(lambda: _chain(url, None)["greeting"] == "hello from backend")
    cli = [str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "innerloop")]

    # alice says it all in flags; bob types `innerloop intercept backend` in his copy of the project,
    # whose innerloop.yaml says the rest (the default header: his $USER and a random part that a teammate
    # cannot guess, the same on every run; backend/app.py; the preview URL).
    script = tmp_path / "alice_backend.py"
    script.write_text(LOCAL_BACKEND.format(app=str(app / "backend"), greeting="hello from alice's laptop"))
    project, _ = copy_bookshop(tmp_path / "bob-project")
    bob_app = project / "backend" / "app.py"
    bob_app.write_text(
        bob_app.read_text().replace('GREETING = "hello from backend"', 'GREETING = "hello from bob\'s laptop"')
    )
    devs = {
        "alice": InterceptProcess.start(
            cli, "backend", "-n", namespace, "--header", "x-innerloop-user=alice",
            "--preview", "frontend:8080", "--share", "--", PYTHON, str(script), state=tmp_path / "alice",
        ),
        "bob": InterceptProcess.start(
            cli, "backend", "-n", namespace, state=tmp_path / "bob", cwd=project,
            env={"USER": "bob", "LOGNAME": "bob", "PATH": f"{Path(PYTHON).parent}:{os.environ['PATH']}"},
        ),
    }  # fmt: skip
    try:
        for dev in devs.values():
            dev.wait_for("intercepting svc/backend")
            dev.wait_for("backend listening on" if dev is devs["bob"] else "local backend on")
        found = re.search(r"requests with x-innerloop-user=(bob-[0-9a-f]{16})\b", devs["bob"].output)
        assert found is not None, devs["bob"].output
        values = {"alice": "alice", "bob": found.group(1)}
        # kube-proxy's next sync moves new connections to the router: until then they reach the pods.
        for who in ("alice", "bob"):
            greeting = f"hello from {who}'s laptop"
            eventually(lambda who=who, greeting=greeting: _chain(url, values[who])["greeting"] == greeting)
            backend = _chain(url, values[who])
            assert backend["greeting"] == greeting, backend
        alice_backend = _chain(url, "alice")
        assert alice_backend["api_from_laptop"] == {"ok": True}, alice_backend  # a cluster Service by name
        assert _chain(url, None)["greeting"] == "hello from backend"
        assert _chain(url, "carol")["greeting"] == "hello from backend"
        # Bob's user name alone, what anyone could have guessed and claimed first, is not his header.
        assert _chain(url, "bob")["greeting"] == "hello from backend"

        # The preview URL adds alice's header: a plain browser request reaches her backend. She shares
        # it (--share): a teammate reaches it at this machine's network address, not only on loopback.
        devs["alice"].wait_for("preview: http://")
        preview = re.search(r"preview: http://[^:\s]+:(\d+)/", devs["alice"].output)
        assert preview is not None
        node = kube.get_json("nodes")["items"][0]["status"]["addresses"]
        address = next(a["address"] for a in node if a["type"] == "InternalIP")
        assert not address.startswith("127.")
        with urllib.request.urlopen(f"http://{address}:{preview.group(1)}/api.json", timeout=30) as resp:
            chain = json.loads(resp.read())
        assert chain["via"][0]["via"][0]["greeting"] == "hello from alice's laptop"
        devs["bob"].wait_for("preview: http://")  # from innerloop.yaml
        assert f"x-innerloop-user: {values['bob']}" in devs["bob"].output  # the preview line says what it adds

        assert devs["alice"].stop() == 0, devs["alice"].output
        assert _chain(url, "alice")["greeting"] == "hello from backend"
        assert _chain(url, values["bob"])["greeting"] == "hello from bob's laptop"
        assert devs["bob"].stop() == 0, devs["bob"].output
        assert "selects its own pods again" in devs["bob"].output
    finally:
        for who, dev in devs.items():
            print(f"--- {who}:\n{dev.output}")  # shown when the test fails
            if dev.proc.poll() is None:
                dev.proc.kill()
    assert eventually(lambda: not leftovers(kube, namespace), timeout_s=180)
    assert service_snapshot(kube, namespace, "backend") == before
    assert _chain(url, "bob")["greeting"] == "hello from backend"
