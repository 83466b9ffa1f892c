"""Image names under a registry the user names: Skaffold's default-repo rewriting (pure).

Skaffold's rule is documented ("Image Repository Handling",
skaffold.dev/docs/environment/image-registries/) and used by many teams, so
a name pushed by innerloop lands where a Skaffold user would look for it.
The whole original name is kept, so ``team-a/api`` and ``team-b/api`` never
collide under one repository:

- a repository on GCR or Artifact Registry (``gcr.io``, ``-docker.pkg.dev``)
  accepts nested paths: the name is appended, minus the ``domain/project``
  prefix both share;
- any other registry (ECR, Docker Hub, a local one) gets the name escaped
  into one path component (``/ . _ : @`` -> ``_``), truncated to 255
  characters as Skaffold's code does;
- a name already under the repository stays as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LENGTH = 255
_ESCAPE = re.compile(r"[/._:@]")
# distribution/reference's domain: dotted components or an [IPv6] literal, an optional port.
_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_COMPONENT}(?:\.{_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
# A GCP project id, as the Cloud console accepts it; GCR and AR paths start with one.
_PROJECT = r"[a-z][a-z0-9-]{4,28}[a-z0-9]"
_PREFIX = re.compile(rf"^{_DOMAIN}/{_PROJECT}/?")
_NAME_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_NAME_PART}(?:/{_NAME_PART})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True, kw_only=True)
class ImageName:
    """An image reference split as a registry sees it: repository name, tag, digest."""

    name: str
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_image(image: str) -> ImageName:
    """``registry:5000/team/api:1.0`` -> name ``registry:5000/team/api``, tag ``1.0``.

    The name part is lower-cased, as Skaffold does (tags keep their case).
    """
    head, at, digest = image.partition("@")
    name, colon, tag = head.rpartition(":")
    if not colon or "/" in tag:  # no tag, or the colon was a registry's port
        name, tag = head, ""
    candidate = name.lower() + (f":{tag}" if colon and name != head else "") + (f"@{digest}" if at else "")
    found = _REFERENCE.fullmatch(candidate)
    if found is None:
        raise ValueError(f"{image!r} is not an image reference (e.g. registry.example.com/team/api:1.0)")
    return ImageName(name=found["name"], tag=found["tag"] or "", digest=found["digest"] or "")


def _multi_level(repo_prefix: str) -> bool:
    return "gcr.io" in repo_prefix or "-docker.pkg.dev" in repo_prefix


def rewrite_name(name: str, default_repo: str) -> str:
    """A repository name (no tag) placed under ``default_repo`` by Skaffold's rule."""
    default_repo = default_repo.rstrip("/")
    if name == default_repo or name.startswith(default_repo + "/"):
        return name
    original_prefix = m[0] if (m := _PREFIX.match(name)) else ""
    repo_prefix = m[0] if (m := _PREFIX.match(default_repo)) else ""
    if _multi_level(repo_prefix):
        if original_prefix == repo_prefix:
            return f"{default_repo}/{name[len(original_prefix) :]}"
        return f"{default_repo}/{name}"[:MAX_LENGTH]
    return f"{default_repo}/{_ESCAPE.sub('_', name)}"[:MAX_LENGTH]


def rewrite(image: str, default_repo: str) -> str:
    """``image`` (with its tag or digest) under ``default_repo``; unchanged when ``default_repo`` is empty.

    >>> rewrite("gcr.io/k8s-skaffold/skaffold-example1", "aws_account_id.dkr.ecr.region.amazonaws.com")
    'aws_account_id.dkr.ecr.region.amazonaws.com/gcr_io_k8s-skaffold_skaffold-example1'
    """
    if not default_repo:
        return image
    parsed = parse_image(image)
    return str(ImageName(name=rewrite_name(parsed.name, default_repo), tag=parsed.tag, digest=parsed.digest))
