"""Build and delivery times, cold and warm, per builder and per delivery path.

Builders, on two Dockerfiles a team would write:

- ``copy``: ``FROM python:3.11-slim`` + ``COPY`` + ``ENV`` + ``CMD``, which the
  built-in builder builds exactly, and buildah and podman too;
- ``run``: the same plus ``COPY requirements.txt`` and
  ``RUN pip install -r requirements.txt`` (flask), real builders only.

For each: *cold* (empty builder storage and no cached archive: the base is
pulled, every step runs), *edit* (a source file changed: the builder's storage
and the base are warm, the archive is new), *unchanged* (same inputs: the
input hash finds the archive and no builder runs).

Delivery of the ``copy`` image (~150 MB, the base's layers included): the
bundled containerd import (*cold*: a tag the node does not have; *warm*: it
has it) and a skopeo push to a registry (distribution 2.8 on loopback;
*cold*: an empty one, every layer is sent; *warm*: it holds that image,
nothing is sent).

Needs the bundled cluster (`innerloop cluster up`, which also serves the
bases through its registry and writes the builders' registries.conf). Run:

    CONTAINERS_REGISTRIES_CONF=/var/lib/innerloop-cluster/config/containers/registries.conf \\
        .venv/bin/python bench/images.py [--reps 3]

Prints a markdown table (median of the repetitions) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from innerloop.builders.bases import BaseImages
from innerloop.builders.image import BuiltinBuilder
from innerloop.builders.request import Builder, BuildRequest
from innerloop.builders.tools import TOOLS, ToolBuilder
from innerloop.cluster.node import BundledCluster
from innerloop.cluster.registry import LocalRegistry
from innerloop.delivery.choice import RegistryTarget
from innerloop.delivery.deliver import BundledImport, RegistryPush
from innerloop.engine.sources import base_resolver
from innerloop.oci.archive import BuiltImage

APP = "import os\nprint('serving on', os.environ.get('PORT', '8080'))\n"
COPY_DOCKERFILE = """FROM python:3.11-slim
WORKDIR /app
COPY app.py /app/app.py
ENV PORT=8080
USER 65532:65532
CMD ["python3", "/app/app.py"]
"""
RUN_DOCKERFILE = """FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt /app/requirements.txt
RUN pip install --no-cache-dir -r /app/requirements.txt
COPY app.py /app/app.py
USER 65532:65532
CMD ["python3", "/app/app.py"]
"""


def quiet(_line: str) -> None:
    pass


def timed(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def context(root: Path, dockerfile: str) -> Path:
    root.mkdir(parents=True)
    (root / "Dockerfile").write_text(dockerfile)
    (root / "app.py").write_text(APP)
    (root / "requirements.txt").write_text("flask>=3,<4\n")
    return root


def storage_env(root: Path) -> None:
    """A fresh builder storage (what 'cold' means for buildah and podman), overlay as `cluster up` writes it."""
    root.mkdir(parents=True)
    conf = root / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n')
    os.environ["CONTAINERS_STORAGE_CONF"] = str(conf)


def builder_times(name: str, builder: Builder, ctx: Path, work: Path) -> dict[str, float]:
    """cold, edit and unchanged seconds for one builder on one context."""
    storage_env(work / f"storage-{secrets.token_hex(4)}")
    out = work / f"out-{secrets.token_hex(4)}"

    def request() -> BuildRequest:
        return BuildRequest(
            context=ctx, dockerfile=ctx / "Dockerfile", repository=f"innerloop.local/bench-{name}", out_dir=out
        )

    cold = timed(lambda: builder.build(request(), quiet))
    (ctx / "app.py").write_text(APP + f"# edit {secrets.token_hex(4)}\n")
    edit = timed(lambda: builder.build(request(), quiet))
    unchanged = timed(lambda: builder.build(request(), quiet))
    return {"cold": cold, "edit": edit, "unchanged": unchanged}


def delivery_times(cluster: BundledCluster, work: Path, image: BuiltImage) -> dict[str, dict[str, float]]:
    bundled = BundledImport(cluster)  # the image's tag is new to the node: the input hash includes this rep's edit
    imported = {"cold": timed(lambda: bundled.deliver(image)), "warm": timed(lambda: bundled.deliver(image))}
    # An empty registry (distribution 2.8, as beside the bundled cluster) for a push that sends every layer.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    server = LocalRegistry(address=address, root=work / f"registry-{secrets.token_hex(4)}")
    server.start()
    try:
        server.wait_ready()
        push = RegistryPush(RegistryTarget(push=address, pull=address, insecure=True, source="bench"))
        pushed = {"cold": timed(lambda: push.deliver(image)), "warm": timed(lambda: push.deliver(image))}
    finally:
        server.stop()
    return {"bundled import": imported, "registry push": pushed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    cluster = BundledCluster(report=quiet)
    info = cluster.info()
    if info is None or not info.registry:
        sys.exit("the bundled cluster is not running: run `innerloop cluster up` first")
    if not os.environ.get("CONTAINERS_REGISTRIES_CONF"):
        sys.exit("set CONTAINERS_REGISTRIES_CONF (see the docstring) so builders find python:3.11-slim")
    paths = cluster.paths
    builtin = BuiltinBuilder(bases=BaseImages(bundled=base_resolver(paths), cache=paths.images / "fetched"))
    builders: dict[str, Builder] = {"builtin": builtin}
    for name in ("buildah", "podman"):
        if shutil.which(name):
            builders[name] = ToolBuilder(TOOLS[name])
    runs: dict[str, list[dict[str, float]]] = {}
    deliveries: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="innerloop-bench-images-") as tmp:
        work = Path(tmp)
        for rep in range(args.reps):
            for name, builder in builders.items():
                for kind, dockerfile in (("copy", COPY_DOCKERFILE), ("run", RUN_DOCKERFILE)):
                    if kind == "run" and name == "builtin":
                        continue  # it refuses RUN (and auto sends the build to a real builder)
                    ctx = context(work / f"{rep}-{name}-{kind}", dockerfile)
                    key = f"{name} / {kind}"
                    runs.setdefault(key, []).append(builder_times(f"{name}-{kind}", builder, ctx, work))
                    print(f"rep {rep + 1}: {key}: {runs[key][-1]}", file=sys.stderr)
            image = builtin.build(
                BuildRequest(
                    context=work / f"{rep}-builtin-copy",
                    dockerfile=work / f"{rep}-builtin-copy" / "Dockerfile",
                    repository="innerloop.local/bench-builtin-copy",
                    out_dir=work / "delivery",
                ),
                quiet,
            )
            size_mb = image.archive.stat().st_size / 1e6
            for path, figures in delivery_times(cluster, work, image).items():
                deliveries.setdefault(path, []).append(figures)
            print(f"rep {rep + 1}: delivery: {deliveries}", file=sys.stderr)

    def median(samples: list[dict[str, float]], field: str) -> float:
        return statistics.median(s[field] for s in samples)

    print("\n| builder / Dockerfile | cold | after an edit | unchanged inputs |\n|---|---|---|---|")
    for key, samples in runs.items():
        cells = " | ".join(f"{median(samples, f):.2f} s" for f in ("cold", "edit", "unchanged"))
        print(f"| {key} | {cells} |")
    print(f"\n| delivery ({size_mb:.0f} MB image) | cold | warm |\n|---|---|---|")
    for path, samples in deliveries.items():
        print(f"| {path} | {median(samples, 'cold'):.2f} s | {median(samples, 'warm'):.3f} s |")
    summary = {
        "builders": {k: {f: median(v, f) for f in ("cold", "edit", "unchanged")} for k, v in runs.items()},
        "delivery": {k: {f: median(v, f) for f in ("cold", "warm")} for k, v in deliveries.items()},
        "reps": args.reps,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
