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
    "Cutover": "shoal.runtime.cutover",
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
    "ShoalError": "shoal.errors",
    "ConfigError": "shoal.errors",
    "StoreError": "shoal.errors",
    "StoreUnavailable": "shoal.errors",
    "OutcomeUnknown": "shoal.errors",
    "Compacted": "shoal.errors",
    "LeaseNotFound": "shoal.errors",
    "StoreAuthError": "shoal.errors",
    "UnsupportedBackend": "shoal.errors",
    "NameTaken": "shoal.errors",
    "NotRunning": "shoal.errors",
    "DutyLost": "shoal.errors",
    "ReplicatedState": "shoal.runtime.state",
    "SessionManager": "shoal.sessions",
    "Session": "shoal.sessions",
    "InvalidSession": "shoal.errors",
    "StateError": "shoal.errors",
    "Conflict": "shoal.errors",
    "DocumentTooLarge": "shoal.errors",
    "InvalidDocument": "shoal.errors",
    "InvalidArgument": "shoal.errors",
    "InvalidArgumentType": "shoal.errors",
    "WrongState": "shoal.errors",
    "StartTimeout": "shoal.errors",
    "AppImportError": "shoal.errors",
    "InvalidTransaction": "shoal.errors",
    "NodeNotLive": "shoal.errors",
    "NodeApiError": "shoal.errors",
    "ProcessError": "shoal.errors",
    "EtcdServerError": "shoal.errors",
    "PgServerError": "shoal.errors",
    "InvalidSnapshot": "shoal.errors",
}

__all__ = [
    "App",
    "AppImportError",
    "ClusterEvent",
    "Compacted",
    "Compare",
    "ConfigError",
    "Conflict",
    "Cutover",
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
    from shoal.config import NodeConfig, load_config
    from shoal.core.node_state import Phase
    from shoal.errors import (
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
    from shoal.runtime.app import App
    from shoal.runtime.context import DutyContext
    from shoal.runtime.cutover import Cutover
    from shoal.runtime.node import ClusterEvent, Node
    from shoal.runtime.schedule import RunContext
    from shoal.runtime.settings import NodeSettings
    from shoal.runtime.state import ReplicatedState
    from shoal.runtime.status import NodeStatus
    from shoal.runtime.thread import NodeThread
    from shoal.sessions import Session, SessionManager
    from shoal.store.factory import open_store
    from shoal.store.protocol import Compare, Delete, Get, Op, Put, Store
