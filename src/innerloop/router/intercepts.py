"""Who holds which intercept on a router: the pure state behind every routing decision.

A router serves one Service. Developers register intercepts on it: *global*
(every connection of the port) or *personal* (only requests whose headers
match). An intercept is held by whoever knows its secret; the router keeps
only the secret's SHA-256, never hands it out, and compares in constant
time, so a second client that reaches the router can register its own
intercept but cannot take over, read or end someone else's.

When the holder's tunnel drops, the intercept is *detached*: its traffic
goes to the cluster's pods again at once, and for ``grace`` seconds the
holder may come back with the same secret and resume. After that the
intercept expires. When none are left the router restores the Service and
removes itself (:mod:`innerloop.router.main`).

Two developers never share a header value: a personal intercept whose
rules could match the same requests as another developer's (the same header
or baggage member, and conditions one value can meet: see
:func:`innerloop.router.match.rules_collide`) is refused to whoever comes
second, whether the first one is attached or detached within its grace.
Rules on different headers may coexist; a request crafted to match two
developers' intercepts goes to neither (the cluster's pods), so an early,
broad rule on another header cannot take a later developer's requests.
A *developer* is an ``identity`` (a secret the CLI keeps for its user, sent
only as proof): the same developer registering again, after a crash that
left a detached intercept, replaces it instead of colliding with it.
The default header (:data:`DEFAULT_HEADER`) takes exact values only: its
values are secret, and a refused prefix would tell how one begins. Nor does
anyone but its holder see a rule's value (:meth:`Intercept.describe`).
This is routing, not access control: anyone who can reach the Service can
send any header.

Standard library only (it runs in the agent image); no I/O, no clock: every
call that depends on time takes ``now``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from innerloop.router.match import HeaderRule, matches, rules_collide

Mode = Literal["global", "personal"]
MODES: tuple[Mode, ...] = ("global", "personal")
# The CLI's default header: its values are ``<user>-<64 random bits>`` (innerloop.intercept.session).
DEFAULT_HEADER = "x-innerloop-user"


RefusalCode = Literal["denied", "unknown", "collision"]


class InterceptRefused(ValueError):
    """A registration or a request about an intercept that the registry refuses; the message says why.

    ``code`` tells a CLI what it may do next: ``unknown`` (a resume of an intercept this registry does not
    hold), ``collision`` (another developer's rules claim these requests), ``denied`` (anything else).
    """

    def __init__(self, message: str, *, code: RefusalCode = "denied") -> None:
        super().__init__(message)
        self.code: RefusalCode = code


def secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "replace")).digest()


@dataclass(kw_only=True)
class Intercept:
    name: str
    owner: str
    mode: Mode
    rules: list[HeaderRule]
    ports: list[int]  # Service ports it covers; empty: all of them
    digest: bytes = field(repr=False)
    identity: bytes | None = field(default=None, repr=False)  # the developer's identity digest, if sent
    registered_at: float
    detached_since: float | None = None  # None: a tunnel is attached

    @property
    def attached(self) -> bool:
        return self.detached_since is None

    def covers(self, port: int) -> bool:
        return not self.ports or port in self.ports

    def describe(self, *, values: bool = False) -> dict[str, object]:
        """What anyone may see of it: no secret, and header values only for ``values`` (its holder):
        a default value is unguessable so that nobody can claim it first, so it is not listed either."""
        rules = [rule.to_dict() for rule in self.rules]
        if not values:
            rules = [{**rule, "value": "(hidden)"} for rule in rules]
        return {
            "name": self.name,
            "owner": self.owner,
            "mode": self.mode,
            "rules": rules,
            "ports": list(self.ports),
            "attached": self.attached,
        }


class Registry:
    """The intercepts of one router, in registration order."""

    def __init__(self, *, grace: float) -> None:
        self.grace = grace
        self._intercepts: dict[str, Intercept] = {}
        self.empty_since: float | None = None  # when the last intercept went away; None before and while any exists

    def __len__(self) -> int:
        return len(self._intercepts)

    def get(self, name: str) -> Intercept | None:
        return self._intercepts.get(name)

    def all(self) -> list[Intercept]:
        return list(self._intercepts.values())

    def register(
        self,
        *,
        name: str,
        secret: str,
        owner: str,
        mode: Mode,
        rules: Sequence[HeaderRule],
        ports: Sequence[int],
        now: float,
        resume: bool = False,
        identity: str | None = None,
    ) -> tuple[Intercept, bool]:
        """Register ``name`` or resume it (same secret). Returns the intercept and whether it resumed.

        ``resume=True`` only resumes: an intercept that ended meanwhile is not silently created anew
        (refused with code ``unknown``). ``identity`` is the developer's: see the module docstring.
        """
        if not name or len(name) > 128:
            raise InterceptRefused("an intercept needs a name of 1 to 128 characters")
        if len(secret) < 16:
            raise InterceptRefused("an intercept secret must be at least 16 characters")
        if identity is not None and len(identity) < 16:
            raise InterceptRefused("a developer identity must be at least 16 characters")
        digest = secret_digest(secret)
        who = secret_digest(identity) if identity is not None else None
        existing = self._intercepts.get(name)
        if existing is not None and not hmac.compare_digest(existing.digest, digest):
            if resume or existing.attached or not self._same_developer(existing, who):
                raise InterceptRefused(f"intercept {name!r} is held by another session ({existing.owner})")
            self._remove(name, now)  # the same developer, same --name, after a crash: the new one replaces it
            existing = None
        if existing is not None:
            existing.detached_since = None
            return existing, True
        if resume:
            raise InterceptRefused(
                f"intercept {name!r} no longer exists: it ended while its tunnel was down", code="unknown"
            )
        if mode not in MODES:
            raise InterceptRefused(f"unknown intercept mode {mode!r}; expected global or personal")
        if mode == "personal" and not rules:
            raise InterceptRefused("a personal intercept needs at least one header rule")
        if any(r.header == DEFAULT_HEADER and r.op != "exact" for r in rules):
            # Its default values are secret: a refused prefix or pattern would tell, a character at a time.
            raise InterceptRefused(
                f"{DEFAULT_HEADER} takes exact values only; use another header for a prefix or a pattern"
            )
        replaced: list[str] = []
        for other in self._intercepts.values():
            shared = not other.ports or not ports or bool(set(other.ports) & set(ports))
            if not shared:
                continue
            mine = self._same_developer(other, who)
            if mine and not other.attached:
                replaced.append(other.name)  # the same developer again, after a crash: the new one replaces it
                continue
            if other.mode == "global":
                raise InterceptRefused(
                    f"{other.owner} holds a global intercept ({other.name!r}) on this port; "
                    "ask them to leave, or use `innerloop clean` if it is stale"
                )
            if mode == "global":
                raise InterceptRefused(
                    f"{other.owner} holds a personal intercept ({other.name!r}) on this port; "
                    "a global intercept would take their traffic: use a personal one (--header)"
                )
            if rules_collide(other.rules, rules):
                targets = sorted({r.describe_target() for r in rules} & {r.describe_target() for r in other.rules})
                headers = ", ".join(targets) or "these headers"
                whose = "you already intercept" if mine else f"{other.owner} already intercepts"
                raise InterceptRefused(
                    f"{whose} requests with {headers} values that yours would match ({other.name!r}); "
                    f"pick another value (--header {targets[0] if targets else 'NAME'}=...) or another header, "
                    "or drop --header for your own default",
                    code="collision",
                )
        for stale in replaced:
            del self._intercepts[stale]
        intercept = Intercept(
            name=name,
            owner=owner,
            mode=mode,
            rules=list(rules),
            ports=sorted(set(ports)),
            digest=digest,
            identity=who,
            registered_at=now,
        )
        self._intercepts[name] = intercept
        self.empty_since = None
        return intercept, False

    @staticmethod
    def _same_developer(intercept: Intercept, who: bytes | None) -> bool:
        return who is not None and intercept.identity is not None and hmac.compare_digest(intercept.identity, who)

    def check(self, name: str, secret: str) -> Intercept:
        """The intercept if ``secret`` is its secret; refuses without telling whether it exists."""
        intercept = self._intercepts.get(name)
        digest = secret_digest(secret)
        if intercept is None or not hmac.compare_digest(intercept.digest, digest):
            raise InterceptRefused(f"no intercept {name!r} held with this secret")
        return intercept

    def leave(self, name: str, secret: str, *, now: float) -> Intercept:
        intercept = self.check(name, secret)
        self._remove(name, now)
        return intercept

    def detach(self, name: str, *, now: float) -> None:
        intercept = self._intercepts.get(name)
        if intercept is not None and intercept.detached_since is None:
            intercept.detached_since = now

    def expire(self, *, now: float) -> list[Intercept]:
        """Drop the intercepts detached for longer than the grace period."""
        gone = [
            i
            for i in self._intercepts.values()
            if i.detached_since is not None and now - i.detached_since >= self.grace
        ]
        for intercept in gone:
            self._remove(intercept.name, now)
        return gone

    def _remove(self, name: str, now: float) -> None:
        del self._intercepts[name]
        if not self._intercepts:
            self.empty_since = now

    # -- routing: called per connection and per request ---------------------------------

    def global_for(self, port: int) -> str | None:
        """The attached global intercept of ``port``, if any: it takes whole connections."""
        for intercept in self._intercepts.values():
            if intercept.mode == "global" and intercept.attached and intercept.covers(port):
                return intercept.name
        return None

    def has_personal(self, port: int) -> bool:
        """Whether requests on ``port`` need to be looked at one by one."""
        return any(i.mode == "personal" and i.covers(port) for i in self._intercepts.values())

    def personal_for(self, port: int, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """The attached personal intercept whose rules match the request, if exactly one does.

        A request that matches two intercepts (rules on different headers, and a request carrying
        both) goes to neither: whichever registered first must not take requests meant for the other.
        """
        found: str | None = None
        for intercept in self._intercepts.values():
            if (
                intercept.mode == "personal"
                and intercept.attached
                and intercept.covers(port)
                and matches(intercept.rules, headers)
            ):
                if found is not None:
                    return None
                found = intercept.name
        return found
