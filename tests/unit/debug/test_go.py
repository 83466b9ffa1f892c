"""Go under Delve: the launch, where dlv is found, and what a Go binary tells (real binaries, built here)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from innerloop.config import parse_config
from innerloop.debug import delve, go
from innerloop.debug.languages import DebugError, detect_language, launch_for
from innerloop.engine.plan import BuiltImageInfo, PlanProblems, debug_launch
from innerloop.oci.archive import ImageConfig, write_archive

REPO = Path(__file__).resolve().parents[3]
MAIN_GO = """package main

import "os"

func greeting(name string) string {
	text := "hello, " + name
	return text
}

func main() {
	os.Stdout.WriteString(greeting("ada") + "\\n")
}
"""


def test_the_binary_runs_as_delves_child_headless_on_loopback() -> None:
    launch = go.go_launch(["/inventory", "--port", "8080"], port=2345, wait=False, mappings=[])
    assert launch.command == [
        "/.innerloop/tools/dlv/dlv",
        "exec",
        "--headless",
        "--listen=127.0.0.1:2345",
        "--accept-multiclient",
        "--api-version=2",
        "--only-same-user=false",
        "--check-go-version=false",
        "--continue",
        "/inventory",
        "--",
        "--port",
        "8080",
    ]
    assert launch.tools == ("dlv",)
    assert launch.port == 2345
    assert launch.language == "go"


def test_wait_holds_the_program_until_an_editor_attaches() -> None:
    launch = go.go_launch(["/app"], port=40000, wait=True, mappings=[])
    assert "--continue" not in launch.command
    assert launch.command[-2:] == ["/app", "--"]
    assert "--listen=127.0.0.1:40000" in launch.command


def test_vs_code_attaches_remote_with_the_builds_paths_substituted() -> None:
    launch = go.go_launch(["/app"], port=2345, wait=False, mappings=[("inventory", "example.com/inventory")])
    assert launch.launch_json == {
        "type": "go",
        "request": "attach",
        "mode": "remote",
        "debugAdapter": "dlv-dap",
        "host": "127.0.0.1",
        "port": 2345,
        "substitutePath": [{"from": "${workspaceFolder}/inventory", "to": "example.com/inventory"}],
    }
    assert "inventory -> example.com/inventory" in launch.note


def test_go_is_registered_with_the_framework() -> None:
    launch = launch_for("go", ["/srv/app"], port=None, wait=False, mappings=[])
    assert launch.command[0] == go.DLV
    assert "--listen=127.0.0.1:2345" in launch.command  # Delve's usual port


def test_a_binary_built_from_a_go_module_is_go_even_among_more_python_files() -> None:
    files = ["go.mod", "main.go", "requirements.txt", *(f"scripts/s{i}.py" for i in range(12))]
    assert detect_language(["/srv/app"], files) == "go"
    assert not go.is_go(["/srv/app"], ["requirements.txt", "app.py"])


def test_the_pinned_version_is_pinned_with_its_checksum() -> None:
    """go.mod names the version; go.sum must hold its checksum, or a build would take whatever the proxy says."""
    sums = (delve.MODULE / "go.sum").read_text()
    assert f"github.com/go-delve/delve {delve.DELVE_VERSION} h1:" in sums
    assert delve.DELVE_VERSION.startswith("v1.")


def test_delve_is_found_in_a_cache_or_said_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path / "machine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-go-here"))
    monkeypatch.setattr(delve, "_go", lambda: None)
    with pytest.raises(DebugError, match=r"Delve v\d+\.\d+\.\d+ for arm64 is not built and Go is not installed"):
        delve.delve_binary("arm64")
    built = tmp_path / "user" / "innerloop" / "bin" / f"dlv-{delve.DELVE_VERSION}" / "arm64" / "dlv"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"\x7fELF")
    assert delve.delve_binary("arm64") == built
    machine = tmp_path / "machine" / "bin" / f"dlv-{delve.DELVE_VERSION}" / "arm64" / "dlv"
    machine.parent.mkdir(parents=True)
    machine.write_bytes(b"\x7fELF")
    assert delve.delve_binary("arm64") == machine  # the machine's (CI's, hack/delve's) first
    with pytest.raises(DebugError, match="not 'riscv64'"):
        delve.delve_binary("riscv64")


# ---- what the binary says: real binaries from the machine's Go ----------------------------------------


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    toolchain = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if toolchain is None:
        pytest.skip("Go is not installed")
    src = tmp_path_factory.mktemp("greeter")
    (src / "go.mod").write_text("module example.com/greeter\n\ngo 1.19\n")
    (src / "cmd" / "greeter").mkdir(parents=True)
    (src / "cmd" / "greeter" / "main.go").write_text(MAIN_GO)
    out: dict[str, Path] = {}
    for name, flags in {
        "trimpath": ["-trimpath"],
        "plain": [],
        "stripped": ["-trimpath", "-ldflags=-s -w"],
        "unoptimized": ["-trimpath", "-gcflags=all=-N -l"],
    }.items():
        out[name] = src / name
        subprocess.run(
            [toolchain, "build", *flags, "-o", str(out[name]), "./cmd/greeter"],
            cwd=src,
            check=True,
            env={"CGO_ENABLED": "0", "PATH": "/usr/bin:/bin", "HOME": str(src), "GOFLAGS": "-mod=mod"} | _go_caches(),
            capture_output=True,
        )
    out["src"] = src
    return out


def _go_caches() -> dict[str, str]:
    cache = Path("/var/cache/innerloop/go")
    return {"GOCACHE": str(cache / "build"), "GOMODCACHE": str(cache / "mod")} if cache.is_dir() else {}


def _read(path: Path) -> go.GoBinary:
    with path.open("rb") as f:
        found = go.read_go_binary(f)
    assert found is not None
    return found


def test_trimpath_sources_are_module_relative_and_map_to_the_module_folder(binaries: dict[str, Path]) -> None:
    binary = _read(binaries["trimpath"])
    assert binary.debug_info
    assert "example.com/greeter/cmd/greeter/main.go" in binary.main_files
    assert binary.go_version and re.fullmatch(r"\d+\.\d+(\.\d+)?", binary.go_version)
    assert binary.optimized
    local = ["go.mod", "cmd/greeter/main.go"]
    assert go.source_mappings(binary, local, local_root="greeter") == [("greeter", "example.com/greeter")]


def test_without_trimpath_the_build_folder_is_mapped(binaries: dict[str, Path]) -> None:
    binary = _read(binaries["plain"])
    build_root = str(binaries["src"])
    assert f"{build_root}/cmd/greeter/main.go" in binary.main_files
    assert go.source_mappings(binary, ["cmd/greeter/main.go"], local_root="svc") == [("svc", build_root)]
    # files the binary was not built from: nothing to map, rather than a wrong mapping
    assert go.source_mappings(binary, ["other/main_test.go"], local_root="svc") == []


def test_a_stripped_binary_is_refused_in_one_line_that_says_what_to_change(binaries: dict[str, Path]) -> None:
    problem = go.debug_problem(_read(binaries["stripped"]), "/inventory")
    assert problem is not None and "\n" not in problem
    assert problem.startswith("the binary /inventory has no debug info (built with -ldflags='-s -w'): drop -s -w")
    assert go.debug_problem(_read(binaries["trimpath"]), "/inventory") is None


def test_an_unoptimized_build_is_told_apart(binaries: dict[str, Path]) -> None:
    assert not _read(binaries["unoptimized"]).optimized


def test_what_is_not_a_go_program_is_none() -> None:
    assert go.read_go_binary(io.BytesIO(b"#!/bin/sh\nexec /app\n")) is None
    with Path("/bin/sh").open("rb") as f:  # ELF, not Go
        assert go.read_go_binary(f) is None


# ---- the program inside the built image --------------------------------------------------------------


def _layer(files: dict[str, bytes | str]) -> bytes:
    """A layer tar: bytes are files, a str is a symlink's target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o755
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _archive(path: Path, layers: list[bytes]) -> Path:
    names = [f"{i}/layer.tar" for i in range(len(layers))]
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("manifest.json", json.dumps([{"Layers": names}]).encode()),
            *zip(names, layers, strict=True),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_top_layer_wins_symlinks_are_followed_and_whiteouts_delete(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path / "image.tar",
        [
            _layer({"bin/app": b"old", "usr/bin/tool": b"tool", "etc/gone": b"x"}),
            _layer({"./bin/app": b"new", "usr/local/bin/tool": "../../bin/tool", "bin/tool": "/usr/bin/tool"}),
            _layer({"etc/.wh.gone": b""}),
        ],
    )
    assert go.read_image_file(archive, "/bin/app") == b"new"
    assert go.read_image_file(archive, "/usr/local/bin/tool") == b"tool"
    assert go.read_image_file(archive, "/etc/gone") is None
    assert go.read_image_file(archive, "/nowhere") is None


