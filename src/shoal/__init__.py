"""Shoal: turn several running copies of a Python service into one cluster.

Public names are imported lazily (``shoal.App`` loads the runtime on first
use), so light processes such as the reaper import nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "App": "shoal.runtime.app",
    "Node": "shoal.runtime.node",
    "ClusterEvent": "shoal.runtime.node",
    "NodeStatus": "shoal.runtime.status",
    "Phase": "shoal.core.node_state",
    "NodeSettings": "shoal.runtime.settings",
    "NodeThread": "shoal.runtime.thread",
    "DutyContext": "shoal.runtime.context",
    "RunContext": "shoal.runtime.schedule",
    "NodeConfig": "shoal.config",
    "load_config": "shoal.config",
    "open_store": "shoal.store.factory",
    "Store": "shoal.store.protocol",
    "Compare": "shoal.store.protocol",
    "Put": "shoal.store.protocol",
    "Delete": "shoal.store.protocol",
    "Get": "shoal.store.protocol",
    "Op": "shoal.store.protocol",
    "ShoalError": "shoal._errors",
    "ConfigError": "shoal._errors",
    "StoreError": "shoal._errors",
    "StoreUnavailable": "shoal._errors",
    "OutcomeUnknown": "shoal._errors",
    "Compacted": "shoal._errors",
    "LeaseNotFound": "shoal._errors",
    "StoreAuthError": "shoal._errors",
    "UnsupportedBackend": "shoal._errors",
    "NameTaken": "shoal._errors",
    "NotRunning": "shoal._errors",
    "DutyLost": "shoal._errors",
    "ReplicatedState": "shoal.runtime.state",
    "SessionManager": "shoal.sessions",
    "Session": "shoal.sessions",
    "InvalidSession": "shoal._errors",
    "StateError": "shoal._errors",
    "Conflict": "shoal._errors",
    "DocumentTooLarge": "shoal._errors",
    "InvalidDocument": "shoal._errors",
    "InvalidArgument": "shoal._errors",
    "InvalidArgumentType": "shoal._errors",
    "WrongState": "shoal._errors",
    "StartTimeout": "shoal._errors",
    "AppImportError": "shoal._errors",
    "InvalidTransaction": "shoal._errors",
    "NodeNotLive": "shoal._errors",
    "NodeApiError": "shoal._errors",
    "ProcessError": "shoal._errors",
    "EtcdServerError": "shoal._errors",
    "PgServerError": "shoal._errors",
    "InvalidSnapshot": "shoal._errors",
}

__all__ = [
    "App",
    "AppImportError",
    "ClusterEvent",
    "Compacted",
    "Compare",
    "ConfigError",
    "Conflict",
    "Delete",
    "DocumentTooLarge",
    "DutyContext",
    "DutyLost",
    "EtcdServerError",
    "Get",
    "InvalidArgument",
    "InvalidArgumentType",
    "InvalidDocument",
    "InvalidSession",
    "InvalidSnapshot",
    "InvalidTransaction",
    "LeaseNotFound",
    "NameTaken",
    "Node",
    "NodeApiError",
    "NodeConfig",
    "NodeNotLive",
    "NodeSettings",
    "NodeStatus",
    "NodeThread",
    "NotRunning",
    "Op",
    "OutcomeUnknown",
    "PgServerError",
    "Phase",
    "ProcessError",
    "Put",
    "ReplicatedState",
    "RunContext",
    "Session",
    "SessionManager",
    "ShoalError",
    "StartTimeout",
    "StateError",
    "Store",
    "StoreAuthError",
    "StoreError",
    "StoreUnavailable",
    "UnsupportedBackend",
    "WrongState",
    "__version__",
    "load_config",
    "open_store",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from shoal._errors import (
        AppImportError,
        Compacted,
        ConfigError,
        Conflict,
        DocumentTooLarge,
        DutyLost,
        EtcdServerError,
        InvalidArgument,
        InvalidArgumentType,
        InvalidDocument,
        InvalidSession,
        InvalidSnapshot,
        InvalidTransaction,
        LeaseNotFound,
        NameTaken,
        NodeApiError,
        NodeNotLive,
        NotRunning,
        OutcomeUnknown,
        PgServerError,
        ProcessError,
        ShoalError,
        StartTimeout,
        StateError,
        StoreAuthError,
        StoreError,
        StoreUnavailable,
        UnsupportedBackend,
        WrongState,
    )
    from shoal.config import NodeConfig, load_config
    from shoal.core.node_state import Phase
    from shoal.runtime.app import App
    from shoal.runtime.context import DutyContext
    from shoal.runtime.node import ClusterEvent, Node
    from shoal.runtime.schedule import RunContext
    from shoal.runtime.settings import NodeSettings
    from shoal.runtime.state import ReplicatedState
    from shoal.runtime.status import NodeStatus
    from shoal.runtime.thread import NodeThread
    from shoal.sessions import Session, SessionManager
    from shoal.store.factory import open_store
    from shoal.store.protocol import Compare, Delete, Get, Op, Put, Store
