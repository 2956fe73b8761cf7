"""Session revocation as documents in replicated state (namespace ``sessions``).

Two kinds of document, both written through ``node.state``:

``subject:{escaped subject}`` → ``{"before": T}``
    every session of the subject issued at or before ``T`` (epoch seconds) is
    refused: "log out everywhere". Sessions issued later are accepted.
``session:{session id}`` → ``{"revoked": true, "expires_at": E}``
    that one session is refused ("log out"); useless after ``E``.

Keys use only the characters ``node.state`` allows in a key: letters,
digits and ``._@-`` stay as they are, every other character becomes ``:XX``
per UTF-8 byte (``a/b`` → ``a:2Fb``). A subject too long for a key is named
by its SHA-256 (``subject-sha256:{hex}``). Public names are re-exported by
:mod:`shoal.sessions`.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from shoal.clock import Clock, SystemClock
from shoal.errors import Conflict, InvalidArgument

if TYPE_CHECKING:
    from shoal.sessions import Session

__all__ = [
    "NAMESPACE",
    "RevocationState",
    "StateDoc",
    "revocation_key",
    "revoke_everywhere",
    "revoke_session",
    "revoked_in",
]

NAMESPACE = "sessions"
_KEEP = frozenset(string.ascii_letters + string.digits + "._@-")
_MAX_PART = 400  # node.state keys are at most 512 characters


class StateDoc(Protocol):
    """A document of replicated state: its value and the revision of its last write."""

    @property
    def value(self) -> Any: ...

    @property
    def revision(self) -> int: ...


class RevocationState(Protocol):
    """The part of ``node.state`` (:class:`shoal.ReplicatedState`) that
    revocation uses: a local read, a replicated compare-and-set write, and a
    wait for this node's copy to reach a revision."""

    def get(self, ns: str, key: str, /) -> StateDoc | None: ...

    async def put(
        self, ns: str, key: str, value: Any, /, *, expect_revision: int | None = None
    ) -> int: ...

    async def wait_for(self, revision: int, /) -> None: ...


def revocation_key(*, subject: str | None = None, session_id: str | None = None) -> str:
    """The key, in namespace :data:`NAMESPACE`, of the revocation document of
    a subject (all its sessions up to a time) or of one session. Give exactly one."""
    if (subject is None) == (session_id is None):
        raise InvalidArgument("revocation_key takes exactly one of subject= or session_id=")
    if subject is not None:
        part = _escape(subject)
        if len(part) > _MAX_PART:
            return f"subject-sha256:{hashlib.sha256(subject.encode()).hexdigest()}"
        return f"subject:{part}"
    part = _escape(str(session_id))
    if len(part) > _MAX_PART:
        return f"session-sha256:{hashlib.sha256(str(session_id).encode()).hexdigest()}"
    return f"session:{part}"


def _escape(text: str) -> str:
    return "".join(c if c in _KEEP else "".join(f":{b:02X}" for b in c.encode()) for c in text)


def _cutoff(value: Any) -> float | None:
    before = value.get("before") if isinstance(value, Mapping) else None
    if isinstance(before, int | float) and not isinstance(before, bool):
        return float(before)
    return None


def revoked_in(state: RevocationState) -> Callable[[Session], bool]:
    """A ``revoked`` check for :class:`~shoal.sessions.SessionManager` reading
    ``state`` (two local, non-blocking reads per verification). A session is
    revoked when its own document exists, or its subject's document says
    ``{"before": T}`` with ``issued_at <= T``. A subject document that cannot
    be read as such counts as revoking everything (fail closed)."""

    def revoked(session: Session) -> bool:
        if state.get(NAMESPACE, revocation_key(session_id=session.session_id)) is not None:
            return True
        doc = state.get(NAMESPACE, revocation_key(subject=session.subject))
        if doc is None or doc.value is None:
            return False
        cutoff = _cutoff(doc.value)
        return cutoff is None or session.issued_at <= cutoff

    return revoked


async def revoke_everywhere(
    state: RevocationState,
    subject: str,
    *,
    before: float | None = None,
    clock: Clock | None = None,
) -> float:
    """Log ``subject`` out on every node: refuse its sessions issued at or
    before ``before`` (default: now, by ``clock``). Sessions issued later are
    accepted. Returns the cut-off in effect afterwards.

    The cut-off never moves back, even under concurrent calls on several
    nodes: the write is a compare-and-set on the document's revision, retried
    after a :class:`~shoal.Conflict` from the newer document (nothing is
    written when it already covers ``before``). Returns once the write is
    replicated AND this node's own copy has it, so this node refuses the
    subject's old sessions from the moment the call returns. If cancelled, the
    write may or may not be applied: call again, it is idempotent."""
    cutoff = before if before is not None else (clock or SystemClock()).time()
    key = revocation_key(subject=subject)
    doc = state.get(NAMESPACE, key)
    while True:
        earlier = _cutoff(doc.value) if doc is not None else None
        if earlier is not None and earlier >= cutoff:
            return earlier
        try:
            revision = await state.put(
                NAMESPACE, key, {"before": cutoff},
                expect_revision=doc.revision if doc is not None else 0,
            )
            await state.wait_for(revision)  # our own copy refuses from now on
            return cutoff
        except Conflict as exc:  # another writer won: retry on top of its document
            if exc.current:
                await state.wait_for(exc.current)
                doc = state.get(NAMESPACE, key)
            else:
                doc = None  # deleted meanwhile


async def revoke_session(state: RevocationState, session: Session | str) -> None:
    """Log one session (a :class:`~shoal.sessions.Session` or its id) out on every node."""
    value: dict[str, Any] = {"revoked": True}
    if not isinstance(session, str):
        value["expires_at"] = session.expires_at
        session = session.session_id
    await state.wait_for(await state.put(NAMESPACE, revocation_key(session_id=session), value))
