"""uvicorn's h11 protocol with a header read timeout (slowloris guard).

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``,
but it waits forever for the headers of a request: a client that connects
and sends nothing, or one header byte every few seconds, holds a connection
(and a file descriptor) for as long as it likes. Here every connection must
deliver a complete request head within ``header_timeout`` seconds of
connecting or of starting a new request, else it is closed. Header size is
bounded by h11 (``h11_max_incomplete_event_size``, 16 KiB by default).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["DEFAULT_HEADER_TIMEOUT", "protocol_with_header_timeout"]

DEFAULT_HEADER_TIMEOUT = 10.0


class _HeaderTimeoutProtocol(H11Protocol):
    header_timeout = DEFAULT_HEADER_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm()  # a request head is (still) being read
        else:
            self._disarm()

    def _arm(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def protocol_with_header_timeout(seconds: float) -> type[asyncio.Protocol]:
    """An h11 protocol class for ``uvicorn.Config(http=...)`` that closes
    connections whose request head takes longer than ``seconds``."""
    return type("ShoalH11Protocol", (_HeaderTimeoutProtocol,), {"header_timeout": seconds})
