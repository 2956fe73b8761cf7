"""Duties that follow data: one duty per document of a replicated-state namespace.

``@app.duty("site:{key}", for_each_doc="sites")`` makes duty ``site:K`` for
every document ``sites/K``. :func:`follow_documents` runs on every node (one
of its background tasks): it subscribes to those namespaces and, after each
burst of changes, expands the app's duties again from the node's copy of the
documents and wakes placement. A new document's duty is then placed and
acquired like any other; a deleted document's duty is no longer declared, so
its owner stops it and releases its key (:func:`shoal.runtime.plan.plan`).
Each node follows its own copy of the documents, so the duty set converges
within the watch latency; steady state costs no store traffic beyond the
state watch every node keeps anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from shoal.runtime.state import Change

if TYPE_CHECKING:
    from shoal.runtime.node import Node

__all__ = ["documents_of", "follow_documents"]

log = logging.getLogger("shoal.node")


def documents_of(node: Node) -> Any:
    """A ``docs(namespace) -> {key: value}`` source reading the node's copy."""

    def docs(namespace: str) -> dict[str, Any]:
        return {k: d.value for k, d in node.state.items(namespace).items()}

    return docs


async def follow_documents(node: Node) -> None:
    """Re-expand ``node``'s duties whenever a ``for_each_doc`` namespace changes.
    Runs until cancelled."""
    namespaces = sorted(node.app.doc_namespaces)
    if not namespaces:
        return
    changed = asyncio.Event()

    async def pump(changes: AsyncIterator[Change]) -> None:
        async for _ in changes:
            changed.set()

    pumps = [asyncio.create_task(pump(node.state.subscribe(ns))) for ns in namespaces]
    try:
        node.refresh_duties()  # documents applied before the subscriptions opened
        while True:
            await changed.wait()
            for _ in range(3):  # coalesce a burst (a transaction of many documents)
                await asyncio.sleep(0)
            changed.clear()
            node.refresh_duties()
    finally:
        for task in pumps:
            task.cancel()
        for task in pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await task
