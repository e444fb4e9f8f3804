"""tune_garbage_collector, run in a fresh interpreter so that this process
keeps CPython's defaults."""

from __future__ import annotations

import json
import textwrap

from bulkhead.gc_tuning import GEN0_THRESHOLD
from tests.support.interpreter import run_script

_SCRIPT = textwrap.dedent(
    """
    import gc, json
    from bulkhead.gc_tuning import tune_garbage_collector

    before = gc.get_threshold()
    tune_garbage_collector()
    print(json.dumps({
        "before": before,
        "after": gc.get_threshold(),
        "frozen": gc.get_freeze_count(),
    }))
    """
)


def test_gc_tuning_freezes_and_raises_gen0() -> None:
    result = run_script(_SCRIPT)
    state = json.loads(result.stdout)

    assert state["after"][0] == GEN0_THRESHOLD
    assert state["after"][1:] == state["before"][1:]
    assert state["frozen"] > 1000  # the modules and classes loaded by then
