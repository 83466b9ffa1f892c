"""Who may read the dashboard and who may act through it: pure decisions over a request's headers.

The dashboard listens on 127.0.0.1, but loopback is shared by every user and
every web page this machine's browser opens. So, as Jupyter does:

- a secret token, new per `up`, in the URL `up` prints; the first request that
  carries it gets an HttpOnly, SameSite=Strict cookie and a redirect to the
  bare URL (the token leaves the address bar and the history); afterwards the
  cookie, or an ``Authorization: token ...`` header for scripts, is the key;
- the Host header must be ``127.0.0.1:PORT`` or ``localhost:PORT``: a page on
  a hostile domain that rebinds its name to 127.0.0.1 sends its own Host, and
  is refused before any token matters (DNS rebinding);
- a request that changes something (an action) must come from the dashboard's
  own origin: ``Origin`` (and ``Sec-Fetch-Site``, when the browser sends it)
  must say same-origin; a request with neither is not a browser's form or
  fetch, and must then carry the token header itself (a cookie alone would be
  sent along by a cross-site form in an old browser).

Kept apart from the server so each refusal is a plain function of a few
strings, tested without a socket, and again through the real server.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HOSTS = ("127.0.0.1", "localhost")


def cookie_name(port: int) -> str:
    """One cookie per port: cookies ignore ports, and two `up`s of two projects may run side by side."""
    return f"innerloop-dashboard-{port}"


@dataclass(frozen=True)
class Seen:
    """What the decision reads from a request (None: the header or parameter is absent)."""

    method: str
    host: str | None
    query_token: str | None = None
    cookie: str | None = None
    authorization: str | None = None
    origin: str | None = None
    fetch_site: str | None = None


@dataclass(frozen=True)
class Decision:
    verdict: Literal["allow", "login", "refuse"]  # login: set the cookie, redirect to the bare URL
    reason: str = ""


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _header_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "token" else None


def decide(seen: Seen, *, token: str, port: int) -> Decision:
    """Allow, log in (the URL's token is right) or refuse, with the one line a person reads."""
    allowed_hosts = [f"{host}:{port}" for host in HOSTS]
    if seen.host not in allowed_hosts:
        return Decision(
            "refuse",
            f"this dashboard answers only as http://127.0.0.1:{port}/ (the request named host {seen.host!r})",
        )
    open_printed = f"open the URL `innerloop up` printed (dashboard: http://127.0.0.1:{port}/?token=...)"
    if seen.query_token is not None:
        if seen.method not in SAFE_METHODS or not _same(seen.query_token, token):
            return Decision("refuse", f"this token is not the one of the running `innerloop up`: {open_printed}")
        return Decision("login")
    by_header = _same(_header_token(seen.authorization), token)
    if not (by_header or _same(seen.cookie, token)):
        return Decision("refuse", f"no valid token: {open_printed}")
    if seen.method in SAFE_METHODS:
        return Decision("allow")
    own_origin = f"http://{seen.host}"
    if seen.origin is not None and seen.origin != own_origin:
        return Decision("refuse", f"actions are accepted only from the dashboard's own page ({own_origin})")
    if seen.fetch_site is not None and seen.fetch_site != "same-origin":
        return Decision("refuse", "actions are accepted only from the dashboard's own page (a cross-site request)")
    if seen.origin is None and seen.fetch_site is None and not by_header:
        return Decision(
            "refuse", "an action without an Origin header needs the token itself: send `Authorization: token ...`"
        )
    return Decision("allow")
