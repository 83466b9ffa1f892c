"""How every command speaks to the user: progress lines and one-line errors.

Light on purpose (no engine imports): each command imports it, and a
command's start time is paid on every run.
"""

from __future__ import annotations

import click
import httpx2 as httpx
from lightkube import ApiError

from innerloop.k8s.rest import RestError


def report(message: str) -> None:
    click.echo(click.style("innerloop ", fg="bright_black") + message, err=True)


def explain_error(err: BaseException, user_errors: tuple[type[BaseException], ...]) -> str | None:
    """One actionable line for ``user_errors`` and errors from the cluster or the network; None for bugs."""
    if isinstance(err, user_errors):
        return str(err)
    # lightkube's typed calls raise ApiError; the raw JSON ones (k8s/rest.py) RestError: one answer for both.
    if isinstance(err, ApiError):
        return _refusal(err.status.code, err.status.message)
    if isinstance(err, RestError):
        return _refusal(err.status, err.message)
    if isinstance(err, (httpx.TransportError, OSError)):
        return (
            f"cannot reach the cluster: {err}. Check KUBECONFIG and that the cluster runs "
            "(with no kubeconfig, innerloop starts its bundled cluster)"
        )
    if isinstance(err, BaseExceptionGroup):
        for inner in err.exceptions:
            found = explain_error(inner, user_errors)
            if found is not None:
                return found
    return None


def _refusal(code: int | None, text: str | None) -> str:
    if code == 403:
        return (
            f"the cluster refused: {text}. innerloop needs the namespaced Role in "
            "docs/RBAC.md (docs/rbac/innerloop-developer.yaml) bound to you in this namespace"
        )
    if code == 401:
        return f"the cluster does not accept your credentials ({text}): check your kubeconfig"
    return f"the cluster answered {code}: {text}"
