"""The shipped dashboard is built from the sources in web/dashboard: a source edit without a rebuild fails here."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import innerloop.dashboard.server

ROOT = Path(__file__).resolve().parents[3]
SOURCES = ROOT / "web" / "dashboard"
STATIC = Path(innerloop.dashboard.server.__file__).parent / "static"


def _sources_hash(root: Path) -> tuple[str, int]:
    """build-info.ts's hash: sha256 over "path\\0sha256(content)\\n", hidden files and node_modules/ out."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "node_modules"]  # never walked
        base = Path(folder).relative_to(root)
        found += [(base / f).as_posix() for f in files if not f.startswith(".") and (Path(folder) / f).is_file()]
    paths = sorted(found)
    whole = hashlib.sha256()
    for path in paths:
        content = hashlib.sha256((root / path).read_bytes()).hexdigest()
        whole.update(f"{path}\0{content}\n".encode())
    return whole.hexdigest(), len(paths)


def test_the_built_dashboard_matches_its_sources() -> None:
    info = json.loads((STATIC / "build-info.json").read_text())
    digest, count = _sources_hash(SOURCES)
    assert (info["sources_sha256"], info["files"]) == (digest, count), (
        "web/dashboard changed since src/innerloop/dashboard/static was built: run hack/dashboard-build and commit"
    )


def test_the_hash_sees_a_changed_source(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.tsx").write_text("one")
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "x.js").write_text("ignored")
    before = _sources_hash(tmp_path)
    (tmp_path / "node_modules" / "x.js").write_text("still ignored")
    assert _sources_hash(tmp_path) == before
    (tmp_path / "src" / "app.tsx").write_text("two")
    assert _sources_hash(tmp_path) != before


def test_the_page_references_only_shipped_assets() -> None:
    page = (STATIC / "index.html").read_text()
    assets = [part.split('"', 1)[0] for part in page.split('="/assets/')[1:]]
    assert assets, page
    for name in assets:
        assert (STATIC / "assets" / name).is_file(), name
