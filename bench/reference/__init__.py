"""Bare-stack references: the least a POST /api/chat can cost on this machine.

(1a) ``app --mode direct``: FastAPI on uvicorn, inserting the rows of one
accepted message (chat, user message, run, outbox) through asyncpg in one
statement. (1b) ``app --mode grpc``: the same FastAPI app makes one grpc.aio
call to ``grpc_server``, which runs that statement. Both are part of the
benchmark, not of the product.
"""
