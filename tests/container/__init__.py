"""Helpers for tests/deployment/test_container.py: build and run the image with buildah, no
Docker engine."""
