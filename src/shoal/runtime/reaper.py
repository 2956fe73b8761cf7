"""The reaper: revokes a node's lease the moment the node process dies.

A lease can only say "dead" after its TTL. Most crashes, though, are a
process dying on a live machine. So a node (``reaper: {enabled: true}``)
starts this tiny child process::

    python -m shoal.runtime.reaper      # stdin = read end of a pipe

The node alone holds the write end. It writes one JSON line with the store
settings, then ``lease <id>`` whenever its lease changes, ``lease 0`` once a
drain has revoked the lease itself (nothing left to revoke while it waits for
its takeover) and ``exit`` when it stops gracefully (the reaper then exits
without revoking). Once the reaper has
imported what a revoke needs it writes ``ready`` on its stdout, a second pipe:
a node waits for that line before it registers (:meth:`Reaper.wait_ready`), so
that the reaper's start-up (an interpreter, ~0.1 s of CPU) is over before
other nodes react to the join, and a reaper that cannot revoke is reported
before the node runs any duty. When the node
process dies -- even by ``kill -9`` -- the kernel closes the write end, the
reaper reads end-of-file and revokes the CURRENT lease at once: every key on
it (node record, duty ownerships) vanishes, and other nodes take over.

It acts only on end-of-file, a certain death, never on suspicion: a stopped
(``SIGSTOP``) or stalled node keeps the pipe open, so that case is still
bounded by the lease TTL and the reaper can never make two owners.

The module is deliberately light (stdlib only at import time). What a revoke
needs is the backend's business: its descriptor
(:class:`shoal.store.registry.Backend`) names a reaper module whose
``reaper_prepare`` is called at start (etcd: urllib, for its HTTP gateway)
and whose ``reaper_revoke`` runs at end-of-file. The reaper ignores SIGINT and SIGHUP and runs
in its own session, so Ctrl-C in a terminal kills the node, not the reaper.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["Reaper", "main", "revoke"]

log = logging.getLogger("shoal.reaper")
_SRC = str(Path(__file__).resolve().parents[2])  # the directory holding the shoal package


class Reaper:
    """The node's handle on its reaper process (see the module docstring)."""

    def __init__(self, store_info: Mapping[str, Any]) -> None:
        self._info = dict(store_info)
        self._lease = 0
        self._closed = False
        self._fd = -1
        self._ready_fd = -1  # read end of the reaper's stdout (its ``ready`` line)
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, store_info: Mapping[str, Any]) -> Reaper:
        """Spawn the reaper for a store described by ``store_info``
        (``NodeSettings.reaper_store``)."""
        reaper = cls(store_info)
        reaper._spawn()
        return reaper

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self) -> None:
        read_end, write_end = os.pipe()  # both non-inheritable (O_CLOEXEC)
        ready_read, ready_write = os.pipe()
        env = dict(os.environ)
        if Path(_SRC).name not in ("site-packages", "dist-packages"):  # a source checkout
            env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), _SRC) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.runtime.reaper"],
                stdin=read_end, stdout=ready_write, close_fds=True,
                start_new_session=True, env=env,
            )
        except BaseException:
            os.close(write_end)
            os.close(ready_read)
            raise
        finally:
            os.close(read_end)
            os.close(ready_write)
        os.set_blocking(write_end, False)  # never block the node's event loop
        os.set_blocking(ready_read, False)
        self._close_ready()
        self._ready_fd = ready_read
        self._fd = write_end
        log.info("reaper pid %d", self._proc.pid)
        self._send(json.dumps(self._info))

    def _send(self, line: str) -> None:
        try:
            os.write(self._fd, line.encode() + b"\n")  # < PIPE_BUF: all or nothing
        except OSError as exc:
            log.warning("reaper pid %d: cannot send %r: %s", self.pid, line.split()[0], exc)

    async def wait_ready(self, limit: float) -> bool:
        """Wait until the reaper has prepared its revoke (its ``ready`` line), at
        most ``limit`` seconds. False, with a warning, if it exited first or
        did not answer in time: a crash is then bounded by the lease TTL alone
        until a new reaper is up."""
        import asyncio  # (here: the reaper process itself imports nothing heavy)

        fd = self._ready_fd
        if fd < 0:
            return False
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(fd, 64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not answer.done():
                answer.set_result(data)

        loop.add_reader(fd, readable)
        try:
            data = await asyncio.wait_for(answer, limit)
        except TimeoutError:
            log.warning("reaper pid %d not ready after %g s; the node joins anyway", self.pid,
                        limit)
            return False
        finally:
            loop.remove_reader(fd)
        self._close_ready()
        if data.startswith(b"ready"):
            return True
        code = self._proc.poll() if self._proc is not None else None
        log.warning("reaper pid %d exited (code %s) before it was ready (its message is in "
                    "this log): a crash of this node is noticed when its lease expires",
                    self.pid, code)
        return False

    def _close_ready(self) -> None:
        if self._ready_fd >= 0:
            os.close(self._ready_fd)
            self._ready_fd = -1

    def forget_lease(self, lease: int) -> None:
        """The node revoked ``lease`` itself: if it is the one watched, nothing is
        left to revoke at the node's death (a kill while a drain waits for its
        takeover must not report a failed revoke of a lease that is gone)."""
        if not self._closed and lease and self._lease == lease:
            self._lease = 0
            self._send("lease 0")

    def watch_lease(self, lease: int) -> None:
        """From now on, revoke ``lease`` if this process dies."""
        if self._closed:
            return
        if not self.alive:
            code = self._proc.returncode if self._proc is not None else None
            log.warning("reaper exited (code %s); starting a new one", code)
            os.close(self._fd)
            self._spawn()
        self._lease = lease
        self._send(f"lease {lease}")

    def close(self, timeout: float = 1.0) -> None:
        """Tell the reaper to exit WITHOUT revoking; kill it by PID if it lingers."""
        proc = self._tell_exit()
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc, timeout)

    async def aclose(self, timeout: float = 1.0) -> None:  # noqa: ASYNC109
        """:meth:`close` for a running event loop: its wait for the exit does not
        block the loop."""
        import asyncio  # (see wait_ready)

        proc = self._tell_exit()
        if proc is None:
            return
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                self._kill(proc, timeout)
                return
            await asyncio.sleep(0.005)

    def _tell_exit(self) -> subprocess.Popen[bytes] | None:
        """Send ``exit`` and close both pipes (once); the process to wait for."""
        if self._closed:
            return None
        self._closed = True
        self._send("exit")
        os.close(self._fd)
        self._close_ready()
        return self._proc

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], timeout: float) -> None:
        log.warning("reaper pid %d did not exit; killing it", proc.pid)
        proc.kill()
        proc.wait(timeout)


