"""Manifests from kustomize (through the cluster's kubectl) and from Helm (or a clear error without it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from innerloop.cluster.node import BundledCluster
from innerloop.config import parse_config
from innerloop.demo import example_dir
from innerloop.engine.plan import PlanError
from innerloop.engine.sources import read_manifests

CONFIG = """
version: 1
name: shop
services:
  backend:
    manifests:
      {source}
"""


def test_kustomize_overlays_are_rendered(bundled_cluster: BundledCluster, tmp_path: Path) -> None:
    base = tmp_path / "k8s" / "base"
    base.mkdir(parents=True)
    shutil.copy(example_dir() / "k8s" / "backend.yaml", base / "backend.yaml")
    (base / "kustomization.yaml").write_text("resources: [backend.yaml]\n")
    overlay = tmp_path / "k8s" / "dev"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "resources: [../base]\nnamePrefix: dev-\nlabels:\n- pairs: {team: books}\n"
    )
    project = parse_config(CONFIG.format(source="kustomize: k8s/dev"))
    docs = read_manifests(tmp_path, "backend", project.services["backend"], kubectl=str(bundled_cluster.kubectl_path))
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("Deployment", "dev-backend"),
        ("Service", "dev-backend"),
    ]
    assert all(d["metadata"]["labels"]["team"] == "books" for d in docs)


def test_helm_without_helm_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no helm binary on PATH
    (tmp_path / "chart").mkdir()
    project = parse_config(CONFIG.format(source="helm: {chart: chart}"))
    with pytest.raises(PlanError, match="needs `helm` on PATH"):
        read_manifests(tmp_path, "backend", project.services["backend"])


def test_missing_manifest_file_names_it(tmp_path: Path) -> None:
    project = parse_config(CONFIG.format(source="files: [k8s/nope.yaml]"))
    with pytest.raises(PlanError, match=r"services.backend.manifests.files: k8s/nope.yaml does not exist"):
        read_manifests(tmp_path, "backend", project.services["backend"])
