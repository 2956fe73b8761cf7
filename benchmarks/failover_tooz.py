"""One OpenStack tooz coordinator in its own process, for ``benchmarks/failover.py``.

Each tooz contender (redis, etcd3gw, postgresql) runs in separate worker processes, so tooz's
etcd3gw driver never shares a process with Shoal's etcd3aio/grpc client.

    python benchmarks/failover_tooz.py worker URL ID [--poll 0.05] [--max-seconds 600]
    python benchmarks/failover_tooz.py join   URL ID
    python benchmarks/failover_tooz.py acquire URL ID --iters 300

``worker``: joins group ``bench``, watches it (``watch_join_group``) and competes for
the lock ``bench`` with a lock-acquire loop: every ``--poll`` seconds a
``lock.acquire(blocking=False)`` (if not the owner) and ``run_watchers()``; the
heartbeat thread (``start(start_heart=True)``) keeps the lock and membership alive.
(tooz's leader election, ``watch_elected_as_leader``, is implemented by the redis
driver only -- it is the same non-blocking lock attempt inside ``run_watchers`` -- so
the lock loop is used for both drivers.) On SIGTERM the owner releases the lock at
once, leaves the group and exits 0 (a graceful handover).

``join``: a 4th member: joins the group and waits for SIGTERM.

``acquire``: ``--iters`` times acquire a free lock (non-blocking) and release it;
prints the acquire latencies.

Every line printed is ``WORD key=value ...`` with wall-clock ``at=`` times
(``time.time()``); a process exits by itself after ``--max-seconds`` or when its
parent process is gone.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import time
from typing import Any

GROUP = b"bench"
LOCK = b"bench"


def say(word: str, **fields: Any) -> None:
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    sys.stdout.write(f"{word} {text}\n")
    sys.stdout.flush()


class Stopper:
    """SIGTERM sets a flag and wakes the loop's ``select`` through a pipe."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.stop = False
        self.signalled_at = 0.0
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.signalled_at = time.time()
        self.stop = True
        try:
            os.write(self.write_fd, b"x")
        except OSError:
            pass

    def wait(self, seconds: float) -> None:
        if not self.stop:
            select.select([self.read_fd], [], [], seconds)


def coordinator(url: str, member: str) -> Any:
    from tooz import coordination

    coord = coordination.get_coordinator(url, member.encode())
    coord.start(start_heart=True)
    return coord


def ensure_group(coord: Any) -> bool:
    """Create the group; False when the driver has no groups (tooz's postgresql driver:
    advisory locks only)."""
    import tooz
    from tooz import coordination

    try:
        coord.create_group(GROUP).get()
    except coordination.GroupAlreadyExist:
        pass
    except tooz.NotImplemented:
        return False
    return True


def run_worker(args: argparse.Namespace) -> int:
    stopper = Stopper()
    parent = os.getppid()
    deadline = time.monotonic() + args.max_seconds
    coord = coordinator(args.url, args.id)
    groups = ensure_group(coord)

    def on_join(event: Any) -> None:
        say("SEEN", member=event.member_id.decode(), by=args.id, at=f"{time.time():.6f}")

    if groups:
        coord.join_group(GROUP).get()
        coord.watch_join_group(GROUP, on_join)
    lock = coord.get_lock(LOCK)
    owner = False
    say("READY", id=args.id, at=f"{time.time():.6f}")
    try:
        while not stopper.stop and time.monotonic() < deadline and os.getppid() == parent:
            if not owner and lock.acquire(blocking=False):
                owner = True
                say("OWNER", id=args.id, at=f"{time.time():.6f}")
            if groups:  # the postgresql driver has no watchers either
                coord.run_watchers()
            stopper.wait(args.poll)
    finally:
        if owner:
            lock.release()
            say("RELEASED", id=args.id, at=f"{time.time():.6f}",
                signalled=f"{stopper.signalled_at:.6f}")
        try:
            if groups:
                coord.leave_group(GROUP).get()
        finally:
            coord.stop()
    return 0


def run_join(args: argparse.Namespace) -> int:
    stopper = Stopper()
    parent = os.getppid()
    deadline = time.monotonic() + args.max_seconds
    coord = coordinator(args.url, args.id)
    if not ensure_group(coord):
        say("NOGROUPS", id=args.id)
        coord.stop()
        return 3
    before = time.time()
    coord.join_group(GROUP).get()
    say("JOINED", id=args.id, sent=f"{before:.6f}", at=f"{time.time():.6f}")
    try:
        while not stopper.stop and time.monotonic() < deadline and os.getppid() == parent:
            stopper.wait(0.2)
    finally:
        try:
            coord.leave_group(GROUP).get()
        finally:
            coord.stop()
    return 0


def run_acquire(args: argparse.Namespace) -> int:
    coord = coordinator(args.url, args.id)
    samples: list[float] = []
    try:
        for i in range(args.warmup + args.iters):
            lock = coord.get_lock(f"acq-{args.id}-{i}".encode())
            t0 = time.perf_counter()
            got = lock.acquire(blocking=False)
            took = time.perf_counter() - t0
            if not got:
                raise RuntimeError(f"free lock {i} not acquired")
            lock.release()
            if i >= args.warmup:
                samples.append(took)
    finally:
        coord.stop()
    say("ACQUIRE", samples=json.dumps(samples))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["worker", "join", "acquire"])
    parser.add_argument("url", help="tooz backend URL")
    parser.add_argument("id", help="member id")
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.mode == "worker":
        return run_worker(args)
    if args.mode == "join":
        return run_join(args)
    return run_acquire(args)


if __name__ == "__main__":
    sys.exit(main())
