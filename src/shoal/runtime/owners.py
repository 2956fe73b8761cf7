"""OwnerTable: who owns each duty, as this node knows it.

Two sources, kept apart:

* ``seen`` — what the watch on ``duties/`` delivered (the store's truth, slightly late);
* ``pending`` — this node's own acquires and releases, known before the watch
  delivers them: ``duty -> (store revision of the write, Owner or None if released)``.

:meth:`view` merges them (pending wins) and never changes the table. When the watch
has applied a revision, :meth:`confirm` drops the pending writes it now covers, so a
pending entry lives exactly until the watch catches up with it.

Change the table only through its methods: each bumps :attr:`OwnerTable.version`,
which :meth:`OwnerTable.nodes` is cached by.
"""

from __future__ import annotations

from collections.abc import Iterable

from shoal.primitives.ownership import DUTIES, Owner
from shoal.store.protocol import Event, EventType, KeyValue

__all__ = ["OwnerTable"]


class OwnerTable:
    """Duty owners: the watched store view plus this node's not-yet-watched writes."""

    def __init__(self) -> None:
        self.seen: dict[str, Owner] = {}
        self.pending: dict[str, tuple[int, Owner | None]] = {}
        self.version = 0  # bumped by every change: what derived views are cached by
        self._nodes: tuple[int, dict[str, str]] = (-1, {})

    # -- the watch -----------------------------------------------------------------
    def reload(self, items: dict[str, KeyValue]) -> None:
        """Replace the watched view (a full reload of ``duties/``)."""
        self.seen = {duty: Owner.decode(duty, kv) for duty, kv in items.items()}
        self.version += 1

    def apply(self, events: Iterable[Event]) -> None:
        """Apply watch events on ``duties/`` keys."""
        self.version += 1
        for ev in events:
            duty = ev.kv.key[len(DUTIES):]
            if ev.type is EventType.PUT:
                self.seen[duty] = Owner.decode(duty, ev.kv)
            else:
                self.seen.pop(duty, None)

    def confirm(self, revision: int) -> None:
        """The watch applied everything up to ``revision``: drop what it now covers."""
        covered = [d for d, (rev, _) in self.pending.items() if rev <= revision]
        for duty in covered:
            del self.pending[duty]
        if covered:
            self.version += 1

    # -- our own writes ---------------------------------------------------------------
    def wrote(self, duty: str, revision: int, owner: Owner | None) -> None:
        """This node acquired (``owner``) or released (None) ``duty`` at ``revision``."""
        self.pending[duty] = (revision, owner)
        self.version += 1

    def forget_pending(self) -> None:
        """Our lease is gone: our own writes no longer say anything."""
        if self.pending:
            self.pending.clear()
            self.version += 1

    # -- reads (no side effects) -------------------------------------------------------
    def view(self) -> dict[str, Owner]:
        """Effective owners: the watched view with our pending writes on top."""
        out = dict(self.seen)
        for duty, (_, owner) in self.pending.items():
            if owner is None:
                out.pop(duty, None)
            else:
                out[duty] = owner
        return out

    def nodes(self) -> dict[str, str]:
        """Duty -> the node that owns it, as :meth:`view` has it. The same dict
        while nothing changed (a pass asks several times; do not modify it)."""
        version, nodes = self._nodes
        if version != self.version:
            nodes = {duty: owner.node for duty, owner in self.view().items()}
            self._nodes = (self.version, nodes)
        return nodes

    def get(self, duty: str) -> Owner | None:
        if duty in self.pending:
            return self.pending[duty][1]
        return self.seen.get(duty)
