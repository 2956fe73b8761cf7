"""Checker property of data-driven duties over a chaos history (shoal.testing.history).

The chaos driver records ``doc_put`` (just BEFORE it writes a document of the
data namespace: the duty cannot start earlier) and ``doc_delete`` (just AFTER
the delete was acknowledged). Each node's duty ``doc:{key}`` records
``duty_start`` / ``duty_stop`` like any duty. Violation:

* ``data_duty_without_doc``: a node ran ``doc:{key}`` while the document did not
  exist: it started before the document was first written, or it was still
  running ``bound_s`` after the delete (a node paused meanwhile gets ``bound_s``
  after its pause ended). That a duty exists while its document does is checked as G3
  (``unowned_duty``) for the documents present at the end.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["DOC_DUTY_PREFIX", "check_data_duties"]

DOC_DUTY_PREFIX = "doc:"
Add = Callable[[str, str, float | None], None]
_INF = math.inf


def _absent(recs: Sequence[Any]) -> dict[str, list[tuple[float, float]]]:
    """Per document key: the windows during which it did not exist."""
    present: dict[str, float] = {}
    gone: dict[str, float] = {}
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in recs:
        key = r.data.get("doc")
        if r.kind == "doc_put" and key not in present:
            out[key].append((gone.pop(key, -_INF), r.t))
            present[key] = r.t
        elif r.kind == "doc_delete" and key in present:
            del present[key]
            gone[key] = r.t
    for key, t in gone.items():
        out[key].append((t, _INF))
    return out


def _pauses(recs: Sequence[Any]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    open_: dict[str, float] = {}
    for r in recs:
        if r.data.get("fault") != "pause":
            continue
        node = str(r.data.get("target"))
        if r.kind == "fault":
            open_[node] = r.t
        elif r.kind == "heal" and node in open_:
            out[node].append((open_.pop(node), r.t))
    for node, t in open_.items():
        out[node].append((t, _INF))
    return out


def check_data_duties(recs: Sequence[Any], owned: Mapping[str, Sequence[Any]], bound_s: float,
                      add: Add) -> int:
    """Add violations through ``add(kind, detail, t)``; returns the documents written."""
    absent = _absent(recs)
    pauses = _pauses(recs)
    for key, windows in sorted(absent.items()):
        duty = DOC_DUTY_PREFIX + key
        for span in owned.get(duty, []):
            for a, b in windows:
                if span.start >= b or span.end <= a:
                    continue
                limit = a + bound_s
                for p1, p2 in pauses.get(span.node, []):
                    if p1 < span.end and p2 >= a:
                        limit = max(limit, p2 + bound_s)
                if span.end > limit:
                    add("data_duty_without_doc",
                        f"{span.node} ran {duty!r} ({span.start:.3f}-{span.end:.3f}) while "
                        f"document {key!r} did not exist ({a:.3f}-{b:.3f})", span.start)
    return sum(1 for r in recs if r.kind == "doc_put")
