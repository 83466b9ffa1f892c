"""Cluster DNS as plain functions: addresses, names, resolv.conf, and the answers on the wire (built with dnslib)."""

from __future__ import annotations

import ipaddress
from typing import Any

import dnslib
import pytest

from innerloop.connect.dns import (
    ClusterNames,
    Forward,
    Found,
    NoSuchName,
    ServiceAddress,
    allocate_addresses,
    answer,
    host_resolv_conf,
    namespace_resolv_conf,
    plan_services,
    servfail,
)

# ---- addresses --------------------------------------------------------------


def test_addresses_are_stable_per_name_whatever_else_exists() -> None:
    alone = allocate_addresses(["backend"])
    crowd = allocate_addresses(["api", "backend", "frontend", *(f"svc-{i}" for i in range(200))])
    assert alone["backend"] == crowd["backend"]
    assert allocate_addresses(["backend"]) == alone  # same answer every run


def test_addresses_are_unique_loopback_and_never_end_in_0_or_255() -> None:
    names = [f"svc-{i}" for i in range(2000)]
    addresses = allocate_addresses(names)
    assert len(set(addresses.values())) == len(names)
    for address in addresses.values():
        ip = ipaddress.IPv4Address(address)
        assert ip in ipaddress.IPv4Network("127.1.0.0/16")
        assert address.rsplit(".", 1)[1] not in ("0", "255")


def test_collisions_probe_to_the_next_free_address_and_a_full_range_is_an_error() -> None:
    small = ipaddress.IPv4Network("127.1.0.0/29")  # .1 to .7 usable (.0 is not)
    addresses = allocate_addresses([f"s{i}" for i in range(7)], network=small)
    assert sorted(addresses.values()) == [f"127.1.0.{i}" for i in range(1, 8)]
    with pytest.raises(ValueError, match="more Services than addresses"):
        allocate_addresses([f"s{i}" for i in range(8)], network=small)


