"""Helpers for the compatibility matrix (tests/compatibility/test_compat_*.py): real clients,
real servers."""
