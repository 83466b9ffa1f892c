"""What ``innerloop.yaml`` means: pydantic models, pure validation, no I/O.

The models are the single source of the config's shape: ``load.py`` validates
the user's file against them, ``schema.py`` turns them into the JSON Schema
that editors use for completion and hover text (so every description here is
written for the person editing the file, and the model docstrings too).

Choices worth knowing:

- Strict types: YAML already gives typed values, so ``port: "8080"`` or
  ``restart: yes`` are mistakes to report, not to coerce. The exception is
  environment-like values (``env``, ``buildArgs``, ``helm.set``), where
  ``DEBUG: 1`` or ``VERBOSE: true`` obviously mean the strings ``"1"`` and
  ``"true"`` (Kubernetes itself would reject the numbers).
- The YAML spelling is camelCase (``dependsOn``), as in Kubernetes manifests;
  Python code uses snake_case attributes (``depends_on``) and may construct
  models with either; the loader accepts only the YAML spelling.
- Checks that span services (unknown ``dependsOn`` names, dependency cycles,
  duplicate local ports) run after the structure is valid and report
  :class:`Problem` values with a path in the YAML spelling, so the loader can
  point at the exact line. They are part of model validation, so a
  :class:`Project` built in Python is as consistent as one loaded from a file.
- Custom validators raise plain ``ValueError`` with a message that says what
  is expected; there are no unions of models, because pydantic reports every
  member of a failed union and the user would read errors about alternatives
  they did not write.
"""

from __future__ import annotations

import difflib
import ipaddress
import posixpath
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)

# RFC 1123 label, as Kubernetes names namespaces, Services and containers.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# Kubernetes IANA_SVC_NAME: the name of a container port (``http``).
PORT_NAME_PATTERN = r"^(?=.{1,15}$)[a-z0-9]+(-[a-z0-9]+)*$"
# What Kubernetes accepts as an environment variable name.
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# One path component of an image reference (docker/distribution's grammar).
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_NAME_PATTERN = rf"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*$"
WORKLOAD_PATTERN = r"^(deployment|statefulset)/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
HELM_RELEASE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$"
# A chart's name in a chart repository (helm allows these characters in Chart.yaml's name).
HELM_CHART_NAME_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9._]*$"
# oci://HOST[:PORT]/PATH/NAME, the path as in an image name; the version is not part of it here.
HELM_OCI_PATTERN = rf"^oci://[a-zA-Z0-9.-]+(?::[0-9]+)?(?:/{_IMAGE_COMPONENT})+$"

MAX_PORT = 65535


def _dns_label(value: str) -> str:
    if not re.fullmatch(DNS_LABEL_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label: use at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. bookshop-api)"
        )
    return value


