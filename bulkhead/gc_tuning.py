"""Garbage collector settings shared by the long-running services."""

from __future__ import annotations

import gc

# Collections of the youngest generation, counted in net allocations.
# CPython's default is 700; a request allocates hundreds of short-lived
# objects (protobuf messages, rows, dicts), almost all freed by reference
# counting, so the default runs a collection every few requests.
GEN0_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Move the objects that exist after start-up out of the collector's way
    and collect the youngest generation less often.

    Call it once, after imports and configuration, before serving. The
    modules, classes and metadata loaded by then live as long as the process;
    frozen, they are no longer traversed by every full collection.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
