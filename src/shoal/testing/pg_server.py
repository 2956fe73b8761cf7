"""Start and stop a real PostgreSQL server: for tests and benchmarks.

Example::

    with PgServer() as pg:
        store = await PostgresStore.open(pg.dsn())
        pg.restart()                    # fast shutdown, same port and data dir

The server is Debian's (``/usr/lib/postgresql/<major>/bin``, or ``$SHOAL_PG_BIN``),
initialised with ``initdb`` in a temporary directory and started as ``postgres -D``
listening on 127.0.0.1 on a free port (TCP only; its Unix socket stays inside the
temporary directory). PostgreSQL refuses to run as root, so when the tests run as
root the server runs as the unprivileged system user ``shoal-pg`` (created with
``useradd`` when missing). The superuser ``postgres`` has a random password
(``scram-sha-256``), so a wrong password is refused. ``stop()`` ends the server by
PID and removes the directory.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from shoal.errors import PgServerError

__all__ = ["PgServer", "PgServerError", "find_pg_bin"]

_ENV_BIN = "SHOAL_PG_BIN"
_HOST = "127.0.0.1"
_RUN_AS = "shoal-pg"


def find_pg_bin() -> Path:
    """The directory holding ``initdb`` and ``postgres``: ``$SHOAL_PG_BIN``, then the
    newest ``/usr/lib/postgresql/*/bin``, then ``PATH``."""
    env = os.environ.get(_ENV_BIN)
    candidates = [Path(env)] if env else []
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += versions
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    raise PgServerError(
        "no PostgreSQL server found: install Debian's `postgresql` package "
        f"(/usr/lib/postgresql/*/bin) or set {_ENV_BIN} to the directory holding initdb"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _run_as_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as (None when not root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_RUN_AS)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _RUN_AS],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return pwd.getpwnam(_RUN_AS)


_LIVE: set[PgServer] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all_at_exit() -> None:  # pragma: no cover - safety net
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


