"""Remove the uniquely named JetStream streams that test stacks create."""

from __future__ import annotations

import asyncio

import nats
from nats.js.errors import NotFoundError

from bulkhead.devstack.nats import run_blocking

TIMEOUT_S = 5.0


async def _delete_stream(url: str, stream: str) -> None:
    async def _quiet(error: Exception) -> None:
        return None

    client = await nats.connect(
        url,
        connect_timeout=TIMEOUT_S,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        error_cb=_quiet,
    )
    try:
        await client.jetstream(timeout=TIMEOUT_S).delete_stream(stream)
    except NotFoundError:
        pass
    finally:
        await client.close()


def delete_stream(url: str, stream: str) -> None:
    """Delete ``stream`` on the server at ``url`` if it exists.

    Raises TimeoutError if the server does not respond within a few seconds.
    """
    run_blocking(
        lambda: asyncio.wait_for(_delete_stream(url, stream), timeout=3 * TIMEOUT_S)
    )
