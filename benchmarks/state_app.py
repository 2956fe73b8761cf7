"""The processes run by ``benchmarks/state.py``: a Shoal node, or a raw etcd3aio watcher.

    python benchmarks/state_app.py node --config n1.yaml
    python benchmarks/state_app.py raw --endpoint 127.0.0.1:2379 --prefix /raw/bench/

``node``: a real Shoal node (``Node.from_config`` + ``start``, as ``shoal run`` does;
a ``shoal run`` app has no handle on its node's ``node.state``, so this process runs
the node itself). A subscriber on the ``bench`` namespace prints, for every change::

    SEEN <seq> <t>

where ``t`` is ``CLOCK_MONOTONIC`` (system-wide: comparable across processes on one
machine) taken when the subscriber receives the change, i.e. after the node's copy
already holds the new value, and ``seq`` is the ``seq`` field of the document.

``raw``: one etcd3aio client watching ``--prefix``; prints the same ``SEEN`` line for
every event (``seq`` from ``json.loads`` of the value).

Both read commands on stdin, one per line, and answer ``REPLY <json>`` on stdout:

* ``ping`` -> ``{"pid": ..., "size": ...}`` (once the node joined / the watch is created)
* ``wait_rev REV SECONDS`` (node) -> once the copy applied REV: ``{"t": ..., "size": ...}``
* ``gc`` -> ``gc.collect()``, then ``{"size": ...}``
* ``trim`` (node) -> ``gc.collect()`` and glibc ``malloc_trim(0)``
* ``reads NS SECONDS hot|spread`` (node) -> ``node.state.get`` in a tight loop:
  ``{"reads": n, "seconds": s, "cpu_seconds": c}``; ``hot`` = one key, ``spread`` =
  every key of NS in a shuffled order. The loop runs in slices of ~50 ms and yields
  to the event loop between them (keep-alives go on); only the time inside the
  slices is counted (wall clock, and this thread's CPU time: on a shared machine the
  difference is time the process waited for a CPU).
* ``stop`` -> closes the node / the client and exits 0.

Safety net: the process exits (``os._exit``) when stdin reaches end-of-file (the
benchmark is gone) or after ``--max-seconds`` (default 900).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

CLOCK = time.CLOCK_MONOTONIC


def now() -> float:
    return time.clock_gettime(CLOCK)


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def reply(data: dict[str, Any]) -> None:
    emit("REPLY " + json.dumps(data))


async def stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


Handler = Callable[[list[str]], Awaitable[dict[str, Any] | None]]


async def serve(handlers: dict[str, Handler]) -> None:
    """Answer commands until ``stop`` (returns) or end-of-file (exits at once)."""
    reader = await stdin_lines()
    while True:
        line = await reader.readline()
        if not line:
            sys.stderr.write("state_app: stdin closed (benchmark gone); exiting\n")
            sys.stderr.flush()
            os._exit(1)
        words = line.decode().split()
        if not words:
            continue
        if words[0] == "stop":
            return
        handler = handlers.get(words[0])
        if handler is None:
            reply({"error": f"unknown command {words[0]!r}"})
            continue
        try:
            out = await handler(words[1:])
        except Exception as exc:  # report, keep serving
            out = {"error": f"{type(exc).__name__}: {exc}"}
        reply(out or {})


# -- a Shoal node -----------------------------------------------------------------------
async def run_node(config_path: str) -> None:
    from shoal.config import load_config
    from shoal.runtime.app import App
    from shoal.runtime.node import Node

    config = load_config(config_path)
    node = await Node.from_config(App("state-bench"), config)
    await node.start()
    state = node.state

    async def record() -> None:
        async for change in state.subscribe("bench"):
            if change.kind == "put":
                emit(f"SEEN {change.value['seq']} {now():.9f}")

    recorder = asyncio.create_task(record())

    async def ping(_: list[str]) -> dict[str, Any]:
        return {"pid": os.getpid(), "size": state.size, "phase": node.phase}

    async def wait_rev(args: list[str]) -> dict[str, Any]:
        async with asyncio.timeout(float(args[1])):
            await state.wait_for(int(args[0]))
        return {"t": now(), "size": state.size, "revision": state.revision}

    async def collect(_: list[str]) -> dict[str, Any]:
        gc.collect()
        return {"size": state.size}

    async def trim(_: list[str]) -> dict[str, Any]:
        # Hand freed heap pages back to the kernel (glibc keeps them otherwise): tells
        # memory still in use from memory once used (e.g. a big range response).
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return {"size": state.size}

    async def reads(args: list[str]) -> dict[str, Any]:
        ns, seconds, mode = args[0], float(args[1]), args[2]
        keys = sorted(state.items(ns))
        if not keys:
            return {"error": f"namespace {ns!r} is empty"}
        if mode == "hot":
            keys = [keys[len(keys) // 2]] * 10_000
        else:
            random.Random(1).shuffle(keys)
        get = state.get
        slice_s = 0.05
        total = 0
        spent = 0.0
        pos = 0
        step = 10_000
        cpu = 0.0
        while spent < seconds:
            c0 = time.thread_time()
            t0 = now()
            end = t0 + slice_s
            while True:
                chunk = keys[pos : pos + step]
                pos = pos + step if pos + step < len(keys) else 0
                for key in chunk:
                    get(ns, key)
                total += len(chunk)
                t1 = now()
                if t1 >= end:
                    break
            spent += t1 - t0
            cpu += time.thread_time() - c0
            await asyncio.sleep(0)
        found = sum(1 for key in keys[:1000] if get(ns, key) is not None)
        return {"reads": total, "seconds": spent, "cpu_seconds": cpu, "found_of_1000": found}

    try:
        await serve({"ping": ping, "wait_rev": wait_rev, "gc": collect, "trim": trim,
                     "reads": reads})
    finally:
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder
        await node.aclose()


# -- a raw etcd3aio watcher ---------------------------------------------------------------
async def run_raw(endpoint: str, prefix: str) -> None:
    from etcd3aio import Etcd3Client

    client = Etcd3Client([endpoint])
    await client.connect()
    created = asyncio.Event()
    key = prefix.encode()
    end = key[:-1] + bytes([key[-1] + 1])
    loads = json.loads

    async def watch() -> None:
        assert client.watch is not None
        async for resp in client.watch.watch(key, range_end=end):
            if resp.created:
                created.set()
            for ev in resp.events:
                if ev.type == 0:  # PUT
                    emit(f"SEEN {loads(ev.kv.value)['seq']} {now():.9f}")

    task = asyncio.create_task(watch())
    waiter = asyncio.create_task(created.wait())
    await asyncio.wait({task, waiter}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if not created.is_set():
        waiter.cancel()
        if task.done():
            task.result()
        raise RuntimeError("raw watch not created within 15 s")

    async def ping(_: list[str]) -> dict[str, Any]:
        return {"pid": os.getpid(), "size": 0}

    async def collect(_: list[str]) -> dict[str, Any]:
        gc.collect()
        return {"size": 0}

    try:
        await serve({"ping": ping, "gc": collect})
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await client.close()


def _time_limit(limit: float) -> None:
    time.sleep(limit)
    sys.stderr.write(f"state_app: --max-seconds {limit:g} reached; exiting\n")
    sys.stderr.flush()
    os._exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["node", "raw"])
    p.add_argument("--config", help="node: the node's YAML configuration")
    p.add_argument("--endpoint", help="raw: host:port of etcd")
    p.add_argument("--prefix", help="raw: the key prefix to watch")
    p.add_argument("--max-seconds", type=float, default=900.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_time_limit, args=(args.max_seconds,), daemon=True).start()
    if args.mode == "node":
        if not args.config:
            p.error("node needs --config")
        asyncio.run(run_node(args.config))
    else:
        if not args.endpoint or not args.prefix:
            p.error("raw needs --endpoint and --prefix")
        asyncio.run(run_raw(args.endpoint, args.prefix))


if __name__ == "__main__":
    main()
