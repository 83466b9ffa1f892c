"""The pure parts of the base images: mirrors, names, configs, cache keys, layer contents."""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from pathlib import Path

from innerloop.cluster import base_images as b


def test_mirrors_are_read_from_deb822_and_one_line_sources() -> None:
    deb822 = (
        "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n"
    )
    assert b.debian_mirrors({"debian.sources": deb822}) == b.Mirrors(
        debian="http://mirror.example/debian", security="http://mirror.example/debian-security"
    )
    one_line = (
        "# a comment\ndeb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main contrib\n"
        "deb http://third.example/apt nodistro main\n"
    )
    assert b.debian_mirrors({"sources.list": one_line}) == b.Mirrors(debian="http://one.example/debian")


def test_mirrors_skip_disabled_stanzas_other_suites_and_default_to_deb_debian_org() -> None:
    disabled = "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n"
    ubuntu = "deb http://archive.ubuntu.com/ubuntu jammy main\n"
    assert b.debian_mirrors({"a.sources": disabled, "b.list": ubuntu}) == b.Mirrors()
    assert b.Mirrors().debian == "http://deb.debian.org/debian"


def test_image_sources_name_the_suite_its_updates_and_security() -> None:
    text = b.image_sources(b.Mirrors(debian="http://m/debian", security="http://m/sec"))
    stanzas = text.split("\n\n")
    assert "URIs: http://m/debian\nSuites: bookworm bookworm-updates\n" in stanzas[0]
    assert "URIs: http://m/sec\nSuites: bookworm-security\n" in stanzas[1]


def test_slim_filters_drop_docs_and_translations_but_keep_copyright() -> None:
    assert b.slim_excluded("/usr/share/doc/bash/README")
    assert not b.slim_excluded("/usr/share/doc/bash/copyright")
    assert b.slim_excluded("/usr/share/man/man1/ls.1.gz")
    assert b.slim_excluded("/usr/share/locale/de/LC_MESSAGES/apt.mo")
    assert not b.slim_excluded("/usr/share/locale/locale.alias")
    assert not b.slim_excluded("/usr/share/zoneinfo/UTC")
    assert "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n" in b.dpkg_filters_text()


def test_upstream_versions_as_the_official_images_env_says_them() -> None:
    assert b.upstream_version("3.11.2-6+deb12u8") == "3.11.2"
    assert b.upstream_version("18.20.4+dfsg-1~deb12u1") == "18.20.4"
    assert b.upstream_version("1.19.8-2") == "1.19.8"
    assert b.upstream_version("2:1.2.13.dfsg-1") == "1.2.13.dfsg"


def test_names_are_honest_about_debian_bookworms_versions() -> None:
    assert b.REFERENCES == (
        "library/debian:bookworm-slim",
        "library/python:3.11-slim",
        "library/node:18-slim",
        "library/golang:1.19",
        "distroless/static-debian12:latest",
        "distroless/static-debian12:nonroot",
        "distroless/base-debian12:latest",
        "distroless/base-debian12:nonroot",
    )
    assert b.PYTHON.version_env == ("PYTHON_VERSION", "python3.11")
    assert b.NODE.version_env == ("NODE_VERSION", "nodejs")
    assert b.GOLANG.version_env == ("GOLANG_VERSION", "golang-1.19-go")


def test_flavour_configs_look_like_the_official_images() -> None:
    python = b.flavour_config(b.PYTHON, versions={"python3.11": "3.11.2-6+deb12u8"}).to_json()
    assert python["Cmd"] == ["python3"]
    assert "LANG=C.UTF-8" in python["Env"]  # type: ignore[operator]
    assert "PYTHON_VERSION=3.11.2" in python["Env"]  # type: ignore[operator]
    assert python["Labels"]["org.opencontainers.image.version"] == "3.11.2-6+deb12u8"  # type: ignore[index]
    assert "/usr/lib/python3.11/EXTERNALLY-MANAGED" in b.PYTHON.remove
    assert {"python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates"} <= set(b.PYTHON.packages)

    golang = b.flavour_config(b.GOLANG, versions={"golang-1.19-go": "1.19.8-2"}).to_json()
    env = dict(e.split("=", 1) for e in golang["Env"])  # type: ignore[attr-defined]
    assert env["GOPATH"] == "/go" and env["GOTOOLCHAIN"] == "local" and env["GOLANG_VERSION"] == "1.19.8"
    assert env["PATH"].startswith("/go/bin:/usr/local/go/bin:")
    assert golang["WorkingDir"] == "/go"
    assert ("/usr/local/go", "/usr/lib/go") in b.GOLANG.symlinks

    node = b.flavour_config(b.NODE, versions={"nodejs": "18.20.4+dfsg-1~deb12u1"}).to_json()
    assert node["Cmd"] == ["node"] and "NODE_VERSION=18.20.4" in node["Env"]  # type: ignore[operator]
    assert b.NODE.users == (("node", 1000),)