class PgServer:
    """One local PostgreSQL server (a sync context manager).

    * ``tls``: also serve TLS with a fresh trustme CA; the certificate covers
      127.0.0.1 and localhost; see ``ca_file`` (and ``client_cert_file`` /
      ``client_key_file``, a client certificate signed by the same CA).
    * ``password``: the superuser's (``postgres``) password; default random.
    """

    def __init__(
        self, *, tls: bool = False, password: str | None = None, start_timeout: float = 30.0
    ) -> None:
        self.tls = tls
        self.user = "postgres"
        self.password = password or secrets.token_hex(12)
        self.start_timeout = start_timeout
        self.port = 0
        self.host = _HOST
        self.ca_file: Path | None = None
        self.client_cert_file: Path | None = None
        self.client_key_file: Path | None = None
        self._bin: Path | None = None
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._owner: pwd.struct_passwd | None = None

    # -- public view ----------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def dsn(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        dbname: str = "postgres",
        **extra: Any,
    ) -> str:
        """A libpq connection string to this server (superuser by default)."""
        parts = {
            "host": self.host,
            "port": self.port,
            "user": user or self.user,
            "password": self.password if password is None else password,
            "dbname": dbname,
            **extra,
        }
        return " ".join(f"{k}={_quote(str(v))}" for k, v in parts.items())

    def execute(self, sql: str, *, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run ``sql`` as the superuser (autocommit); its rows, if any."""
        import psycopg

        with psycopg.connect(self.dsn(dbname=dbname), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql.encode())
            return list(cur.fetchall()) if cur.description else []

    # -- lifecycle ------------------------------------------------------------
    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """initdb, then start the server and wait until it accepts connections."""
        if self._dir is not None:
            raise PgServerError("server already started")
        self._bin = find_pg_bin()
        self._owner = _run_as_user()
        self._dir = Path(tempfile.mkdtemp(prefix="shoal-pg-"))
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._chown(self._dir)
            self._initdb()
            for attempt in range(3):
                self.port = _free_port()
                self._configure()
                self._spawn()
                try:
                    self._wait_ready()
                    return
                except PgServerError:
                    if "already in use" not in self._log_tail() or attempt == 2:
                        raise
                    self._kill()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT, then SIGKILL); remove the directory. Idempotent."""
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (SIGKILL when ``kill``, else a fast shutdown) and start on the same port."""
        if kill:
            self._kill()
        else:
            self._terminate()
        self._spawn()
        self._wait_ready()

    def stop_server(self) -> None:
        """Fast shutdown, keeping the data for :meth:`start_server`."""
        self._terminate()

    def start_server(self) -> None:
        """Start again after :meth:`stop_server` (same port and data)."""
        self._spawn()
        self._wait_ready()

    # -- internals ------------------------------------------------------------
    @property
    def _data(self) -> Path:
        assert self._dir is not None
        return self._dir / "data"

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def _user_kwargs(self) -> dict[str, Any]:
        if self._owner is None:
            return {}
        return {"user": self._owner.pw_uid, "group": self._owner.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        assert self._bin is not None and self._dir is not None
        pwfile = self._dir / "pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        done = subprocess.run(
            [
                str(self._bin / "initdb"), "-D", str(self._data), "-U", self.user,
                "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                "--locale=C", "--no-sync",
            ],
            capture_output=True,
            timeout=120,
            cwd=self._dir,
            **self._user_kwargs(),
        )  # fmt: skip
        pwfile.unlink()
        if done.returncode != 0:
            raise PgServerError(f"initdb failed: {done.stderr.decode(errors='replace')[-2000:]}")

    def _configure(self) -> None:
        assert self._dir is not None
        conf = [
            f"listen_addresses = '{_HOST}'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self._dir}'",
            "max_connections = 300",
            "fsync = off",  # tests survive process kills, not power loss
            "synchronous_commit = off",
            "full_page_writes = off",
            "shared_buffers = 32MB",
            "log_min_messages = warning",
        ]
        if self.tls:
            self._make_certs()
            conf += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
            conf.append("ssl_ca_file = 'ca.crt'")
        (self._data / "postgresql.auto.conf").write_text("\n".join(conf) + "\n")
        hba = [
            "local all all scram-sha-256",
            f"host all all {_HOST}/32 scram-sha-256",
        ]
        (self._data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        for name in ("postgresql.auto.conf", "pg_hba.conf"):
            self._chown(self._data / name)

    def _make_certs(self) -> None:
        import trustme

        assert self._dir is not None
        ca = trustme.CA()
        server = ca.issue_cert(_HOST, "localhost", common_name="postgres-server")
        client = ca.issue_cert("shoal-client.local", common_name=self.user)
        self.ca_file = self._dir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        ca.cert_pem.write_to_path(str(self._data / "ca.crt"))
        (self._data / "server.crt").write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
        server.private_key_pem.write_to_path(str(self._data / "server.key"))
        self.client_cert_file = self._dir / "client.pem"
        self.client_key_file = self._dir / "client-key.pem"
        self.client_cert_file.write_bytes(b"".join(p.bytes() for p in client.cert_chain_pems))
        client.private_key_pem.write_to_path(str(self.client_key_file))
        for path in (self._data / "server.key", self.client_key_file):
            path.chmod(0o600)
        for name in ("ca.crt", "server.crt", "server.key"):
            self._chown(self._data / name)

    def _spawn(self) -> None:
        assert self._bin is not None and self._dir is not None
        if self._log is not None:
            self._log.close()
        self._log = (self._dir / "server.log").open("ab")
        self._proc = subprocess.Popen(
            [str(self._bin / "postgres"), "-D", str(self._data)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self._dir,
            **self._user_kwargs(),
        )

    def _log_tail(self, lines: int = 20) -> str:
        if self._dir is None:
            return ""
        try:
            text = (self._dir / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn(), connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc else None
                raise PgServerError(f"postgres exited with code {code}; log:\n{self._log_tail()}")
            if self._accepts():
                return
            if time.monotonic() > deadline:
                raise PgServerError(
                    f"postgres not ready within {self.start_timeout:.0f}s; log:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _signal_wait(self, sig: int, timeout: float) -> bool:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _terminate(self) -> None:
        if not self._signal_wait(signal.SIGINT, 15.0):  # fast shutdown
            self._signal_wait(signal.SIGKILL, 10.0)
        self._close_log()

    def _kill(self) -> None:
        """SIGKILL the postmaster; its children exit when they notice (bounded wait)."""
        self._signal_wait(signal.SIGKILL, 10.0)
        self._close_log()
        pidfile = self._data / "postmaster.pid"
        deadline = time.monotonic() + 10.0
        # children keep the shared memory until they exit; the next start checks it
        while pidfile.exists() and time.monotonic() < deadline:
            if not self._children_alive():
                break
            time.sleep(0.05)

    def _children_alive(self) -> bool:
        """True while a backend process of this data dir still runs."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                env_dir = os.readlink(entry / "cwd")
            except OSError:
                continue
            if b"postgres" in cmdline and env_dir == str(self._data):
                return True
        return False

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _quote(value: str) -> str:
    if value and all(c.isalnum() or c in "._-/:" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
