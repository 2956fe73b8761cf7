"""The Store seam and its backends (memory, sqlite, etcd, postgres)."""

from shoal.store.protocol import (
    Compare,
    Delete,
    Event,
    EventType,
    Features,
    Get,
    KeyValue,
    Lease,
    Op,
    Put,
    RangeResult,
    Store,
    Target,
    TxnResult,
)

__all__ = [
    "Compare",
    "Delete",
    "Event",
    "EventType",
    "Features",
    "Get",
    "KeyValue",
    "Lease",
    "Op",
    "Put",
    "RangeResult",
    "Store",
    "Target",
    "TxnResult",
]
