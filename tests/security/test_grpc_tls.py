"""Optional TLS and mutual TLS on chat_service's gRPC port."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bulkhead.devstack.ports import free_port
from bulkhead.devstack.process import ManagedProcess, wait_until
from bulkhead.rpc import create_channel
from bulkhead.settings import CommonSettings
from bulkhead.tls import GrpcTls

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _issue(
    subject: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    *,
    is_ca: bool = False,
    ip: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1()) if not is_ca else issuer_key
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert, _ = _issue("bulkhead test CA", ca_key, None, is_ca=True)
    server_cert, server_key = _issue(
        "chat_service", ca_key, ca_cert.subject, ip="127.0.0.1"
    )
    client_cert, client_key = _issue("gateway", ca_key, ca_cert.subject)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.pem").write_bytes(server_cert.public_bytes(pem))
    (directory / "client.pem").write_bytes(client_cert.public_bytes(pem))
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=_write_key(server_key, directory / "server.key"),
        client_cert=directory / "client.pem",
        client_key=_write_key(client_key, directory / "client.key"),
    )


@pytest.fixture(scope="module")
def tls_chat_service(
    pki: Pki, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A chat_service that requires TLS with client certificates; its address."""
    directory = tmp_path_factory.mktemp("tls-chat-service")
    port = free_port()
    env = dict(os.environ) | {
        "BULKHEAD_DEV_MODE": "true",
        "BULKHEAD_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'bulkhead.db'}",
        "BULKHEAD_NATS_URL": nats_url,
        "BULKHEAD_NATS_STREAM": f"TLS_{uuid.uuid4().hex[:12]}",
        "BULKHEAD_NATS_SUBJECT_PREFIX": f"tls{uuid.uuid4().hex[:12]}",
        "BULKHEAD_CHAT_SERVICE_LISTEN": f"127.0.0.1:{port}",
        "BULKHEAD_GRPC_TLS_CERT_FILE": str(pki.server_cert),
        "BULKHEAD_GRPC_TLS_KEY_FILE": str(pki.server_key),
        "BULKHEAD_GRPC_TLS_CA_FILE": str(pki.ca),
        "BULKHEAD_GRPC_TLS_REQUIRE_CLIENT_CERT": "true",
    }
    subprocess.run(
        [sys.executable, "-m", "chat_service.migrate"],
        env=env,
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    process = ManagedProcess(
        "chat_service",
        [sys.executable, "-m", "chat_service"],
        env=env,
        cwd=REPO_ROOT,
        log_path=directory / "chat_service.log",
    )
    process.start()
    address = f"127.0.0.1:{port}"
    client_tls = GrpcTls(
        cert_file=pki.client_cert, key_file=pki.client_key, ca_file=pki.ca
    )
    try:
        wait_until(
            process,
            lambda: _health_status(address, client_tls) == "SERVING",
            timeout_s=30,
            condition="serving over TLS",
        )
        yield address
    finally:
        process.stop(10.0)


def _health_status(address: str, tls: GrpcTls | None) -> str:
    """Return the health status name, or the gRPC error code name."""
    credentials = tls.channel_credentials() if tls else None
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def test_tls_accepts_client_certificate(tls_chat_service: str, pki: Pki) -> None:
    tls = GrpcTls(cert_file=pki.client_cert, key_file=pki.client_key, ca_file=pki.ca)

    assert _health_status(tls_chat_service, tls) == "SERVING"


def test_tls_rejects_missing_client_certificate(
    tls_chat_service: str, pki: Pki
) -> None:
    assert _health_status(tls_chat_service, GrpcTls(ca_file=pki.ca)) == "UNAVAILABLE"


def test_tls_rejects_plaintext(tls_chat_service: str) -> None:
    assert _health_status(tls_chat_service, None) == "UNAVAILABLE"


async def test_tls_channel_from_settings(tls_chat_service: str, pki: Pki) -> None:
    settings = CommonSettings(
        dev_mode=True,
        grpc_tls_cert_file=pki.client_cert,
        grpc_tls_key_file=pki.client_key,
        grpc_tls_ca_file=pki.ca,
    )

    channel = create_channel(tls_chat_service, settings.grpc_tls())
    try:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    finally:
        await channel.close()

    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "fields",
    [
        {"grpc_tls_cert_file": "cert.pem"},
        {"grpc_tls_key_file": "key.pem"},
        {"grpc_tls_require_client_cert": True},
    ],
    ids=["cert-without-key", "key-without-cert", "client-cert-without-ca"],
)
def test_tls_settings_reject_half_configuration(fields: dict) -> None:
    with pytest.raises(ValueError, match="BULKHEAD_GRPC_TLS"):
        CommonSettings(dev_mode=True, **fields)
