"""The cluster's CA, certificates and kubeconfigs."""

from __future__ import annotations

import base64
import ipaddress
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from innerloop.cluster.pki import Pki, component_identities

NODE = "dev-box"
NODE_IP = "192.168.56.10"
SERVICE_IP = "10.96.0.1"
CERTS = ("apiserver", *(i.file for i in component_identities(NODE)))


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def orgs(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One PKI for the read-only tests (RSA key generation is the slow part)."""
    p = Pki(tmp_path_factory.mktemp("pki") / "pki")
    p.ensure(node=NODE, node_ip=NODE_IP, service_ip=SERVICE_IP)
    return p


@pytest.fixture
def fresh(tmp_path: Path) -> Pki:
    p = Pki(tmp_path / "pki")
    p.ensure(node=NODE, node_ip=NODE_IP, service_ip=SERVICE_IP)
    return p


class TestCa:
    def test_is_a_self_signed_ca(self, pki: Pki) -> None:
        ca = load(pki.ca_cert)
        assert ca.subject == ca.issuer
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.key_cert_sign
        ca.verify_directly_issued_by(ca)

    def test_key_matches_certificate(self, pki: Pki) -> None:
        key = serialization.load_pem_private_key(pki.key("ca").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key() == load(pki.ca_cert).public_key()


class TestIssuedCertificates:
    @pytest.mark.parametrize("name", CERTS)
    def test_signed_by_the_ca(self, pki: Pki, name: str) -> None:
        ca = load(pki.ca_cert)
        cert = load(pki.cert(name))
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)  # raises if the signature does not verify
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False

    @pytest.mark.parametrize("name", CERTS)
    def test_key_matches_certificate(self, pki: Pki, name: str) -> None:
        key = serialization.load_pem_private_key(pki.key(name).read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key() == load(pki.cert(name)).public_key()

    @pytest.mark.parametrize("name", CERTS)
    def test_valid_now_for_years(self, pki: Pki, name: str) -> None:
        cert = load(pki.cert(name))
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert lifetime.days >= 365

    def test_a_different_ca_does_not_verify(self, pki: Pki, fresh: Pki) -> None:
        # Both CAs share a name; only the signature tells them apart.
        assert load(pki.ca_cert).subject == load(fresh.ca_cert).subject
        with pytest.raises(InvalidSignature):
            load(pki.cert("admin")).verify_directly_issued_by(load(fresh.ca_cert))


class TestApiserverCertificate:
    def test_sans(self, pki: Pki) -> None:
        cert = load(pki.cert("apiserver"))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(san.get_values_for_type(x509.DNSName)) == {
            "localhost",
            NODE,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        }
        assert set(san.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address(NODE_IP),
            ipaddress.ip_address(SERVICE_IP),
        }

    def test_is_a_server_certificate(self, pki: Pki) -> None:
        cert = load(pki.cert("apiserver"))
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.SERVER_AUTH
        ]
        assert cn(cert) == "kube-apiserver"


class TestClientCertificates:
    def test_kubelet_is_a_node(self, pki: Pki) -> None:
        cert = load(pki.cert("kubelet"))
        assert cn(cert) == f"system:node:{NODE}"
        assert orgs(cert) == ["system:nodes"]

    @pytest.mark.parametrize(
        ("name", "user", "groups"),
        [
            ("admin", "innerloop-admin", ["system:masters"]),
            ("apiserver-kubelet-client", "kube-apiserver", ["system:masters"]),
            ("controller-manager", "system:kube-controller-manager", []),
            ("scheduler", "system:kube-scheduler", []),
            ("kube-proxy", "system:kube-proxy", []),
        ],
    )
    def test_identities(self, pki: Pki, name: str, user: str, groups: list[str]) -> None:
        cert = load(pki.cert(name))
        assert cn(cert) == user
        assert orgs(cert) == groups

    @pytest.mark.parametrize("name", [i.file for i in component_identities(NODE)])
    def test_are_client_certificates_without_sans(self, pki: Pki, name: str) -> None:
        cert = load(pki.cert(name))
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.CLIENT_AUTH
        ]
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


class TestServiceAccountKey:
    def test_rsa_pair(self, pki: Pki) -> None:
        key = serialization.load_pem_private_key(pki.key("service-account").read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        assert key.key_size >= 2048
        public = serialization.load_pem_public_key((pki.dir / "service-account.pub").read_bytes())
        assert public == key.public_key()


class TestPermissions:
    def test_directory_and_keys_are_private(self, pki: Pki) -> None:
        assert stat.S_IMODE(pki.dir.stat().st_mode) == 0o700
        keys = sorted(pki.dir.glob("*.key"))
        assert {k.stem for k in keys} == {"ca", "service-account", *CERTS}
        for key in keys:
            assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


class TestEnsureIsIdempotent:
    def test_second_call_rewrites_nothing(self, fresh: Pki) -> None:
        before = snapshot(fresh.dir)
        fresh.ensure(node=NODE, node_ip=NODE_IP, service_ip=SERVICE_IP)
        assert snapshot(fresh.dir) == before

    def test_changed_node_ip_reissues_only_the_apiserver_certificate(self, fresh: Pki) -> None:
        before = snapshot(fresh.dir)
        fresh.ensure(node=NODE, node_ip="10.1.2.3", service_ip=SERVICE_IP)
        after = snapshot(fresh.dir)
        changed = {name for name in before if before[name] != after[name]}
        assert changed == {"apiserver.crt", "apiserver.key"}
        cert = load(fresh.cert("apiserver"))
        ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.IPAddress
        )
        assert ipaddress.ip_address("10.1.2.3") in ips
        assert ipaddress.ip_address(NODE_IP) not in ips
        cert.verify_directly_issued_by(load(fresh.ca_cert))

    def test_changed_node_name_reissues_the_kubelet_certificate(self, fresh: Pki) -> None:
        before = snapshot(fresh.dir)
        fresh.ensure(node="renamed-box", node_ip=NODE_IP, service_ip=SERVICE_IP)
        after = snapshot(fresh.dir)
        assert cn(load(fresh.cert("kubelet"))) == "system:node:renamed-box"
        dns = load(fresh.cert("apiserver")).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "renamed-box" in dns.get_values_for_type(x509.DNSName)
        assert after["ca.crt"] == before["ca.crt"]
        assert after["admin.crt"] == before["admin.crt"]

    def test_missing_key_reissues_that_certificate(self, fresh: Pki) -> None:
        before = snapshot(fresh.dir)
        fresh.key("scheduler").unlink()
        fresh.ensure(node=NODE, node_ip=NODE_IP, service_ip=SERVICE_IP)
        after = snapshot(fresh.dir)
        assert after["scheduler.crt"] != before["scheduler.crt"]
        key = serialization.load_pem_private_key(after["scheduler.key"], None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key() == load(fresh.cert("scheduler")).public_key()
        assert after["kubelet.crt"] == before["kubelet.crt"]


class TestKubeconfig:
    def test_embeds_ca_and_client_credentials(self, pki: Pki) -> None:
        text = pki.kubeconfig(identity="kubelet", server="https://127.0.0.1:6443", user=f"system:node:{NODE}")
        doc = yaml.safe_load(text)
        assert doc["kind"] == "Config"
        assert doc["current-context"] == "innerloop"
        (cluster,) = doc["clusters"]
        assert cluster["cluster"]["server"] == "https://127.0.0.1:6443"
        assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == pki.ca_cert.read_bytes()
        (user,) = doc["users"]
        assert user["name"] == f"system:node:{NODE}"
        cert = x509.load_pem_x509_certificate(base64.b64decode(user["user"]["client-certificate-data"]))
        assert cn(cert) == f"system:node:{NODE}"
        assert base64.b64decode(user["user"]["client-key-data"]) == pki.key("kubelet").read_bytes()
        (context,) = doc["contexts"]
        assert context == {"name": "innerloop", "context": {"cluster": "innerloop", "user": f"system:node:{NODE}"}}

    def test_admin(self, pki: Pki) -> None:
        doc = yaml.safe_load(pki.kubeconfig(identity="admin", server="https://example:6443", user="innerloop-admin"))
        cert = x509.load_pem_x509_certificate(base64.b64decode(doc["users"][0]["user"]["client-certificate-data"]))
        assert orgs(cert) == ["system:masters"]
        assert doc["clusters"][0]["cluster"]["server"] == "https://example:6443"

    def test_unknown_identity_fails(self, pki: Pki) -> None:
        with pytest.raises(FileNotFoundError):
            pki.kubeconfig(identity="nobody", server="https://127.0.0.1:6443", user="nobody")


def test_identity_files_are_unique() -> None:
    files = [i.file for i in component_identities(NODE)]
    assert len(files) == len(set(files))
    assert "apiserver" not in files
