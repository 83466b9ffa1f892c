"""Deterministic layers and docker-save archives."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from innerloop.oci.archive import (
    FileEntry,
    ImageConfig,
    entries_from_directory,
    image_id,
    layer_from_entries,
    sha256,
    write_archive,
)

ENTRIES = [
    FileEntry.directory("/app"),
    FileEntry(path="/app/main.py", data=b"print('hi')\n"),
    FileEntry(path="/app/run.sh", data=b"#!/bin/sh\n", mode=0o755),
    FileEntry.directory("/home/nonroot", mode=0o700, uid=65532, gid=65532),
    FileEntry(path="/home/nonroot/.profile", data=b"", uid=65532, gid=65532, mode=0o600),
    FileEntry.directory("/usr"),
    FileEntry.directory("/usr/bin"),
    FileEntry.symlink("/usr/bin/python3", "python3.11"),
]


def members(layer: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        return {m.name: m for m in tar.getmembers()}


def read_member(tar_bytes: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


class TestLayer:
    def test_same_entries_in_any_order_give_identical_bytes(self) -> None:
        forward = layer_from_entries(ENTRIES)
        assert layer_from_entries(list(reversed(ENTRIES))) == forward
        assert layer_from_entries(sorted(ENTRIES, key=lambda e: e.data + e.path.encode())) == forward

    def test_different_content_gives_different_bytes(self) -> None:
        changed = [e if e.path != "/app/main.py" else FileEntry(path=e.path, data=b"print('ho')\n") for e in ENTRIES]
        assert layer_from_entries(changed) != layer_from_entries(ENTRIES)

    def test_mode_is_part_of_the_content(self) -> None:
        changed = [e if e.path != "/app/run.sh" else FileEntry(path=e.path, data=e.data, mode=0o644) for e in ENTRIES]
        assert layer_from_entries(changed) != layer_from_entries(ENTRIES)

    def test_entries_are_sorted_with_parents_first_and_relative_names(self) -> None:
        names = list(members(layer_from_entries(ENTRIES)))
        assert names == [
            "app",
            "app/main.py",
            "app/run.sh",
            "home/nonroot",
            "home/nonroot/.profile",
            "usr",
            "usr/bin",
            "usr/bin/python3",
        ]

    def test_metadata(self) -> None:
        m = members(layer_from_entries(ENTRIES))
        assert all(info.mtime == 0 for info in m.values())
        assert m["app"].isdir()
        assert m["app"].mode == 0o755
        assert (m["app/main.py"].uid, m["app/main.py"].gid) == (0, 0)
        assert m["app/main.py"].isreg()
        assert m["app/main.py"].size == len(b"print('hi')\n")
        assert m["app/main.py"].mode == 0o644
        assert m["app/run.sh"].mode == 0o755
        assert (m["home/nonroot"].uid, m["home/nonroot"].gid) == (65532, 65532)
        assert m["home/nonroot"].mode == 0o700
        assert m["home/nonroot/.profile"].uid == 65532
        assert m["usr/bin/python3"].issym()
        assert m["usr/bin/python3"].linkname == "python3.11"
        assert all(info.uname == "" and info.gname == "" for info in m.values())

    def test_file_contents(self) -> None:
        layer = layer_from_entries(ENTRIES)
        assert read_member(layer, "app/main.py") == b"print('hi')\n"
        assert read_member(layer, "home/nonroot/.profile") == b""

    def test_empty_layer_is_a_valid_tar(self) -> None:
        assert members(layer_from_entries([])) == {}


class TestEntriesFromDirectory:
    def test_walks_files_dirs_and_symlinks(self, tmp_path: Path) -> None:
        root = tmp_path / "ctx"
        (root / "pkg" / "sub").mkdir(parents=True)
        (root / "main.py").write_bytes(b"main")
        (root / "pkg" / "tool").write_bytes(b"tool")
        (root / "pkg" / "tool").chmod(0o750)
        (root / "pkg" / "sub" / "data.txt").write_bytes(b"data")
        (root / "pkg" / "sub").chmod(0o711)
        (root / "link").symlink_to("pkg/tool")
        found = {e.path: e for e in entries_from_directory(root, prefix="/srv/app")}
        assert set(found) == {
            "/srv/app/main.py",
            "/srv/app/link",
            "/srv/app/pkg",
            "/srv/app/pkg/tool",
            "/srv/app/pkg/sub",
            "/srv/app/pkg/sub/data.txt",
        }
        assert found["/srv/app/main.py"].data == b"main"
        assert found["/srv/app/pkg/tool"].mode == 0o750
        assert found["/srv/app/pkg/sub"].kind == "dir"
        assert found["/srv/app/pkg/sub"].mode == 0o711
        assert found["/srv/app/link"].kind == "symlink"
        assert found["/srv/app/link"].target == "pkg/tool"
        assert all((e.uid, e.gid) == (0, 0) for e in found.values())

    def test_default_prefix_is_the_root(self, tmp_path: Path) -> None:
        (tmp_path / "f").write_bytes(b"x")
        assert [e.path for e in entries_from_directory(tmp_path)] == ["/f"]

    def test_hard_links_become_copies(self, tmp_path: Path) -> None:
        (tmp_path / "a").write_bytes(b"same")
        os.link(tmp_path / "a", tmp_path / "b")
        found = {e.path: e for e in entries_from_directory(tmp_path)}
        assert found["/a"].data == found["/b"].data == b"same"
        assert found["/b"].kind == "file"

    def test_layer_from_a_directory_is_reproducible(self, tmp_path: Path) -> None:
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "x").write_bytes(b"x")
        first = layer_from_entries(entries_from_directory(tmp_path, prefix="/p"))
        os.utime(tmp_path / "d" / "x", (1_000_000, 1_000_000))
        assert layer_from_entries(entries_from_directory(tmp_path, prefix="/p")) == first


CONFIG = ImageConfig(
    entrypoint=["/usr/bin/python3"],
    cmd=["app.py"],
    env={"PATH": "/usr/bin:/bin", "PORT": "8080"},
    user="65532",
    workdir="/app",
    labels={"org.example": "yes"},
)


def read_archive(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """(manifest entry, config, layers by name) of a docker-save archive."""
    data = path.read_bytes()
    manifest = json.loads(read_member(data, "manifest.json"))
    assert isinstance(manifest, list)
    assert len(manifest) == 1
    entry = manifest[0]
    config = json.loads(read_member(data, entry["Config"]))
    layers = {name: read_member(data, name) for name in entry["Layers"]}
    return entry, config, layers


class TestWriteArchive:
    @pytest.fixture
    def layers(self) -> list[bytes]:
        return [layer_from_entries(ENTRIES), layer_from_entries([FileEntry(path="/extra", data=b"e")])]

    def test_manifest_config_and_layers_agree(self, tmp_path: Path, layers: list[bytes]) -> None:
        archive = tmp_path / "out" / "img.tar"
        returned = write_archive(archive, tag="innerloop.local/app:1", layers=layers, config=CONFIG)
        entry, config, by_name = read_archive(archive)
        assert entry["RepoTags"] == ["innerloop.local/app:1"]
        assert entry["Layers"] == [f"{hashlib.sha256(layer).hexdigest()}/layer.tar" for layer in layers]
        assert [by_name[name] for name in entry["Layers"]] == layers
        assert config["rootfs"] == {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers],
        }
        assert len(config["history"]) == len(layers)
        assert config["os"] == "linux"
        assert config["architecture"] == "amd64"
        # The config file is named after its own digest, which is the image id.
        config_bytes = read_member(archive.read_bytes(), entry["Config"])
        assert entry["Config"] == f"{hashlib.sha256(config_bytes).hexdigest()}.json"
        assert returned == hashlib.sha256(config_bytes).hexdigest()
        assert returned == image_id(layers=layers, config=CONFIG)

    def test_runtime_config(self, tmp_path: Path, layers: list[bytes]) -> None:
        write_archive(tmp_path / "img.tar", tag="t:1", layers=layers, config=CONFIG)
        _, config, _ = read_archive(tmp_path / "img.tar")
        assert config["config"] == {
            "Entrypoint": ["/usr/bin/python3"],
            "Cmd": ["app.py"],
            "Env": ["PATH=/usr/bin:/bin", "PORT=8080"],
            "User": "65532",
            "WorkingDir": "/app",
            "Labels": {"org.example": "yes"},
        }

    def test_empty_runtime_config_has_no_keys(self) -> None:
        assert ImageConfig().to_json() == {}

    def test_archive_is_reproducible_and_leaves_no_temporary_file(self, tmp_path: Path, layers: list[bytes]) -> None:
        a, b = tmp_path / "a" / "img.tar", tmp_path / "b" / "img.tar"
        assert write_archive(a, tag="t:1", layers=layers, config=CONFIG) == write_archive(
            b, tag="t:1", layers=layers, config=CONFIG
        )
        assert a.read_bytes() == b.read_bytes()
        assert sorted(p.name for p in a.parent.iterdir()) == ["img.tar"]

    def test_archive_members_have_mtime_zero(self, tmp_path: Path, layers: list[bytes]) -> None:
        write_archive(tmp_path / "img.tar", tag="t:1", layers=layers, config=CONFIG)
        m = members((tmp_path / "img.tar").read_bytes())
        assert "manifest.json" in m
        assert all(info.mtime == 0 for info in m.values())

    def test_overwrites_an_existing_archive(self, tmp_path: Path, layers: list[bytes]) -> None:
        path = tmp_path / "img.tar"
        write_archive(path, tag="t:1", layers=layers, config=CONFIG)
        write_archive(path, tag="t:2", layers=layers[:1], config=CONFIG)
        entry, _, by_name = read_archive(path)
        assert entry["RepoTags"] == ["t:2"]
        assert list(by_name.values()) == layers[:1]


class TestImageId:
    def test_changes_with_config(self) -> None:
        layers = [layer_from_entries(ENTRIES)]
        base = image_id(layers=layers, config=CONFIG)
        variants = [
            ImageConfig(entrypoint=CONFIG.entrypoint, cmd=["other.py"], env=CONFIG.env, user="65532", workdir="/app"),
            ImageConfig(entrypoint=CONFIG.entrypoint, cmd=CONFIG.cmd, env={"PORT": "9090"}, user="65532"),
            ImageConfig(entrypoint=CONFIG.entrypoint, cmd=CONFIG.cmd, env=CONFIG.env, user="0", workdir="/app"),
        ]
        ids = {image_id(layers=layers, config=v) for v in variants}
        assert base not in ids
        assert len(ids) == len(variants)

    def test_changes_with_layers_and_their_order(self) -> None:
        one = layer_from_entries(ENTRIES)
        two = layer_from_entries([FileEntry(path="/x", data=b"x")])
        ids = {
            image_id(layers=[one], config=CONFIG),
            image_id(layers=[one, two], config=CONFIG),
            image_id(layers=[two, one], config=CONFIG),
        }
        assert len(ids) == 3

    def test_stable_for_equal_inputs(self) -> None:
        layers = [layer_from_entries(ENTRIES)]
        same = ImageConfig(
            entrypoint=["/usr/bin/python3"],
            cmd=["app.py"],
            env={"PATH": "/usr/bin:/bin", "PORT": "8080"},
            user="65532",
            workdir="/app",
            labels={"org.example": "yes"},
        )
        assert image_id(layers=layers, config=same) == image_id(layers=[layer_from_entries(ENTRIES)], config=CONFIG)

    def test_sha256_helper(self) -> None:
        assert sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
