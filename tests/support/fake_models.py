"""The fake OpenAI-compatible server on a thread of its own, and models files for it.

End-to-end tests drive the stack from an asyncio test while the stack's
executors call the fake model server. Hosting the server in its own thread
and event loop keeps it answering while the test's loop is busy or blocked
(for example in a blocking ``Stack`` call), so the timings that tests assert
are the server's, not the test's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from tests.support.fake_openai import Behaviour, CallRecord, FakeOpenAI

STARTUP_TIMEOUT_S = 10.0


class FakeModelThread:
    """A :class:`FakeOpenAI` running in a daemon thread; start() and stop() block."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fake-openai", daemon=True
        )
        self.server = FakeOpenAI()

    def start(self) -> FakeModelThread:
        self._thread.start()
        self._run(self.server.start())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self.server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STARTUP_TIMEOUT_S)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def configure(self, model: str, **fields: Any) -> Behaviour:
        """Set the behaviour of one fake model name (see :class:`Behaviour`)."""
        return self._run(self._configure(model, fields))

    def reset(self, **behaviours: dict[str, Any]) -> None:
        """Clear the call log, the call counts and every behaviour, then set these."""
        self._run(self._reset(behaviours))

    def calls(self, model: str | None = None) -> list[CallRecord]:
        """Return a snapshot of the call log, optionally for one model only."""
        return self._run(self._calls(model))

    def _run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(STARTUP_TIMEOUT_S)

    async def _configure(self, model: str, fields: dict[str, Any]) -> Behaviour:
        return self.server.configure(model, **fields)

    async def _reset(self, behaviours: dict[str, dict[str, Any]]) -> None:
        self.server.reset()
        self.server.behaviours = {
            name: Behaviour(**fields) for name, fields in behaviours.items()
        }

    async def _calls(self, model: str | None) -> list[CallRecord]:
        calls = self.server.calls
        selected = calls if model is None else [c for c in calls if c.model == model]
        return [dataclasses.replace(call) for call in selected]


def write_models_file(
    path: Path,
    base_url: str,
    routes: dict[str, dict[str, Any]],
    default_model: str,
) -> Path:
    """Write a models TOML file whose routes call the fake server at ``base_url``.

    ``routes`` maps each route name to its keys (``fallbacks``,
    ``max_retries``, timeouts); every route uses the ``openai`` provider and
    the route name as the model name, unless the keys say otherwise.
    """
    lines = [f"default_model = {_toml(default_model)}", ""]
    for route, keys in routes.items():
        values = {"provider": "openai", "base_url": base_url, **keys}
        lines.append(f"[models.{_toml(route)}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Iterable):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
