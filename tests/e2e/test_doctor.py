"""`innerloop doctor` against the bundled cluster: as itself, as a user who may not read nodes, as "kind"."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import yaml

from .kube import Kube, free_port


def _env(kubeconfig: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "INNERLOOP_DEFAULT_REPO"}
    env["KUBECONFIG"] = str(kubeconfig)
    env.update(more)
    return env


def _doctor(cli: list[str], cwd: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    out = subprocess.run(
        [*cli, "doctor", *args], check=False, capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )
    return out.returncode, out.stdout, out.stderr


def _lines(stdout: str) -> dict[str, str]:
    """``label   text`` lines by label (the first of each)."""
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        label, _, text = line.partition(" ")
        found.setdefault(label, text.strip())
    return found


def _path_without(*tools: str) -> str:
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep) if not any(Path(d, t).exists() for t in tools)]
    return os.pathsep.join(keep)


def _node_ip(kube: Kube) -> str:
    jsonpath = "jsonpath={.items[0].status.addresses[?(@.type=='InternalIP')].address}"
    return kube.run("get", "nodes", "-o", jsonpath).stdout.strip()


def _renamed_kubeconfig(kube: Kube, path: Path, *, context: str, server: str) -> Path:
    doc = yaml.safe_load(kube.kubeconfig.read_text())
    doc["contexts"][0]["name"] = context
    doc["contexts"][0]["context"]["cluster"] = context
    doc["clusters"][0]["name"] = context
    doc["clusters"][0]["cluster"]["server"] = server
    doc["current-context"] = context
    path.write_text(yaml.safe_dump(doc))
    return path


def test_doctor_on_the_bundled_cluster_says_containerd_import(
    innerloop_cli: list[str], kube: Kube, tmp_path: Path
) -> None:
    code, stdout, stderr = _doctor(innerloop_cli, tmp_path, _env(kube.kubeconfig))
    assert code == 0, stdout + stderr
    lines = _lines(stdout)
    assert lines["recognised"].startswith("bundled: server https://127.0.0.1:6443")
    assert lines["delivery"].startswith("bundled: containerd import")
    assert lines["nodes"].startswith("1: ")
    assert "builders" in lines
    assert stderr == ""


def _service_account_kubeconfig(kube: Kube, namespace: str, path: Path, *, context: str, server: str) -> Path:
    """A kubeconfig for a ServiceAccount with no Role at all: it may not read nodes or kube-public."""
    kube.run("create", "serviceaccount", "nobody", "-n", namespace)
    token = kube.run("create", "token", "nobody", "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    ca = path.with_suffix(".ca")
    ca.write_bytes(base64.b64decode(admin["clusters"][0]["cluster"]["certificate-authority-data"]))
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": context, "cluster": {"server": server, "certificate-authority": str(ca)}}],
                "users": [{"name": "nobody", "user": {"token": token}}],
                "contexts": [
                    {"name": context, "context": {"cluster": context, "user": "nobody", "namespace": namespace}}
                ],
                "current-context": context,
            }
        )
    )
    who = f"--as=system:serviceaccount:{namespace}:nobody"
    assert kube.run("auth", "can-i", "list", "nodes", who, check=False).stdout.strip() == "no"
    return path


def test_doctor_with_a_context_named_kind_and_no_kind_installed_says_install_kind(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    # The node's address, not 127.0.0.1:6443: nothing says "bundled", the context says kind. A user who
    # may not read kube-public cannot see the bundled registry's KEP-1755 ConfigMap either.
    server = f"https://{_node_ip(kube)}:6443"
    kubeconfig = _service_account_kubeconfig(
        kube, namespace, tmp_path / "kind-dev.yaml", context="kind-dev", server=server
    )
    env = _env(kubeconfig, PATH=_path_without("kind"))
    code, stdout, stderr = _doctor(innerloop_cli, tmp_path, env)
    assert code == 1, stdout + stderr
    lines = _lines(stdout)
    assert lines["context"].startswith("kind-dev")
    assert lines["server"] == server
    assert lines["recognised"] == "kind: context kind-dev"
    assert lines["nodes"] == "unknown (not allowed to read nodes)"
    assert lines["registry"].startswith("unknown (not allowed to read ConfigMap kube-public/local-registry-hosting)")
    assert lines["delivery"] == "none"
    assert lines["missing"].startswith("install kind (https://kind.sigs.k8s.io")
    error = stderr.strip()
    assert error.count("\n") == 0, stderr
    assert error.startswith(f"error: cluster kind-dev ({server}) is kind (context kind-dev), but kind is not on PATH")
    assert "--default-repo" in error
    assert "Traceback" not in stderr


def test_doctor_as_admin_on_kind_without_kind_or_skopeo_lists_both(
    innerloop_cli: list[str], kube: Kube, tmp_path: Path
) -> None:
    server = f"https://{_node_ip(kube)}:6443"
    kubeconfig = _renamed_kubeconfig(kube, tmp_path / "kind-dev.yaml", context="kind-dev", server=server)
    code, stdout, stderr = _doctor(innerloop_cli, tmp_path, _env(kubeconfig, PATH=_path_without("kind", "skopeo")))
    assert code == 1, stdout + stderr
    missing = [line for line in stdout.splitlines() if line.startswith("missing")]
    assert any("install kind (" in line for line in missing), stdout
    if "(KEP-1755)" in _lines(stdout)["registry"]:  # the bundled registry publishes one when it runs
        assert any("install skopeo" in line for line in missing), stdout
        assert "to push to its local registry" in stderr
    assert stderr.strip().count("\n") == 0


def test_doctor_with_a_default_repo_says_registry(innerloop_cli: list[str], kube: Kube, tmp_path: Path) -> None:
    code, stdout, stderr = _doctor(innerloop_cli, tmp_path, _env(kube.kubeconfig), "--default-repo", "127.0.0.1:5999/x")
    assert code == 0, stdout + stderr
    lines = _lines(stdout)
    assert lines["delivery"] == "registry: push to 127.0.0.1:5999/x (plain HTTP allowed), deploy by digest"
    assert lines["why"] == "--default-repo names 127.0.0.1:5999/x"
    assert lines["default"] == "127.0.0.1:5999/x (from --default-repo)"
    assert lines["recognised"].startswith("bundled")  # still recognised; the named registry wins

    named = "registry.example.com/team"
    _, stdout, _ = _doctor(innerloop_cli, tmp_path, _env(kube.kubeconfig), "--default-repo", named)
    assert _lines(stdout)["delivery"] == f"registry: push to {named}, deploy by digest"  # TLS for a named host
    _, stdout, _ = _doctor(
        innerloop_cli, tmp_path, _env(kube.kubeconfig), "--default-repo", named, "--insecure-registry"
    )
    assert _lines(stdout)["delivery"] == f"registry: push to {named} (plain HTTP allowed), deploy by digest"

    env = _env(kube.kubeconfig, INNERLOOP_DEFAULT_REPO="10.1.2.3:5000")
    code, stdout, _ = _doctor(innerloop_cli, tmp_path, env)
    assert code == 0
    assert _lines(stdout)["default"] == "10.1.2.3:5000 (from INNERLOOP_DEFAULT_REPO)"


def test_doctor_reads_the_registry_of_innerloop_yaml(innerloop_cli: list[str], kube: Kube, tmp_path: Path) -> None:
    (tmp_path / "innerloop.yaml").write_text(
        "version: 1\nname: shop\nregistry:\n  repo: registry.example.com/team\n"
        "services:\n  api:\n    manifests:\n      files: [k8s/api.yaml]\n"
    )
    code, stdout, stderr = _doctor(innerloop_cli, tmp_path, _env(kube.kubeconfig))
    lines = _lines(stdout)
    assert lines.get("default") == "registry.example.com/team (from innerloop.yaml registry:)", stdout + stderr
    assert lines["delivery"] == "registry: push to registry.example.com/team, deploy by digest"
    assert code == 0


def test_doctor_works_for_a_user_who_may_not_read_nodes(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    server = yaml.safe_load(kube.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    kubeconfig = _service_account_kubeconfig(kube, namespace, tmp_path / "nobody.yaml", context="dev", server=server)
    code, stdout, stderr = _doctor(innerloop_cli, tmp_path, _env(kubeconfig))
    assert code == 0, stdout + stderr
    lines = _lines(stdout)
    assert lines["nodes"] == "unknown (not allowed to read nodes)"
    assert lines["delivery"].startswith("bundled: containerd import")
    assert "Traceback" not in stderr


def test_doctor_on_an_unreachable_cluster_says_so_in_one_line(
    innerloop_cli: list[str], kube: Kube, tmp_path: Path
) -> None:
    server = f"https://127.0.0.1:{free_port()}"
    kubeconfig = _renamed_kubeconfig(kube, tmp_path / "gone.yaml", context="gone", server=server)
    code, stdout, stderr = _doctor(innerloop_cli, tmp_path, _env(kubeconfig))
    assert code == 1
    assert _lines(stdout)["nodes"] == "unknown (cluster unreachable)"
    assert stderr.startswith(f"error: cannot reach {server}")
    assert stderr.strip().count("\n") == 0
