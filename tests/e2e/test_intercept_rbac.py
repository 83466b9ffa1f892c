"""Intercepts with only the documented namespaced Role; and the message a user without it gets."""

from __future__ import annotations

from pathlib import Path

from .intercepts import InterceptProcess, LocalApp, deploy_echo, leftovers, request
from .kube import Kube, eventually
from .test_up_rbac import ROLE, _service_account_kubeconfig


def test_intercept_works_with_only_the_documented_role(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    ip = deploy_echo(kube, namespace, replicas=1)
    kube.run("apply", "-n", namespace, "-f", str(ROLE))
    config = _service_account_kubeconfig(kube, namespace, "dev", tmp_path / "dev.kubeconfig")
    kube.run(
        "create",
        "rolebinding",
        "dev",
        "-n",
        namespace,
        "--role=innerloop-developer",
        f"--serviceaccount={namespace}:dev",
    )
    app = LocalApp("mine")
    try:
        cli = InterceptProcess.start(
            innerloop_cli, "echo", "--to", str(app.port), "--header", "x-dev=me", state=tmp_path, kubeconfig=config
        )
        cli.wait_for("intercepting svc/echo")
        eventually(lambda: request(ip, 80, headers={"x-dev": "me"})["where"] == "mine")
        assert request(ip, 80)["where"] == "cluster"
        assert cli.stop() == 0, cli.output
        assert "selects its own pods again" in cli.output
    finally:
        app.close()
    assert eventually(lambda: not leftovers(kube, namespace), timeout_s=180)


def test_a_user_without_the_role_is_told_what_is_missing(
    innerloop_cli: list[str], kube: Kube, namespace: str, tmp_path: Path
) -> None:
    deploy_echo(kube, namespace, replicas=1)
    config = _service_account_kubeconfig(kube, namespace, "stranger", tmp_path / "stranger.kubeconfig")
    cli = InterceptProcess.start(innerloop_cli, "echo", "--to", "9", state=tmp_path, kubeconfig=config)
    assert cli.wait(180) == 1
    assert "error: the cluster refused" in cli.output
    assert "docs/RBAC.md" in cli.output
    assert "Traceback" not in cli.output
    assert not leftovers(kube, namespace)
