"""Wake-up channel between the processes sharing one SQLite store file.

Each open store binds one unix datagram socket in a directory next to the
database (``{db}.wake/``, 0700, sockets 0600; a short path under the temp
directory when that would exceed the socket path limit; a directory owned by
another user is not used). After a commit a store sends one
byte to every other socket there; a receiver only wakes its poller, which then
reads the change log by revision as always. So a lost or late datagram costs
latency, never correctness: polling stays as the fallback.

A socket whose owner died refuses datagrams (``ECONNREFUSED``) and is removed
by the next sender. Linux and other unix systems only; where unix sockets are
missing, :func:`open_channel` returns None and the store just polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["WakeChannel", "open_channel", "wake_dir"]

log = logging.getLogger(__name__)
_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes on Linux, 104 on BSD
_NAME_LEN = 24  # "{pid}-{token}.s"


def wake_dir(db: Path) -> Path:
    """The directory every process opening ``db`` uses (same answer everywhere)."""
    resolved = db.resolve()
    near = resolved.with_name(resolved.name + ".wake")
    if len(os.fsencode(near)) + 1 + _NAME_LEN <= _SUN_PATH_MAX:
        return near
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"shoal-wake-{os.getuid()}-{digest}"


class WakeChannel:
    """This store's socket; :meth:`notify` wakes the others, ``on_wake`` runs on ours."""

    def __init__(self, directory: Path, sock: socket.socket, path: Path | None) -> None:
        self.directory = directory
        self._sock = sock
        self._path = path
        self._loop: asyncio.AbstractEventLoop | None = None

    def listen(self, on_wake: Callable[[], None]) -> None:
        """Call ``on_wake`` (on the running loop) whenever a datagram arrives."""
        loop = self._loop = asyncio.get_running_loop()

        def readable() -> None:
            with contextlib.suppress(OSError):
                while self._sock.recv(64):
                    pass
            on_wake()

        loop.add_reader(self._sock.fileno(), readable)

    def notify(self) -> None:
        """Wake every other store on the file (non-blocking; never raises)."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return
        for entry in entries:
            if not entry.name.endswith(".s") or entry.path == str(self._path):
                continue
            try:
                self._sock.sendto(b"w", entry.path)
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)  # its store is gone (process died)
            except OSError:  # full buffer (it is awake anyway), permissions, ...
                continue

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)


def open_channel(db: Path) -> WakeChannel | None:
    """Bind this store's socket, or None when the platform or directory cannot."""
    if not hasattr(socket, "AF_UNIX"):
        return None
    directory = wake_dir(db)
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        if directory.stat().st_uid != os.getuid():
            raise PermissionError(f"{directory} belongs to another user")
        path = directory / f"{os.getpid()}-{secrets.token_hex(4)}.s"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(str(path))
            os.chmod(path, 0o600)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        log.info("sqlite store %s: no wake-up channel (%s); polling only", db, exc)
        return None
    return WakeChannel(directory, sock, path)


def open_notifier(db: Path) -> WakeChannel | None:
    """A channel that only wakes the others (its socket is bound to no name, so
    nobody sends to it): for a process that writes but never watches (the reaper)."""
    if not hasattr(socket, "AF_UNIX"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return WakeChannel(wake_dir(db), sock, None)
