"""The OpenAPI 3.1 document of `/api/v1`, generated from the wire models at import time.

The schemas come from the same pydantic models the handlers validate with, so the document
cannot drift from the behaviour. Built once; the handler serves the same dict every time.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from forklane.controlplane import wire
from forklane.controlplane.resources import KINDS, TENANTED

__all__ = ["OPENAPI"]

_REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(wire.ErrorBody, "error") for s in statuses}


def _build() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        *(k.model for k in KINDS.values()),
        wire.ErrorBody,
        wire.ProxyList,
        wire.TokenRequest,
        wire.TokenResponse,
        wire.AuditList,
        wire.ListMeta,
        wire.RouteList,
        wire.TokenList,
        wire.Identity,
        wire.EventList,
    ]
    _, defs = models_json_schema(
        [(m, "validation") for m in models], ref_template=_REF, by_alias=True
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    paths: dict[str, Any] = {}
    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    if_match = {"name": "If-Match", "in": "header", "required": False,
                "schema": {"type": "string", "minLength": 1},
                "description": "expected resourceVersion (digits, optionally quoted); an empty "
                "or malformed value answers 400, a stale one 409"}
    dry_run = {"name": "dryRun", "in": "query", "required": False,
               "schema": {"const": "All"},
               "description": "run every check and answer what would be stored; store nothing"}
    for plural, kind in KINDS.items():
        list_schema = {
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"const": f"{kind.kind}List"},
                "items": {"type": "array", "items": _ref(kind.model)},
                "metadata": {"$ref": _REF.format(model="ListMeta")},
            },
        }
        schemas[f"{kind.kind}List"] = list_schema
        tag = [kind.kind]
        paths[f"/api/v1/{plural}"] = {
            "get": {
                "tags": tag,
                "summary": f"List {plural}",
                "parameters": [
                    {"name": "labelSelector", "in": "query", "schema": {"type": "string"},
                     "description": "a=b,c=d"},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "continue", "in": "query", "schema": {"type": "string"}},
                    *([{"name": "tenant", "in": "query", "schema": {"type": "string"},
                        "description": "only this tenant's objects"}]
                      if plural in TENANTED else []),
                ],
                "responses": {
                    "200": {"description": "the list", "content": {"application/json": {
                        "schema": {"$ref": _REF.format(model=f"{kind.kind}List")}}}},
                    **_errors(400, 401, 403),
                },
            },
            "post": {
                "tags": tag,
                "summary": f"Create a {kind.kind}",
                "parameters": [dry_run],
                "requestBody": {"required": True, **_json(kind.model, kind.kind)},
                "responses": {
                    "201": _json(kind.model, "created"),
                    **_errors(400, 401, 403, 409, 415, 422),
                },
            },
        }
        paths[f"/api/v1/{plural}/{{name}}"] = {
            "parameters": [name_param],
            "get": {"tags": tag, "summary": f"Read a {kind.kind}",
                    "responses": {"200": _json(kind.model, "the resource"),
                                  **_errors(401, 403, 404)}},
            "put": {
                "tags": tag,
                "summary": f"Replace a {kind.kind} (optimistic: resourceVersion or If-Match)",
                "parameters": [if_match, dry_run],
                "requestBody": {"required": True, **_json(kind.model, kind.kind)},
                "responses": {"200": _json(kind.model, "updated"),
                              **_errors(400, 401, 403, 404, 409, 415, 422)},
            },
            "delete": {"tags": tag, "summary": f"Delete a {kind.kind}", "parameters": [if_match],
                       "responses": {"200": _json(kind.model, "deleted"),
                                     **_errors(400, 401, 403, 404, 409)}},
        }
        paths[f"/api/v1/{plural}/{{name}}/events"] = {
            "parameters": [name_param],
            "get": {"tags": tag, "summary": f"What happened to a {kind.kind}",
                    "responses": {"200": _json(wire.EventList, "events"),
                                  **_errors(401, 403, 404)}},
        }
    paths["/api/v1/proxies"] = {"get": {"summary": "Connected proxies and their versions",
                                        "responses": {"200": _json(wire.ProxyList, "proxies"),
                                                      **_errors(401, 403)}}}
    paths["/api/v1/tokens"] = {"post": {
        "summary": "Create a bearer token (admin); the raw token is returned once",
        "requestBody": {"required": True, **_json(wire.TokenRequest, "subject and role")},
        "responses": {"201": _json(wire.TokenResponse, "the token"),
                      **_errors(400, 401, 403, 415, 422)}},
        "get": {"summary": "List tokens (admin); never their secrets",
                "responses": {"200": _json(wire.TokenList, "tokens"), **_errors(401, 403)}}}
    paths["/api/v1/tokens/{token_id}"] = {
        "parameters": [{"name": "token_id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "delete": {"summary": "Revoke a token (admin)",
                   "responses": {"200": {"description": "revoked", "content": {
                       "application/json": {"schema": {"type": "object"}}}},
                       **_errors(401, 403, 404)}}}
    paths["/api/v1/whoami"] = {"get": {
        "summary": "Who the presented token is",
        "responses": {"200": _json(wire.Identity, "the caller"), **_errors(401)}}}
    paths["/api/v1/audit"] = {"get": {
        "summary": "The audit log (admin)",
        "parameters": [{"name": "after", "in": "query",
                        "schema": {"type": "integer", "minimum": 0}},
                       {"name": "limit", "in": "query",
                        "schema": {"type": "integer", "minimum": 0}}],
        "responses": {"200": _json(wire.AuditList, "entries"), **_errors(400, 401, 403)}}}
    paths["/api/v1/snapshot"] = {"get": {
        "summary": "The routing snapshot currently published to proxies",
        "description": "a developer token sees only the forks of its own keys; the signing "
                       "secrets are always redacted",
        "responses": {"200": {"description": "forklane.proxy.schema.RoutingSnapshot"},
                      **_errors(401, 403, 503)}}}
    paths["/api/v1/routes"] = {"get": {
        "summary": "Which routing keys fork which service (for message consumers; role consumer)",
        "description": "consumer and admin tokens see every key; a developer token only the "
                       "keys of the sandboxes and route groups it created in its tenant",
        "parameters": [
            {"name": "labelSelector", "in": "query", "schema": {"type": "string"},
             "description": "service=NAME, sandbox=NAME, routeGroup=NAME"},
            {"name": "watch", "in": "query", "schema": {"type": "boolean"},
             "description": "stream ADDED/MODIFIED/DELETED/BOOKMARK events (NDJSON)"},
            {"name": "resourceVersion", "in": "query", "schema": {"type": "string"},
             "description": "watch from this version (410 unless it is the current one)"},
            {"name": "allowWatchBookmarks", "in": "query", "schema": {"type": "boolean"}},
            {"name": "timeoutSeconds", "in": "query", "schema": {"type": "integer"}},
        ],
        "responses": {"200": _json(wire.RouteList, "the routes and the carriers"),
                      **_errors(400, 401, 403, 410, 503)}}}
    _streams_and_reports(paths)
    for probe in ("/healthz", "/readyz"):
        paths[probe] = {"get": {"summary": "probe", "security": [],
                                "responses": {"200": {"description": "ok"},
                                              "503": {"description": "not ready"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "forklane control plane", "version": wire.API_VERSION},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _streams_and_reports(paths: dict[str, Any]) -> None:
    """The tap, `forklane connect`, delivery reports and the plain-text endpoints: bodies
    without a wire model, documented by their parameters and statuses."""
    anything = {"application/json": {"schema": {"type": "object"}}}
    paths["/api/v1/tap"] = {"get": {
        "summary": "A live stream of routing decisions (NDJSON, one object per line)",
        "description": "a developer taps its own sandbox (`sandbox`); any key or every request "
                       "is for admins only; ends after `seconds` with a line counting drops",
        "parameters": [
            {"name": "sandbox", "in": "query", "schema": {"type": "string"}},
            {"name": "key", "in": "query", "schema": {"type": "string"}},
            {"name": "service", "in": "query", "schema": {"type": "string"}},
            {"name": "status", "in": "query", "schema": {"type": "string"},
             "description": "a status class such as 5xx"},
            {"name": "seconds", "in": "query", "schema": {"type": "number"}},
            {"name": "headers", "in": "query", "schema": {"type": "boolean"},
             "description": "capture request and response heads (redacted by the proxy)"},
            {"name": "body", "in": "query", "schema": {"type": "integer", "minimum": 0},
             "description": "capture the first N bytes of each body"},
        ],
        "responses": {"200": {"description": "decisions",
                              "content": {"application/x-ndjson": {"schema": {"type": "object"}}}},
                      **_errors(400, 401, 403, 404, 409, 503)}}}
    paths["/api/v1/tap/requests/{line_id}"] = {
        "parameters": [{"name": "line_id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "get": {"summary": "One line a tap showed lately, to whom it was shown "
                           "(`forklane explain --from-tap`)",
                "responses": {"200": {"description": "the tap line", "content": anything},
                              **_errors(401, 404)}}}
    paths["/api/v1/tap/deliveries"] = {"post": {
        "summary": "Message deliveries judged by forklane consumers, shown to matching taps",
        "requestBody": {"required": True, "content": anything},
        "responses": {"200": {"description": "accepted and shown", "content": anything},
                      **_errors(400, 401, 403, 415)}}}
    paths["/api/v1/webhooks/deliveries"] = {"get": {
        "summary": "The last sandbox-event webhook deliveries and their state (admin)",
        "responses": {"200": {"description": "urls and deliveries", "content": anything},
                      **_errors(401, 403)}}}
    paths["/api/v1/sandboxes/{name}/connect"] = {
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "get": {"summary": "`forklane connect`: a WebSocket carrying the tunnel to a developer's "
                           "machine (the sandbox's owner or an admin)",
                "responses": {"101": {"description": "switching to the tunnel protocol"},
                              **_errors(400, 401, 403, 404, 409, 503)}}}
    paths["/api/v1/openapi.json"] = {"get": {
        "summary": "This document", "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1", "content": anything}}}}
    for path, summary in (("/version", "The control plane's version and replica"),
                          ("/metrics", "Prometheus text format")):
        paths[path] = {"get": {"summary": summary, "security": [],
                               "responses": {"200": {"description": summary}}}}


OPENAPI: dict[str, Any] = _build()
