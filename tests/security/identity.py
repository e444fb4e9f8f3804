"""A test identity provider: signing keys, a JWKS server on 127.0.0.1, tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
)

ISSUER = "https://id.bulkhead.test"
AUDIENCE = "bulkhead-api"
HS256_SECRET = "hs256-test-secret-" + "k" * 32


class IdentityProvider:
    """RSA and EC signing keys, and an HTTP server that serves their JWKS."""

    def __init__(self) -> None:
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.rsa_kid = "rsa-" + uuid.uuid4().hex[:8]
        self.ec_kid = "ec-" + uuid.uuid4().hex[:8]
        self.jwks_requests = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key.public_key())
        )
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key()))
        rsa_jwk.update(kid=self.rsa_kid, alg="RS256", use="sig")
        ec_jwk.update(kid=self.ec_kid, alg="ES256", use="sig")
        return {"keys": [rsa_jwk, ec_jwk]}

    def rsa_public_pem(self) -> bytes:
        return self.rsa_key.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )

    def start(self) -> str:
        """Serve the JWKS on a free port of 127.0.0.1; return its URL."""
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.jwks_requests += 1
                body = json.dumps(provider.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def token(
        self,
        sub: str,
        alg: str = "RS256",
        *,
        lifetime_s: float = 300,
        headers: dict[str, Any] | None = None,
        key: Any = None,
        **claims: Any,
    ) -> str:
        """Sign a token with the provider's key for ``alg`` (or ``key``)."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": sub,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + int(lifetime_s),
        }
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        if key is None:
            key = {
                "RS256": self.rsa_key,
                "ES256": self.ec_key,
                "HS256": HS256_SECRET,
            }[alg]
        kid = {"RS256": self.rsa_kid, "ES256": self.ec_kid}.get(alg)
        header = {"kid": kid} if kid else {}
        header.update(headers or {})
        return jwt.encode(payload, key, algorithm=alg, headers=header)


def _part(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unsigned_token(sub: str) -> str:
    """Build an ``alg: none`` token by hand (PyJWT refuses to make one)."""
    now = int(time.time())
    claims = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300}
    return f"{_part({'alg': 'none', 'typ': 'JWT'})}.{_part(claims)}."


def hs256_token_with_key(claims: dict[str, Any], key: bytes, kid: str) -> str:
    """Sign HS256 with any bytes, such as a public key PEM (PyJWT refuses to)."""
    signing_input = f"{_part({'alg': 'HS256', 'kid': kid})}.{_part(claims)}"
    digest = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_part(digest)}"
