"""Checker properties of schedules over a chaos history (see shoal.testing.history).

The chaos app's schedule records ``slot_run`` (``schedule``, ``slot``, ``token``,
``attempt``, ``every``) when its function starts. Over those records:

* ``slot_twice``: a slot of a schedule started more than once as a first attempt
  (at most once per slot across the cluster, whatever the faults);
* ``slot_missed``: once faults are over (``bound_s`` after the last fault/heal
  record), a slot due before the history's last ``slot_run`` minus one period did
  not run (every due slot runs while an eligible node is up).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["check_slots"]

Add = Callable[[str, str, float | None], None]


def check_slots(recs: Sequence[Any], since: float, bound_s: float, add: Add) -> int:
    """Add violations through ``add(kind, detail, t)``; returns the slots that ran."""
    runs = [r for r in recs if r.kind == "slot_run"]
    firsts = Counter((r.data["schedule"], r.data["slot"]) for r in runs
                     if r.data.get("attempt", 1) == 1)
    for (schedule, slot), n in sorted(firsts.items()):
        if n > 1:
            add("slot_twice", f"slot {slot} of schedule {schedule!r} started {n} times", slot)
    for schedule in sorted({r.data["schedule"] for r in runs}):
        mine = [r for r in runs if r.data["schedule"] == schedule]
        every = float(mine[0].data["every"])
        ran = {float(r.data["slot"]) for r in mine}
        first = math.floor((since + bound_s) / every + 1) * every
        last = max(ran) - every
        slot = first
        while slot <= last:
            if slot not in ran:
                add("slot_missed", f"slot {slot} of schedule {schedule!r} did not run, "
                    f"{bound_s}s after the last fault/heal", slot)
            slot += every
    return len(firsts)
