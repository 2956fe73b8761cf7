"""Runner-ups: each kept duty's best eligible node other than its owner, computed
while the cluster is quiet, so that a node's death does not rank its duties over
every survivor (:mod:`shoal.core.incremental`). Pure: no I/O, no clock.

An entry ``duty -> (key, node, owner, epoch)`` says: when it was computed (or
last caught up), ``node`` had the smallest key (ties: the first by name) among
the duty's eligible live nodes other than ``owner``. It stays true while nodes
only leave, as long as ``node`` is still there. A node that comes (a join) bumps
the epoch: an entry of an earlier epoch is caught up by hashing the duty on the
nodes that came since (one hash each), not on all of them. A node whose record
changed (weight, roles, disabled duties) drops every entry.

An entry is used only once its ``owner`` is no longer among the duty's eligible
live nodes (it died, or stopped being eligible): then ``node`` is the duty's best
node of all.

Warming works through a list: every kept duty after a node came or changed,
else the duties whose owner changed since (:meth:`RunnerUps.touch`), so that a
quiet cluster costs nothing. An entry whose ``node`` died is not redone until
the duty moves or a node comes (the duty is then ranked in full if its owner
dies first: rare, and still correct).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

__all__ = ["RunnerUps"]

_NONE = float("inf")


class _Keys(Protocol):
    def keys(self, duty: str, names: Sequence[str]) -> list[float]: ...


class RunnerUps:
    """The runner-up table of one incremental placer (module docstring)."""

    def __init__(self) -> None:
        self.table: dict[str, tuple[float, str, str, int]] = {}
        self.epoch = 0
        self._base = 0  # entries of earlier epochs cannot be caught up
        self._came: list[tuple[int, frozenset[str]]] = []  # nodes that came, per epoch
        self._queue: list[str] = []
        self._all = True  # the next work list: every kept duty
        self._dirty: set[str] = set()  # else these (owners changed)

    def copy(self) -> RunnerUps:
        twin = RunnerUps()
        twin.table = dict(self.table)
        twin.epoch, twin._base, twin._came = self.epoch, self._base, list(self._came)
        return twin

    def nodes_changed(self, came: Iterable[str], only_came: bool) -> None:
        """Nodes came (``only_came``: and no node's record changed; nodes may have
        left too), or some node's record changed (every entry is dropped)."""
        self.epoch += 1
        self._queue, self._all = [], True
        self._dirty.clear()
        if only_came:
            self._came.append((self.epoch, frozenset(came)))
        else:
            self.table, self._came, self._base = {}, [], self.epoch

    def touch(self, duties: Iterable[str]) -> None:
        """These duties' owners changed: their entries are to be redone."""
        if not self._all:
            self._dirty.update(duties)

    def best(self, duty: str, allowed: frozenset[str]) -> tuple[float, str] | None:
        """The duty's best node among ``allowed`` (its eligible live nodes) and its
        key, if its entry is current and its owner is not among them; else None."""
        run = self.table.get(duty)
        if run is None or run[3] != self.epoch or run[2] in allowed or run[1] not in allowed:
            return None
        return run[0], run[1]

    def warm(self, limit: int, kept: Mapping[str, Mapping[str, float]],
             owner_of: Callable[[str], str | None], ranker: _Keys,
             names_of: Callable[[str], tuple[str, ...]],
             allowed_of: Callable[[str], frozenset[str]]) -> bool:
        """Compute or catch up the entries of up to ``limit`` duties of ``kept``
        (live node -> the duties it keeps) that lack a current one, from the work
        list (module docstring; drawn up again once done). True when it is done."""
        queue, table = self._queue, self.table
        if not queue:
            if self._all:
                for duties in kept.values():
                    queue.extend(duties)
                self._all = False
            else:
                queue.extend(self._dirty)
            self._dirty.clear()
        done = 0
        budget = 16 * limit  # duties looked at, current ones included
        while queue and done < limit and budget > 0:
            budget -= 1
            duty = queue.pop()
            owner = owner_of(duty)
            if owner is None or duty not in kept.get(owner, ()):
                continue  # no longer kept (moved or freed since it was listed)
            run = table.get(duty)
            if run is not None and run[2] == owner and run[3] == self.epoch:
                continue  # current already
            self._compute(duty, owner, ranker, names_of(duty), allowed_of(duty))
            done += 1
        return not queue

    def _compute(self, duty: str, owner: str, ranker: _Keys, names: tuple[str, ...],
                 allowed: frozenset[str]) -> None:
        run = self.table.get(duty)
        if (run is not None and run[2] == owner and self._base <= run[3] < self.epoch
                and run[1] in allowed):  # catch up: hash the nodes that came since
            key, node = run[0], run[1]
            for epoch, came in self._came:
                if epoch <= run[3]:
                    continue
                fresh = sorted(n for n in came if n in allowed and n != owner)
                for k, n in zip(ranker.keys(duty, fresh), fresh, strict=True):
                    if k < key or (k == key and n < node):
                        key, node = k, n
            self.table[duty] = (key, node, owner, self.epoch)
            return
        keys = ranker.keys(duty, names)
        keys[names.index(owner)] = _NONE  # a kept duty's owner is eligible
        key = min(keys, default=_NONE)
        if key == _NONE:
            self.table.pop(duty, None)  # no other eligible node
        else:
            self.table[duty] = (key, names[keys.index(key)], owner, self.epoch)
