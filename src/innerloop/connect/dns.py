"""Cluster DNS for a local command, as plain functions: names, addresses, answers.

Inside the command's namespace (``connect/netns.py``) every Service of the
namespace gets a loopback address, and a small DNS server on 127.0.0.1:53
answers the names a pod would use for it: ``backend``, ``backend.NS``,
``backend.NS.svc``, ``backend.NS.svc.cluster.local`` (any case, with or
without the trailing dot). Everything here decides; ``connect/dns_server.py``
moves the bytes.

- Addresses come from 127.1.0.0/16, picked by a hash of the Service's name
  (probing on collision), so a Service keeps its address across runs while
  other Services come and go. Addresses ending in .0 or .255 are skipped.
- ``resolv.conf`` mirrors a pod's (kubelet's ``ClusterFirst``): the
  namespace's search domains first, ``ndots:5``, then the host's own search
  domains, so ``backend`` is tried as ``backend.NS.svc.cluster.local`` first.
- Answers: A for a known Service; NOERROR without records for its other
  types (AAAA: so clients fall back to IPv4 at once); NXDOMAIN for any other
  name in the cluster domain or under ``.svc``; everything else goes to the
  host's resolvers unchanged (``Forward``).
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import dnslib

CLUSTER_DOMAIN = "cluster.local"
LOOPBACK_NETWORK = ipaddress.IPv4Network("127.1.0.0/16")
TTL_S = 5


@dataclass(frozen=True, kw_only=True)
class ServiceAddress:
    """A Service as the local command reaches it: a loopback address, the Service's TCP ports."""

    name: str
    address: str
    ports: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class SkippedService:
    """A Service with no local address, and why (in the user's words)."""

    name: str
    reason: str


def allocate_addresses(names: Iterable[str], *, network: ipaddress.IPv4Network = LOOPBACK_NETWORK) -> dict[str, str]:
    """Service name -> a loopback address, stable per name (hash, then linear probing; sorted for determinism)."""
    size = network.num_addresses
    base = int(network.network_address)
    taken: set[int] = set()
    result: dict[str, str] = {}
    for name in sorted(set(names)):
        offset = zlib.crc32(name.encode()) % size
        for _ in range(size):
            if offset not in taken and offset % 256 not in (0, 255):
                break
            offset = (offset + 1) % size
        else:
            raise ValueError(f"more Services than addresses in {network}")
        taken.add(offset)
        result[name] = str(ipaddress.IPv4Address(base + offset))
    return result


def plan_services(services: Sequence[Mapping[str, object]]) -> tuple[list[ServiceAddress], list[SkippedService]]:
    """Which Services (as the API returns them, ``to_dict()``) get an address and which TCP ports, and which not."""
    reachable: dict[str, tuple[int, ...]] = {}
    skipped: list[SkippedService] = []
    for svc in services:
        metadata = svc.get("metadata")
        spec = svc.get("spec")
        if not isinstance(metadata, Mapping) or not isinstance(spec, Mapping):
            continue
        name = str(metadata.get("name"))
        if spec.get("type") == "ExternalName":
            skipped.append(SkippedService(name=name, reason="ExternalName (not forwarded)"))
            continue
        if not spec.get("selector"):
            skipped.append(SkippedService(name=name, reason="no pod selector to forward to"))
            continue
        raw_ports = spec.get("ports")
        ports = tuple(
            sorted(
                {
                    int(p["port"])
                    for p in (raw_ports if isinstance(raw_ports, list) else [])
                    if isinstance(p, Mapping) and p.get("protocol", "TCP") == "TCP" and "port" in p
                }
            )
        )
        if not ports:
            skipped.append(SkippedService(name=name, reason="no TCP port"))
            continue
        reachable[name] = ports
    addresses = allocate_addresses(reachable)
    planned = [ServiceAddress(name=n, address=addresses[n], ports=reachable[n]) for n in sorted(reachable)]
    return planned, sorted(skipped, key=lambda s: s.name)


# ---- resolv.conf ----------------------------------------------------------


def host_resolv_conf(text: str) -> tuple[list[str], list[str]]:
    """The nameservers and search domains of a resolv.conf (the last ``search``/``domain`` line wins, as in glibc)."""
    nameservers: list[str] = []
    search: list[str] = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            nameservers.append(words[1])
        elif words[0] in ("search", "domain"):
            search = words[1:]
    return nameservers, search


