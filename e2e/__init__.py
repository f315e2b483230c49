"""peer-ring's end-to-end suite: real node processes, real faults (DESIGN.md, test tier 3)."""