def test_distroless_runs_as_nonroot_only_when_named_so() -> None:
    static, nonroot = b.DISTROLESS[0], b.DISTROLESS[1]
    assert "User" not in b.distroless_config(static).to_json()
    config = b.distroless_config(nonroot).to_json()
    assert config["User"] == "65532" and config["WorkingDir"] == "/home/nonroot"
    passwd = b.passwd_files()["/etc/passwd"]
    assert "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" in passwd
    assert "/bin/sh" not in passwd and "/bin/bash" not in passwd


def _key(
    spec: b.Flavour | b.Distroless = b.PYTHON,
    *,
    suite: str = "bookworm",
    arch: str = "amd64",
    debootstrap: str = "1.0.128+nmu2+deb12u2",
    trusted: dict[str, bytes] | None = None,
) -> str:
    return b.cache_key(spec, suite=suite, arch=arch, debootstrap_version=debootstrap, trusted=trusted)


def test_cache_key_follows_every_input() -> None:
    key = _key()
    assert key == _key() and len(key) == 12
    assert key != _key(b.NODE)
    assert key != _key(suite="trixie")
    assert key != _key(arch="arm64")
    assert key != _key(debootstrap="1.0.129")
    assert key != _key(trusted={"corp.crt": b"PEM"})
    assert _key(trusted={"corp.crt": b"PEM"}) != _key(trusted={"corp.crt": b"OTHER"})
    assert key != _key(dataclasses.replace(b.PYTHON, packages=(*b.PYTHON.packages, "python3-dev")))
    assert _key(b.DISTROLESS[0]) != _key(b.DISTROLESS[1])
    assert b.archive_name("library/python:3.11-slim", key) == f"library-python-3.11-slim-{key}.tar"


def _file(size: int = 1, mtime: int = 1, mode: int = 0o644) -> b.Meta:
    return b.Meta("file", mode, 0, 0, size=size, mtime_ns=mtime)


DIR = b.Meta("dir", 0o755, 0, 0)


def test_layer_plan_without_a_lower_layer_holds_everything() -> None:
    upper = {"/etc": DIR, "/etc/passwd": _file()}
    assert b.layer_plan(upper) == b.LayerPlan(paths=("/etc", "/etc/passwd"))


def test_layer_plan_holds_changes_with_their_parents_and_whiteouts_at_the_top_of_what_went() -> None:
    lower = {
        "/usr": DIR,
        "/usr/bin": DIR,
        "/usr/bin/same": _file(),
        "/usr/bin/edited": _file(mtime=1),
        "/usr/lib": DIR,
        "/usr/lib/python3.11": DIR,
        "/usr/lib/python3.11/EXTERNALLY-MANAGED": _file(),
        "/var": DIR,
        "/var/gone": DIR,
        "/var/gone/inside": _file(),
        "/etc": DIR,
        "/etc/link": b.Meta("symlink", 0o777, 0, 0, target="a"),
    }
    upper = {
        "/usr": b.Meta("dir", 0o755, 0, 0, mtime_ns=99),  # a directory's mtime alone is no change
        "/usr/bin": DIR,
        "/usr/bin/same": _file(),
        "/usr/bin/edited": _file(mtime=2),
        "/usr/bin/python3": _file(size=5),
        "/usr/lib": DIR,
        "/usr/lib/python3.11": DIR,
        "/var": DIR,
        "/etc": DIR,
        "/etc/link": b.Meta("symlink", 0o777, 0, 0, target="b"),
    }
    plan = b.layer_plan(upper, lower)
    assert plan.paths == ("/etc", "/etc/link", "/usr", "/usr/bin", "/usr/bin/edited", "/usr/bin/python3")
    assert plan.whiteouts == ("/usr/lib/python3.11/EXTERNALLY-MANAGED", "/var/gone")
    assert b.whiteout_name("/var/gone") == "var/.wh.gone"
    assert b.whiteout_name("/gone") == ".wh.gone"


def test_layer_plan_sees_a_mode_or_owner_change() -> None:
    lower = {"/go": DIR}
    assert b.layer_plan({"/go": b.Meta("dir", 0o1777, 0, 0)}, lower).paths == ("/go",)
    assert b.layer_plan({"/go": b.Meta("dir", 0o755, 1000, 1000)}, lower).paths == ("/go",)


