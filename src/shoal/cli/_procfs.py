"""Process look-ups through Linux ``/proc`` (stdlib only), shared by the demo,
the test kit and tests: every process Shoal starts is found and ended by PID."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` ([] when it is gone)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid``."""
    out: list[int] = []
    for kid in children(pid):
        out += [kid, *descendants(kid)]
    return out


def pid_alive(pid: int) -> bool:
    """True for a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def is_reaper(pid: int) -> bool:
    """True while ``pid`` is a Shoal reaper process."""
    try:
        return b"shoal.runtime.reaper" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