def _relative_path(value: str) -> str:
    if not value:
        raise ValueError("the path is empty; use '.' for the folder of innerloop.yaml")
    if value.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:[\\/]", value):
        raise ValueError(f"{value!r} is absolute; write it relative to the folder of innerloop.yaml")
    if "\0" in value:
        raise ValueError(f"{value!r} contains a NUL character")
    # A repository someone cloned must not reach the developer's files (sync: {local: ../../.ssh} would copy
    # the keys into a pod): every local path stays below the folder of innerloop.yaml. Symlinks are checked
    # where the files exist (``load.py``, ``local_path_problems``).
    normal = posixpath.normpath(value.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        raise ValueError(
            f"{value!r} leads out of the folder of innerloop.yaml; name a file or folder inside the project "
            "(innerloop reads only the project's own files)"
        )
    return value


def _container_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not absolute; a path in the container starts with '/' (e.g. /app/)")
    return value


def _image_name(value: str) -> str:
    if not re.fullmatch(IMAGE_NAME_PATTERN, value):
        hint = " without a tag or digest" if re.search(r"[:@][^/]*$", value) else ""
        raise ValueError(
            f"{value!r} is not an image name{hint}: write it as the manifests do, "
            "e.g. bookshop-api or registry.example.com/team/api"
        )
    return value


def _workload(value: str) -> str:
    if not re.fullmatch(WORKLOAD_PATTERN, value):
        raise ValueError(f"{value!r} is not a workload: write deployment/<name> or statefulset/<name>")
    return value


def _helm_release(value: str) -> str:
    if not re.fullmatch(HELM_RELEASE_PATTERN, value):
        raise ValueError(f"{value!r} is not a Helm release name: at most 53 lowercase letters, digits and '-'")
    return value


def _helm_chart(value: str) -> str:
    if value.startswith("oci://"):
        if re.search(r"/[^/]*[:@][^/]*$", value.removeprefix("oci://")):
            raise ValueError(
                f"{value!r} has a tag or digest: write the reference without it and the version under version "
                "(e.g. chart: oci://registry.example.com/charts/api, version: 1.2.0)"
            )
        if not re.fullmatch(HELM_OCI_PATTERN, value):
            raise ValueError(
                f"{value!r} is not an OCI chart reference: write oci://HOST[:PORT]/PATH/NAME "
                "(e.g. oci://registry.example.com/charts/api)"
            )
        return value
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
        raise ValueError(
            f"{value!r} is a URL: for a chart repository write the chart's name in chart and the URL under repo "
            "(e.g. chart: postgresql, repo: https://charts.example.com); for a registry, chart: oci://..."
        )
    return _relative_path(value)


def _helm_repository(value: str) -> str:
    if value.startswith("oci://"):
        raise ValueError(
            f"{value!r} is an OCI registry, not a chart repository: write the whole reference in chart "
            "(chart: oci://HOST/PATH/NAME) and remove repo"
        )
    if not re.fullmatch(r"https?://[^/\s?#]+(/\S*)?", value):
        raise ValueError(f"{value!r} is not a chart repository URL: write http(s)://HOST/PATH (where index.yaml is)")
    return value


def _env_name(value: str) -> str:
    if not re.fullmatch(ENV_NAME_PATTERN, value):
        raise ValueError(
            f"{value!r} is not an environment variable name: letters, digits, '_', '-' and '.', "
            "not starting with a digit"
        )
    return value


def _ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address: use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from None
    return value


def _port_reference(value: object) -> int | str:
    # One validator instead of ``int | str``: a union would report two errors
    # ("should be an integer", "should be a string") for one mistake.
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_PORT:
            raise ValueError(f"port {value} is out of range: a port number is 1-{MAX_PORT}")
        return value
    if isinstance(value, str):
        if value.isdigit():
            raise ValueError(f"{value!r} is a string: write the port number without quotes")
        if not re.fullmatch(PORT_NAME_PATTERN, value) or not re.search("[a-z]", value):
            raise ValueError(
                f"{value!r} is not a port name: at most 15 lowercase letters, digits and '-', "
                "with at least one letter (e.g. http)"
            )
        return value
    raise ValueError(f"expected a port number (8080) or the name of a container port (http), got {value!r}")


def _scalar_text(value: object) -> object:
    # ``DEBUG: 1`` and ``VERBOSE: true`` mean the strings "1" and "true".
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _not_null(schema: dict[str, Any]) -> None:
    # ``X | None = None`` means "may be left out", not "may be written as
    # null": show editors the plain type.
    options = schema.pop("anyOf", None)
    if options is not None:
        schema.update(next(o for o in options if o != {"type": "null"}))
    schema.pop("default", None)


DnsLabel = Annotated[
    str,
    AfterValidator(_dns_label),
    WithJsonSchema({"type": "string", "pattern": DNS_LABEL_PATTERN}),
]
RelativePath = Annotated[str, AfterValidator(_relative_path), WithJsonSchema({"type": "string", "minLength": 1})]
ContainerPath = Annotated[str, AfterValidator(_container_path), WithJsonSchema({"type": "string", "pattern": "^/"})]
ImageName = Annotated[
    str, AfterValidator(_image_name), WithJsonSchema({"type": "string", "pattern": IMAGE_NAME_PATTERN})
]
EnvName = Annotated[str, AfterValidator(_env_name), WithJsonSchema({"type": "string", "pattern": ENV_NAME_PATTERN})]
Workload = Annotated[str, AfterValidator(_workload), WithJsonSchema({"type": "string", "pattern": WORKLOAD_PATTERN})]
HelmRelease = Annotated[
    str,
    AfterValidator(_helm_release),
    WithJsonSchema({"type": "string", "pattern": HELM_RELEASE_PATTERN}),
]
PortNumber = Annotated[int, Field(ge=1, le=MAX_PORT)]
PortReference = Annotated[
    int | str,
    PlainValidator(_port_reference),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_PORT},
                {"type": "string", "pattern": PORT_NAME_PATTERN},
            ]
        }
    ),
]
ScalarText = Annotated[
    str,
    BeforeValidator(_scalar_text),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


class Helm(_Model):
    """A Helm chart (local, oci:// or in a chart repository), rendered with `helm template` and applied."""

    model_config = ConfigDict(json_schema_extra={"dependentRequired": {"repo": ["version"]}})

    chart: Annotated[str, AfterValidator(_helm_chart)] = Field(
        min_length=1,
        description="The chart: a folder or a packaged .tgz relative to innerloop.yaml, "
        "an OCI reference (oci://HOST/PATH/NAME, no tag: give version), or a chart's name in repo.",
        examples=["charts/api", "charts/api-1.2.0.tgz", "oci://registry.example.com/charts/api", "postgresql"],
    )
    repo: Annotated[str, AfterValidator(_helm_repository)] | None = Field(
        default=None,
        description="The URL of the chart repository that holds chart (like `helm template --repo`); "
        "not for oci:// charts, whose reference names their registry.",
        examples=["https://charts.example.com/stable"],
        json_schema_extra=_not_null,
    )
    version: Annotated[str, Field(min_length=1)] | None = Field(
        default=None,
        description="The chart version, required for a chart from a registry or repository "
        "(an exact version such as 1.2.0 renders the same chart for everyone; a range such as ^1.2 "
        "takes the newest match). A local chart's version is its Chart.yaml's.",
        examples=["1.2.0"],
        json_schema_extra=_not_null,
    )
    release: HelmRelease | None = Field(
        default=None,
        description="The release name (default: the service's name).",
        examples=["api"],
        json_schema_extra=_not_null,
    )
    values: list[RelativePath] = Field(
        default_factory=list,
        description="Values files, relative to innerloop.yaml, applied in order (like `helm -f`).",
        examples=[["charts/api/values-dev.yaml"]],
    )
    set_values: dict[str, ScalarText] = Field(
        default_factory=dict,
        alias="set",
        description="Single values, applied after the values files (like `helm --set key=value`).",
        examples=[{"replicaCount": "1", "image.pullPolicy": "IfNotPresent"}],
    )

    @property
    def remote(self) -> bool:
        """The chart comes from an OCI registry or a chart repository, not from this machine's files."""
        return self.repo is not None or self.chart.startswith("oci://")

    @model_validator(mode="after")
    def _one_kind_of_chart(self) -> Self:
        if self.repo is not None:
            if self.chart.startswith("oci://"):
                raise ValueError(
                    "repo is for a chart repository; an oci:// chart names its registry itself: remove repo"
                )
            if not re.fullmatch(HELM_CHART_NAME_PATTERN, self.chart) or self.chart.endswith(".tgz"):
                raise ValueError(
                    f"with repo, chart is the chart's name in that repository (e.g. postgresql), not {self.chart!r}"
                )
        if self.remote and self.version is None:
            raise ValueError(
                "give version for a chart from a registry or repository (e.g. version: 1.2.0), "
                "so every `up` renders the same chart; without it helm takes the newest"
            )
        if not self.remote and self.version is not None:
            raise ValueError(
                f"version is for a chart from a registry or repository; the local chart {self.chart!r} "
                "has its version in its Chart.yaml: remove version"
            )
        return self


class Manifests(_Model):
    """Where the service's Kubernetes objects come from: exactly one of files, kustomize or helm."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    files: Annotated[list[RelativePath], Field(min_length=1)] | None = Field(
        default=None,
        description="YAML files or folders of YAML files, relative to innerloop.yaml.",
        examples=[["k8s/api.yaml"], ["k8s/api/"]],
        json_schema_extra=_not_null,
    )
    kustomize: RelativePath | None = Field(
        default=None,
        description="A kustomization folder, relative to innerloop.yaml (rendered like `kubectl kustomize`).",
        examples=["k8s/overlays/dev"],
        json_schema_extra=_not_null,
    )
    helm: Helm | None = Field(default=None, description="A Helm chart.", json_schema_extra=_not_null)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        given = [name for name in ("files", "kustomize", "helm") if getattr(self, name) is not None]
        if len(given) != 1:
            found = f"got {' and '.join(given)}" if given else "got none"
            raise ValueError(f"give exactly one of files, kustomize or helm ({found})")
        return self


# os/arch[/variant], as `docker build --platform` takes it.
_PLATFORM_PATTERN = r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$"


class CustomBuild(_Model):
    """Your own build command (builder: custom), like Tilt's custom_build and Skaffold's custom builder."""

    command: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = Field(
        description="The command and its arguments, run in the build context without a shell. It gets IMAGE "
        "(also EXPECTED_REF: the tag to produce), BUILD_CONTEXT, IMAGE_ARCHIVE (where it must write the image "
        "as a docker-archive or oci-archive tar), PLATFORM and the build args in its environment.",
        examples=[
            ["./hack/build-image.sh"],
            ["sh", "-c", "docker build -t $IMAGE . && docker save -o $IMAGE_ARCHIVE $IMAGE"],
        ],
    )


class Image(_Model):
    """The image innerloop builds for the service, and swaps into its manifests."""

    name: ImageName = Field(
        description="The image name as the manifests write it (no tag); "
        "containers using it run the image innerloop built.",
        examples=["bookshop-api"],
    )
    context: RelativePath = Field(
        default=".",
        description="The build context: a folder relative to innerloop.yaml.",
        examples=["api"],
    )
    dockerfile: RelativePath | None = Field(
        default=None,
        description="The Dockerfile, relative to innerloop.yaml (default: <context>/Dockerfile).",
        examples=["api/Dockerfile.dev"],
        json_schema_extra=_not_null,
    )
    build_args: dict[str, ScalarText] = Field(
        default_factory=dict,
        alias="buildArgs",
        description="Build arguments (Dockerfile ARG values).",
        examples=[{"PYTHON_VERSION": "3.11"}],
    )
    builder: Literal["auto", "builtin", "buildah", "podman", "docker", "buildx", "buildctl", "nerdctl", "custom"] = (
        Field(
            default="auto",
            description="Which tool builds the image. auto: innerloop's built-in builder when it can build the "
            "Dockerfile exactly (no RUN, no multi-stage copies), else the first of buildah, podman, docker buildx, "
            "docker, nerdctl, buildctl that is installed. custom: your own command (see custom).",
        )
    )
    target: Annotated[str, Field(min_length=1)] | None = Field(
        default=None,
        description="The Dockerfile stage to build (like `docker build --target`); default: the last stage.",
        examples=["dev"],
        json_schema_extra=_not_null,
    )
    platform: Annotated[str, WithJsonSchema({"type": "string", "pattern": _PLATFORM_PATTERN})] | None = Field(
        default=None,
        description="The platform to build for, os/arch[/variant] (like `docker build --platform`), e.g. an "
        "amd64 cluster from an arm64 laptop; default: the builder's own.",
        examples=["linux/amd64", "linux/arm64"],
        json_schema_extra=_not_null,
    )
    custom: CustomBuild | None = Field(
        default=None,
        description="Your own build command, for builder: custom (implied when this is set).",
        json_schema_extra=_not_null,
    )

    @field_validator("platform")
    @classmethod
    def _os_and_architecture(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(_PLATFORM_PATTERN, value):
            raise ValueError(f"{value!r} is not a platform: write os/arch[/variant], e.g. linux/amd64 or linux/arm64")
        return value

    @model_validator(mode="after")
    def _custom_needs_its_command(self) -> Self:
        if self.builder == "custom" and self.custom is None:
            raise ValueError("builder is custom: give the command under custom (custom: {command: [./build.sh]})")
        if self.custom is not None and self.builder not in ("auto", "custom"):
            raise ValueError(f"custom is only for builder: custom, but builder is {self.builder}: remove one of them")
        return self

    @property
    def dockerfile_path(self) -> str:
        """The Dockerfile relative to innerloop.yaml, with the default filled in."""
        return self.dockerfile if self.dockerfile is not None else posixpath.join(self.context, "Dockerfile")


class SyncRule(_Model):
    """Files copied into the running container as they change, instead of rebuilding the image."""

    local: RelativePath = Field(
        description="A file or folder on this machine, relative to innerloop.yaml. "
        "A trailing '/' syncs the folder's contents.",
        examples=["api/"],
    )
    remote: ContainerPath = Field(
        description="Where it goes in the container: an absolute path.",
        examples=["/app/"],
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Paths not to sync, as gitignore patterns relative to local.",
        examples=[["__pycache__/", "*.pyc", ".venv/"]],
    )
    mode: Literal["one-way", "two-way"] = Field(
        default="one-way",
        description="one-way: this machine to the container. "
        "two-way: files the container writes come back too (e.g. generated lock files).",
    )


class ChangeStep(_Model):
    """A command run in the container when synced files matching paths change."""

    paths: Annotated[list[str], Field(min_length=1)] = Field(
        description="Glob patterns, relative to the roots of the service's sync rules.",
        examples=[["requirements.txt"], ["package.json", "package-lock.json"]],
    )
    run: Annotated[list[str], Field(min_length=1)] = Field(
        description="The command to run in the container, as a list of arguments (no shell).",
        examples=[["pip", "install", "-r", "requirements.txt"]],
    )
    restart: bool = Field(
        default=True,
        description="Restart the service's process after the command succeeds.",
    )


class PortForward(_Model):
    """A container port made reachable on this machine."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"remote": 8080, "local": 8081}, {"remote": "http"}]})

    remote: PortReference = Field(
        description="The container port: a number, or the name of a port in the manifests.",
        examples=[8080, "http"],
    )
    local: Annotated[int, Field(ge=0, le=MAX_PORT)] | None = Field(
        default=None,
        description="The port on this machine (default: the remote port, when it is a number); "
        "0 picks a free port, shown by `innerloop up` and `innerloop status`.",
        examples=[8081, 0],
        json_schema_extra=_not_null,
    )
    address: Annotated[str, AfterValidator(_ip_address)] = Field(
        default="127.0.0.1",
        description="The local address to listen on; 0.0.0.0 makes the port reachable from other machines.",
        examples=["127.0.0.1", "0.0.0.0"],
    )

    @model_validator(mode="after")
    def _local_for_named_port(self) -> Self:
        if self.local is None and isinstance(self.remote, str):
            raise ValueError(f"give local: the remote port is named ({self.remote}), so there is no number to reuse")
        return self

    @property
    def local_port(self) -> int:
        """The port on this machine, with the default filled in."""
        if self.local is not None:
            return self.local
        if isinstance(self.remote, int):
            return self.remote
        raise AssertionError("unreachable: validation requires local for a named port")


def _log_pattern(value: str) -> str:
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"not a regular expression: {err}") from None
    return value


