"""The agent image's pure parts: which runtime for which cluster, where each base file goes per
architecture and layout, the loader link, and the refusals of a base that cannot serve the nodes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from innerloop.builders.agent_image import (
    ARCHES,
    DEFAULT_AGENT_BASE,
    IMAGE_ROOT,
    AgentImageError,
    PythonLayout,
    base_files,
    build_agent_image,
    elf_machine,
    find_python,
    machine_architecture,
    plan_agent,
    remap,
    resolve,
    runtime_command,
    runtime_entries_from,
)
from innerloop.oci.archive import FileEntry, ImageConfig, write_archive

DEBIAN = PythonLayout(prefix="usr", version="3.11")
OFFICIAL = PythonLayout(prefix="usr/local", version="3.12")


def elf(machine: int) -> bytes:
    """The first bytes of a little-endian 64-bit ELF file for ``machine``."""
    return b"\x7fELF\x02\x01\x01" + bytes(11) + machine.to_bytes(2, "little") + bytes(44)


# ---- plan_agent -----------------------------------------------------------------------------------


def test_the_bundled_cluster_keeps_its_debian_built_python_whatever_agent_base_says() -> None:
    plan = plan_agent(bundled=True, registry=False, node_architectures=["amd64"], base="example.com/python:3.12")
    assert (plan.base, plan.architectures, plan.index) == (None, ("amd64",), False)


def test_another_cluster_gets_the_default_base_for_its_nodes_architecture() -> None:
    plan = plan_agent(bundled=False, registry=True, node_architectures=["arm64", "arm64"])
    assert (plan.base, plan.architectures, plan.index) == (DEFAULT_AGENT_BASE, ("arm64",), False)
    assert plan.describe() == f"agent: runtime from {DEFAULT_AGENT_BASE} for linux/arm64 (the nodes are arm64)"
    custom = plan_agent(bundled=False, registry=True, node_architectures=["amd64"], base="mirror.example/py:3.11")
    assert custom.base == "mirror.example/py:3.11"


def test_mixed_nodes_through_a_registry_get_one_index_and_a_loader_gets_one_architecture() -> None:
    both = plan_agent(bundled=False, registry=True, node_architectures=["arm64", "amd64", "arm64"])
    assert both.architectures == ("amd64", "arm64") and both.index
    assert "(one index)" in both.describe()
    loader = plan_agent(bundled=False, registry=False, node_architectures=["arm64", "amd64"], host_architecture="arm64")
    assert loader.architectures == ("arm64",) and not loader.index
    other_host = plan_agent(bundled=False, registry=False, node_architectures=["arm64", "amd64"], host_architecture="x")
    assert other_host.architectures == ("amd64",)


def test_unknown_node_architecture_builds_amd64_and_says_why() -> None:
    plan = plan_agent(bundled=False, registry=True, node_architectures=None, unknown_reason="not allowed to read nodes")
    assert plan.architectures == ("amd64",)
    assert plan.reason == "node architecture unknown (not allowed to read nodes): amd64"
    assert plan_agent(bundled=False, registry=True, node_architectures=[]).architectures == ("amd64",)


def test_an_architecture_without_a_runtime_is_one_line_naming_agent_image() -> None:
    with pytest.raises(AgentImageError) as err:
        plan_agent(bundled=False, registry=True, node_architectures=["amd64", "s390x"])
    assert str(err.value).startswith("the cluster's nodes run s390x: innerloop's agent runtime is built for amd64")
    assert "agentImage" in str(err.value) and "\n" not in str(err.value)


def test_machine_names_are_kubernetes_names() -> None:
    assert [machine_architecture(m) for m in ("x86_64", "aarch64", "arm64")] == ["amd64", "arm64", "arm64"]


# ---- remap, per architecture and layout ------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "triplet", "loader"),
    [("amd64", "x86_64-linux-gnu", "ld-linux-x86-64.so.2"), ("arm64", "aarch64-linux-gnu", "ld-linux-aarch64.so.1")],
)
def test_debian_layout_maps_the_architectures_libraries_and_only_those(arch: str, triplet: str, loader: str) -> None:
    a = ARCHES[arch]
    assert a.triplet == triplet and a.loader == loader
    assert remap("usr/bin/python3.11", arch=a, python=DEBIAN) == f"{IMAGE_ROOT}/bin/python3"
    assert remap(f"lib/{triplet}/{loader}", arch=a, python=DEBIAN) == f"{IMAGE_ROOT}/lib/{loader}"
    assert remap(f"usr/lib/{triplet}/libssl.so.3", arch=a, python=DEBIAN) == f"{IMAGE_ROOT}/lib/libssl.so.3"
    other = "aarch64-linux-gnu" if arch == "amd64" else "x86_64-linux-gnu"
    assert remap(f"usr/lib/{other}/libssl.so.3", arch=a, python=DEBIAN) is None
    assert remap(f"usr/lib/{triplet}/gconv/UTF-16.so", arch=a, python=DEBIAN) is None  # not a direct child
    assert remap("usr/lib/python3.11/json/__init__.py", arch=a, python=DEBIAN) == (
        f"{IMAGE_ROOT}/lib/python3.11/json/__init__.py"
    )
    dynload = f"usr/lib/python3.11/lib-dynload/_ssl.cpython-311-{triplet}.so"
    assert (
        remap(dynload, arch=a, python=DEBIAN)
        == f"{IMAGE_ROOT}/lib/python3.11/lib-dynload/_ssl.cpython-311-{triplet}.so"
    )


def test_the_standard_librarys_unused_parts_stay_out() -> None:
    a = ARCHES["amd64"]
    for name in (
        "usr/lib/python3.11/test/test_os.py",
        "usr/lib/python3.11/tkinter/__init__.py",
        "usr/lib/python3.11/config-3.11-x86_64-linux-gnu/Makefile",
        "usr/lib/python3.11/site-packages/pip/__init__.py",
        "usr/lib/python3.11/json/__pycache__/x.cpython-311.opt-1.pyc",
        "usr/lib/python3.11/json/__pycache__/x.cpython-310.pyc",
        "usr/bin/python3",
        "usr/lib/python3/dist-packages/x.py",
        "etc/passwd",
    ):
        assert remap(name, arch=a, python=DEBIAN) is None, name


def test_official_image_layout_under_usr_local() -> None:
    a = ARCHES["arm64"]
    assert remap("usr/local/bin/python3.12", arch=a, python=OFFICIAL) == f"{IMAGE_ROOT}/bin/python3"
    assert (
        remap("usr/local/lib/libpython3.12.so.1.0", arch=a, python=OFFICIAL) == f"{IMAGE_ROOT}/lib/libpython3.12.so.1.0"
    )
    assert remap("usr/local/lib/python3.12/os.py", arch=a, python=OFFICIAL) == f"{IMAGE_ROOT}/lib/python3.12/os.py"
    assert remap("usr/lib/python3.11/os.py", arch=a, python=OFFICIAL) is None
    assert remap("usr/local/lib/libpython3.12.so.1.0", arch=a, python=DEBIAN) is None


def test_find_python_takes_the_newest_and_the_official_one_on_a_tie() -> None:
    assert find_python(["usr/bin/python3.11", "usr/bin/python3"]) == DEBIAN
    assert find_python(["usr/bin/python3.11", "usr/local/bin/python3.12"]) == OFFICIAL
    assert find_python(["usr/bin/python3.12", "usr/local/bin/python3.12"]) == OFFICIAL
    assert find_python(["usr/bin/python3.9", "usr/bin/python3.10"]) == PythonLayout(prefix="usr", version="3.10")
    assert find_python(["usr/bin/perl", "usr/bin/python3"]) is None


def test_elf_machine() -> None:
    assert elf_machine(elf(62)) == 62 and elf_machine(elf(183)) == 183
    assert elf_machine(b"#!/bin/sh\n" + bytes(20)) is None


# ---- runtime entries from a base's layers ---------------------------------------------------------


def layer(*members: tuple[str, str, bytes | str]) -> bytes:
    """A layer tar of (kind, name, data or link target) members, as a registry would hand it over."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for kind, name, value in members:
            info = tarfile.TarInfo(name)
            if kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, str(value)
                tar.addfile(info)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, str(value)
                tar.addfile(info)
            else:
                data = value if isinstance(value, bytes) else value.encode()
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def debian_base(arch: str, *, loader_machine: int | None = None, python_machine: int | None = None) -> list[bytes]:
    a = ARCHES[arch]
    return [
        layer(
            ("file", f"lib/{a.triplet}/{a.loader}", elf(loader_machine or a.e_machine)),
            ("link", f"lib64/{a.loader}", f"/lib/{a.triplet}/{a.loader}"),
            ("file", f"lib/{a.triplet}/libc.so.6", elf(a.e_machine)),
            ("file", f"usr/lib/{a.triplet}/libz.so.1.2.13", elf(a.e_machine)),
            ("link", f"usr/lib/{a.triplet}/libz.so.1", "libz.so.1.2.13"),
            ("file", "usr/bin/python3.11", elf(python_machine or a.e_machine)),
            ("link", "usr/bin/python3", "python3.11"),
            ("file", "usr/lib/python3.11/os.py", "import sys\n"),
            ("file", "usr/lib/python3.11/old.py", "x = 1\n"),
        ),
        layer(("file", "usr/lib/python3.11/.wh.old.py", b"")),
    ]


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_runtime_entries_link_ld_so_to_the_architectures_loader(arch: str) -> None:
    a = ARCHES[arch]
    entries, version = runtime_entries_from(base_files(debian_base(arch)), arch=a, what="base")
    by_path = {e.path: e for e in entries}
    assert version == "3.11"
    assert by_path[f"{IMAGE_ROOT}/lib/ld.so"] == FileEntry.symlink(f"{IMAGE_ROOT}/lib/ld.so", a.loader)
    assert elf_machine(by_path[f"{IMAGE_ROOT}/lib/{a.loader}"].data) == a.e_machine
    assert by_path[f"{IMAGE_ROOT}/lib/libz.so.1"].target == "libz.so.1.2.13"
    assert by_path[f"{IMAGE_ROOT}/bin/python3"].kind == "file"
    assert f"{IMAGE_ROOT}/lib/python3.11/os.py" in by_path
    assert f"{IMAGE_ROOT}/lib/python3.11/old.py" not in by_path  # a later layer's whiteout removed it
    assert runtime_command("/r")[:4] == ["/r/lib/ld.so", "--library-path", "/r/lib", "/r/bin/python3"]


