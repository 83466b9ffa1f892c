"""`innerloop up` as a ServiceAccount bound only to the documented Role; and the errors users see."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from .bookshop import copy_bookshop
from .kube import Kube, eventually, free_port

ROLE = Path(__file__).resolve().parents[2] / "docs" / "rbac" / "innerloop-developer.yaml"


def _backend_only_app(tmp_path: Path) -> tuple[Path, int]:
    app, ports = copy_bookshop(tmp_path / "bookshop", only=["backend"])
    return app, ports["backend"]


def _service_account_kubeconfig(kube: Kube, namespace: str, name: str, path: Path) -> Path:
    kube.run("create", "serviceaccount", name, "-n", namespace)
    token = kube.run("create", "token", name, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    ca = path.with_suffix(".ca")
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": cluster["server"], "certificate-authority": str(ca)}}],
                "users": [{"name": name, "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": name, "namespace": namespace}}],
                "current-context": "c",
            }
        )
    )
    return path


def _greeting(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/books", timeout=30) as resp:
            return str(yaml.safe_load(resp.read())["greeting"])
    except OSError:
        return None


def test_up_works_with_only_the_documented_role(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    kube.run("apply", "-n", namespace, "-f", str(ROLE))
    kube.run(
        "create",
        "rolebinding",
        "dev",
        "-n",
        namespace,
        "--role=innerloop-developer",
        f"--serviceaccount={namespace}:dev",
    )
    config = _service_account_kubeconfig(kube, namespace, "dev", tmp_path / "dev.kubeconfig")
    # The ServiceAccount really is limited: it cannot even read its namespace or exec into pods.
    can_i = kube.run(
        "auth",
        "can-i",
        "create",
        "pods/exec",
        f"--as=system:serviceaccount:{namespace}:dev",
        "-n",
        namespace,
        check=False,
    )
    assert can_i.stdout.strip() == "no"
    app, port = _backend_only_app(tmp_path)
    env = dict(os.environ, KUBECONFIG=str(config))
    log = tmp_path / "up.log"
    proc = subprocess.Popen(
        [*innerloop_cli, "up", "--no-color"], cwd=app, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    try:
        eventually(lambda: proc.poll() is None and "in sync" in log.read_text() and _greeting(port), timeout_s=600)
        source = app / "backend" / "app.py"
        source.write_text(source.read_text().replace('"hello from backend"', '"edited by a least-privilege user"'))
        eventually(lambda: _greeting(port) == "edited by a least-privilege user")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert "Traceback" not in log.read_text()
    down = subprocess.run(
        [*innerloop_cli, "down"], cwd=app, env=env, capture_output=True, text=True, check=False, timeout=180
    )
    assert down.returncode == 0, down.stderr
    assert kube.get_json("deployments", "-n", namespace)["items"] == []


def test_a_user_without_the_role_gets_one_clear_message(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    config = _service_account_kubeconfig(kube, namespace, "nobody", tmp_path / "nobody.kubeconfig")
    app, _ = _backend_only_app(tmp_path)
    out = subprocess.run(
        [*innerloop_cli, "up", "--no-color"],
        cwd=app,
        env=dict(os.environ, KUBECONFIG=str(config)),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "docs/RBAC.md" in out.stderr and "forbidden" in out.stderr.lower()
    assert kube.get_json("deployments", "-n", namespace)["items"] == [], "nothing is half-deployed"


def test_an_unreachable_cluster_gets_one_clear_message(innerloop_cli: list[str], tmp_path: Path) -> None:
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": f"https://127.0.0.1:{free_port()}", "insecure-skip-tls-verify": True},
                    }
                ],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    app, _ = _backend_only_app(tmp_path)
    started = time.monotonic()
    out = subprocess.run(
        [*innerloop_cli, "up"],
        cwd=app,
        env=dict(os.environ, KUBECONFIG=str(dead)),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "cannot reach the cluster" in out.stderr
    assert time.monotonic() - started < 60  # it gives up rather than retrying forever (a ceiling, not a speed)


def test_a_config_error_names_file_line_and_column(innerloop_cli: list[str], tmp_path: Path) -> None:
    app, _ = _backend_only_app(tmp_path)
    config = app / "innerloop.yaml"
    before = config.read_text()
    config.write_text(before.replace("remote: /app/", "remote: app/", 1))
    out = subprocess.run([*innerloop_cli, "up"], cwd=app, capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "innerloop.yaml:" in out.stderr and "remote" in out.stderr
    assert config.read_text() == before.replace("remote: /app/", "remote: app/", 1), "no local file is rewritten"
