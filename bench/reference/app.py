"""(1a) and (1b): a minimal FastAPI app that accepts ``POST /api/chat``.

It validates a pydantic body and a bearer token in an ``async`` dependency,
as the gateway does, then stores the message itself (``--mode direct``) or
through one grpc.aio call (``--mode grpc``). uvicorn runs it with the same
event loop and HTTP parser as the gateway.

``python -m bench.reference.app --mode direct --port P --dsn DSN``
``python -m bench.reference.app --mode grpc --port P --grpc-target HOST:PORT``
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

import grpc
import orjson
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, StrictStr

from bench.reference.grpc_server import METHOD
from bench.reference.schema import create_pool, store_message

API_KEY = "bench-reference-key"
MODEL = "bulkhead-echo"


class PostMessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: StrictStr
    chat_id: UUID | None = None
    model: StrictStr | None = None


async def authenticate(authorization: Annotated[str, Header()] = "") -> str:
    """Return the user id of the bearer token; 401 for any other token."""
    if authorization != f"Bearer {API_KEY}":
        raise HTTPException(status_code=401, detail="invalid API key")
    return "bench-user"


def create_app(mode: str, dsn: str | None, grpc_target: str | None) -> FastAPI:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if mode == "direct":
            assert dsn is not None
            state["pool"] = await create_pool(dsn)
        else:
            assert grpc_target is not None
            channel = grpc.aio.insecure_channel(grpc_target)
            state["call"] = channel.unary_unary(METHOD)
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/api/chat", status_code=202)
    async def post_message(
        body: PostMessageRequest, user_id: Annotated[str, Depends(authenticate)]
    ) -> dict[str, Any]:
        model = body.model or MODEL
        if mode == "direct":
            return await store_message(state["pool"], user_id, body.content, model)
        request = orjson.dumps(
            {"user_id": user_id, "content": body.content, "model": model}
        )
        response = await state["call"](request, timeout=5.0)
        return orjson.loads(response)  # type: ignore[no-any-return]

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Reference FastAPI app (1a, 1b).")
    parser.add_argument("--mode", choices=["direct", "grpc"], required=True)
    parser.add_argument("--port", type=int, required=True, help="HTTP port.")
    parser.add_argument("--dsn", help="asyncpg DSN (mode direct).")
    parser.add_argument("--grpc-target", help="host:port of grpc_server (mode grpc).")
    args = parser.parse_args()
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    uvicorn.run(
        create_app(args.mode, args.dsn, args.grpc_target),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http=http,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
