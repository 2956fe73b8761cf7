"""Open the store a configuration names: ``await open_store(config)``.

Backends are imported lazily, so the etcd client library is only needed by
nodes that use etcd. A backend that cannot be used raises
:class:`~shoal.UnsupportedBackend` here, at construction, never mid-run.
"""

from __future__ import annotations

import importlib
from typing import Any, cast

from shoal._clock import Clock
from shoal._errors import UnsupportedBackend
from shoal.config import NodeConfig, StoreSection
from shoal.store.protocol import Store

__all__ = ["ETCD_EXTRA_HINT", "open_store"]

ETCD_EXTRA_HINT = "the etcd backend needs the etcd extra: pip install 'shoal[etcd]'"
# Top-level modules the etcd backend imports; if one is missing, the extra is.
_ETCD_DEPENDENCIES = frozenset({"etcd3aio", "grpc", "google"})


def _backend_class(backend: str, attr: str) -> Any:
    module = f"shoal.store.{backend}"
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if backend == "etcd" and missing.split(".")[0] in _ETCD_DEPENDENCIES:
            raise UnsupportedBackend(ETCD_EXTRA_HINT) from exc
        if missing == module:
            raise UnsupportedBackend(
                f"the {backend} backend is not available in this installation ({module} is missing)"
            ) from exc
        raise


async def open_store(config: NodeConfig | StoreSection, *, clock: Clock | None = None) -> Store:
    """A connected store for ``config.store`` (or a :class:`StoreSection`).

    ``clock`` drives leases in the memory and sqlite backends (etcd keeps its
    own time). Raises :class:`~shoal.UnsupportedBackend` when the backend
    cannot be used here and :class:`~shoal.StoreUnavailable` when it cannot be
    reached. The caller closes the store with ``await store.aclose()``.
    """
    section = config.store if isinstance(config, NodeConfig) else config
    if section.backend == "memory":
        memory_cls = _backend_class("memory", "MemoryStore")
        return cast(Store, memory_cls(clock=clock))
    if section.backend == "sqlite":
        sqlite_cls = _backend_class("sqlite", "SqliteStore")
        return cast(Store, await sqlite_cls.open(section.sqlite.path, clock=clock))
    if section.backend == "etcd":
        etcd_cls = _backend_class("etcd", "EtcdStore")
        etcd = section.etcd
        password = etcd.password.get_secret_value() if etcd.password is not None else None
        tls = etcd.tls
        store = await etcd_cls.open(
            list(etcd.endpoints),
            prefix=etcd.prefix,
            timeout=etcd.timeout,
            ca_file=str(tls.ca) if tls.ca else None,
            cert_file=str(tls.cert) if tls.cert else None,
            key_file=str(tls.key) if tls.key else None,
            skip_verify=tls.skip_verify,
            username=etcd.username,
            password=password,
        )
        return cast(Store, store)
    raise UnsupportedBackend(
        f"unknown store backend {section.backend!r}; use memory, sqlite or etcd"
    )
