"""The build context a builder sees (.dockerignore, Docker's rules) and the input hash that names the image."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from innerloop.builders.context import context_files, input_hash, planned_image
from innerloop.builders.request import BuildRequest
from innerloop.sync.tree import FileState, Scanner


def make(root: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def request(context: Path, **changes: Any) -> BuildRequest:
    fields: dict[str, Any] = {
        "context": context,
        "dockerfile": context / "Dockerfile",
        "repository": "innerloop.local/shop",
        "out_dir": context.parent / "out",
    }
    fields.update(changes)
    return BuildRequest(**fields)


class TestContextFiles:
    def test_without_a_dockerignore_everything_is_sent_git_included(self, tmp_path: Path) -> None:
        ctx = make(tmp_path / "c", {"Dockerfile": "FROM b\n", ".git/HEAD": "ref\n", "a.py": "", ".env": "X=1"})
        assert set(context_files(ctx, scanner=Scanner())) == {"Dockerfile", ".git/HEAD", "a.py", ".env"}

    def test_dockerignore_patterns_double_star_and_exceptions(self, tmp_path: Path) -> None:
        ctx = make(
            tmp_path / "c",
            {
                "Dockerfile": "FROM b\n",
                ".dockerignore": ".env\n.git\n**/*.pyc\nnode_modules\n!node_modules/keep.js\n.innerloop/\n",
                ".env": "SECRET=1",
                ".git/HEAD": "ref",
                "app.py": "",
                "pkg/mod.pyc": "",
                "pkg/deep/mod.pyc": "",
                "pkg/mod.py": "",
                "node_modules/x.js": "",
                "node_modules/keep.js": "",
                ".innerloop/run/secret.env": "TOKEN=1",
            },
        )
        assert set(context_files(ctx, scanner=Scanner())) == {
            "Dockerfile",
            ".dockerignore",
            "app.py",
            "pkg/mod.py",
            "node_modules/keep.js",
        }

    def test_top_level_patterns_are_anchored_as_in_docker(self, tmp_path: Path) -> None:
        ctx = make(tmp_path / "c", {".dockerignore": "*.log\n", "a.log": "", "sub/b.log": ""})
        assert set(context_files(ctx, scanner=Scanner())) == {".dockerignore", "sub/b.log"}


class TestInputHash:
    def base(self, tmp_path: Path) -> Path:
        return make(tmp_path / "c", {"Dockerfile": "FROM b\nCOPY . /app\n", "app.py": "print(1)\n"})

    def test_same_inputs_same_tag(self, tmp_path: Path) -> None:
        ctx = self.base(tmp_path)
        assert planned_image("buildah", request(ctx)) == planned_image("buildah", request(ctx))

    @pytest.mark.parametrize(
        "change",
        [
            {"build_args": {"A": "1"}},
            {"target": "dev"},
            {"platform": "linux/arm64"},
        ],
    )
    def test_each_request_field_is_an_input(self, tmp_path: Path, change: dict[str, Any]) -> None:
        ctx = self.base(tmp_path)
        assert planned_image("buildah", request(ctx, **change)).tag != planned_image("buildah", request(ctx)).tag

    def test_the_builder_the_dockerfile_a_file_and_its_mode_are_inputs(self, tmp_path: Path) -> None:
        ctx = self.base(tmp_path)
        tags = {planned_image("buildah", request(ctx)).tag, planned_image("podman", request(ctx)).tag}
        (ctx / "Dockerfile").write_text("FROM b\nCOPY . /srv\n")
        tags.add(planned_image("buildah", request(ctx)).tag)
        (ctx / "app.py").write_text("print(2)\n")
        tags.add(planned_image("buildah", request(ctx)).tag)
        (ctx / "app.py").chmod(0o755)
        tags.add(planned_image("buildah", request(ctx)).tag)
        (ctx / "new.txt").write_text("")
        tags.add(planned_image("buildah", request(ctx)).tag)
        assert len(tags) == 6

    def test_a_dockerfile_outside_the_context_is_an_input(self, tmp_path: Path) -> None:
        ctx = self.base(tmp_path)
        outside = tmp_path / "Dockerfile.dev"
        outside.write_text("FROM b\n")
        first = planned_image("buildah", request(ctx, dockerfile=outside)).tag
        outside.write_text("FROM c\n")
        assert planned_image("buildah", request(ctx, dockerfile=outside)).tag != first

    def test_the_tag_and_the_archive_path(self, tmp_path: Path) -> None:
        ctx = self.base(tmp_path)
        image = planned_image("buildah", request(ctx, repository="localhost:5000/team/shop"))
        repository, digest = image.tag.rsplit(":", 1)
        assert repository == "localhost:5000/team/shop" and len(digest) == 12
        assert image.archive == tmp_path / "out" / f"localhost_5000_team_shop-{digest}.tar"

    def test_pure_hash_orders_files_and_args(self) -> None:
        r1 = BuildRequest(context=Path("/c"), dockerfile=Path("/c/D"), repository="r", build_args={"A": "1", "B": "2"},
                          out_dir=Path("/o"))  # fmt: skip
        r2 = BuildRequest(context=Path("/c"), dockerfile=Path("/c/D"), repository="r", build_args={"B": "2", "A": "1"},
                          out_dir=Path("/o"))  # fmt: skip
        files = [("b", FileState(1, 0o100644, "x")), ("a", FileState(1, 0o100644, "y"))]
        args = {"builder": "x", "dockerfile": b"FROM b", "dockerignore": b""}
        assert input_hash(request=r1, files=files, **args) == input_hash(request=r2, files=files[::-1], **args)  # type: ignore[arg-type]


def test_unchanged_context_of_2000_files_is_known_in_milliseconds(tmp_path: Path) -> None:
    """The stat cache: the second look at an unchanged context reads no file (measured: see the report)."""
    ctx = tmp_path / "c"
    make(ctx, {f"pkg{i // 100}/mod{i}.py": f"X = {i}\n" * 20 for i in range(2000)})
    (ctx / "Dockerfile").write_text("FROM b\nCOPY . /app\n")
    scanner = Scanner(racy_window_ns=0)
    first = planned_image("buildah", request(ctx), scanner=scanner)
    reads = scanner.reads
    started = time.perf_counter()
    second = planned_image("buildah", request(ctx), scanner=scanner)
    elapsed = time.perf_counter() - started
    assert second == first
    assert scanner.reads == reads  # nothing read again
    assert elapsed < 0.5  # ~15 ms here; generous for a loaded CI machine