LogPattern = Annotated[
    str,
    AfterValidator(_log_pattern),
    WithJsonSchema({"type": "string", "format": "regex", "examples": ["^ERROR ", "level=error"]}),
]


class Alerts(_Model):
    """Which log lines of the service raise an alert (beyond crashes, probes and scheduling, always watched)."""

    errors: list[LogPattern] = Field(
        default_factory=list,
        description="Regular expressions; a log line matching one raises an alert. Python tracebacks, "
        "Node stack traces, Go panics and lines at error level are recognised without any.",
        examples=[["^ERROR ", "level=error"]],
    )
    ignore: list[LogPattern] = Field(
        default_factory=list,
        description="Regular expressions of error-looking lines that are expected and raise nothing.",
        examples=[["deprecated"]],
    )
    builtin: bool = Field(
        default=True,
        description="Recognise tracebacks, stack traces, panics and error-level lines without patterns.",
    )


class Debug(_Model):
    """Run the service's process under its language's debugger (`innerloop debug`, or `up` when enabled)."""

    enabled: bool = Field(default=False, description="Debug this service under `innerloop up` too.")
    language: Literal["auto", "python", "go", "node", "java"] = Field(
        default="auto",
        description="The process's language (auto: from the image's command and files).",
    )
    port: PortNumber | None = Field(
        default=None,
        description="The debugger's port in the container (default: 5678 python, 2345 go, 9229 node, 5005 java).",
        json_schema_extra=_not_null,
    )
    local: PortNumber | None = Field(
        default=None,
        description="The local port the debugger is forwarded to (default: the same as port, or a free one).",
        json_schema_extra=_not_null,
    )
    wait: bool = Field(
        default=False,
        description="Start the process only once a debugger attaches.",
    )


