"""The Shoal app run by ``benchmarks/failover.py``: one duty, ``bench``.

    shoal run benchmarks/failover_app.py:app --config node.yaml

The first thing the duty does when it starts on a node is print one line with the
wall-clock time (``time.time()``, microseconds)::

    BENCH started bench node=n2 token=41 at=1718000000.123456

so the benchmark can compare it with the moment it killed the previous owner
(same machine, same clock). The duty then idles until it is told to stop.

Safety net: when ``SHOAL_BENCH_PARENT`` is set, the node exits (``os._exit``, like a
crash: its reaper revokes its lease) as soon as that process is gone or after
``SHOAL_BENCH_MAX_SECONDS`` (default 900), so a killed benchmark leaves nothing behind.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from shoal.runtime.app import App
from shoal.runtime.context import DutyContext

app = App("failover-bench")


@app.duty("bench")
async def bench(ctx: DutyContext) -> None:
    now = time.time()
    sys.stdout.write(f"BENCH started {ctx.name} node={ctx.node} token={ctx.token} at={now:.6f}\n")
    sys.stdout.flush()
    await ctx.stopping.wait()


def _watch_parent(parent: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.5)
    sys.stderr.write("failover_app: benchmark process gone or time limit reached; exiting\n")
    sys.stderr.flush()
    os._exit(1)


if os.environ.get("SHOAL_BENCH_PARENT"):
    threading.Thread(
        target=_watch_parent,
        args=(int(os.environ["SHOAL_BENCH_PARENT"]),
              float(os.environ.get("SHOAL_BENCH_MAX_SECONDS", "900"))),
        daemon=True, name="bench-parent-watch",
    ).start()
