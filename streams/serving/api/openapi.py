"""The guide API's OpenAPI 3.1 document: served at /openapi.json and checked in as docs/openapi.json.

The paths are listed here; every body's schema is generated from the models in `schemas/`
(the same models the worker and the API write), and a test checks real responses against it.

Regenerate the checked-in copy with `tagstream api --openapi > docs/openapi.json`; a test fails
when the two differ or when a route of the app is missing here.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import msgspec

from schemas.api import ApiError, MarkAccepted, MarkRequest, Me, MembersPage, TagCatalogue
from schemas.changes import TagChange, TierChange
from schemas.insights import TagHistory, TagInsight
from schemas.profile import Profile
from schemas.task_api import TaskDoneAccepted, TaskDoneRequest, TaskInsights, TasksPage
from schemas.tasks import TaskRecord

JSON = "application/json"


REF_TEMPLATE = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(name=name)}


def _error_responses(*codes: int) -> dict[str, Any]:
    text = {400: "Bad request (a parameter or Last-Event-ID is malformed)",
            401: "No token, or a token that is not valid",
            403: "The token's guide may not see this guide or member",
            413: "The body is too large",
            404: "Not found (operators only; a guide gets 403 for members not theirs)",
            409: "Conflict: the task is not open (already done, lapsed, expired or cancelled)",
            503: "The broker is not reachable yet; retry after Retry-After seconds"}
    return {str(code): {"description": text[code],
                        "content": {JSON: {"schema": _ref("ApiError")}}} for code in codes}


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
    "TagChange, `event: tier` with a TierChange or `event: task` with a TaskRecord (a guide task's "
    "whole newest state: opened, done, lapsed, expired or cancelled) as `data`. The event `id` is "
    "a cursor (the next offset on every partition of tags.changes, tiers.changes and "
    "tasks.changes, e.g. `t0=812,t1=790,r0=33,k0=5`); "
    "send it back as `Last-Event-ID` to continue exactly after the last delivered change, with "
    "no gap and no repeat. Blocks with only an `id` (and `: keepalive` comments) move the cursor "
    "past changes of other guides without firing an event. Browsers: EventSource cannot send "
    "the Authorization header, so read the stream with fetch() (the guide page does).")


def _operation(summary: str, operation_id: str, responses: dict[str, Any], *,
               parameters: list[dict[str, Any]] = (), public: bool = False,  # type: ignore[assignment]
               description: str | None = None, method: str = "get",
               body: dict[str, Any] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary}
    if description:
        operation["description"] = description
    operation["operationId"] = operation_id
    if public:
        operation["security"] = []
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    operation["responses"] = responses
    return {method: operation}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _public_paths() -> dict[str, Any]:
    return {
        "/": _operation("The guide page (HTML)", "page",
                        _ok("The page", {"type": "string"}, "text/html"), public=True),
        "/static/{name}": _operation(
            "The page's script and style sheet", "static",
            {**_ok("The file", {"type": "string"}, "*/*"), "404": {"description": "No such file"}},
            parameters=[_path_param("name")], public=True),
        "/operator": _operation("The operator page (HTML): audience insight charts",
                                "operatorPage",
                                _ok("The page", {"type": "string"}, "text/html"), public=True),
        "/openapi.json": _operation("This document", "openapi",
                                    _ok("OpenAPI 3.1", {"type": "object"}), public=True),
        "/wecom/callback": _wecom_callback(),
    }


def _wecom_callback() -> dict[str, Any]:
    """WeCom's own callback protocol (signed and AES-encrypted; no bearer token)."""
    signed = [{"name": name, "in": "query", "required": True, "schema": {"type": "string"}}
              for name in ("msg_signature", "timestamp", "nonce")]
    text = {"type": "string"}
    refused = {"400": {"description": "Malformed or undecryptable"},
               "403": {"description": "The signature does not match the Token"},
               "404": {"description": "The callback is not configured"}}
    verify = _operation(
        "WeCom URL verification: answers the decrypted echostr", "wecomCallbackVerify",
        {**_ok("The decrypted echostr", text, "text/plain"), **refused},
        parameters=[*signed, {"name": "echostr", "in": "query", "required": True,
                              "schema": text}], public=True)["get"]
    push = _operation(
        "WeCom event push (change_external_contact): a guide's tag edits in WeCom become "
        "interaction.tag_marked events", "wecomCallbackEvent",
        {**_ok("\"success\"", text, "text/plain"), **refused,
         "503": {"description": "Not processed (WeCom, Redis or Kafka failed); WeCom retries"}},
        parameters=signed, public=True, method="post")["post"]
    push["requestBody"] = {"required": True, "content": {"text/xml": {"schema": text}}}
    return {"get": verify, "post": push}