def namespace_resolv_conf(
    *, namespace: str, host_search: Sequence[str] = (), cluster_domain: str = CLUSTER_DOMAIN
) -> str:
    """The command's /etc/resolv.conf: like a pod's, with innerloop's DNS server on 127.0.0.1."""
    search = [f"{namespace}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]
    search += [d for d in host_search if d not in search]
    return (
        f"# innerloop run: cluster names of namespace {namespace} are answered on 127.0.0.1;\n"
        "# other names go to this machine's resolvers. Only the command's mount namespace sees this file.\n"
        "nameserver 127.0.0.1\n"
        f"search {' '.join(search)}\n"
        "options ndots:5\n"
    )


# ---- names ----------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    address: str


@dataclass(frozen=True)
class NoSuchName:
    """In the cluster's zone, and not a Service we know: NXDOMAIN (or no records, for the zone's own names)."""

    exists: bool = False


@dataclass(frozen=True)
class Forward:
    """Not a cluster name: the host's resolvers answer."""


Lookup = Found | NoSuchName | Forward


@dataclass(frozen=True, kw_only=True)
class ClusterNames:
    """The names a pod in ``namespace`` resolves, mapped to local addresses."""

    namespace: str
    addresses: Mapping[str, str]  # Service name -> loopback address
    cluster_domain: str = CLUSTER_DOMAIN

    @classmethod
    def of(
        cls, *, namespace: str, services: Iterable[ServiceAddress], cluster_domain: str = CLUSTER_DOMAIN
    ) -> ClusterNames:
        return cls(
            namespace=namespace.lower(),
            addresses={s.name.lower(): s.address for s in services},
            cluster_domain=cluster_domain.lower(),
        )

    def lookup(self, qname: str) -> Lookup:
        name = qname.lower().rstrip(".")
        ns, zone = self.namespace, self.cluster_domain
        labels = name.split(".")
        if name == zone or name.endswith("." + zone):
            inner = labels[: len(labels) - len(zone.split("."))]  # labels left of the cluster domain
            if inner in ([], ["svc"], [ns, "svc"]):
                return NoSuchName(exists=True)
            if len(inner) == 3 and inner[1:] == [ns, "svc"] and inner[0] in self.addresses:
                return Found(self.addresses[inner[0]])
            return NoSuchName()
        if len(labels) == 1 and name in self.addresses:
            return Found(self.addresses[name])
        if len(labels) == 2 and labels[1] == ns and labels[0] in self.addresses:
            return Found(self.addresses[labels[0]])
        if labels[-1] == "svc":
            if len(labels) == 3 and labels[1] == ns and labels[0] in self.addresses:
                return Found(self.addresses[labels[0]])
            return NoSuchName()
        return Forward()

    def summary(self, *, limit: int = 4) -> str:
        """One line for the user: which names resolve."""
        names = sorted(self.addresses)
        if not names:
            return f"no Service in namespace {self.namespace} to resolve"
        shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
        return (
            f"cluster names in the command: {shown} (each also as NAME.{self.namespace},"
            f" NAME.{self.namespace}.svc, NAME.{self.namespace}.svc.{self.cluster_domain})"
        )


# ---- messages -------------------------------------------------------------


Answer = bytes | Forward

_TYPE_A, _TYPE_ANY = 1, 255
_CLASS_IN, _CLASS_ANY = 1, 255


def answer(query: bytes, names: ClusterNames) -> Answer | None:
    """The reply to a DNS query for cluster names, ``Forward()`` for other names, None for a packet to drop."""
    try:
        request = dnslib.DNSRecord.parse(query)
    except Exception:  # dnslib raises DNSError, BufferError, struct.error... on garbage
        return _format_error(query)
    if request.header.qr:  # a response, not a query
        return None
    reply = request.reply(ra=1, aa=1)
    if request.header.opcode != dnslib.OPCODE.QUERY or len(request.questions) != 1:
        reply.header.rcode = (
            dnslib.RCODE.NOTIMP if request.header.opcode != dnslib.OPCODE.QUERY else dnslib.RCODE.FORMERR
        )
        return bytes(reply.pack())
    question = request.questions[0]
    found = names.lookup(str(question.qname))
    if isinstance(found, Forward):
        return found
    if isinstance(found, NoSuchName):
        if not found.exists:
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
        return bytes(reply.pack())
    if question.qtype in (_TYPE_A, _TYPE_ANY) and question.qclass in (_CLASS_IN, _CLASS_ANY):
        reply.add_answer(dnslib.RR(question.qname, dnslib.QTYPE.A, rdata=dnslib.A(found.address), ttl=TTL_S))
    return bytes(reply.pack())


def _format_error(query: bytes) -> bytes | None:
    if len(query) < 12:
        return None
    # Echo the id, set QR and FORMERR; no question section (it did not parse).
    flags = 0x8000 | (query[2] & 0x78) << 8 | 0x0001
    return query[:2] + flags.to_bytes(2, "big") + bytes(8)


def servfail(query: bytes) -> bytes | None:
    """SERVFAIL for a query the upstream resolvers did not answer."""
    try:
        request = dnslib.DNSRecord.parse(query)
        reply = request.reply(ra=1, aa=0)
        reply.header.rcode = dnslib.RCODE.SERVFAIL
        return bytes(reply.pack())
    except Exception:  # not a query we can even echo
        return None
