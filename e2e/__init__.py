"""peer-ring's end-to-end suite: real node processes, real faults (test tier 3: e2e/README.md)."""
