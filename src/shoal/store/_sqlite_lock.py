"""Taking the SQLite file's write lock without sqlite's own busy handler's sleeps.

Where the write lock is held, sqlite's busy handler (``sqlite3.connect(timeout=)``)
sleeps 1, 2, 5, 10, 15, 20, 25 ms... between tries, so a writer queued behind
others that each hold the lock for a few milliseconds (one fsynced commit)
waits up to the next step of that ladder: with four processes writing at once,
p99 ~10 ms against ~5 ms with the retries here (``benchmarks/sqlite_lock.py``). The
lock is tried again every 0.1 ms at first, then at most every millisecond, up to
the same timeout. Runs on the store's worker thread (it sleeps).
"""

from __future__ import annotations

import sqlite3
import time

FIRST_RETRY = 0.0001  # s: the first sleep before trying the lock again
LONGEST_RETRY = 0.001  # s: sleeps double up to this


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def begin_immediate(db: sqlite3.Connection, timeout: float) -> None:
    """``BEGIN IMMEDIATE`` on ``db``, trying the write lock until ``timeout``
    seconds have passed (then the last "database is locked" error is raised).
    ``db``'s own busy timeout is off during the tries and set back after, for
    every other statement."""
    busy_timeout_ms = int(db.execute("PRAGMA busy_timeout").fetchone()[0])
    db.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + timeout
        delay = FIRST_RETRY
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _locked(exc) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, LONGEST_RETRY)
    finally:
        db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
