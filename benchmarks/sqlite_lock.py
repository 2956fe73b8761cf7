"""Write-lock waits on one SQLite file: sqlite's busy handler vs Shoal's retries.

``--writers`` processes (default 4, as the survivors of a 5-node kill) each
start a write transaction at the same instants (every 50 ms, ``--rounds``
times): ``BEGIN IMMEDIATE``, ``--rows`` upserts of 100 bytes, ``COMMIT``, in WAL
mode with ``synchronous=FULL`` (as the store). Timed per transaction, from
``BEGIN`` to the end of ``COMMIT``. Two ways to wait for the lock, the same
work otherwise, alternating in one run:

* ``sqlite``: ``sqlite3.connect(timeout=5)``, sqlite's own busy handler (it
  sleeps 1, 2, 5, 10, 15, 20, 25 ms... between tries);
* ``shoal``: :func:`shoal.store._sqlite_lock.begin_immediate` (tries again after
  0.1 ms, doubling to at most 1 ms), what the store uses.

    python benchmarks/sqlite_lock.py --repeat 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sqlite3
import tempfile
import time
from pathlib import Path

from shoal.store._sqlite_lock import begin_immediate

GAP = 0.05  # s between the rounds


def _writer(path: str, index: int, start: float, mode: str, rows: int, rounds: int,
            out: mp.Queue) -> None:  # type: ignore[type-arg]
    db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    db.execute("PRAGMA synchronous=FULL")
    took = []
    for r in range(rounds):
        go = start + r * GAP
        while (left := go - time.time()) > 0:
            time.sleep(min(left, 0.0005))
        t0 = time.perf_counter()
        if mode == "sqlite":
            db.execute("BEGIN IMMEDIATE")
        else:
            begin_immediate(db, 5.0)
        for k in range(rows):
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (f"{index}:{k}", "x" * 100))
        db.execute("COMMIT")
        took.append((time.perf_counter() - t0) * 1000)
    db.close()
    out.put(took)


def run(mode: str, writers: int, rows: int, rounds: int, folder: Path) -> list[float]:
    path = folder / f"{mode}.db"
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
    db.close()
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    start = time.time() + 0.5
    procs = [mp.Process(target=_writer, args=(str(path), i, start, mode, rows, rounds, out))
             for i in range(writers)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 60 + rounds * GAP
        took = [x for _ in procs for x in out.get(timeout=max(1.0, deadline - time.monotonic()))]
    finally:
        for p in procs:  # every process started here ends here
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    return sorted(took)


def _pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--rows", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{args.writers} writers x {args.rounds} rounds, {args.rows} rows per transaction")
    print("| run | wait | p50 (ms) | p90 | p99 | max |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(1, args.repeat + 1):
            for mode in ("sqlite", "shoal"):
                t = run(mode, args.writers, args.rows, args.rounds, Path(tmp))
                print(f"| {rep} | {mode} | {_pct(t, 0.5):.1f} | {_pct(t, 0.9):.1f} "
                      f"| {_pct(t, 0.99):.1f} | {t[-1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