# -- revoking (runs in the reaper process) ------------------------------------------
def revoke(info: Mapping[str, Any], lease: int) -> str:
    """Revoke ``lease`` in the store ``info`` describes (``info["reaper"]`` names
    the backend's reaper module); a short report. Raises on failure (the lease
    then expires by its TTL)."""
    return str(_reaper_module(info).reaper_revoke(info, lease))


def _reaper_module(info: Mapping[str, Any]) -> Any:
    import importlib

    from shoal.errors import UnsupportedBackend

    name = info.get("reaper")
    if not name:  # not resolved by the node: ask the backend's descriptor
        from shoal.store.registry import get_backend

        name = get_backend(str(info.get("backend"))).reaper
    if not isinstance(name, str) or not name:
        raise UnsupportedBackend(f"the reaper cannot revoke leases of {info.get('backend')!r}")
    return importlib.import_module(name)


# -- the reaper process -----------------------------------------------------------------
def _say(message: str) -> None:
    sys.stderr.write(f"shoal reaper[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def _prepare(info: Mapping[str, Any]) -> None:
    """Import what the revoke will need NOW, while the node lives: at its death
    every millisecond counts (importing urllib alone takes ~16 ms)."""
    _reaper_module(info).reaper_prepare(info)


def _tell_ready() -> None:
    """Tell the node (on stdout, a pipe it reads) that a revoke is prepared; then
    point stdout at /dev/null, so the node's read end can be closed."""
    with contextlib.suppress(OSError):  # a node that does not wait (or is gone)
        os.write(1, b"ready\n")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def main() -> int:
    """Read commands from stdin until ``exit`` (return 0) or end-of-file
    (revoke the current lease, return 0; 1 if the revoke failed)."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    parent = os.getppid()
    info: dict[str, Any] | None = None
    lease = 0
    buffer = b""
    while True:
        try:
            chunk = os.read(0, 4096)
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if info is None:
                try:
                    info = dict(json.loads(line))
                except (ValueError, TypeError) as exc:
                    _say(f"bad store settings from node process {parent}: {exc}")
                    return 2
                try:
                    _prepare(info)
                except Exception as exc:
                    _say(f"cannot prepare revoking for node process {parent}: {exc}")
                    return 2
                _tell_ready()
            elif line == "exit":
                return 0
            elif line.startswith("lease "):
                try:
                    lease = int(line.split()[1])
                except (IndexError, ValueError):
                    _say(f"ignoring bad line {line!r}")
            elif line:
                _say(f"ignoring unknown command {line!r}")
    if info is None or not lease:
        return 0
    started = time.monotonic()
    try:
        outcome = revoke(info, lease)
    except Exception as exc:
        _say(f"node process {parent} exited; could not revoke lease {lease} ({lease:#x}): "
             f"{exc}; it expires by its TTL")
        return 1
    took = (time.monotonic() - started) * 1000
    _say(f"node process {parent} exited; lease {lease} ({lease:#x}) {outcome} in {took:.0f} ms")
    return 0


def _exit(code: int) -> None:
    """Leave at once, without the interpreter's shutdown: after a revoke it burnt
    15-40 ms of CPU (module teardown, garbage collection; ``benchmarks/reaper.py``)
    at the very moment the surviving nodes need the cores to take over the dead
    node's duties. What a revoke opened, it closes itself."""
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
