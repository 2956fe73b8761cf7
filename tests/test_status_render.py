"""``shoal status``'s table (shoal.cli.status.render) from a cluster view: the
app's version and the draining / cordoned flags of each node are shown."""

from __future__ import annotations

from typing import Any

from shoal.cli.status import render


def _node(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "roles": [], "zone": "", "can_lead": True, "started_at": 990.0,
            "duties": [], "address": "", **extra}


def _row(text: str, name: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.startswith(name + " "))


def test_the_table_shows_app_versions_and_cordoned_and_draining_nodes() -> None:
    view = {
        "source": "store", "time": 1000.0, "node_count": 3, "leader": "a",
        "nodes": [
            _node("a", app_version="2.4.1", leader=True),
            _node("b", app_version="2.3.0", cordoned=True),
            _node("c", draining=True, cordoned=True),
        ],
        "duties": [], "store": {"revision": 7},
    }
    text = render(view)
    header = next(line.split() for line in text.splitlines() if line.startswith("NODE"))
    assert header == ["NODE", "ROLES", "ZONE", "LEADER", "VERSION", "UP", "DUTIES", "ADDRESS"]
    assert _row(text, "a") == ["a", "-", "-", "leader", "2.4.1", "10s", "0", "-"]
    assert _row(text, "b") == ["b", "(cordoned)", "-", "-", "-", "2.3.0", "10s", "0", "-"]
    assert _row(text, "c") == ["c", "(draining)", "(cordoned)", "-", "-", "-", "-", "10s", "0",
                               "-"]
