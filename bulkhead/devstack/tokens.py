"""Service credentials of a development or test stack.

Each stack gets random tokens for the gateway and worker roles, stored in
``var/service-tokens.env`` (mode 0600) and reused by later starts, so the
whole stack runs with service credentials checked, as in production.
"""

from __future__ import annotations

import secrets
from pathlib import Path

TOKENS_FILE = "service-tokens.env"
GATEWAY_TOKEN_ENV = "BULKHEAD_GATEWAY_SERVICE_TOKEN"
WORKER_TOKEN_ENV = "BULKHEAD_WORKER_SERVICE_TOKEN"
# Which token each service needs: chat_service checks both.
TOKENS_OF_SERVICE = {
    "chat_service": (GATEWAY_TOKEN_ENV, WORKER_TOKEN_ENV),
    "gateway": (GATEWAY_TOKEN_ENV,),
    "agent_service": (WORKER_TOKEN_ENV,),
    "executor_service": (WORKER_TOKEN_ENV,),
}


def read_or_create_tokens(path: Path) -> dict[str, str]:
    """Return the tokens stored in ``path``, creating missing ones.

    The file has ``NAME=value`` lines. It is written (mode 0600) only when a
    token was missing.
    """
    tokens: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, value = line.strip().partition("=")
            if name in (GATEWAY_TOKEN_ENV, WORKER_TOKEN_ENV) and value:
                tokens[name] = value
    missing = [n for n in (GATEWAY_TOKEN_ENV, WORKER_TOKEN_ENV) if n not in tokens]
    if missing:
        for name in missing:
            tokens[name] = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text("".join(f"{n}={v}\n" for n, v in sorted(tokens.items())))
    return tokens