def test_a_program_is_looked_for_as_the_kubelet_would_start_it() -> None:
    assert go.program_path(["/inventory"], env=[], workdir="/app") == ["/inventory"]
    assert go.program_path(["./bin/api"], env=[], workdir="/app") == ["/app/bin/api"]
    assert go.program_path(["api"], env=["PATH=/opt/bin:/usr/bin"], workdir="/") == ["/opt/bin/api", "/usr/bin/api"]


def _image(path: Path, layers: list[bytes], config: ImageConfig | None = None) -> Path:
    write_archive(path, tag="t:1", layers=layers, config=config or ImageConfig())
    return path


def test_inspect_image_refuses_a_stripped_build_and_maps_a_good_one(binaries: dict[str, Path], tmp_path: Path) -> None:
    project, context = binaries["src"].parent, binaries["src"]
    stripped = _image(tmp_path / "s.tar", [_layer({"greeter": binaries["stripped"].read_bytes()})])
    with pytest.raises(DebugError, match=r"^the binary /greeter has no debug info"):
        go.inspect_image(archive=stripped, original=["/greeter"], project_root=project, context=context)
    good = _image(
        tmp_path / "g.tar",
        [_layer({"usr/local/bin/greeter": binaries["trimpath"].read_bytes(), "run.sh": b"#!/bin/sh\n"})],
        ImageConfig(env={"PATH": "/usr/local/bin:/usr/bin"}),
    )
    found = go.inspect_image(archive=good, original=["greeter", "--port=1"], project_root=project, context=context)
    assert found is not None
    assert found.program == "/usr/local/bin/greeter"
    assert found.mappings == [(context.name, "example.com/greeter")]
    # not there, or not Go (a wrapper script): nothing to check or map
    assert go.inspect_image(archive=good, original=["/missing"], project_root=project, context=context) is None
    assert go.inspect_image(archive=good, original=["/run.sh"], project_root=project, context=context) is None


