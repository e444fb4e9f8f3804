"""(1b) A minimal grpc.aio server whose one method stores a message.

Request and response are JSON bytes (no protobuf), handled by a generic
handler: ``/bench.Reference/PostMessage``.

``python -m bench.reference.grpc_server --port P --dsn DSN``
"""

from __future__ import annotations

import argparse

import grpc
import orjson
import uvloop

from bench.reference.schema import create_pool, store_message

METHOD = "/bench.Reference/PostMessage"


async def serve(port: int, dsn: str) -> None:
    pool = await create_pool(dsn)

    async def post_message(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        body = orjson.loads(request)
        stored = await store_message(
            pool, body["user_id"], body["content"], body["model"]
        )
        return orjson.dumps(stored)

    handler = grpc.method_handlers_generic_handler(
        "bench.Reference",
        {"PostMessage": grpc.unary_unary_rpc_method_handler(post_message)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description="Reference gRPC server (1b).")
    parser.add_argument("--port", type=int, required=True, help="TCP port.")
    parser.add_argument("--dsn", required=True, help="asyncpg DSN of the database.")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.dsn))


if __name__ == "__main__":
    main()