class Service(_Model):
    """One part of the app: its manifests, how to build it, and how to develop on it."""

    manifests: Manifests = Field(description="Where the service's Kubernetes objects come from.")
    image: Image | None = Field(
        default=None,
        description="The image to build; leave out for services that run a published image (e.g. a database).",
        json_schema_extra=_not_null,
    )
    workload: Workload | None = Field(
        default=None,
        description="The workload to develop on (default: the single Deployment or StatefulSet in the manifests).",
        examples=["deployment/api", "statefulset/db"],
        json_schema_extra=_not_null,
    )
    container: DnsLabel | None = Field(
        default=None,
        description="The container to sync into and restart (default: the workload's only container, "
        "or the one running image.name).",
        examples=["api"],
        json_schema_extra=_not_null,
    )
    sync: list[SyncRule] = Field(
        default_factory=list,
        description="Files to copy into the running container as they change.",
    )
    on_change: list[ChangeStep] = Field(
        default_factory=list,
        alias="onChange",
        description="Commands to run in the container when some synced files change (e.g. install dependencies).",
    )
    restart: Literal["process", "none"] = Field(
        default="process",
        description="After a sync: process restarts the container's main process; "
        "none leaves it to the app's own reload (e.g. uvicorn --reload, nodemon).",
    )
    ports: list[PortForward] = Field(
        default_factory=list,
        description="Container ports to forward to this machine.",
    )
    depends_on: list[str] = Field(
        default_factory=list,
        alias="dependsOn",
        description="Services that must be healthy before this one starts.",
        examples=[["backend"]],
    )
    healthy: Literal["ready", "started"] = Field(
        default="ready",
        description="What services depending on this one wait for: ready (its readiness probes pass) "
        "or started (its containers run).",
    )
    env: dict[EnvName, ScalarText] = Field(
        default_factory=dict,
        description="Environment variables set in the container during development only.",
        examples=[{"LOG_LEVEL": "debug"}],
    )
    alerts: Alerts = Field(
        default_factory=Alerts,
        description="Log lines that raise an alert, in the terminal, the dashboard and the local API.",
    )
    debug: Debug = Field(
        default_factory=Debug,
        description="The service's debugger: language, port, whether `up` starts it.",
    )