# ---- the plan: what the built image's binary said reaches the launch -----------------------------------

GO_CONFIG = """\
version: 1
name: shop
services:
  inventory:
    manifests: {files: [k8s/inventory.yaml]}
    image: {name: inventory, context: inventory}
"""


def test_the_plan_takes_the_binarys_mappings_and_refuses_a_stripped_one() -> None:
    service = parse_config(GO_CONFIG).services["inventory"]
    mapped = BuiltImageInfo(
        reference="inventory:1", source_mappings=[("inventory", "example.com/inventory")], program_language="go"
    )
    # No sync rules, so no files to tell the language by: the image's binary says Go.
    launch = debug_launch("inventory", service, ["/inventory"], [], mapped)
    assert launch.language == "go"
    assert launch.launch_json["substitutePath"] == [
        {"from": "${workspaceFolder}/inventory", "to": "example.com/inventory"}
    ]
    stripped = BuiltImageInfo(
        reference="inventory:1", debug_problem="the binary /inventory has no debug info", program_language="go"
    )
    with pytest.raises(PlanProblems) as refused:
        debug_launch("inventory", service, ["/inventory"], [], stripped)
    [problem] = refused.value.problems
    assert problem.path == ("services", "inventory", "debug")
    assert problem.message == "the binary /inventory has no debug info"
