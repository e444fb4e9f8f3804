"""Per-route limits on the runs that one executor serves at once.

Without them, a provider that accepts connections and then hangs would fill
every run slot of the executor with calls waiting for their timeouts, and
runs on healthy routes, the built-in one included, would wait behind them.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator


def route_limit(concurrency: int, configured: int, routes: int) -> int:
    """Return how many runs one model route may have at once.

    ``configured`` wins when set, up to ``concurrency``. By default a lone
    route may use every slot. With several routes, a quarter of the slots
    (rounded down, at least one) stays free for the other routes.
    """
    if configured:
        return min(configured, concurrency)
    if routes < 2 or concurrency < 2:
        return concurrency
    return concurrency - max(1, concurrency // 4)


class RouteSlots:
    """Counts the runs in progress per model route, up to ``limit`` each.

    A run counts against the first route of its plan for as long as it runs,
    its fallbacks included.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._in_use: Counter[str] = Counter()

    def in_use(self, route: str) -> int:
        return self._in_use[route]

    @contextlib.contextmanager
    def take(self, route: str) -> Iterator[bool]:
        """Hold a slot of ``route`` for the block. Yields False if none is free.

        A task without a route (published before tasks named one) is not
        counted and always gets a slot.
        """
        if not route:
            yield True
            return
        if self._in_use[route] >= self.limit:
            yield False
            return
        self._in_use[route] += 1
        try:
            yield True
        finally:
            self._in_use[route] -= 1
            if not self._in_use[route]:
                del self._in_use[route]