def _header_rule(value: str) -> str:
    from innerloop.router.match import parse_rule  # noqa: PLC0415 - the agent's parser is the one truth

    parse_rule(value)
    return value


HeaderRuleText = Annotated[
    str,
    AfterValidator(_header_rule),
    WithJsonSchema({"type": "string", "examples": ["x-innerloop-user=alice", "baggage[user]=alice"]}),
]


class Preview(_Model):
    """The app's entry Service, for a local preview URL that adds your header to every request."""

    service: DnsLabel = Field(description="The entry Service (e.g. the front end).", examples=["frontend"])
    port: PortNumber = Field(description="Its Service port.", examples=[8080])
    local: PortNumber | None = Field(
        default=None,
        description="The local port of the preview URL (default: any free one).",
        json_schema_extra=_not_null,
    )


class Intercept(_Model):
    """A Service whose cluster traffic `innerloop intercept NAME` sends to a local process."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"service": "backend", "local": 8082, "headers": ["x-innerloop-user=alice"]}],
        }
    )

    service: DnsLabel | None = Field(
        default=None,
        description="The Kubernetes Service (default: the intercept's name).",
        json_schema_extra=_not_null,
    )
    mode: Literal["personal", "global"] = Field(
        default="personal",
        description="personal: only requests whose headers match (HTTP/1.1 per request); "
        "global: every connection of the port, any protocol.",
    )
    headers: list[HeaderRuleText] = Field(
        default_factory=list,
        description="Personal mode: all must match. NAME=VALUE, NAME^=PREFIX, NAME~=REGEX, baggage[MEMBER]=VALUE "
        "(default: x-innerloop-user=$USER-<16 hex>, random per user and stable).",
    )
    local: PortNumber | None = Field(
        default=None,
        description="The local port that receives the traffic (default: a free port, given to command as PORT).",
        json_schema_extra=_not_null,
    )
    command: list[str] = Field(
        default_factory=list,
        description="The local process to start, with the pod's env, ConfigMaps, Secrets and cluster DNS.",
        examples=[["python", "backend/app.py"]],
    )
    preview: Preview | None = Field(
        default=None,
        description="Print a local URL that adds your header and goes to the app's entry Service.",
        json_schema_extra=_not_null,
    )


# A registry host with an optional path: ``registry.example.com/team``, ``10.0.0.5:5000``.
REGISTRY_REPO_PATTERN = rf"^[a-zA-Z0-9.-]+(?::[0-9]+)?(?:/{_IMAGE_COMPONENT})*$"
# An image reference with a tag or a digest, as a pod spec writes it.
IMAGE_REFERENCE_PATTERN = (
    rf"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


def _registry_repo(value: str) -> str:
    host = value.split("/", 1)[0]
    # As docker does: the first part names a registry when it has a dot or a port, or is localhost.
    if not re.fullmatch(REGISTRY_REPO_PATTERN, value) or not ("." in host or ":" in host or host == "localhost"):
        raise ValueError(
            f"{value!r} is not a registry: write its host, an optional port and path, "
            "e.g. registry.example.com/team or 10.0.0.5:5000"
        )
    return value


def _image_reference(value: str) -> str:
    if not re.fullmatch(IMAGE_REFERENCE_PATTERN, value) or not re.search(r"(:[^/]+|@sha256:[0-9a-f]{64})$", value):
        raise ValueError(
            f"{value!r} is not an image reference with a tag or digest, "
            "e.g. registry.example.com/mirror/innerloop-agent:0.1.0"
        )
    return value


RegistryRepo = Annotated[
    str, AfterValidator(_registry_repo), WithJsonSchema({"type": "string", "pattern": REGISTRY_REPO_PATTERN})
]
ImageReference = Annotated[
    str, AfterValidator(_image_reference), WithJsonSchema({"type": "string", "pattern": IMAGE_REFERENCE_PATTERN})
]


class Registry(_Model):
    """The registry that built images are pushed to when the cluster cannot load them itself.

    Needed for a shared or cloud cluster (EKS, GKE, AKS, ...); kind, minikube,
    k3d, Docker Desktop and clusters that publish a local registry (KEP-1755)
    work without it. `--default-repo` and INNERLOOP_DEFAULT_REPO override it.
    Credentials come from your docker config (`docker login`, credential helpers).
    """

    repo: RegistryRepo = Field(
        description="Registry host, optional port and path; image names are rewritten under it "
        "the way Skaffold's default-repo does (bookshop-api -> <repo>/bookshop-api).",
        examples=["registry.example.com/team", "10.0.0.5:5000"],
    )
    insecure: bool = Field(
        default=False,
        description="Allow plain HTTP or an unverified certificate (a registry on your own network).",
    )


class Project(_Model):
    """innerloop.yaml: the services of an app and how `innerloop up` develops them on Kubernetes."""

    version: Literal[1] = Field(description="The version of this file's format.")
    name: DnsLabel = Field(
        description="The project's name, a DNS-1123 label; it labels everything innerloop creates.",
        examples=["bookshop"],
    )
    namespace: DnsLabel | None = Field(
        default=None,
        description="The namespace to deploy into (default: the namespace of the current kubeconfig context).",
        examples=["bookshop-dev"],
        json_schema_extra=_not_null,
    )
    services: dict[DnsLabel, Service] = Field(
        min_length=1,
        description="The services, by name (DNS-1123 labels).",
        json_schema_extra={"additionalProperties": False},
    )
    intercepts: dict[DnsLabel, Intercept] = Field(
        default_factory=dict,
        description="Intercepts for `innerloop intercept NAME`: cluster traffic to a local process.",
        json_schema_extra={"additionalProperties": False},
    )
    registry: Registry | None = Field(
        default=None,
        description="Where built images go for a cluster that cannot load them itself (see `innerloop doctor`).",
        json_schema_extra=_not_null,
    )
    agent_image: ImageReference | None = Field(
        default=None,
        alias="agentImage",
        description="A pre-mirrored copy of innerloop's agent image, for clusters that can only pull "
        "from an approved registry; innerloop then builds and pushes none.",
        examples=["registry.example.com/mirror/innerloop-agent:0.1.0"],
        json_schema_extra=_not_null,
    )
    agent_base: ImageReference | None = Field(
        default=None,
        alias="agentBase",
        description="The Python 3.11+ image (glibc, Debian or official-image layout, with a tag or digest) "
        "whose interpreter and libraries innerloop's agent image is built on, fetched with skopeo for the "
        "nodes' architectures (amd64, arm64) on any cluster but the bundled one, which uses its own "
        "(default: gcr.io/distroless/python3-debian12).",
        examples=["gcr.io/distroless/python3-debian12:nonroot", "registry.example.com/mirror/python:3.12-slim"],
        json_schema_extra=_not_null,
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = cross_reference_problems(self)
        if problems:
            raise InconsistentProject(problems)
        return self


@dataclass(frozen=True)
class Problem:
    """A mistake that spans several places of a valid-looking config.

    ``path`` is in the YAML spelling (``("services", "api", "dependsOn", 0)``),
    so the loader can point at the line that holds it.
    """

    path: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        return f"{'.'.join(map(str, self.path))}: {self.message}"


class InconsistentProject(ValueError):
    """Raised by :class:`Project` validation; carries every problem, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


