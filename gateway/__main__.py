"""Run the gateway: ``python -m gateway``.

One uvicorn worker process on uvloop; uvicorn stops accepting connections on
SIGTERM and gives open requests BULKHEAD_GATEWAY_SHUTDOWN_TIMEOUT_S seconds.
Scale by running more processes behind a load balancer.
"""

from __future__ import annotations

import importlib.util
import signal
from types import FrameType

import uvicorn

from bulkhead.gc_tuning import tune_garbage_collector
from bulkhead.log import configure_logging
from gateway.app import create_app
from gateway.config import GatewaySettings


def _exit_after_shutdown(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    # uvicorn 0.54 handles SIGTERM with a graceful shutdown, then restores the
    # previous handler and raises the signal again (Server.capture_signals).
    # With the default handler the process would end killed by SIGTERM; this
    # one turns the finished shutdown into exit status 0.
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level, settings.log_format)
    app = create_app(settings)
    tune_garbage_collector()
    # httptools parses HTTP faster than h11 but is an optional extra of uvicorn.
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    uvicorn.run(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        loop="uvloop",
        http=http,
        workers=1,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=settings.gateway_shutdown_timeout_s,
    )


if __name__ == "__main__":
    main()