def svc(name: str, ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": ports, **spec}}


def test_plan_gives_every_forwardable_service_its_tcp_ports_and_says_why_others_are_left_out() -> None:
    planned, skipped = plan_services(
        [
            svc("backend", [{"port": 8080}, {"port": 80, "protocol": "TCP"}, {"port": 8080, "name": "again"}]),
            svc("dns", [{"port": 53, "protocol": "UDP"}]),
            svc("db", [{"port": 5432}], selector=None),
            {"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "example.com"}},
            svc("mixed", [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]),
        ]
    )
    addresses = allocate_addresses(["backend", "mixed"])
    assert planned == [
        ServiceAddress(name="backend", address=addresses["backend"], ports=(80, 8080)),
        ServiceAddress(name="mixed", address=addresses["mixed"], ports=(53,)),
    ]
    assert [(s.name, s.reason) for s in skipped] == [
        ("db", "no pod selector to forward to"),
        ("dns", "no TCP port"),
        ("ext", "ExternalName (not forwarded)"),
    ]


# ---- resolv.conf --------------------------------------------------------------


def test_host_resolv_conf_reads_nameservers_and_the_last_search_line() -> None:
    text = (
        "# generated\n"
        "nameserver 10.0.0.2  # office\n"
        "domain corp.example\n"
        "search a.example b.example\n"
        "; old style comment\n"
        "nameserver 127.0.0.53\n"
        "options edns0\n"
    )
    assert host_resolv_conf(text) == (["10.0.0.2", "127.0.0.53"], ["a.example", "b.example"])
    assert host_resolv_conf("") == ([], [])


def test_namespace_resolv_conf_is_a_pods_with_the_hosts_search_domains_after() -> None:
    text = namespace_resolv_conf(namespace="shop", host_search=["corp.example", "cluster.local"])
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "nameserver 127.0.0.1",
        "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example",
        "options ndots:5",
    ]


# ---- names --------------------------------------------------------------------

NAMES = ClusterNames(namespace="shop", addresses={"backend": "127.1.2.3", "api": "127.1.9.9"})


@pytest.mark.parametrize(
    ("qname", "expected"),
    [
        ("backend", Found("127.1.2.3")),
        ("backend.", Found("127.1.2.3")),
        ("BackEnd", Found("127.1.2.3")),
        ("backend.shop", Found("127.1.2.3")),
        ("backend.shop.svc", Found("127.1.2.3")),
        ("backend.shop.svc.cluster.local", Found("127.1.2.3")),
        ("BACKEND.Shop.SVC.Cluster.Local.", Found("127.1.2.3")),
        ("api.shop.svc.cluster.local", Found("127.1.9.9")),
        # What a stub resolver tries with the search list and ndots:5.
        ("backend.shop.shop.svc.cluster.local", NoSuchName()),
        ("backend.shop.svc.cluster.local.cluster.local", NoSuchName()),
        ("example.com.shop.svc.cluster.local", NoSuchName()),
        ("example.com.svc.cluster.local", NoSuchName()),
        ("example.com.cluster.local", NoSuchName()),
        ("example.com", Forward()),
        ("example.com.", Forward()),
        # Other namespaces and unknown Services are not ours to answer...
        ("backend.other.svc.cluster.local", NoSuchName()),
        ("nope.shop.svc.cluster.local", NoSuchName()),
        ("nope.shop.svc", NoSuchName()),
        ("backend.other.svc", NoSuchName()),
        # ...but two labels may be a real domain.
        ("backend.other", Forward()),
        ("nope", Forward()),
        ("localhost", Forward()),
        # The zone's own names exist (no records), so resolvers do not cache a missing zone.
        ("cluster.local", NoSuchName(exists=True)),
        ("svc.cluster.local", NoSuchName(exists=True)),
        ("shop.svc.cluster.local", NoSuchName(exists=True)),
        ("10-244-0-5.shop.pod.cluster.local", NoSuchName()),
    ],
)
def test_lookup(qname: str, expected: object) -> None:
    assert NAMES.lookup(qname) == expected


def test_another_cluster_domain() -> None:
    names = ClusterNames.of(
        namespace="Shop",
        services=[ServiceAddress(name="Backend", address="127.1.0.1", ports=(80,))],
        cluster_domain="k8s.internal",
    )
    assert names.lookup("backend.shop.svc.k8s.internal") == Found("127.1.0.1")
    assert names.lookup("backend.shop.svc.cluster.local") == Forward()


def test_summary_names_the_services_and_the_forms() -> None:
    assert NAMES.summary() == (
        "cluster names in the command: api, backend"
        " (each also as NAME.shop, NAME.shop.svc, NAME.shop.svc.cluster.local)"
    )
    many = ClusterNames(namespace="x", addresses={f"s{i}": "127.1.0.1" for i in range(6)})
    assert many.summary().startswith("cluster names in the command: s0, s1, s2, s3 and 2 more")
    assert ClusterNames(namespace="x", addresses={}).summary() == "no Service in namespace x to resolve"


# ---- answers on the wire -----------------------------------------------------------


def ask(qname: str, qtype: str = "A") -> dnslib.DNSRecord:
    query = dnslib.DNSRecord.question(qname, qtype)
    reply = answer(bytes(query.pack()), NAMES)
    assert isinstance(reply, bytes), reply
    parsed = dnslib.DNSRecord.parse(reply)
    assert parsed.header.id == query.header.id
    assert parsed.header.qr == 1
    assert str(parsed.q.qname) == str(query.q.qname)  # the question is echoed as asked (case too)
    return parsed


def test_a_query_for_a_service_gets_its_loopback_address() -> None:
    reply = ask("backend.shop.svc.cluster.local")
    assert reply.header.rcode == dnslib.RCODE.NOERROR
    assert reply.header.aa == 1
    assert [(str(rr.rname), rr.rtype, str(rr.rdata), rr.ttl) for rr in reply.rr] == [
        ("backend.shop.svc.cluster.local.", dnslib.QTYPE.A, "127.1.2.3", 5)
    ]
    assert [str(rr.rdata) for rr in ask("Backend.", "ANY").rr] == ["127.1.2.3"]


def test_other_types_for_a_service_are_empty_not_missing() -> None:
    for qtype in ("AAAA", "MX", "TXT", "SRV"):
        reply = ask("backend.shop.svc.cluster.local", qtype)
        assert reply.header.rcode == dnslib.RCODE.NOERROR, qtype
        assert reply.rr == []


def test_unknown_cluster_names_are_nxdomain_and_zone_names_empty() -> None:
    assert ask("nope.shop.svc.cluster.local").header.rcode == dnslib.RCODE.NXDOMAIN
    assert ask("example.com.shop.svc.cluster.local", "AAAA").header.rcode == dnslib.RCODE.NXDOMAIN
    zone = ask("shop.svc.cluster.local")
    assert (zone.header.rcode, zone.rr) == (dnslib.RCODE.NOERROR, [])


def test_other_names_are_forwarded() -> None:
    assert answer(bytes(dnslib.DNSRecord.question("example.com").pack()), NAMES) == Forward()
    assert answer(bytes(dnslib.DNSRecord.question("nope", "AAAA").pack()), NAMES) == Forward()


def test_responses_and_garbage() -> None:
    response = dnslib.DNSRecord.question("backend").reply()
    assert answer(bytes(response.pack()), NAMES) is None  # never answer an answer
    assert answer(b"\x12", NAMES) is None
    formerr = answer(b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff", NAMES)  # header, then junk
    assert isinstance(formerr, bytes)
    assert formerr[:2] == b"\xab\xcd" and formerr[2] & 0x80 and formerr[3] & 0x0F == dnslib.RCODE.FORMERR


def test_other_opcodes_are_not_implemented() -> None:
    query = dnslib.DNSRecord.question("backend")
    query.header.opcode = dnslib.OPCODE.UPDATE
    reply = answer(bytes(query.pack()), NAMES)
    assert isinstance(reply, bytes)
    assert dnslib.DNSRecord.parse(reply).header.rcode == dnslib.RCODE.NOTIMP


def test_servfail_echoes_the_question() -> None:
    query = dnslib.DNSRecord.question("example.com")
    failed = servfail(bytes(query.pack()))
    assert failed is not None
    parsed = dnslib.DNSRecord.parse(failed)
    assert (parsed.header.id, parsed.header.rcode, str(parsed.q.qname)) == (
        query.header.id,
        dnslib.RCODE.SERVFAIL,
        "example.com.",
    )
    assert servfail(b"\x00") is None
