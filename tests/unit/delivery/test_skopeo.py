"""skopeo's command lines, the docker config it is given, and its failures as one line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from innerloop.delivery.choice import RegistryTarget
from innerloop.delivery.deliver import RegistryPush, archive_config_digest
from innerloop.delivery.skopeo import (
    copy_argv,
    docker_authfile,
    explain_failure,
    fatal_message,
    inspect_argv,
    is_missing_manifest,
)
from innerloop.oci.archive import BuiltImage, FileEntry, ImageConfig, layer_from_entries, write_archive

ARCHIVE = Path("/cache/api.tar")


def test_copy_to_a_tls_registry_with_a_docker_config() -> None:
    argv = copy_argv(
        archive=ARCHIVE,
        dest="registry.example.com/team/api:1",
        digestfile=Path("/tmp/d"),
        insecure=False,
        authfile=Path("/home/u/.docker/config.json"),
    )
    assert argv == [
        "skopeo",
        "copy",
        "--quiet",
        "--retry-times",
        "2",
        "--authfile",
        "/home/u/.docker/config.json",
        "--digestfile",
        "/tmp/d",
        "docker-archive:/cache/api.tar",
        "docker://registry.example.com/team/api:1",
    ]
    assert not any("tls-verify" in a for a in argv)


def test_copy_to_an_insecure_registry_turns_tls_verification_off_and_nothing_else() -> None:
    argv = copy_argv(archive=ARCHIVE, dest="127.0.0.1:5000/api:1", digestfile=Path("/d"), insecure=True, authfile=None)
    assert "--dest-tls-verify=false" in argv
    assert "--authfile" not in argv


def test_inspect_reads_the_raw_manifest() -> None:
    argv = inspect_argv(ref="localhost:5001/api:1", insecure=True, authfile=Path("/c.json"))
    assert argv == [
        "skopeo",
        "inspect",
        "--raw",
        "--authfile",
        "/c.json",
        "--tls-verify=false",
        "docker://localhost:5001/api:1",
    ]


def test_authfile_is_docker_config_then_home_and_none_under_registry_auth_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    assert docker_authfile({}, home=home) is None  # no file: skopeo's own lookup
    (home / ".docker" / "config.json").write_text("{}")
    assert docker_authfile({}, home=home) == home / ".docker" / "config.json"
    custom = tmp_path / "ci-docker"
    custom.mkdir()
    (custom / "config.json").write_text("{}")
    assert docker_authfile({"DOCKER_CONFIG": str(custom)}, home=home) == custom / "config.json"
    assert docker_authfile({"DOCKER_CONFIG": str(custom), "REGISTRY_AUTH_FILE": "/x.json"}, home=home) is None


UNAUTHORIZED = (
    'time="2026-12-01T19:02:57Z" level=fatal msg="trying to reuse blob sha256:789b at destination: checking '
    'whether a blob sha256:789b exists in 127.0.0.1:5978/x/b: unauthorized: authentication required"\n'
)
PLAIN_HTTP = (
    'time="t" level=fatal msg="pinging container registry 127.0.0.1:5978: Get \\"https://127.0.0.1:5978/v2/\\": '
    'http: server gave HTTP response to HTTPS client"'
)
NO_HOST = (
    'time="t" level=fatal msg="pinging container registry nonexistent.invalid: Get \\"http://nonexistent.invalid/v2/\\":'
    ' dial tcp: lookup nonexistent.invalid on 10.255.255.53:53: no such host"'
)
REFUSED = (
    'time="t" level=fatal msg="pinging container registry 127.0.0.1:1: '
    'dial tcp 127.0.0.1:1: connect: connection refused"'
)
DENIED = 'time="t" level=fatal msg="writing manifest: denied: requested access to the resource is denied"'
# distribution in maintenance mode (read-only), as skopeo 1.9 prints it: with a literal \n at the end.
READ_ONLY = (
    'time="t" level=fatal msg="writing blob: initiating layer upload to /v2/team/api/blobs/uploads/ in r:5: '
    'StatusCode: 405, Method not allowed\\n"'
)
UNKNOWN = (
    'time="t" level=fatal msg="Error parsing image name \\"docker://r/x/nope:1\\": reading manifest 1 in r/x/nope: '
    'manifest unknown: manifest unknown"'
)
CERT = (
    'time="t" level=fatal msg="pinging container registry r: Get \\"https://r/v2/\\": '
    'x509: certificate signed by unknown authority"'
)


def test_fatal_message_unwraps_logrus() -> None:
    assert fatal_message(PLAIN_HTTP).endswith(
        'Get "https://127.0.0.1:5978/v2/": http: server gave HTTP response to HTTPS client'
    )
    assert fatal_message("plain failure\n\n") == "plain failure"
    assert fatal_message(READ_ONLY).endswith("StatusCode: 405, Method not allowed")


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (
            UNAUTHORIZED,
            "registry r:5 refused pushing r:5/api:1: unauthorized. "
            "Log in with `docker login r:5` or put credentials in ~/.docker/config.json",
        ),
        (PLAIN_HTTP, "registry r:5 speaks plain HTTP, not HTTPS: set `registry: {insecure: true}` in innerloop.yaml"),
        (NO_HOST, "cannot reach registry r:5 ("),
        (REFUSED, "cannot reach registry r:5 ("),
        (DENIED, "registry r:5 refused pushing r:5/api:1: writing manifest: denied"),
        (READ_ONLY, "registry r:5 refused pushing r:5/api:1: it takes no pushes (read-only, a mirror"),
        (CERT, "registry r:5's TLS certificate is not trusted (x509: certificate signed by unknown authority)"),
        ("something odd", "pushing r:5/api:1 failed: something odd"),
    ],
)
def test_failures_are_one_line_saying_what_to_do(stderr: str, expected: str) -> None:
    line = explain_failure(stderr, host="r:5", ref="r:5/api:1")
    assert line.startswith(expected)
    assert "\n" not in line


def test_a_missing_manifest_means_push() -> None:
    assert is_missing_manifest(UNKNOWN)
    assert not is_missing_manifest(UNAUTHORIZED)
    assert not is_missing_manifest(REFUSED)


def test_names_under_the_push_and_the_pull_repository() -> None:
    target = RegistryTarget(push="localhost:5001", pull="kind-registry:5000", insecure=True, source="kep")
    push = RegistryPush(target, env={}, home=Path("/nonexistent"))
    image = BuiltImage(tag="innerloop.local/innerloop-agent:0.1-abc", archive=ARCHIVE)
    assert push.names(image) == (
        "localhost:5001/innerloop-agent",
        "kind-registry:5000/innerloop-agent",
        "0.1-abc",
    )
    named = RegistryPush(
        RegistryTarget(push="gcr.io/my-project", pull="gcr.io/my-project", insecure=False, source="--default-repo"),
        env={},
        home=Path("/nonexistent"),
    )
    assert named.names(BuiltImage(tag="innerloop.local/bookshop-api:1f2e", archive=ARCHIVE)) == (
        "gcr.io/my-project/bookshop-api",
        "gcr.io/my-project/bookshop-api",
        "1f2e",
    )


def test_archive_config_digest_is_the_image_id(tmp_path: Path) -> None:
    archive = tmp_path / "img.tar"
    layer = layer_from_entries([FileEntry(path="/hello", data=b"hi")])
    image_id = write_archive(archive, tag="t/img:1", layers=[layer], config=ImageConfig(cmd=["/hello"]))
    assert archive_config_digest(archive, "t/img:1") == f"sha256:{image_id}"
