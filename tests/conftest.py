"""Shared fixtures come from Shoal's public pytest plugin (shoal.testing.pytest_plugin):
the session's real etcd (``etcd_cluster``, ``etcd_endpoints``) and PostgreSQL
(``pg_server``, ``pg_dsn``), stores of every
backend, conformance harnesses and ``cluster_factory``. Add fixtures for a new
backend next to them (``<name>_store``, ``<name>_harness``)."""

from __future__ import annotations

pytest_plugins = ["shoal.testing.pytest_plugin"]