def test_a_merged_usr_base_with_links_for_loader_and_interpreter() -> None:
    a = ARCHES["arm64"]
    files = base_files(
        [
            layer(
                ("file", f"usr/lib/{a.triplet}/{a.loader}", elf(a.e_machine)),
                ("link", "usr/bin/python3.11", "/usr/bin/python3.11-real"),
                ("file", "usr/bin/python3.11-real", elf(a.e_machine)),
                ("hard", "usr/lib/python3.11/os.py", "usr/bin/python3.11-real"),
            )
        ]
    )
    assert resolve(files, "usr/bin/python3.11") == "usr/bin/python3.11-real"
    entries, _ = runtime_entries_from(files, arch=a, what="base")
    python = next(e for e in entries if e.path == f"{IMAGE_ROOT}/bin/python3")
    assert python.kind == "file" and elf_machine(python.data) == a.e_machine
    assert next(e for e in entries if e.path.endswith("/os.py")).data == elf(a.e_machine)  # a hard link is its data


def test_a_base_of_another_machine_is_refused_before_anything_is_deployed() -> None:
    with pytest.raises(AgentImageError, match=r"^base: the loader is not arm64 code \(ELF machine 62, want 183\)"):
        runtime_entries_from(base_files(debian_base("arm64", loader_machine=62)), arch=ARCHES["arm64"], what="base")
    with pytest.raises(AgentImageError, match=r"^base: the interpreter is not amd64 code"):
        runtime_entries_from(base_files(debian_base("amd64", python_machine=183)), arch=ARCHES["amd64"], what="base")
    with pytest.raises(AgentImageError, match=r"^base has no ld-linux-aarch64.so.1 in /lib/aarch64-linux-gnu"):
        runtime_entries_from(base_files(debian_base("amd64")), arch=ARCHES["arm64"], what="base")