def _data_paths() -> dict[str, Any]:
    tag_query = {"name": "tag", "in": "query", "required": False,
                 "description": "Only members holding this tag id", "schema": {"type": "string"}}
    page = {**_ok("One page, in member id order", _ref("MembersPage")),
            **_error_responses(400, 401, 403)}
    return {
        "/me": _operation("Who the token belongs to", "me",
                          {**_ok("The caller", _ref("Me")), **_error_responses(401)}),
        "/tags": _operation("Tag catalogue: display names (name_zh) and families", "tags",
                            {**_ok("The tags of the rule pack", _ref("TagCatalogue")),
                             **_error_responses(401)}),
        "/members/{member_id}": _operation(
            "A member's current profile", "member",
            {**_ok("The profile", _ref("Profile")), **_error_responses(401, 403, 404)},
            parameters=[_path_param("member_id")]),
        "/members/{member_id}/tags": _operation(
            "Mark or unmark a tag on a member (a guide: their own members; an operator: "
            "anyone)", "markTag",
            {"202": {"description": "Accepted: an interaction.tag_marked event is written; "
                                    "the profile, feed and WeCom follow",
                     "content": {JSON: {"schema": _ref("MarkAccepted")}}},
             **_error_responses(400, 401, 403, 404, 413)},
            parameters=[_path_param("member_id")], method="post", body=_ref("MarkRequest")),
        "/guides/{guide}/members": _operation(
            "The guide's members, optionally only those holding a tag (paged)", "guideMembers",
            page, parameters=[_guide_param(), tag_query, *PAGING]),
        "/tags/{tag}/members": _operation(
            "Members holding a tag, across guides (operators only, paged)", "tagMembers", page,
            parameters=[_path_param("tag"), *PAGING]),
        **_insight_paths(),
        "/metrics": _operation(
            "Prometheus metrics (operator token)", "metrics",
            {**_ok("Prometheus text format 0.0.4", {"type": "string"}, "text/plain"),
             **_error_responses(401, 403)}),
    }


def _insight_paths() -> dict[str, Any]:
    guide = {"name": "guide", "in": "query", "required": False,
             "description": "Count this guide's members (a guide token: only its own, the "
                            "default); operators omit it to count everyone",
             "schema": {"type": "string"}}
    tag = {"name": "tag", "in": "query", "required": True, "style": "form", "explode": True,
           "description": "Tag ids (repeat, or separate with commas; at most 20)",
           "schema": {"type": "array", "items": {"type": "string"}}}
    days = {"name": "days", "in": "query", "required": False,
            "description": "Local days up to today", "schema": {
                "type": "integer", "minimum": 1, "maximum": 400, "default": 30}}
    return {
        "/insights/tags": _operation(
            "Audience insight (人群透视): members per tag, tier, lifecycle stage and RFM cell, "
            "of everyone or of one guide", "insightTags",
            {**_ok("The counts now", _ref("TagInsight")), **_error_responses(401, 403)},
            parameters=[guide]),
        "/insights/tags/history": _operation(
            "Daily snapshots of tags' member counts (kept 400 days)", "insightTagHistory",
            {**_ok("One count per local day, oldest first; null where no snapshot was taken",
                   _ref("TagHistory")), **_error_responses(400, 401, 403)},
            parameters=[tag, guide, days]),
    }


TASK_INSIGHTS_DESCRIPTION = (
    "Per guide, two windows ending at `at`: the 7 days and the 30 days before it, each "
    "(at - N days, at]. `opened` counts tasks whose opened_at is in the window; `done`, "
    "`lapsed`, `expired` and `cancelled` count tasks that closed so, by closed_at in the "
    "window; `open_past_due` counts tasks still open whose due_at is in the window; "
    "`converted` counts the window's done tasks (by closed_at) that an order has converted so "
    "far (converted_at set; conversion can come up to 14 days after done, so the latest days "
    "are still filling). completion_rate = done / (done + lapsed + expired + open_past_due) "
    "(cancelled tasks are nobody's miss); conversion_rate = converted / done; null when the "
    "denominator is 0. A guide token sees only its own guide (no `guide`: itself); an "
    "operator one guide, or every guide that has had a task.")


