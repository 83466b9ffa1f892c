"""A minimal OCI registry for tests: the distribution API that `helm push` and `helm pull` use, over TLS.

In memory, one thread, 127.0.0.1 only: blobs (monolithic and chunked uploads), manifests by tag or
digest, tag lists. TLS with a CA made here, which helm trusts through SSL_CERT_FILE as it would a
company CA, so no insecure flag is needed. It stands in until the project runs a registry itself;
it is no reference implementation, helm is the independent side of each test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import ipaddress
import json
import re
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_NAME = r"(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
_BLOB = re.compile(rf"^/v2/{_NAME}/blobs/(?P<digest>sha256:[a-f0-9]{{64}})$")
_UPLOADS = re.compile(rf"^/v2/{_NAME}/blobs/uploads/$")
_UPLOAD = re.compile(rf"^/v2/{_NAME}/blobs/uploads/(?P<id>[a-f0-9-]+)$")
_MANIFEST = re.compile(rf"^/v2/{_NAME}/manifests/(?P<ref>[A-Za-z0-9_.:+-]+)$")
_TAGS = re.compile(rf"^/v2/{_NAME}/tags/list$")


@dataclass
class _Store:
    blobs: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)  # (repo, digest) -> type, body
    tags: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo, tag) -> digest
    lock: threading.Lock = field(default_factory=threading.Lock)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: _Store

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _unknown(self, code: str) -> None:
        self._reply(404, json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode())

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/v2/":
            self._reply(200, b"{}", {"Docker-Distribution-API-Version": "registry/2.0"})
        elif m := _BLOB.match(path):
            blob = self.store.blobs.get(m["digest"])
            if blob is None:
                self._unknown("BLOB_UNKNOWN")
            else:
                self._reply(
                    200, blob, {"Docker-Content-Digest": m["digest"], "Content-Type": "application/octet-stream"}
                )
        elif m := _MANIFEST.match(path):
            ref = m["ref"] if m["ref"].startswith("sha256:") else self.store.tags.get((m["name"], m["ref"]), "")
            found = self.store.manifests.get((m["name"], ref))
            if found is None:
                self._unknown("MANIFEST_UNKNOWN")
            else:
                self._reply(200, found[1], {"Docker-Content-Digest": ref, "Content-Type": found[0]})
        elif m := _TAGS.match(path):
            tags = sorted(tag for repo, tag in self.store.tags if repo == m["name"])
            if not tags:
                self._unknown("NAME_UNKNOWN")
            else:
                body = json.dumps({"name": m["name"], "tags": tags}).encode()
                self._reply(200, body, {"Content-Type": "application/json"})
        else:
            self._unknown("NOT_FOUND")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if not (m := _UPLOADS.match(url.path)):
            self._unknown("NOT_FOUND")
            return
        data = self._body()
        digest = parse_qs(url.query).get("digest", [None])[0]
        if digest is not None:  # a monolithic upload in one POST
            self._store_blob(m["name"], data, digest)
            return
        upload = str(uuid.uuid4())
        with self.store.lock:
            self.store.uploads[upload] = bytearray(data)
        location = f"/v2/{m['name']}/blobs/uploads/{upload}"
        self._reply(202, headers={"Location": location, "Range": "0-0", "Docker-Upload-UUID": upload})

    def do_PATCH(self) -> None:
        m = _UPLOAD.match(urlsplit(self.path).path)
        if m is None or m["id"] not in self.store.uploads:
            self._unknown("BLOB_UPLOAD_UNKNOWN")
            return
        with self.store.lock:
            self.store.uploads[m["id"]] += self._body()
            size = len(self.store.uploads[m["id"]])
        location = f"/v2/{m['name']}/blobs/uploads/{m['id']}"
        self._reply(202, headers={"Location": location, "Range": f"0-{max(size - 1, 0)}"})

    def do_PUT(self) -> None:
        url = urlsplit(self.path)
        if m := _UPLOAD.match(url.path):
            data = self._body()
            with self.store.lock:
                pending = self.store.uploads.pop(m["id"], None)
            if pending is None:
                self._unknown("BLOB_UPLOAD_UNKNOWN")
                return
            self._store_blob(m["name"], bytes(pending) + data, parse_qs(url.query).get("digest", [""])[0])
        elif m := _MANIFEST.match(url.path):
            body = self._body()
            digest = _digest(body)
            with self.store.lock:
                self.store.manifests[(m["name"], digest)] = (self.headers.get("Content-Type", ""), body)
                if not m["ref"].startswith("sha256:"):
                    self.store.tags[(m["name"], m["ref"])] = digest
            location = f"/v2/{m['name']}/manifests/{digest}"
            self._reply(201, headers={"Location": location, "Docker-Content-Digest": digest})
        else:
            self._unknown("NOT_FOUND")

    def _store_blob(self, name: str, data: bytes, digest: str) -> None:
        if _digest(data) != digest:
            body = json.dumps({"errors": [{"code": "DIGEST_INVALID", "message": "digest mismatch"}]}).encode()
            self._reply(400, body)
            return
        with self.store.lock:
            self.store.blobs[digest] = data
        self._reply(201, headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a serving certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test registry CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class OciRegistry:
    """``with OciRegistry(folder) as registry:`` serves on ``registry.host`` (127.0.0.1:PORT) until the block ends."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca, cert, key = _certificates(folder)
        handler = type("Handler", (_Handler,), {"store": _Store()})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="oci-registry", daemon=True)

    def __enter__(self) -> OciRegistry:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