def local_paths(project: Project) -> list[tuple[tuple[str | int, ...], str]]:
    """Every path on this machine the config names, relative to innerloop.yaml, with its place in the YAML.

    A defaulted Dockerfile (``<context>/Dockerfile``) is listed at ``image.context``.
    """
    found: list[tuple[tuple[str | int, ...], str]] = []
    for name, service in project.services.items():
        at: tuple[str | int, ...] = ("services", name)
        manifests = service.manifests
        found += [((*at, "manifests", "files", i), f) for i, f in enumerate(manifests.files or [])]
        if manifests.kustomize is not None:
            found.append(((*at, "manifests", "kustomize"), manifests.kustomize))
        if manifests.helm is not None:
            helm = manifests.helm
            if not helm.remote:
                found.append(((*at, "manifests", "helm", "chart"), helm.chart))
            found += [((*at, "manifests", "helm", "values", i), v) for i, v in enumerate(helm.values)]
        if service.image is not None:
            image = service.image
            found.append(((*at, "image", "context"), image.context))
            key = "dockerfile" if image.dockerfile is not None else "context"
            found.append(((*at, "image", key), image.dockerfile_path))
        found += [((*at, "sync", i, "local"), rule.local) for i, rule in enumerate(service.sync)]
    return found


def cross_reference_problems(project: Project) -> list[Problem]:
    """Problems between services: unknown or cyclic dependsOn, shared local ports, onChange without sync."""
    return [
        *_unknown_dependencies(project),
        *_dependency_cycles(project),
        *_shared_local_ports(project),
        *_shared_workloads(project),
        *_sync_target_problems(project),
    ] + [
        Problem(("services", name, "onChange"), "onChange needs sync rules: its paths are relative to their roots")
        for name, service in project.services.items()
        if service.on_change and not service.sync
    ]


