"""Options several commands share, spelled and explained once."""

from __future__ import annotations

import click

default_repo_option = click.option(
    "--default-repo",
    metavar="REGISTRY[/PATH]",
    help="Push built images here (over INNERLOOP_DEFAULT_REPO and innerloop.yaml `registry:`); "
    "names are rewritten as Skaffold's --default-repo does.",
)
insecure_registry_option = click.option(
    "--insecure-registry",
    is_flag=True,
    help="The registry may use plain HTTP or an unverified certificate.",
)