def test_a_base_without_a_usable_python_says_to_set_agent_base() -> None:
    with pytest.raises(AgentImageError, match=r"^busybox has no Python 3 at .*set agentBase"):
        runtime_entries_from(
            base_files([layer(("file", "bin/busybox", elf(62)))]), arch=ARCHES["amd64"], what="busybox"
        )
    old = base_files([layer(("file", "usr/bin/python3.9", elf(62)))])
    with pytest.raises(AgentImageError, match=r"^old has Python 3.9; the agent needs 3.11 or newer"):
        runtime_entries_from(old, arch=ARCHES["amd64"], what="old")


def test_an_image_config_for_another_architecture_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "base.tar"
    write_archive(archive, tag="x/py:1", layers=debian_base("amd64"), config=ImageConfig(), architecture="amd64")
    with pytest.raises(AgentImageError, match=r"^py is a linux/amd64 image, the nodes need linux/arm64"):
        build_agent_image(python_archive=archive, out_dir=tmp_path / "out", arch="arm64", what="py")
    built = build_agent_image(python_archive=archive, out_dir=tmp_path / "out", arch="amd64")
    assert built.tag.startswith("innerloop.local/innerloop-agent:")
    assert build_agent_image(python_archive=archive, out_dir=tmp_path / "out", arch="amd64") == built


def test_the_bases_hash_based_bytecode_is_kept_and_timestamp_bytecode_dropped() -> None:
    """A layer's files have mtime 0: a timestamp .pyc never validates there, an unchecked-hash one always does."""
    a = ARCHES["amd64"]
    unchecked = b"\xa7\r\r\n" + (1).to_bytes(4, "little") + bytes(8) + b"code"
    stamped = b"\xa7\r\r\n" + bytes(4) + bytes(8) + b"code"
    base = [
        *debian_base("amd64"),
        layer(
            ("file", "usr/lib/python3.11/__pycache__/os.cpython-311.pyc", unchecked),
            ("file", "usr/lib/python3.11/re.py", "x = 2\n"),
            ("file", "usr/lib/python3.11/__pycache__/re.cpython-311.pyc", stamped),
        ),
    ]
    entries, _ = runtime_entries_from(base_files(base), arch=a, what="base")
    pycs = {e.path.rsplit("/", 1)[1]: e.data for e in entries if e.path.endswith(".pyc")}
    assert pycs == {"os.cpython-311.pyc": unchecked}
    assert remap("usr/lib/python3.11/__pycache__/os.cpython-311.pyc", arch=a, python=DEBIAN) == (
        f"{IMAGE_ROOT}/lib/python3.11/__pycache__/os.cpython-311.pyc"
    )