MERGED = {"/bin": "/usr/bin", "/lib": "/usr/lib", "/lib64": "/usr/lib64", "/sbin": "/usr/sbin"}


def test_distroless_selection_resolves_merged_usr_and_keeps_only_needed_links() -> None:
    listed = [
        "/.",
        "/lib",
        "/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64",
        "/lib64/ld-linux-x86-64.so.2",
        "/usr/share/doc/libc6/copyright",
        "/usr/share/zoneinfo/UTC",
        "/etc/ssl/certs/ca-certificates.crt",
    ]
    paths, links = b.distroless_selection(listed, MERGED)
    assert paths == [
        "/etc/ssl/certs/ca-certificates.crt",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib64/ld-linux-x86-64.so.2",
        "/usr/share/zoneinfo/UTC",
    ]
    assert links == ["/lib", "/lib64"]  # no /bin or /sbin: nothing listed goes through them
    assert b.canonical("/etc/passwd", MERGED) == "/etc/passwd"


def test_timestamp_pycs_get_the_layers_mtime_and_hash_based_ones_are_left_alone() -> None:
    magic = b"\xa7\r\r\n"
    timestamp_pyc = (
        magic + (0).to_bytes(4, "little") + (12345).to_bytes(4, "little") + (10).to_bytes(4, "little") + b"c"
    )
    fixed = b.pyc_with_epoch(timestamp_pyc)
    assert int.from_bytes(fixed[8:12], "little") == b.EPOCH
    assert fixed[:8] == timestamp_pyc[:8] and fixed[12:] == timestamp_pyc[12:]
    hash_pyc = magic + (1).to_bytes(4, "little") + b"\x01" * 8 + b"c"
    assert b.pyc_with_epoch(hash_pyc) == hash_pyc
    assert b.pyc_with_epoch(b"short") == b"short"


def test_config_blob_is_deterministic_and_names_each_layer() -> None:
    config = b.flavour_config(b.DEBIAN, versions={})
    blob = b.config_blob(diff_ids=["a" * 64, "b" * 64], config=config, arch="arm64", history=["one", "two"])
    assert blob == b.config_blob(diff_ids=["a" * 64, "b" * 64], config=config, arch="arm64", history=["one", "two"])
    doc = json.loads(blob)
    assert doc["architecture"] == "arm64" and doc["os"] == "linux"
    assert doc["rootfs"]["diff_ids"] == ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    assert [h["created_by"] for h in doc["history"]] == ["one", "two"]
    assert doc["created"] == "2023-06-10T00:00:00Z"
    assert doc["config"]["Cmd"] == ["bash"]


def test_a_layer_written_from_a_root_is_byte_stable_and_keeps_links_modes_and_owners(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib/__pycache__").mkdir(parents=True)
    (root / "dev").mkdir()
    os.mkfifo(root / "dev/fifo")
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\n")
    (root / "usr/bin/tool").chmod(0o4755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-again")
    (root / "usr/bin/link").symlink_to("tool")
    pyc = b"\xa7\r\r\n" + bytes(4) + (777).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"code"
    (root / "usr/lib/__pycache__/m.cpython-311.pyc").write_bytes(pyc)
    if os.geteuid() == 0:
        os.chown(root / "usr/lib", 1000, 1000)

    listing = b._listing(root)
    assert "/dev/fifo" not in listing and "/dev" in listing
    first, second = tmp_path / "one.tar", tmp_path / "two.tar"
    digest = b._write_layer(root, b.layer_plan(listing), first)
    assert digest == b._write_layer(root, b.layer_plan(listing), second)
    assert first.read_bytes() == second.read_bytes()

    with tarfile.open(first) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert {m.mtime for m in members.values()} == {b.EPOCH}
        assert members["usr/bin/tool"].mode == 0o4755
        assert members["usr/bin/tool-again"].islnk() and members["usr/bin/tool-again"].linkname == "usr/bin/tool"
        assert members["usr/bin/link"].issym() and members["usr/bin/link"].linkname == "tool"
        data = tar.extractfile("usr/lib/__pycache__/m.cpython-311.pyc").read()  # type: ignore[union-attr]
        assert int.from_bytes(data[8:12], "little") == b.EPOCH
        if os.geteuid() == 0:
            assert (members["usr/lib"].uid, members["usr/lib"].gid) == (1000, 1000)
        assert members["usr/lib"].uname == ""
