"""The Shoal app run by ``benchmarks/schedule.py --scenarios failover``: one schedule.

    SHOAL_BENCH_EVERY=4 shoal run benchmarks/schedule_app.py:app --config node.yaml

``bench`` runs every ``SHOAL_BENCH_EVERY`` seconds (default 4). Each run prints one
line as the first thing it does::

    BENCH ran slot=1718000004.000000 node=n2 at=1718000004.012345

so the benchmark can count the runs of every slot over all node logs (exactly once).

Safety net: when ``SHOAL_BENCH_PARENT`` is set, the node exits (``os._exit``, like a
crash: its reaper revokes its lease) as soon as that process is gone or after
``SHOAL_BENCH_MAX_SECONDS`` (default 900), so a killed benchmark leaves nothing behind.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta

from shoal.runtime.app import App
from shoal.runtime.schedule import RunContext

app = App("schedule-bench")
EVERY = float(os.environ.get("SHOAL_BENCH_EVERY", "4"))


@app.schedule("bench", every=timedelta(seconds=EVERY))
async def bench(ctx: RunContext) -> None:
    now = time.time()
    slot = ctx.slot.timestamp() if ctx.slot is not None else 0.0
    sys.stdout.write(f"BENCH ran slot={slot:.6f} node={ctx.node} at={now:.6f}\n")
    sys.stdout.flush()


def _watch_parent(parent: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.5)
    sys.stderr.write("schedule_app: benchmark process gone or time limit reached; exiting\n")
    sys.stderr.flush()
    os._exit(1)


if os.environ.get("SHOAL_BENCH_PARENT"):
    threading.Thread(
        target=_watch_parent,
        args=(int(os.environ["SHOAL_BENCH_PARENT"]),
              float(os.environ.get("SHOAL_BENCH_MAX_SECONDS", "900"))),
        daemon=True, name="bench-parent-watch",
    ).start()
