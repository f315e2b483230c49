"""Shared fixtures of the pub-sub tests."""