# Paths in a container that are not the image's files: kernel filesystems, what the kubelet mounts,
# and innerloop's own dev-mode mounts (deploy/devmode.py). A sync rule there cannot work.
RESERVED_CONTAINER_PATHS = (
    "/proc",
    "/sys",
    "/dev",
    "/.innerloop",
    "/.innerloop-token",
    "/.innerloop-sync",
    "/var/run/secrets/kubernetes.io",
    "/run/secrets/kubernetes.io",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
)


def container_path_problem(remote: str) -> str | None:
    """Why files cannot be synced to ``remote`` in a container, or None when they can (pure)."""
    trimmed = remote.rstrip("/")
    if not trimmed:
        return "'/' is the whole filesystem: sync into a folder of the app (e.g. /app/)"
    parts = trimmed[1:].split("/")
    if any(part in ("", ".", "..") for part in parts):
        return f"{remote!r} is not a plain path: write it without '.', '..' or '//' (e.g. /app/)"
    for reserved in RESERVED_CONTAINER_PATHS:
        if trimmed == reserved or trimmed.startswith(reserved + "/") or reserved.startswith(trimmed + "/"):
            return (
                f"{remote!r} is outside the image's files ({reserved} is provided by the kernel, "
                "the kubelet or innerloop): sync into a folder of the app (e.g. /app/)"
            )
    return None


