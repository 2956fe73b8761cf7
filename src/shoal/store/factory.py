"""Open the store a configuration names: ``await open_store(config)``.

The backend is found through its descriptor (:mod:`shoal.store.registry`) and
imported lazily, so a backend's driver is only needed by nodes that use it. A
backend that cannot be used raises :class:`~shoal.UnsupportedBackend` here, at
construction, never mid-run: a missing extra, a store whose features differ
from what its descriptor declares, or one lacking a feature the caller needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from shoal.clock import Clock
from shoal.errors import ConfigError, StoreUnavailable, UnsupportedBackend
from shoal.store.protocol import Store
from shoal.store.registry import Backend, require_features

if TYPE_CHECKING:
    from shoal.config import NodeConfig, StoreSectionBase

__all__ = ["describe", "identity", "open_store", "open_timeout", "opened_store", "store_section"]


def store_section(config: NodeConfig | StoreSectionBase) -> StoreSectionBase:
    """``config.store`` for a whole configuration, else ``config`` itself.
    (Duck-typed: the store layer never imports the configuration.)"""
    store: StoreSectionBase = getattr(config, "store", None) or config  # type: ignore[assignment]
    return store


async def open_store(
    config: NodeConfig | StoreSectionBase,
    *,
    clock: Clock | None = None,
    require: Mapping[str, str] | tuple[str, ...] = (),
) -> Store:
    """A connected store for ``config.store`` (or a store section).

    ``clock`` drives leases in the in-process backends (memory, sqlite; others
    keep their own time). ``require``: :class:`~shoal.store.Features` flags the
    caller needs (a mapping gives, per flag, the reason and fix shown when it
    is missing). Raises :class:`~shoal.UnsupportedBackend` when the backend
    cannot be used here and :class:`~shoal.StoreUnavailable` when it cannot be
    reached. The caller closes the store with ``await store.aclose()``.
    """
    section = store_section(config)
    backend = section.descriptor
    require_features(backend, require)
    try:
        store = await backend.open(section.selected, clock)
    except ModuleNotFoundError as exc:
        if backend.extra_missing(exc):
            raise UnsupportedBackend(backend.install_hint) from exc
        raise
    _check_features(backend, store)
    return store


def _check_features(backend: Backend, store: Store) -> None:
    if store.features != backend.features:
        raise UnsupportedBackend(
            f"store backend {backend.name}: the store opened has features {store.features}, "
            f"but its descriptor declares {backend.features} — fix the backend's descriptor"
        )


@contextlib.asynccontextmanager
async def opened_store(
    config: NodeConfig | StoreSectionBase,
    *,
    require: Mapping[str, str] | tuple[str, ...] = (),
    must_exist: bool = False,
) -> AsyncIterator[Store]:
    """The configured store, opened within the backend's open timeout, closed on exit.

    For tools (the CLI): ``must_exist`` refuses a store that plainly holds no
    cluster (a sqlite file that does not exist, which opening would create);
    raises :class:`~shoal.StoreUnavailable` when opening takes too long."""
    section = store_section(config)
    backend = section.descriptor
    require_features(backend, require)
    if must_exist and (why := backend.missing(section.selected)) is not None:
        raise ConfigError(why)
    limit = backend.open_timeout(section.selected)
    try:
        async with asyncio.timeout(limit):
            store = await open_store(section)
    except TimeoutError:
        where = backend.describe(section.selected)
        raise StoreUnavailable(f"store {where} did not answer within {limit:g} s") from None
    try:
        yield store
    finally:
        await store.aclose()


def describe(config: NodeConfig | StoreSectionBase) -> str:
    """Where the configured store is, for humans (never a secret)."""
    section = store_section(config)
    return section.descriptor.describe(section.selected)


def identity(config: NodeConfig | StoreSectionBase) -> dict[str, Any]:
    """Plain data naming the configured store (for backup headers; no secrets)."""
    section = store_section(config)
    return section.descriptor.identity(section.selected)


def open_timeout(config: NodeConfig | StoreSectionBase) -> float:
    """How long a tool waits for the configured store to open."""
    section = store_section(config)
    return section.descriptor.open_timeout(section.selected)
