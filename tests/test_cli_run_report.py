"""``shoal run``'s status lines: one per event, one tail per burst, from the node's
cheap views, never a full snapshot.

A mass failover starts a few hundred duties in one reconcile pass; a snapshot of the
node (O(duties)) per printed line made the reporter the largest CPU cost of a
survivor during the failover, and even one per burst was a fifth of a survivor's CPU
in the failover (benchmarks/scale.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.cli.run import _burst, _runs, _status_lines
from shoal.core.node_state import Phase
from shoal.runtime.fanout import Fanout
from shoal.runtime.node import ClusterEvent


@dataclass
class _Node:
    """The views the reporter reads; a snapshot (``status()``) is counted."""

    phase: Phase = Phase.ACTIVE
    leader: str | None = "n1"
    members: dict[str, object] = field(default_factory=lambda: {"n2": 1, "n1": 1})
    runners: dict[str, object] = field(default_factory=lambda: {"p/2": 1, "p/1": 1})
    snapshots: int = 0

    def status(self) -> object:
        self.snapshots += 1
        return object()


def test_a_burst_of_events_takes_one_snapshot_and_prints_a_line_each() -> None:
    fanout: Fanout[ClusterEvent] = Fanout(maxsize=1000)
    events = fanout.subscribe()
    for i in range(200):
        fanout.publish(ClusterEvent("started", f"p/{i}", f"token {i + 10}"))
    first = events.get_nowait()
    assert first is not None
    burst = _burst(events, first)
    assert len(burst) == 200 and events.get_nowait() is None
    node: Any = _Node()
    lines = _status_lines(node, burst).split("\n")
    assert node.snapshots == 0
    assert len(lines) == 200
    assert lines[0].endswith(
        "started p/0 (token 10) | ACTIVE | leader n1 | members n1,n2 | runs p/1,p/2"
    )
    assert lines[199].split(" ", 1)[1].startswith("started p/199 (token 209) | ACTIVE")


def test_a_plain_status_line() -> None:
    node: Any = _Node()
    line = _status_lines(node, [None])
    assert line.split(" ", 1)[1] == "status | ACTIVE | leader n1 | members n1,n2 | runs p/1,p/2"
    assert "\n" not in line


def test_the_leader_is_shown_only_while_active_as_in_the_status() -> None:
    node: Any = _Node(phase=Phase.SUSPENDED, members={}, runners={})
    line = _status_lines(node, [ClusterEvent("phase", "SUSPENDED")])
    assert line.split(" ", 1)[1] == (
        "phase SUSPENDED | SUSPENDED | leader - | members - | runs -")


def test_the_runs_field_stays_short_on_a_node_running_hundreds_of_partitions() -> None:
    running = ["leader", *(f"p/{i}" for i in range(250)), "import:a", "import:b",
               *(f"sync:{i}" for i in range(5))]
    assert _runs(running) == "leader,p/*(250),import:a,import:b,sync:*(5)"
    assert _runs(["p/1", "p/2"]) == "p/1,p/2"  # small families: by name
    assert _runs([]) == "-"
    many = [f"d{i}" for i in range(30)]
    assert _runs(many) == ",".join(many[:24]) + ",+6"