def _sync_target_problems(project: Project) -> list[Problem]:
    problems = []
    for name, service in project.services.items():
        seen: list[tuple[str, int]] = []
        for i, rule in enumerate(service.sync):
            where = ("services", name, "sync", i, "remote")
            reason = container_path_problem(rule.remote)
            if reason is not None:
                problems.append(Problem(where, reason))
                continue
            target = rule.remote.rstrip("/")
            for other, j in seen:
                if target == other or target.startswith(other + "/") or other.startswith(target + "/"):
                    problems.append(
                        Problem(
                            where,
                            f"{rule.remote!r} overlaps sync.{j}'s target {other!r}: give each rule its own folder",
                        )
                    )
            seen.append((target, i))
    return problems


def _shared_workloads(project: Project) -> list[Problem]:
    problems = []
    first: dict[str, str] = {}
    for name, service in project.services.items():
        if service.workload is None:
            continue
        if service.workload in first:
            problems.append(
                Problem(
                    ("services", name, "workload"),
                    f"{service.workload} is already developed by service {first[service.workload]!r}; "
                    "a workload belongs to one service",
                )
            )
        else:
            first[service.workload] = name
    return problems


def _unknown_dependencies(project: Project) -> list[Problem]:
    problems = []
    for name, service in project.services.items():
        for i, dependency in enumerate(service.depends_on):
            if dependency not in project.services:
                close = difflib.get_close_matches(dependency, project.services, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                known = ", ".join(project.services)
                problems.append(
                    Problem(
                        ("services", name, "dependsOn", i), f"no service named {dependency!r} (services: {known}){hint}"
                    )
                )
    return problems


def _dependency_cycles(project: Project) -> list[Problem]:
    # Depth-first search in the file's order; a back edge closes a cycle and
    # is reported at the dependsOn entry that closes it.
    problems: list[Problem] = []
    done: set[str] = set()
    stack: list[str] = []

    def visit(name: str) -> None:
        stack.append(name)
        for i, dependency in enumerate(project.services[name].depends_on):
            if dependency in stack:
                cycle = [*stack[stack.index(dependency) :], dependency]
                problems.append(Problem(("services", name, "dependsOn", i), f"dependency cycle: {' -> '.join(cycle)}"))
            elif dependency in project.services and dependency not in done:
                visit(dependency)
        stack.pop()
        done.add(name)

    for name in project.services:
        if name not in done:
            visit(name)
    return problems


def _shared_local_ports(project: Project) -> list[Problem]:
    problems = []
    first: dict[int, str] = {}
    for name, service in project.services.items():
        for i, port in enumerate(service.ports):
            where = f"services.{name}.ports.{i}"
            field = "local" if port.local is not None else "remote"
            if port.local_port == 0:
                continue  # any free port: never shared
            if port.local_port in first:
                problems.append(
                    Problem(
                        ("services", name, "ports", i, field),
                        f"local port {port.local_port} is already forwarded by {first[port.local_port]}",
                    )
                )
            else:
                first[port.local_port] = where
    return problems
