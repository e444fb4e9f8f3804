"""Benchmark harness for Bulkhead: ``python -m bench`` (``make bench``).

It starts the real stack as processes, a fake OpenAI-compatible model server,
bare-stack reference servers and load generators in processes of their own,
all on 127.0.0.1, then writes ``bench/results/latest.json`` and regenerates
``docs/benchmarks.md``. See ``docs/benchmarks.md`` for what each section
measures.
"""
