"""OwnerTable: who owns each duty, as this node knows it.

Two sources, kept apart:

* ``seen`` — what the watch on ``duties/`` delivered (the store's truth, slightly late);
* ``pending`` — this node's own acquires and releases, known before the watch
  delivers them: ``duty -> (store revision of the write, Owner or None if released)``.

:meth:`view` merges them (pending wins) and never changes the table. When the watch
has applied a revision, :meth:`confirm` drops the pending writes it now covers, so a
pending entry lives exactly until the watch catches up with it.

Change the table only through its methods: each bumps :attr:`OwnerTable.version`,
which :meth:`OwnerTable.nodes` is cached by, and logs the duties it touched, so
that :meth:`OwnerTable.changed_since` can tell a consumer (the incremental placer)
which owners may differ from those it saw, instead of it comparing them all.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

from shoal.primitives.ownership import DUTIES, Owner
from shoal.store.protocol import Event, EventType, KeyValue

__all__ = ["LOG_LIMIT", "OwnerTable"]

LOG_LIMIT = 50_000  # duties logged for changed_since (older changes are forgotten)


class OwnerTable:
    """Duty owners: the watched store view plus this node's not-yet-watched writes."""

    def __init__(self) -> None:
        self.seen: dict[str, Owner] = {}
        self.pending: dict[str, tuple[int, Owner | None]] = {}
        self.version = 0  # bumped by every change: what derived views are cached by
        self._nodes: tuple[int, dict[str, str]] = (-1, {})
        # the duties each version touched (versions ascending), for changed_since;
        # versions below _floor are no longer (or were never) logged
        self._log_versions: list[int] = []
        self._log: list[list[str]] = []
        self._logged = 0
        self._floor = 0

    def _bump(self, duties: list[str]) -> None:
        """A change touching ``duties``: a new version, logged."""
        self.version += 1
        self._log_versions.append(self.version)
        self._log.append(duties)
        self._logged += len(duties)
        if self._logged > LOG_LIMIT:  # forget the oldest half of the changes
            cut = len(self._log) // 2 or 1
            self._floor = self._log_versions[cut - 1]
            self._logged -= sum(len(d) for d in self._log[:cut])
            del self._log_versions[:cut], self._log[:cut]

    # -- the watch -----------------------------------------------------------------
    def reload(self, items: dict[str, KeyValue]) -> None:
        """Replace the watched view (a full reload of ``duties/``): what changed is
        not known (:meth:`changed_since` any earlier version says None)."""
        self.seen = {duty: Owner.decode(duty, kv) for duty, kv in items.items()}
        self.version += 1
        self._floor = self.version
        self._log_versions, self._log, self._logged = [], [], 0

    def apply(self, events: Iterable[Event]) -> None:
        """Apply watch events on ``duties/`` keys."""
        touched: list[str] = []
        for ev in events:
            duty = ev.kv.key[len(DUTIES):]
            touched.append(duty)
            if ev.type is EventType.PUT:
                self.seen[duty] = Owner.decode(duty, ev.kv)
            else:
                self.seen.pop(duty, None)
        self._bump(touched)

    def confirm(self, revision: int) -> None:
        """The watch applied everything up to ``revision``: drop what it now covers."""
        covered = [d for d, (rev, _) in self.pending.items() if rev <= revision]
        for duty in covered:
            del self.pending[duty]
        if covered:
            self._bump(covered)

    # -- our own writes ---------------------------------------------------------------
    def wrote(self, duty: str, revision: int, owner: Owner | None) -> None:
        """This node acquired (``owner``) or released (None) ``duty`` at ``revision``."""
        self.pending[duty] = (revision, owner)
        self._bump([duty])

    def forget_pending(self) -> None:
        """Our lease is gone: our own writes no longer say anything."""
        if self.pending:
            dropped = list(self.pending)
            self.pending.clear()
            self._bump(dropped)

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

    def changed_since(self, version: int) -> set[str] | None:
        """The duties whose owner in :meth:`nodes` may differ from what it was at
        ``version`` (a superset: a duty touched and changed back is in it); None
        when that is not known (a reload since, or too long ago: compare in full)."""
        if version < self._floor or version > self.version:
            return None
        out: set[str] = set()
        for duties in self._log[bisect_right(self._log_versions, version):]:
            out.update(duties)
        return out

    def get(self, duty: str) -> Owner | None:
        if duty in self.pending:
            return self.pending[duty][1]
        return self.seen.get(duty)
