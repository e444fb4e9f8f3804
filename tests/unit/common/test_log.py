"""The JSON log lines every service writes (bulkhead.log)."""

from __future__ import annotations

import json
import textwrap

from tests.support.interpreter import run_script

# Runs in a fresh interpreter: structlog's configuration is process-wide.
_SCRIPT = textwrap.dedent(
    """
    import logging
    from bulkhead.log import bind_context, configure_logging, get_logger

    logger = get_logger("chat_service.runs")  # created before configuring
    configure_logging("chat_service", "INFO")
    bind_context(request_id="req-1", run_id="run-1")
    logger.info("run claimed", attempt=2, big=2**70)
    logger.debug("not written")
    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("claim failed")
    logging.getLogger("uvicorn.error").warning("library %s", "record")
    """
)


def _log_lines() -> list[dict[str, object]]:
    result = run_script(_SCRIPT)
    assert result.stdout == ""
    return [json.loads(line) for line in result.stderr.splitlines()]


def test_log_lines_are_json_with_ids() -> None:
    claimed, failed, library = _log_lines()

    assert claimed["event"] == "run claimed"
    assert claimed["level"] == "info"
    assert claimed["logger"] == "chat_service.runs"
    assert claimed["service"] == "chat_service"
    assert claimed["request_id"] == "req-1"
    assert claimed["run_id"] == "run-1"
    assert claimed["attempt"] == 2
    assert claimed["big"] == 2**70
    assert str(claimed["timestamp"]).endswith("Z")

    assert failed["level"] == "error"
    assert "ValueError: bad value" in str(failed["exception"])

    assert library["event"] == "library record"
    assert library["level"] == "warning"
    assert library["logger"] == "uvicorn.error"
    assert library["service"] == "chat_service"
    assert library["run_id"] == "run-1"
