"""Shared fixtures come from Shoal's public pytest plugin (shoal.testing.pytest_plugin):
the session's real etcd (``etcd_cluster``, ``etcd_endpoints``) and PostgreSQL
(``pg_server``, ``pg_dsn``), stores of every
backend, conformance harnesses and ``cluster_factory``. Add fixtures for a new
backend next to them (``<name>_store``, ``<name>_harness``)."""

from __future__ import annotations

import os

from hypothesis import settings

pytest_plugins = ["shoal.testing.pytest_plugin"]

# CI (CI=true) runs every property with hypothesis' derandomized search: the same
# examples on every run, so a red run is reproducible and a green one is not luck.
# Locally the search is random and finds new examples (docs/testing.md).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
