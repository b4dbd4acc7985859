"""Helpers for the compatibility matrix (tests/test_compat_*.py): real clients, real servers."""
