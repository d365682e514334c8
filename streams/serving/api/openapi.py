"""The guide API's OpenAPI 3.1 document: served at /openapi.json and checked in as docs/openapi.json.

Regenerate the checked-in copy with `tagstream api --openapi > docs/openapi.json`; a test fails
when the two differ or when a route of the app is missing here.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_responses(*codes: int) -> dict[str, Any]:
    text = {400: "Bad request (a parameter or Last-Event-ID is malformed)",
            401: "No token, or a token that is not valid",
            403: "The token's guide may not see this guide or member",
            404: "Not found (operators only; a guide gets 403 for members not theirs)",
            503: "The broker is not reachable yet; retry after Retry-After seconds"}
    return {str(code): {"description": text[code],
                        "content": {JSON: {"schema": _ref("Error")}}} for code in codes}


def _ok(description: str, schema: dict[str, Any], media: str = JSON) -> dict[str, Any]:
    return {"200": {"description": description, "content": {media: {"schema": schema}}}}


def _guide_param() -> dict[str, Any]:
    return {"name": "guide", "in": "path", "required": True,
            "description": "The guide's WeCom userid", "schema": {"type": "string"}}


PAGING = [
    {"name": "cursor", "in": "query", "required": False,
     "description": "next_cursor of the previous page; omit for the first page",
     "schema": {"type": "string"}},
    {"name": "limit", "in": "query", "required": False, "description": "Page size",
     "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
]

FEED_DESCRIPTION = (
    "Server-sent events (text/event-stream), live. Each change is one event: `event: tag` with a "
    "TagChange or `event: tier` with a TierChange as `data`. The event `id` is a cursor (the next "
    "offset on every partition of tags.changes and tiers.changes, e.g. `t0=812,t1=790,r0=33`); "
    "send it back as `Last-Event-ID` to continue exactly after the last delivered change, with "
    "no gap and no repeat. Blocks with only an `id` (and `: keepalive` comments) move the cursor "
    "past changes of other guides without firing an event. Browsers: EventSource cannot send "
    "the Authorization header, so read the stream with fetch() (the guide page does).")


def build_openapi() -> dict[str, Any]:
    secured = [{"bearer": []}]
    feed_ok = {"200": {"description": "The event stream",
                       "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
    last_event_id = {"name": "Last-Event-ID", "in": "header", "required": False,
                     "description": "The id of the last event received, to resume",
                     "schema": {"type": "string"}}
    paths: dict[str, Any] = {
        "/": {"get": {"summary": "The guide page (HTML)", "operationId": "page", "security": [],
                      "responses": _ok("The page", {"type": "string"}, "text/html")}},
        "/static/{name}": {"get": {
            "summary": "The page's script and style sheet", "operationId": "static",
            "security": [],
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {**_ok("The file", {"type": "string"}, "*/*"),
                          "404": {"description": "No such file"}}}},
        "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                  "security": [],
                                  "responses": _ok("OpenAPI 3.1", {"type": "object"})}},
        "/me": {"get": {"summary": "Who the token belongs to", "operationId": "me",
                        "responses": {**_ok("The caller", _ref("Me")),
                                      **_error_responses(401)}}},
        "/tags": {"get": {"summary": "Tag catalogue: display names (name_zh) and families",
                          "operationId": "tags",
                          "responses": {**_ok("The tags of the rule pack", _ref("TagCatalogue")),
                                        **_error_responses(401)}}},
        "/members/{member_id}": {"get": {
            "summary": "A member's current profile", "operationId": "member",
            "parameters": [{"name": "member_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {**_ok("The profile", _ref("Profile")),
                          **_error_responses(401, 403, 404)}}},
        "/guides/{guide}/members": {"get": {
            "summary": "The guide's members, optionally only those holding a tag (paged)",
            "operationId": "guideMembers",
            "parameters": [_guide_param(),
                           {"name": "tag", "in": "query", "required": False,
                            "description": "Only members holding this tag id",
                            "schema": {"type": "string"}}, *PAGING],
            "responses": {**_ok("One page, in member id order", _ref("MembersPage")),
                          **_error_responses(400, 401, 403)}}},
        "/guides/{guide}/feed": {"get": {
            "summary": "Live tag and tier changes of the guide's members",
            "description": FEED_DESCRIPTION, "operationId": "guideFeed",
            "parameters": [_guide_param(), last_event_id],
            "responses": {**feed_ok, **_error_responses(400, 401, 403, 503)}}},
        "/feed": {"get": {
            "summary": "The caller's feed: their members' changes (every change for operators)",
            "description": FEED_DESCRIPTION, "operationId": "feed",
            "parameters": [last_event_id],
            "responses": {**feed_ok, **_error_responses(400, 401, 503)}}},
        "/tags/{tag}/members": {"get": {
            "summary": "Members holding a tag, across guides (operators only, paged)",
            "operationId": "tagMembers",
            "parameters": [{"name": "tag", "in": "path", "required": True,
                            "schema": {"type": "string"}}, *PAGING],
            "responses": {**_ok("One page, in member id order", _ref("MembersPage")),
                          **_error_responses(400, 401, 403)}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (operator token)", "operationId": "metrics",
            "responses": {**_ok("Prometheus text format 0.0.4", {"type": "string"},
                                "text/plain"), **_error_responses(401, 403)}}},
    }
    guide = {"type": "object", "required": ["userid"], "properties": {
        "userid": {"type": "string"}, "external_userid": {"type": ["string", "null"]}}}
    timestamp = {"type": ["string", "null"], "format": "date-time"}
    schemas = {
        "Error": {"type": "object", "required": ["error", "message"], "properties": {
            "error": {"type": "string"}, "message": {"type": "string"}}},
        "Me": {"type": "object", "required": ["guide", "operator"], "properties": {
            "guide": {"type": ["string", "null"], "description": "null for an operator"},
            "operator": {"type": "boolean"}}},
        "TagCatalogue": {"type": "object", "required": ["rules_version", "tags"], "properties": {
            "rules_version": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "object", "properties": {
                "id": {"type": "string"}, "name_zh": {"type": "string"},
                "family": {"type": "string"}, "group": {"type": ["string", "null"]}}}}}},
        "Guide": guide,
        "HeldTag": {"type": "object", "required": ["id"], "properties": {
            "id": {"type": "string"}, "since": timestamp, "rule_version": {"type": "string"},
            "evidence": {"type": "object", "description": "The values that made the rule hold"}}},
        "Profile": {
            "type": "object", "required": ["member_id", "tags", "guides"],
            "description": "A member's profile in the DESIGN.md shape (further fields may appear)",
            "properties": {
                "member_id": {"type": "string"}, "joined_at": timestamp,
                "tier": {"type": ["string", "null"]}, "lifecycle": {"type": ["string", "null"]},
                "orders": {"type": "object"}, "rfm": {"type": "object"},
                "tags": {"type": "array", "items": _ref("HeldTag")},
                "guides": {"type": "array", "items": _ref("Guide")},
                "rules_version": {"type": "string"}, "as_of": timestamp},
            "additionalProperties": True},
        "MembersPage": {"type": "object", "required": ["members", "next_cursor"], "properties": {
            "guide": {"type": "string"}, "tag": {"type": ["string", "null"]},
            "members": {"type": "array", "items": _ref("Profile")},
            "next_cursor": {"type": ["string", "null"],
                            "description": "null on the last page"}}},
        "TagChange": {"type": "object", "description": "`event: tag` data (tags.changes)",
                      "required": ["change_id", "member_id", "tag", "op", "at"], "properties": {
                          "change_id": {"type": "string"}, "member_id": {"type": "string"},
                          "tag": {"type": "string"}, "op": {"enum": ["added", "removed"]},
                          "rule_id": {"type": "string"}, "rules_version": {"type": "string"},
                          "cause": {"type": "object"}, "evidence": {"type": "object"},
                          "at": {"type": "string", "format": "date-time"},
                          "guides": {"type": "array", "items": _ref("Guide")},
                          "name_zh": {"type": "string"}, "family": {"type": "string"}}},
        "TierChange": {"type": "object", "description": "`event: tier` data (tiers.changes)",
                       "required": ["change_id", "member_id", "type", "at", "guides"],
                       "properties": {
                           "change_id": {"type": "string"}, "member_id": {"type": "string"},
                           "type": {"enum": ["tier.upgraded", "tier.downgraded",
                                             "tier.downgrade_warning", "points.expired",
                                             "points.expiry_warning"]},
                           "from": {"type": ["string", "null"]}, "to": {"type": ["string", "null"]},
                           "growth": {"type": "integer"}, "cause": {"type": "object"},
                           "at": {"type": "string", "format": "date-time"},
                           "guides": {"type": "array", "items": _ref("Guide")}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "tagstream guide API", "version": "1",
                 "description": "Member profiles, audiences and live tag changes for shopping "
                                "guides (导购). A guide token sees only members bound to that "
                                "guide; an operator token sees all."},
        "security": secured,
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "A token from TAGSTREAM_API_TOKENS"}}, "schemas": schemas},
    }


@lru_cache(maxsize=1)
def openapi_bytes() -> bytes:
    """The document exactly as served and checked in (UTF-8, two-space indent, newline at end)."""
    return (json.dumps(build_openapi(), indent=2, ensure_ascii=False) + "\n").encode()
