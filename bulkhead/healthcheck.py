"""Check a gRPC server's standard health service from the command line.

``python -m bulkhead.healthcheck HOST:PORT`` calls ``grpc.health.v1.Health/Check``
for the overall server (service name ``""``) and exits 0 when the server
reports SERVING, 1 otherwise. Container health checks and the development
stack use it, so that a process counts as healthy only once it reports SERVING.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_TIMEOUT_S = 2.0


def check_health(
    address: str, service: str = "", timeout_s: float = DEFAULT_TIMEOUT_S
) -> str:
    """Return the serving status name of ``service`` on the server at ``address``.

    Returns ``"SERVING"``, ``"NOT_SERVING"``, ``"SERVICE_UNKNOWN"`` or
    ``"UNKNOWN"`` as reported by the server. Raises :class:`grpc.RpcError`
    when the call fails, for example UNAVAILABLE while nothing listens yet or
    DEADLINE_EXCEEDED after ``timeout_s`` seconds.
    """
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        response = stub.Check(request, timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def is_serving(
    address: str, service: str = "", timeout_s: float = DEFAULT_TIMEOUT_S
) -> bool:
    """Return True if the server at ``address`` reports ``service`` SERVING."""
    try:
        return check_health(address, service, timeout_s) == "SERVING"
    except grpc.RpcError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bulkhead.healthcheck",
        description="Exit 0 if the gRPC server at HOST:PORT reports SERVING.",
    )
    parser.add_argument("address", metavar="HOST:PORT", help="gRPC server address")
    parser.add_argument(
        "--service",
        default="",
        help='service name to check (default: "", the whole server)',
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"deadline of the call in seconds (default: {DEFAULT_TIMEOUT_S})",
    )
    args = parser.parse_args(argv)

    try:
        status = check_health(args.address, args.service, args.timeout)
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        name = code.name if code is not None else type(error).__name__
        print(f"health check of {args.address} failed: {name}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"{args.address} is {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
