"""Shoal's error tree. Every error Shoal raises is one of these::

    ShoalError
    ├── InvalidArgument         (also ValueError) a call got a bad argument value
    ├── InvalidArgumentType     (also TypeError) a call got an argument of a bad type
    ├── WrongState              (also RuntimeError) a call that does not fit now (started twice)
    ├── StartTimeout            (also TimeoutError) a node or process was not up in time
    ├── ConfigError             bad configuration: names the key, the bad value and the fix
    │   └── AppImportError      the APP spec (MODULE:APP) cannot be imported
    ├── StoreError              anything the store layer reports
    │   ├── StoreUnavailable    the store cannot be reached now (retryable)
    │   │   └── OutcomeUnknown  a write was sent but its result is unknown (re-read first)
    │   ├── Compacted           a watch/read asked for history the store no longer has
    │   ├── LeaseNotFound       the lease expired or was revoked
    │   ├── StoreAuthError      the store refused our credentials or permissions
    │   ├── InvalidTransaction  (also ValueError) a txn branch writes one key twice
    │   └── UnsupportedBackend  the backend cannot do what was asked (at construction)
    ├── NameTaken               a live node already holds this node's name (G6)
    ├── NotRunning              the node/primitive is closed or not started
    ├── NodeNotLive             a control request names a node that is not live
    ├── NodeApiError            a node's HTTP API could not be reached or gave no usable answer
    ├── ProcessError            a helper process (etcd, PostgreSQL, a test node) failed
    │   ├── EtcdServerError     the etcd binary is missing or a member did not start
    │   └── PgServerError       PostgreSQL's binaries are missing or the server did not start
    ├── InvalidSession          a session token was refused (.reason says why)
    ├── DutyLost                the duty's ownership ended (fencing/lease loss)
    └── StateError              a replicated-state request was refused (nothing written)
        ├── InvalidDocument     (also ValueError) bad namespace/key name or a non-JSON value
        │   └── DocumentTooLarge  the encoded document (or transaction) is over the limit
        ├── Conflict            expect_revision did not match: names the current revision
        └── InvalidSnapshot     a backup file is malformed, truncated, tampered or foreign

Backends translate their library's exceptions into this tree at exactly one
boundary; nothing above the store ever sees a grpc, psycopg or sqlite3 exception.

Two kinds of exception outside the tree exist on purpose. Validators of the
configuration models raise plain ``ValueError``, because that is what pydantic
turns into a validation error; the loader reports them as :class:`ConfigError`.
And a few private exceptions carry control flow inside one module and are
always caught there (they never reach a caller).
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base class of every error Shoal raises."""


class InvalidArgument(ShoalError, ValueError):
    """A call got an argument it cannot use (a programming error). The message
    names the argument, the bad value and what is allowed."""


class InvalidArgumentType(ShoalError, TypeError):
    """A call got an argument of a type it cannot use (a programming error)."""


class WrongState(ShoalError, RuntimeError):
    """The call does not fit the object's state now (e.g. started twice)."""


class StartTimeout(ShoalError, TimeoutError):
    """A node or helper process did not join / become ready within the time given."""


class ConfigError(ShoalError):
    """The configuration is invalid. The message names the key, the value and the fix."""


class AppImportError(ConfigError):
    """The application spec (``MODULE:APP``) cannot be imported or is not an App."""


class StoreError(ShoalError):
    """Base class of errors reported by a store backend."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now. Retryable."""


class OutcomeUnknown(StoreUnavailable):
    """A write was sent but the store did not confirm or deny it.

    Never retry such a write blindly: re-read the keys it touched first.
    """


class Compacted(StoreError):
    """The requested revision is older than the store's compaction point."""

    def __init__(self, compact_revision: int, message: str | None = None) -> None:
        self.compact_revision = compact_revision
        super().__init__(
            message
            or f"revision compacted: history before revision {compact_revision} is gone; "
            "reload the full state and watch from the current revision"
        )


class LeaseNotFound(StoreError):
    """The lease does not exist (expired or revoked)."""

    def __init__(self, lease: int) -> None:
        self.lease = lease
        super().__init__(f"lease {lease:#x} not found (expired or revoked)")


class StoreAuthError(StoreError):
    """The store refused the credentials or the permission for an operation."""


class InvalidTransaction(StoreError, ValueError):
    """A transaction branch puts one key twice, or puts and deletes one key.

    etcd refuses such a transaction whole (``duplicate key given in txn
    request``), even in the branch that would not run; every backend does the
    same, and nothing is written."""


class UnsupportedBackend(StoreError):
    """The backend is unknown or lacks a required feature. Raised at construction."""


class NameTaken(ShoalError):
    """A live node already holds this node's name (guarantee G6)."""


class NotRunning(ShoalError):
    """The object was closed or not started."""


class NodeNotLive(ShoalError):
    """The node named in a control request is not a live member of the cluster."""


class NodeApiError(ShoalError):
    """A node's HTTP API could not be reached or gave no usable answer."""


class ProcessError(ShoalError):
    """A helper process (etcd, PostgreSQL, a node under test) failed to start or behave."""


class EtcdServerError(ProcessError):
    """The etcd binary is missing, or a member did not start / become healthy."""


class PgServerError(ProcessError):
    """PostgreSQL's binaries are missing, or the server did not start."""


class DutyLost(ShoalError):
    """This node no longer owns the duty (lease lost, superseded or drained)."""


class InvalidSession(ShoalError):
    """A session token was refused. ``reason`` is one of ``"malformed"``,
    ``"tampered"`` (bad signature), ``"foreign_secret"`` (signed with a secret
    this node does not hold), ``"expired"`` or ``"revoked"``."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or f"session refused: {reason}")


class StateError(ShoalError):
    """A replicated-state request was refused. Nothing was written."""


class InvalidDocument(StateError, ValueError):
    """A namespace or key breaks the naming rule, or a value is not JSON.

    The message shows the bad name and the rule, or the path and type of the
    bad part of the value."""


class DocumentTooLarge(InvalidDocument):
    """The encoded document (or a whole transaction) is over the size limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"{what} is {size} bytes encoded as JSON; the limit is {limit} bytes")


class Conflict(StateError):
    """A write's ``expect_revision`` did not match the document's current revision."""

    def __init__(self, namespace: str, key: str, expected: int, current: int) -> None:
        self.namespace = namespace
        self.key = key
        self.expected = expected
        self.current = current
        want = "to create it (expect_revision=0)" if expected == 0 else f"revision {expected}"
        now = "it does not exist" if current == 0 else f"its current revision is {current}"
        super().__init__(f"conflict on {namespace}/{key}: expected {want} but {now}")


class InvalidSnapshot(StateError):
    """A state backup file is malformed, truncated, tampered with, or of another
    format or version. Nothing was written."""
