"""Certificates and kubeconfigs for the bundled cluster.

One CA signs everything: the API server's serving certificate (SANs for
127.0.0.1, the node IP, the service IP 10.96.0.1 and the ``kubernetes.default``
names), a client certificate per component (the kubelet's CN must be
``system:node:<node>``), and the admin's ``system:masters`` certificate. The
service-account signing key is a separate RSA key. Keys are EC P-256 where
Kubernetes allows it: they are generated in milliseconds.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = dt.timedelta(days=3650)


@dataclass(frozen=True, kw_only=True)
class ClientIdentity:
    """Who a client certificate says it is: user (CN) and groups (O)."""

    file: str
    user: str
    groups: tuple[str, ...] = ()


def component_identities(node: str) -> list[ClientIdentity]:
    return [
        ClientIdentity(file="admin", user="innerloop-admin", groups=("system:masters",)),
        ClientIdentity(file="apiserver-kubelet-client", user="kube-apiserver", groups=("system:masters",)),
        ClientIdentity(file="controller-manager", user="system:kube-controller-manager"),
        ClientIdentity(file="scheduler", user="system:kube-scheduler"),
        ClientIdentity(file="kube-proxy", user="system:kube-proxy"),
        ClientIdentity(file="kubelet", user=f"system:node:{node}", groups=("system:nodes",)),
    ]


def _name(cn: str, groups: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class Pki:
    """Creates the cluster's CA and certificates once; later calls reuse them."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def ensure(self, *, node: str, node_ip: str, service_ip: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        if not self.ca_cert.exists():
            self._make_ca()
        ca_key = serialization.load_pem_private_key(self.key("ca").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        sans: list[x509.GeneralName] = [
            x509.DNSName(n)
            for n in (
                "localhost",
                node,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            )
        ]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", node_ip, service_ip)]
        self._issue("apiserver", cn="kube-apiserver", groups=(), ca=(ca_cert, ca_key), server_sans=sans)
        for ident in component_identities(node):
            self._issue(ident.file, cn=ident.user, groups=ident.groups, ca=(ca_cert, ca_key), server_sans=None)
        if not self.key("service-account").exists():
            _write_key(self.key("service-account"), rsa.generate_private_key(public_exponent=65537, key_size=2048))
            sa = serialization.load_pem_private_key(self.key("service-account").read_bytes(), None)
            self.dir.joinpath("service-account.pub").write_bytes(
                sa.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("innerloop-cluster-ca"))
            .issuer_name(_name("innerloop-cluster-ca"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write_key(self.key("ca"), key)
        _write_cert(self.ca_cert, cert)

    def _issue(
        self,
        name: str,
        *,
        cn: str,
        groups: tuple[str, ...],
        ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
        server_sans: list[x509.GeneralName] | None,
    ) -> None:
        if self.cert(name).exists() and self.key(name).exists():
            existing = x509.load_pem_x509_certificate(self.cert(name).read_bytes())
            # A renamed node needs a kubelet certificate for its new name.
            if existing.subject == _name(cn, groups) and (
                server_sans is None
                or set(existing.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
                == set(server_sans)
            ):
                return
        ca_cert, ca_key = ca
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server_sans is not None else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, groups))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if server_sans is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(server_sans), critical=False)
        _write_key(self.key(name), key)
        _write_cert(self.cert(name), builder.sign(ca_key, hashes.SHA256()))

    def kubeconfig(self, *, identity: str, server: str, user: str) -> str:
        """A kubeconfig that embeds the CA and ``identity``'s client certificate."""

        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "innerloop",
                    "cluster": {"server": server, "certificate-authority-data": b64(self.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(self.cert(identity)),
                        "client-key-data": b64(self.key(identity)),
                    },
                }
            ],
            "contexts": [{"name": "innerloop", "context": {"cluster": "innerloop", "user": user}}],
            "current-context": "innerloop",
        }
        return yaml.safe_dump(doc, sort_keys=False)
