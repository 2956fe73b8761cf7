"""What a chaos run (:mod:`shoal.testing.chaos`) found: the checked history, summed up.

:func:`analyse` runs :func:`shoal.testing.history.check` over the run's records and
adds two things the generic checker does not know about this run:

* :func:`unexplained_overlaps` -- G1 taken strictly. ``check`` flags two owners at
  once only when the older one had a write acknowledged in the overlap, which fencing
  (G2) prevents; so an overlap that G1 alone should have prevented (the older owner
  was not paused) is found here, as a ``g1_overlap`` violation;
* :func:`outage_recovery` -- seconds from the store's return to each duty started;
* :func:`outage_reads` -- reads in each whole-store outage (from ``outage_grace_s`` on), so
  a G5 check that saw no read at all (and so passed vacuously) shows.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.testing.history import (
    Record,
    Report,
    Violation,
    _ownerships,
    check,
    outage_windows,
    percentile,
)

__all__ = [
    "ChaosResult", "analyse", "disagreeing", "latest_applied", "outage_reads", "outage_recovery",
    "unexplained_overlaps",
]

FAULT_ORDER = ("kill9", "pause", "partition", "member_kill", "store_outage", "crash")


@dataclass
class ChaosResult:
    report: Report
    planned: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)  # e.g. a node that exited by itself
    recovery: list[float] = field(default_factory=list)  # store back -> each duty started
    outage_reads: list[int] = field(default_factory=list)  # reads in each outage window
    final_revisions: dict[str, int] = field(default_factory=dict)
    unknown_writes: int = 0
    reads: int = 0
    bound_s: float = 0.0
    elapsed: float = 0.0
    command: str = ""

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.anomalies

    def text(self) -> str:
        r = self.report
        kinds = sorted(r.faults, key=_order)
        lines = [
            f"command: {self.command}",
            f"elapsed: {self.elapsed:.0f} s",
            "faults: " + ", ".join(f"{k} {r.faults[k]}" for k in kinds),
            f"duties moved: {r.duties_moved}; overlaps of two owners: {r.overlaps_fenced}, "
            "every one fenced (no write of the older owner acknowledged)",
            f"writes: acknowledged {r.writes_acknowledged}, refused {r.writes_refused} "
            f"(outcome unknown {self.unknown_writes}), lost {r.writes_lost}",
            f"reads: {self.reads} (stale {r.stale_reads})",
            f"schedule slots run: {r.slots_run}, each once (no slot_twice, no slot_missed)"
            if r.ok else f"schedule slots run: {r.slots_run}",
            f"data-duty documents written: {r.documents_written}",
            "failover (fault -> each duty it hit started on another node):",
        ]
        for kind in sorted(r.failover, key=_order):
            f = r.failover[kind]
            top = max(f.samples, default=math.nan)
            lines.append(f"  {kind:<13} n={f.count:<4} p50={f.p50:.3f}s p99={f.p99:.3f}s "
                         f"max={top:.3f}s missing={f.missing}")  # fmt: skip
        if self.recovery:
            lines.append(f"  store back -> duty started: n={len(self.recovery)} "
                         f"p50={percentile(self.recovery, 50):.3f}s "
                         f"p99={percentile(self.recovery, 99):.3f}s")  # fmt: skip
        after = max(r.owned_after.values(), default=math.nan)
        lines.append(f"final: applied revisions {self.final_revisions}; every duty owned "
                     f"{after:.3f}s after the last heal (bound {self.bound_s:.2f}s)")  # fmt: skip
        lines += [f"ANOMALY: {a}" for a in self.anomalies]
        lines += [f"VIOLATION {v.kind}: {v.detail}" for v in r.violations]
        lines.append(f"violations: {len(r.violations)}")
        return "\n".join(lines)


def disagreeing(views: Sequence[Mapping[str, int]]) -> list[str]:
    """Keys whose mod revision differs between the members' views (a key missing from
    some view counts as a difference), sorted."""
    keys = sorted(set().union(*views))
    return [k for k in keys if len({v.get(k) for v in views}) > 1]


def _order(kind: str) -> int:
    return FAULT_ORDER.index(kind) if kind in FAULT_ORDER else len(FAULT_ORDER)


def _hms(t: float) -> str:
    if not math.isfinite(t):
        return "the end of the run"
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def unexplained_overlaps(recs: Sequence[Record]) -> list[Violation]:
    """Two nodes ran one duty at once although the older owner was not paused
    (SIGSTOP, a ``pause`` fault) when the newer one started."""
    paused: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in recs:
        if r.data.get("fault") == "pause" and r.kind in ("fault", "heal"):
            windows = paused[str(r.data.get("target"))]
            if r.kind == "fault":
                windows.append((r.t, math.inf))
            elif windows:
                windows[-1] = (windows[-1][0], r.t)
    out: list[Violation] = []
    for duty, spans in _ownerships(recs).items():
        for i, old in enumerate(spans):
            for new in spans[i + 1 :]:
                if new.start >= old.end:
                    break
                if any(a <= new.start <= b for a, b in paused.get(old.node, [])):
                    continue
                out.append(Violation("g1_overlap", f"duty {duty!r}: {old.node} (token "
                    f"{old.token}) ran it until {_hms(old.end)}, {new.node} (token "
                    f"{new.token}) from {_hms(new.start)}: {old.end - new.start:.3f}s "
                    "together, the older owner not paused", new.start))  # fmt: skip
    return out


def outage_recovery(recs: Sequence[Record], duties: Iterable[str]) -> list[float]:
    """Seconds from each ``store_outage`` heal to the next start of each duty."""
    starts: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        if r.kind == "duty_start" and r.duty is not None:
            starts[r.duty].append(r.t)
    out: list[float] = []
    for h in recs:
        if h.kind == "heal" and h.data.get("fault") == "store_outage":
            for duty in duties:
                nxt = next((t for t in starts.get(duty, []) if t >= h.t), None)
                if nxt is not None:
                    out.append(nxt - h.t)
    return out


def outage_reads(
    recs: Sequence[Record], windows: Sequence[tuple[float, float]], grace: float
) -> list[int]:
    """Per outage window ``(start, end)``: the reads recorded from ``start + grace`` to
    ``end`` -- the span that :func:`~shoal.testing.history.check` holds to G5."""
    times = sorted(r.t for r in recs if r.kind == "read")
    return [sum(a + grace <= t <= b for t in times) for a, b in windows]


def latest_applied(history: Path, nodes: Iterable[str]) -> dict[str, int]:
    """Each node's last recorded ``applied_revision`` (from the tail of its file)."""
    out: dict[str, int] = {}
    for name in nodes:
        path = history / f"{name}.jsonl"
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 65536))
            for line in fh.read().decode(errors="replace").splitlines():
                if '"applied_revision"' in line:
                    with contextlib.suppress(ValueError, KeyError):
                        out[name] = int(json.loads(line)["revision"])
    return out


def analyse(
    recs: Sequence[Record], *, final_state: Mapping[str, Any], final_revisions: Mapping[str, int],
    duties: Sequence[str], bound_s: float, outage_grace_s: float, **extra: Any,
) -> ChaosResult:
    """Check the run's records (G1-G5, see the module doc); ``extra``: ChaosResult fields."""
    windows = outage_windows(recs, "store_outage")
    report = check(
        recs, final_state=final_state, final_revisions=final_revisions, bound_s=bound_s,
        duties=duties, outage_windows=windows, outage_grace_s=outage_grace_s,
    )
    report.violations += unexplained_overlaps(recs)
    report.violations.sort(key=lambda v: (v.t if v.t is not None else math.inf, v.kind))
    return ChaosResult(
        report, recovery=outage_recovery(recs, duties), final_revisions=dict(final_revisions),
        outage_reads=outage_reads(recs, windows, outage_grace_s),
        unknown_writes=sum(r.kind == "write_refused" and bool(r.data.get("unknown"))
                           for r in recs),
        reads=sum(r.kind == "read" for r in recs), bound_s=bound_s, **extra,
    )
