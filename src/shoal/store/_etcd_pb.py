"""etcd's protobuf messages and gRPC stubs, imported in exactly ONE place.

The etcd backend talks to etcd below etcd3aio's service wrappers in three
spots: its own Watch stream (resumed at the last *delivered* event, see
``_etcd_watch``), keep-alives with a deadline of their own, and transactions
whose ops and compares it encodes itself (``_etcd_codec``); ``shoal etcd
start`` also enables auth over the raw Auth API. etcd3aio (pinned in
pyproject) offers no public path to these messages: its public names are the
high-level client and services only, while the generated messages live in
the private ``etcd3aio._protobuf``. So that private import is confined here;
when etcd3aio changes it, only this module changes. Use it as::

    from shoal.store import _etcd_pb as pb
    pb.WatchCreateRequest(key=..., range_end=..., start_revision=...)
"""

from __future__ import annotations

from etcd3aio._protobuf import (
    AuthEnableRequest,
    AuthRoleAddRequest,
    AuthStub,
    AuthUserAddRequest,
    AuthUserGrantRoleRequest,
    Compare,
    DeleteRangeRequest,
    LeaseKeepAliveRequest,
    LeaseStub,
    PutRequest,
    RangeRequest,
    RequestOp,
    WatchCreateRequest,
    WatchRequest,
    WatchStub,
)

__all__ = [
    "AuthEnableRequest",
    "AuthRoleAddRequest",
    "AuthStub",
    "AuthUserAddRequest",
    "AuthUserGrantRoleRequest",
    "Compare",
    "DeleteRangeRequest",
    "LeaseKeepAliveRequest",
    "LeaseStub",
    "PutRequest",
    "RangeRequest",
    "RequestOp",
    "WatchCreateRequest",
    "WatchRequest",
    "WatchStub",
]
