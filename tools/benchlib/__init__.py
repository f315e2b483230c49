"""Helpers of ``tools/bench``: the peer-ring vs Redis benchmark (issue 6).

Modules:

- :mod:`benchlib._hist` -- a mergeable latency histogram (~1% resolution).
- :mod:`benchlib._load` -- the closed-loop load generator shared by both systems, so that
  peer-ring and Redis run exactly the same client code.
- :mod:`benchlib._worker` -- the entry point of one benchmark process (a peer-ring node with
  its embedded load generator, or a Redis client process).
- :mod:`benchlib._procs` -- the parent side: spawning workers, the line protocol, Redis
  server management, profilers and cleanup.
- :mod:`benchlib._micro` -- micro-benchmarks (local get of an owned key) and the memory test.
- :mod:`benchlib._report` -- aggregation, targets, the terminal table and the JSON file.
- :mod:`benchlib.cli` -- argument parsing and the run plan.

Not a library: nothing here is imported by the packages or published.
"""
