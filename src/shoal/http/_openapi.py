"""The OpenAPI 3.1 document of the HTTP API (hand-written, checked by schemathesis)."""

from __future__ import annotations

from typing import Any

from shoal.runtime._state_model import KEY_RULE, NAMESPACE_RULE

__all__ = ["NODE_NAME_RULE", "openapi_document"]

NODE_NAME_RULE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "node", "phase"],
        "properties": {
            "status": {"const": "ok"}, "node": {"type": "string"}, "phase": {"type": "string"},
        },
    },
    "Ready": {
        "type": "object",
        "required": ["ready", "node", "phase", "reason", "message"],
        "properties": {
            "ready": {"type": "boolean"},
            "node": {"type": "string"},
            "phase": {"type": "string"},
            "reason": {"enum": ["ready", "stale", "starting", "draining", "stopping",
                                "stopped", "not_coordinated", "no_role"]},
            "stale": {"type": "boolean"},
            "stale_seconds": {"type": "number"},
            "message": {"type": "string"},
        },
    },
    "Node": {
        "type": "object",
        "required": ["name", "roles", "zone", "weight", "can_lead", "version", "app_version",
                     "cordoned", "draining", "leader", "self", "duties", "workers", "keys"],
        "properties": {
            "name": {"type": "string"},
            "roles": {"type": "array", "items": {"type": "string"}},
            "zone": {"type": "string"},
            "weight": {"type": "number"},
            "can_lead": {"type": "boolean"},
            "version": {"type": "string"},  # Shoal's
            "app_version": {"type": "string"},  # the app's (shoal.App(name, version=...))
            "cordoned": {"type": "boolean"},
            "address": {"type": "string"},
            "started_at": {"type": "number"},
            "joined_at": {"type": "number"},
            "draining": {"type": "boolean"},
            "disabled": {"type": "array", "items": {"type": "string"}},
            "leader": {"type": "boolean"},
            "self": {"type": "boolean"},
            "duties": {"type": "array", "items": {"type": "string"}},
            "workers": {"type": "object", "additionalProperties": {"type": "integer"}},
            "keys": {"type": "array", "items": {"type": "string"}},
            "lease_remaining": _NULLABLE_INT,
            "partitions": {"type": ["object", "null"], "additionalProperties": {"type": "integer"}},
            "session": {"type": ["object", "null"]},
        },
    },
    "Duty": {
        "type": "object",
        "required": ["name", "owner", "token", "since", "declared"],
        "properties": {
            "name": {"type": "string"}, "owner": _NULLABLE_STR, "token": _NULLABLE_INT,
            "since": _NULLABLE_NUM, "declared": {"type": "boolean"},
        },
    },
    "StoreHealth": {
        "type": "object",
        "required": ["connected", "revision", "stale", "stale_seconds", "documents"],
        "properties": {
            "connected": {"type": "boolean"}, "revision": {"type": "integer"},
            "stale": {"type": "boolean"}, "stale_seconds": {"type": "number"},
            "documents": {"type": "integer"}, "namespace_count": {"type": "integer"},
            "namespaces": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "ClusterView": {
        "type": "object",
        "required": ["node", "phase", "draining", "ready", "leader", "node_count", "nodes",
                     "duties", "local_duties", "store", "counters"],
        "properties": {
            "node": {"type": "string"},
            "phase": {"type": "string"},
            "draining": {"type": "boolean"},
            "ready": {"type": "boolean"},
            "ready_reason": {"type": "string"},
            "leader": _NULLABLE_STR,
            "node_count": {"type": "integer"},
            "owners_known": {"type": "boolean"},
            "nodes": {"type": "array", "items": _ref("Node")},
            "duties": {"type": "array", "items": _ref("Duty")},
            "local_duties": {"type": "array", "items": {"type": "object"}},
            "workers": {"type": "object"},
            "store": _ref("StoreHealth"),
            "counters": {"type": "object", "additionalProperties": {"type": "integer"}},
            "schedules": {"type": "array", "items": {"type": "object"}},
            "time": {"type": "number"},
        },
    },
    "ClusterEvent": {
        "type": "object",
        "required": ["kind", "name", "detail", "time"],
        "properties": {
            "kind": {"type": "string"}, "name": _NULLABLE_STR, "detail": {"type": "string"},
            "time": {"type": "number"},
        },
    },
    "StreamEvent": {  # one server-sent event (OpenAPI < 3.2: `schema` describes each event)
        "type": "object",
        "required": ["event", "data"],
        "properties": {"id": {"type": "string"}, "event": {"type": "string"},
                       "data": {"type": "string"}},
        "anyOf": [
            {"properties": {"event": {"enum": ["snapshot", "view"]}, "data": {
                "contentMediaType": "application/json", "contentSchema": _ref("ClusterView")}}},
            {"properties": {"event": {"const": "cluster"}, "data": {
                "contentMediaType": "application/json", "contentSchema": _ref("ClusterEvent")}}},
        ],
    },
    "DocumentMeta": {
        "type": "object",
        "required": ["value", "revision", "version", "create_revision"],
        "properties": {
            "value": {}, "revision": {"type": "integer"}, "version": {"type": "integer"},
            "create_revision": {"type": "integer"},
        },
    },
    "Document": {
        "type": "object",
        "required": ["namespace", "key", "value", "revision", "version", "create_revision",
                     "stale"],
        "properties": {
            "namespace": {"type": "string"}, "key": {"type": "string"}, "value": {},
            "revision": {"type": "integer"}, "version": {"type": "integer"},
            "create_revision": {"type": "integer"}, "stale": {"type": "boolean"},
        },
    },
    "Namespace": {
        "type": "object",
        "required": ["namespace", "revision", "stale", "stale_seconds", "documents"],
        "properties": {
            "namespace": {"type": "string"}, "revision": {"type": "integer"},
            "stale": {"type": "boolean"}, "stale_seconds": {"type": "number"},
            "documents": {"type": "object", "additionalProperties": _ref("DocumentMeta")},
        },
    },
    "Namespaces": {
        "type": "object",
        "required": ["revision", "stale", "namespaces"],
        "properties": {
            "revision": {"type": "integer"}, "stale": {"type": "boolean"},
            "namespaces": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "WriteResult": {
        "type": "object",
        "required": ["namespace", "key", "revision"],
        "properties": {
            "namespace": {"type": "string"}, "key": {"type": "string"},
            "revision": {"type": "integer"}, "deleted": {"type": "boolean"},
        },
    },
    "DrainResult": {
        "type": "object",
        "required": ["node", "status", "via"],
        "properties": {
            "node": {"type": "string"},
            "status": {"enum": ["draining", "requested", "already_draining"]},
            "via": {"enum": ["local", "control"]},
        },
    },
}

_COORDINATED = {"name": "coordinated", "in": "query", "required": False,
                "description": "1: also require the lease (phase ACTIVE)",
                "schema": {"type": "string", "enum": ["0", "1", "true", "false"]}}
_ROLE = {"name": "role", "in": "query", "required": False,
         "description": "also require this node role",
         "schema": {"type": "string", "maxLength": 63}}
_NS = {"name": "ns", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": NAMESPACE_RULE, "maxLength": 128}}
_KEY = {"name": "key", "in": "path", "required": True,
        "schema": {"type": "string", "pattern": KEY_RULE, "maxLength": 512}}
_NAME = {"name": "name", "in": "path", "required": True,
         "schema": {"type": "string", "pattern": NODE_NAME_RULE, "maxLength": 63}}
_IF_MATCH = {
    "name": "If-Match", "in": "header", "required": False,
    "description": "Write only if the document's current revision is this (0: it must not "
                   "exist). Quotes allowed (an ETag).",
    "schema": {"type": "string", "pattern": r'^"?[0-9]{1,18}"?$'},
}
_IF_NONE_MATCH = {
    "name": "If-None-Match", "in": "header", "required": False,
    "description": "`*`: create only (the same as If-Match: 0).",
    "schema": {"type": "string", "enum": ["*"]},
}


_FORBIDDEN = _err("A session without the management role, or a write to Shoal's own "
                  "namespace (sessions)")


def _op(summary: str, responses: dict[str, Any], *, secure: bool = False,
        params: list[dict[str, Any]] | None = None, **more: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if secure:
        op["security"] = [{"bearerAuth": []}, {"sessionCookie": []}]
        responses.setdefault("401", _err("No valid API token or session"))
    op.update(more)
    return op


def openapi_document(
    *, version: str, root_path: str = "", public_state: bool = False
) -> dict[str, Any]:
    """The OpenAPI document; ``root_path`` is where the app is mounted."""
    bad_name = _err("Bad namespace, key or node name")
    write_errors = {
        "400": _err("Bad name, body, If-Match or document"),
        "409": _err("If-Match did not match: error.current_revision holds the revision now"),
        "413": _err("Body or document too large"),
        "503": _err("Store unavailable (state stale): nothing written"),
        # a key with a line break or other control character matches no route at all
        "404": _err("No such path (a key with a control character)"),
    }
    secure_reads = not public_state
    paths: dict[str, Any] = {
        "/": {"get": _op("Live dashboard (HTML)", {"200": {
            "description": "The dashboard",
            "content": {"text/html": {"schema": {"type": "string"}}},
        }})},
        "/health": {"get": _op("Liveness: 200 while the process runs",
                               {"200": _json(_ref("Health"), "Alive")})},
        "/ready": {"get": _op("Readiness for user traffic (also from a stale cache)", {
            "200": _json(_ref("Ready"), "Ready"), "503": _json(_ref("Ready"), "Not ready"),
            "400": _err("Bad query parameter"),
        }, params=[_COORDINATED, _ROLE])},
        "/cluster": {"get": _op("The cluster as this node sees it",
                                {"200": _json(_ref("ClusterView"), "Cluster view")})},
        "/metrics": {"get": _op("Prometheus metrics", {"200": {
            "description": "Text exposition format 0.0.4",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }})},
        "/events": {"get": _op("Server-sent events: snapshot, cluster events, views", {
            "200": {"description": "An event stream",
                    "content": {"text/event-stream": {"schema": _ref("StreamEvent")}}},
            "503": _err("Too many open event streams"),
        })},
        "/openapi.json": {
            "get": _op("This document", {"200": _json({"type": "object"}, "OpenAPI")}),
        },
        "/state": {"get": _op("Namespaces and their document counts",
                              {"200": _json(_ref("Namespaces"), "Namespaces")},
                              secure=secure_reads)},
        "/state/{ns}": {"get": _op("Every document of a namespace", {
            "200": _json(_ref("Namespace"), "Documents"), "400": bad_name,
        }, secure=secure_reads, params=[_NS])},
        "/state/{ns}/{key}": {
            "get": _op("One document (ETag: its revision)", {
                "200": _json(_ref("Document"), "The document"), "400": bad_name,
                "404": _err("No such document"),
            }, secure=secure_reads, params=[_NS, _KEY]),
            "put": _op("Write a document (the body is its JSON value)", {
                "200": _json(_ref("WriteResult"), "Written"), **write_errors,
                "403": _FORBIDDEN,
            }, secure=True, params=[_NS, _KEY, _IF_MATCH, _IF_NONE_MATCH], requestBody={
                "required": True, "content": {"application/json": {"schema": {}}},
            }),
            "delete": _op("Delete a document", {
                "200": _json(_ref("WriteResult"), "Deleted (deleted=false: it did not exist)"),
                **write_errors, "403": _FORBIDDEN,
            }, secure=True, params=[_NS, _KEY, _IF_MATCH]),
        },
        "/nodes/{name}/drain": {"post": _op("Drain a node (hand its duties over, leave)", {
            "202": _json(_ref("DrainResult"), "Drain started or requested"),
            "400": bad_name, "404": _err("No live node of that name"),
            "413": _err("Body too large"), "503": _err("Store unavailable"),
            "403": _FORBIDDEN,
        }, secure=True, params=[_NAME])},
        "/schedules": {"get": _op("Schedules: owner, next run, last runs, lateness", {
            "200": _json({"type": "object"}, "Schedules"),
        }, secure=secure_reads)},
        "/schedules/{name}/run": {"post": _op("Run a schedule once now (manual trigger)", {
            "202": _json({"type": "object"}, "Requested: its owner runs it once"),
            "404": _err("No schedule of that name"), "503": _err("Store unavailable"),
        }, secure=True, params=[{"name": "name", "in": "path", "required": True,
                                 "schema": {"type": "string", "maxLength": 128}}])},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Shoal node API", "version": version,
                 "description": "Health, cluster view, replicated state, drain, metrics."},
        "servers": [{"url": root_path or "/"}],
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "http.token, or a Shoal session token"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "shoal_session"},
            },
        },
    }
