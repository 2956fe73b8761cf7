"""Taking SQLite's write lock with short retries (shoal.store._sqlite_lock)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.store import _sqlite_lock
from shoal.store._sqlite_lock import LONGEST_RETRY, begin_immediate

Conns = tuple[sqlite3.Connection, sqlite3.Connection]  # (another writer, the one tested)


@pytest.fixture
def dbs(tmp_path: Path) -> Iterator[Conns]:
    path = tmp_path / "l.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    setup.close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    yield holder, writer
    holder.close()
    writer.close()


class FakeTime:
    """monotonic() and sleep() on a fake clock, recording each sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime()
    monkeypatch.setattr(_sqlite_lock, "time", clock)
    return clock


def test_a_held_lock_is_tried_again_every_millisecond_at_most_until_the_timeout(
    dbs: Conns, fake: FakeTime,
) -> None:
    holder, writer = dbs
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        begin_immediate(writer, 0.01)
    assert fake.sleeps[:5] == pytest.approx([0.0001, 0.0002, 0.0004, 0.0008, 0.001])
    assert max(fake.sleeps) == LONGEST_RETRY
    assert 0.009 <= sum(fake.sleeps) <= 0.01  # up to the timeout, not past it
    assert not writer.in_transaction
    # sqlite's own busy timeout is back for every other statement
    assert writer.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    holder.execute("ROLLBACK")
    begin_immediate(writer, 0.01)  # free: at once, no sleep
    assert writer.in_transaction
    assert len(fake.sleeps) == 12  # 0.1 + 0.2 + 0.4 + 0.8 + 8 x 1 ms (9.5 ms), none after


def test_the_lock_is_taken_soon_after_another_writer_releases_it(
    dbs: Conns,
) -> None:
    holder, writer = dbs
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES ('a')")
    release = threading.Timer(0.05, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        begin_immediate(writer, 5.0)
        writer.execute("INSERT INTO t VALUES ('b')")
        writer.execute("COMMIT")
    finally:
        release.join()
    assert [k for (k,) in writer.execute("SELECT k FROM t ORDER BY k")] == ["a", "b"]


def test_other_errors_are_raised_at_once(
    dbs: Conns, fake: FakeTime,
) -> None:
    _, writer = dbs
    writer.execute("BEGIN")
    with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
        begin_immediate(writer, 5.0)
    assert fake.sleeps == []
    assert writer.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
