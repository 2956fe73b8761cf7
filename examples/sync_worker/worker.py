"""A plain synchronous worker — no asyncio in your code — whose copies form a cluster.

``shoal.NodeThread`` runs the node on its own event loop in a background
thread; the duty is an ordinary function (Shoal runs it in a thread) that uses
``ctx.put_sync`` (fenced) and ``ctx.sleep_sync``. Start two or three copies and
kill the one that prints "invoice batch": another takes over at once (with a
new fencing token; the killed copy's writes would now be refused)::

    python examples/sync_worker/worker.py --name worker-1
    python examples/sync_worker/worker.py --name worker-2

Ctrl-C (or SIGTERM) hands the duty over and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import shoal

HERE = Path(__file__).resolve().parent
KEY = "state/invoices/last-batch"  # a replicated-state document (namespace "invoices")

app = shoal.App("billing")


@app.duty("invoice-batch")
def invoice_batch(ctx: shoal.DutyContext) -> None:
    """Runs on exactly one copy. A plain function: Shoal runs it in a thread."""
    interval = float(ctx.params.get("interval", 1.0))
    batch = 0
    while not ctx.stopping.is_set():
        batch += 1
        doc = {"batch": batch, "node": ctx.node, "token": ctx.token, "at": time.time()}
        try:
            ctx.put_sync(KEY, json.dumps(doc).encode())  # refused once superseded
        except shoal.DutyLost:
            return
        print(f"{ctx.node}: invoice batch {batch} (token {ctx.token})", flush=True)
        ctx.sleep_sync(interval)  # wakes early when the duty must stop


def main() -> None:
    parser = argparse.ArgumentParser(description="A synchronous Shoal worker.")
    parser.add_argument("--config", default=os.environ.get("SHOAL_CONFIG", HERE / "node.yaml"))
    parser.add_argument("--name", help="node name (default: node.name of the config)")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long")
    args = parser.parse_args()
    overrides = {"node.name": args.name} if args.name else {}
    config = shoal.load_config(args.config, overrides=overrides)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    deadline = time.monotonic() + args.seconds if args.seconds else None
    # blocks until joined; leaving the block drains (hands the duty over)
    with shoal.NodeThread(app, config) as node:
        print(f"{config.node.name} joined; leader {node.leader}", flush=True)
        while not stop.wait(1.0):
            print(f"{config.node.name}: members {','.join(sorted(node.members))} "
                  f"leader {node.leader} runs {','.join(node.running) or '-'}", flush=True)
            if deadline is not None and time.monotonic() > deadline:
                break
    print(f"{config.node.name} stopped", flush=True)


if __name__ == "__main__":
    main()
