"""Revoking a lease in a SQLite store from the reaper process.

:func:`reaper_prepare` opens the file while the node lives (blocking: no event loop,
no worker thread), so that at the node's death the revoke is one write transaction
(about 1-2 ms) instead of opening a store with its poller first (about 5 ms more,
measured with 200 keys on the lease). The commit wakes the other processes' pollers
as any store's commit does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shoal.errors import LeaseNotFound, ShoalError
from shoal.store.sqlite import SqliteStore

__all__ = ["reaper_prepare", "reaper_revoke"]

_store: SqliteStore | None = None  # opened by reaper_prepare, used once by reaper_revoke


def reaper_prepare(info: Mapping[str, Any]) -> None:
    """Open ``info["path"]`` now (if that fails, the revoke opens it itself)."""
    global _store
    try:
        _store = SqliteStore.open_blocking(str(info["path"]))
    except ShoalError:
        _store = None


def reaper_revoke(info: Mapping[str, Any], lease: int) -> str:
    """Revoke ``lease`` in the file ``info["path"]``; returns what happened."""
    global _store
    store, _store = _store, None
    if store is not None and store.path != Path(info["path"]):  # prepared for another file
        store.close_blocking()
        store = None
    try:
        if store is None:
            store = SqliteStore.open_blocking(str(info["path"]))
        store.revoke_blocking(lease)
    except LeaseNotFound:
        return "already gone"
    finally:
        if store is not None:
            store.close_blocking()
    return f"revoked in {info['path']}"