def _task_paths() -> dict[str, Any]:
    status = {"name": "status", "in": "query", "required": False,
              "description": "open (the default: the to-do list, earliest due first); done, "
                             "lapsed, expired or cancelled, or closed for all of them (newest "
                             "closed first)",
              "schema": {"type": "string", "default": "open",
                         "enum": ["open", "done", "lapsed", "expired", "cancelled", "closed"]}}
    done = _operation(
        "Mark an open task done, with an optional note (a guide: their own tasks; an "
        "operator: any guide's)", "taskDone",
        {"202": {"description": "Accepted: an interaction.task_done event is written; the "
                                "worker closes the task and tasks.changes, the list and the "
                                "feed follow",
                 "content": {JSON: {"schema": _ref("TaskDoneAccepted")}}},
         **_error_responses(400, 401, 403, 404, 409, 413)},
        parameters=[_guide_param(), _path_param("task_id")], method="post",
        body=_ref("TaskDoneRequest"))
    done["post"]["requestBody"]["required"] = False
    return {
        "/guides/{guide}/tasks": _operation(
            "The guide's tasks (客户SOP): the to-do list, or the closed ones (paged)",
            "guideTasks",
            {**_ok("One page of tasks", _ref("TasksPage")), **_error_responses(400, 401, 403)},
            parameters=[_guide_param(), status, *PAGING]),
        "/guides/{guide}/tasks/{task_id}/done": done,
        "/insights/tasks": _operation(
            "Task completion and conversion per guide, over 7 and 30 days", "taskInsights",
            {**_ok("The figures per guide", _ref("TaskInsights")),
             **_error_responses(400, 401, 403)},
            parameters=[
                {"name": "guide", "in": "query", "required": False,
                 "description": "One guide's userid (a guide token: only its own)",
                 "schema": {"type": "string"}},
                {"name": "at", "in": "query", "required": False,
                 "description": "The end of the windows, RFC 3339 with an offset (default: "
                                "now); send + as %2B",
                 "schema": {"type": "string", "format": "date-time"}}],
            description=TASK_INSIGHTS_DESCRIPTION),
    }


def _feed_paths() -> dict[str, Any]:
    feed_ok = {"200": {"description": "The event stream",
                       "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
    last_event_id = {"name": "Last-Event-ID", "in": "header", "required": False,
                     "description": "The id of the last event received, to resume",
                     "schema": {"type": "string"}}
    return {
        "/guides/{guide}/feed": _operation(
            "Live tag, tier and task changes of the guide's members", "guideFeed",
            {**feed_ok, **_error_responses(400, 401, 403, 503)},
            parameters=[_guide_param(), last_event_id], description=FEED_DESCRIPTION),
        "/feed": _operation(
            "The caller's feed: their members' changes (every change for operators)", "feed",
            {**feed_ok, **_error_responses(400, 401, 503)}, parameters=[last_event_id],
            description=FEED_DESCRIPTION),
    }


# The models whose JSON Schemas the document carries, under these names.
SCHEMA_MODELS: tuple[type, ...] = (ApiError, Me, TagCatalogue, Profile, MembersPage, TagChange,
                                   TierChange, MarkRequest, MarkAccepted, TagInsight,
                                   TagHistory)


# Guide tasks (客户SOP): the records of tasks.changes and the task routes' bodies.
TASK_MODELS: tuple[type, ...] = (TaskRecord, TasksPage, TaskDoneRequest, TaskDoneAccepted,
                                 TaskInsights)


def component_schemas() -> dict[str, Any]:
    """JSON Schema (2020-12, as OpenAPI 3.1 uses) of every response body, from the models."""
    _, components = msgspec.json.schema_components(SCHEMA_MODELS + TASK_MODELS,
                                                   ref_template=REF_TEMPLATE)
    return components


def build_openapi() -> dict[str, Any]:
    paths = {**_public_paths(), **_data_paths(), **_task_paths(), **_feed_paths()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "tagstream guide API", "version": "1",
                 "description": "Member profiles, audiences and live tag changes for shopping "
                                "guides (导购). A guide token sees only members bound to that "
                                "guide; an operator token sees all."},
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {"securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "A token from TAGSTREAM_API_TOKENS"}}, "schemas": component_schemas()},
    }


@lru_cache(maxsize=1)
def openapi_bytes() -> bytes:
    """The document exactly as served and checked in (UTF-8, two-space indent, newline at end)."""
    return (json.dumps(build_openapi(), indent=2, ensure_ascii=False) + "\n").encode()
