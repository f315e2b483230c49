"""The fault scenarios of issue 4, one module each (see e2e/README.md)."""
