"""Follow the stack's log files and copy new lines to the console with a prefix."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

# (process name, log file, offset where this run's lines begin)
LogSources = Callable[[], list[tuple[str, Path, int]]]


class LogFollower:
    """A thread that prints ``name | line`` for each new line of each log file.

    ``sources`` is called on every poll, so processes started later (or
    restarted, which appends to their file) are followed too. A file is read
    from the offset its source gives, so that lines of earlier runs are not
    printed again; a file that got shorter was truncated and is read from
    its beginning.
    """

    def __init__(
        self,
        sources: LogSources,
        out: TextIO = sys.stdout,
        interval_s: float = 0.2,
    ) -> None:
        self._sources = sources
        self._out = out
        self._interval_s = interval_s
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="devstack-logs", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Print what is left in the files, then end the thread."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self._poll()
        self._poll()

    def _poll(self) -> None:
        sources = self._sources()
        width = max((len(name) for name, _, _ in sources), default=0)
        for name, path, first_offset in sources:
            self._offsets.setdefault(path, first_offset)
            for line in self._read_new_lines(path):
                self._out.write(f"{name:<{width}} | {line}\n")
        self._out.flush()

    def _read_new_lines(self, path: Path) -> list[str]:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return []
        offset = self._offsets.get(path, 0)
        if size < offset:
            offset = 0
            self._partial[path] = b""
        if size == offset:
            return []
        with path.open("rb") as log:
            log.seek(offset)
            data = self._partial.get(path, b"") + log.read(size - offset)
        self._offsets[path] = size
        *lines, rest = data.split(b"\n")
        self._partial[path] = rest
        return [line.decode(errors="replace").rstrip("\r") for line in lines]
