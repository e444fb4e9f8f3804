"""TLS settings for gRPC servers and channels (optional; plaintext by default)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class GrpcTls:
    """TLS files of one service, all PEM.

    A server with ``cert_file`` and ``key_file`` listens with TLS; with
    ``require_client_cert`` it also requires a client certificate signed by
    ``ca_file`` (mutual TLS). A client with ``ca_file`` connects with TLS,
    verifies the server against it and presents ``cert_file`` when set.
    """

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if self.cert_file is None or self.key_file is None:
            return None
        ca = self.ca_file.read_bytes() if self.ca_file else None
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=ca,
            require_client_auth=self.require_client_cert,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if self.ca_file is None:
            return None
        has_identity = self.cert_file is not None and self.key_file is not None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes() if has_identity else None,  # type: ignore[union-attr]
            certificate_chain=self.cert_file.read_bytes() if has_identity else None,  # type: ignore[union-attr]
        )
