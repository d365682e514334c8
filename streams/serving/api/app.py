"""The guide HTTP API: routes, auth and metrics middleware, and the feed (server-sent events).

Every data route needs `Authorization: Bearer <token>` (streams/serving/api/auth.py); a guide sees
only members bound to them, an operator sees all. The page (`/`, `/static/...`) and `/openapi.json`
hold no member data and are public; `/metrics` is for operators. Profiles and audiences are read
from Redis (RedisProfileStore); feeds come from the shared Kafka tail (streams/serving/api/feed.py)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

import msgspec
import orjson
from aiohttp import web

from schemas.api import ApiError, CatalogueTag, Me, TagCatalogue, encode_body
from schemas.task_api import TaskInsights
from streams.platform import metrics
from streams.serving.api.auth import Principal, TokenMap, bearer_token, parse_tokens
from streams.serving.api.feed import (BUFFER_PER_PARTITION, CursorError, FeedEvent, FeedHub, decode_cursor,
                              encode_cursor)
from streams.platform.security import kafka_client_kwargs, redis_client_kwargs
from streams.platform.settings import Settings
from streams.platform.topics import TopicNames, topic_names
from streams.platform.event_writer import EventWriter
from streams.serving.api.insights import (InsightRefused, history_args, scope_of, tag_history,
                                          tag_insight)
from streams.serving.api.marking import MarkRefused, mark_member_tag, parse_request
from streams.serving.api.openapi import openapi_bytes
from streams.serving.api.tasks import (TaskRefused, guide_insights, mark_task_done,
                                       parse_done_request, windows_ending)
from streams.serving.insight_counts import InsightCounts
from streams.serving.redis_store import MAX_PAGE, RedisProfileStore
from streams.serving.task_store import LISTS as TASK_LISTS, OPEN as TASK_OPEN, CursorInvalid
from streams.serving.wecom.callback_endpoint import WecomCallback, callback_from_settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The WeCom callback carries no bearer token: WeCom signs and encrypts it instead.
PUBLIC_ROUTES = {"page", "operator_page", "static", "openapi", "wecom_callback"}
FEED_ROUTES = {"feed", "guide_feed"}
HEARTBEAT_S = 15.0
SSE_RETRY_MS = 2000
DEFAULT_PAGE = 50

STORE: web.AppKey[RedisProfileStore] = web.AppKey("store", RedisProfileStore)
HUB: web.AppKey[FeedHub] = web.AppKey("hub", FeedHub)
TOKENS: web.AppKey[TokenMap] = web.AppKey("tokens", TokenMap)
CATALOGUE: web.AppKey[bytes] = web.AppKey("catalogue", bytes)
PACK: web.AppKey[Any] = web.AppKey("pack", object)
EVENTS: web.AppKey[EventWriter] = web.AppKey("events", EventWriter)
CALLBACK: web.AppKey[Any] = web.AppKey("wecom_callback", object)  # None: not configured
HEARTBEAT: web.AppKey[float] = web.AppKey("heartbeat", float)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock", object)  # epoch seconds, now
PRINCIPAL: Any = (web.RequestKey("principal", Principal) if hasattr(web, "RequestKey")
                  else "principal")  # RequestKey is aiohttp >= 3.12

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
PAGE_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
}


def _error(cls: type[web.HTTPException], code: str, message: str,
           headers: dict[str, str] | None = None) -> web.HTTPException:
    return cls(body=encode_body(ApiError(error=code, message=message)),
               content_type="application/json", headers={**SECURITY_HEADERS, **(headers or {})})


class _TooLarge(web.HTTPClientError):
    """413 with our JSON error body (aiohttp's own needs the sizes and writes text)."""

    status_code = 413


def _json(data: Any, status: int = 200) -> web.Response:
    """`data` is a model of schemas/ or, for profiles read back from Redis, their dicts."""
    body = encode_body(data) if isinstance(data, msgspec.Struct) else orjson.dumps(data)
    return web.Response(body=body, status=status, content_type="application/json",
                        headers=SECURITY_HEADERS)


# --- middleware ----------------------------------------------------------------------------------


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by route template and status (never by raw path: bounded labels)."""
    route = request.match_info.route
    template = route.resource.canonical if route.resource is not None else "unmatched"
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.API_REQUESTS.labels(template, request.method, str(status)).inc()
        if route.name not in FEED_ROUTES:
            metrics.API_REQUEST_SECONDS.labels(template).observe(time.perf_counter() - started)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route
    if route.name in PUBLIC_ROUTES or route.resource is None:
        return await handler(request)
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise _error(web.HTTPUnauthorized, "unauthorized",
                     "send Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
    principal = request.app[TOKENS].principal(token)
    if principal is None:
        raise _error(web.HTTPUnauthorized, "invalid_token", "this token is not valid",
                     {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    request[PRINCIPAL] = principal
    return await handler(request)


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def _require_guide(request: web.Request, guide: str) -> None:
    if not _principal(request).may_see_guide(guide):
        raise _error(web.HTTPForbidden, "forbidden", "a guide sees only their own members")


# --- routes ------------------------------------------------------------------------------------


async def page(request: web.Request) -> web.StreamResponse:
    return _html_page("index.html")


async def operator_page(request: web.Request) -> web.StreamResponse:
    return _html_page("operator.html")


def _html_page(name: str) -> web.Response:
    return web.Response(body=_page_html(name), content_type="text/html", charset="utf-8",
                        headers=PAGE_HEADERS)


@functools.lru_cache(maxsize=None)
def _page_html(name: str) -> bytes:
    """A page with the shared sign-in form (static/sign-in.html) where it says so."""
    form = (STATIC_DIR / "sign-in.html").read_text(encoding="utf-8")
    form = form[form.index("-->") + 3:].lstrip("\n")  # without its own comment
    page_text = (STATIC_DIR / name).read_text(encoding="utf-8")
    return page_text.replace("    <!-- sign-in -->\n", form).encode()


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    # Only the files shipped in static/ (no subfolders, no path tricks).
    if name not in _static_files():
        raise _error(web.HTTPNotFound, "not_found", "no such file")
    return web.FileResponse(STATIC_DIR / name, headers=PAGE_HEADERS)


def _static_files() -> set[str]:
    return {p.name for p in STATIC_DIR.iterdir() if p.is_file()}


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_bytes(), content_type="application/json",
                        headers=SECURITY_HEADERS)


async def me(request: web.Request) -> web.Response:
    principal = _principal(request)
    return _json(Me(guide=principal.guide, operator=principal.operator))


async def tags(request: web.Request) -> web.Response:
    return web.Response(body=request.app[CATALOGUE], content_type="application/json",
                        headers=SECURITY_HEADERS)


async def member(request: web.Request) -> web.Response:
    principal = _principal(request)
    profile = await request.app[STORE].get_profile(request.match_info["member_id"])
    if profile is None:
        if principal.operator:
            raise _error(web.HTTPNotFound, "not_found", "no such member")
        # A guide learns nothing about members who are not theirs, not even that they exist.
        raise _error(web.HTTPForbidden, "forbidden", "this member is not bound to you")
    if not principal.may_see_member(profile):
        raise _error(web.HTTPForbidden, "forbidden", "this member is not bound to you")
    return _json(profile)


def _page_args(request: web.Request) -> tuple[str | None, int]:
    cursor = request.query.get("cursor") or None
    raw = request.query.get("limit", str(DEFAULT_PAGE))
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise _error(web.HTTPBadRequest, "bad_request", f"limit must be 1..{MAX_PAGE}")
    return cursor, limit


async def _members_page(request: web.Request, guide: str | None, tag: str | None,
                        extra: dict[str, Any]) -> web.Response:
    cursor, limit = _page_args(request)
    store = request.app[STORE]
    page_ = await store.members_for(guide, tag, cursor, limit)
    profiles = [p for p in await store.get_profiles(page_.member_ids) if p is not None]
    return _json({**extra, "members": profiles, "next_cursor": page_.next_cursor})


async def guide_members(request: web.Request) -> web.Response:
    guide = request.match_info["guide"]
    _require_guide(request, guide)
    tag = request.query.get("tag") or None
    return await _members_page(request, guide, tag, {"guide": guide, "tag": tag})


async def tag_members(request: web.Request) -> web.Response:
    if not _principal(request).operator:
        raise _error(web.HTTPForbidden, "forbidden", "audiences across guides are for operators")
    tag = request.match_info["tag"]
    return await _members_page(request, None, tag, {"tag": tag})


async def mark_tag(request: web.Request) -> web.Response:
    """A guide marks or unmarks a tag on their member (an operator on anyone): 202."""
    try:
        accepted = await mark_member_tag(
            _principal(request), request.match_info["member_id"],
            parse_request(await request.read()), pack=request.app[PACK],
            profiles=request.app[STORE], events=request.app[EVENTS])
    except MarkRefused as exc:
        status = {400: web.HTTPBadRequest, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
                  413: _TooLarge}[exc.status]
        raise _error(status, exc.code, exc.message) from None
    return _json(accepted, status=202)


# --- guide tasks (客户SOP) -----------------------------------------------------------------------


def _task_refused(exc: TaskRefused) -> web.HTTPException:
    status = {400: web.HTTPBadRequest, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
              409: web.HTTPConflict, 413: _TooLarge}[exc.status]
    return _error(status, exc.code, exc.message)


async def guide_tasks(request: web.Request) -> web.Response:
    """The guide's to-do list (status=open, the default: earliest due first) or their closed
    tasks of one status, or all closed (newest first)."""
    guide = request.match_info["guide"]
    _require_guide(request, guide)
    status = request.query.get("status") or TASK_OPEN
    if status not in TASK_LISTS:
        raise _error(web.HTTPBadRequest, "bad_request",
                     f"status must be one of {', '.join(TASK_LISTS)}")
    cursor, limit = _page_args(request)
    try:
        page_ = await request.app[STORE].tasks.page(guide, status, cursor, limit)
    except CursorInvalid as exc:
        raise _error(web.HTTPBadRequest, "bad_request", str(exc)) from None
    return _json({"guide": guide, "status": status, "tasks": page_.tasks,
                  "next_cursor": page_.next_cursor})


async def task_done(request: web.Request) -> web.Response:
    """A guide marks their open task done (an operator any guide's): 202."""
    try:
        accepted = await mark_task_done(
            _principal(request), request.match_info["guide"], request.match_info["task_id"],
            parse_done_request(await request.read()), tasks=request.app[STORE].tasks,
            events=request.app[EVENTS])
    except TaskRefused as exc:
        raise _task_refused(exc) from None
    return _json(accepted, status=202)


async def task_insights(request: web.Request) -> web.Response:
    """Task completion and conversion per guide over 7 and 30 days; a guide sees only their
    own, an operator one guide (`guide`) or every guide with tasks."""
    principal = _principal(request)
    guide = request.query.get("guide") or principal.guide
    if guide is not None:
        _require_guide(request, guide)
    at = _instant(request.query.get("at"), request.app[CLOCK])
    tasks = request.app[STORE].tasks
    guides = [guide] if guide is not None else await tasks.guides()
    counts = await tasks.window_counts(guides, windows_ending(at))
    tz = request.app[PACK].calendar.tz
    return _json(TaskInsights(at=at.astimezone(tz).isoformat(),
                              guides=[guide_insights(g, at, counts[g], tz) for g in guides]))


def _instant(raw: str | None, clock: Callable[[], float]) -> datetime:
    """`at` (RFC 3339 with an offset), or now."""
    if not raw:
        return datetime.fromtimestamp(clock(), timezone.utc)
    if "T" in raw:  # an offset's "+" sent unencoded arrives as a space
        raw = raw.replace(" ", "+")
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise _error(web.HTTPBadRequest, "bad_request",
                     "at must be a timestamp with an offset, e.g. 2024-03-01T12:00:00+08:00")
    return at


async def wecom_callback(request: web.Request) -> web.Response:
    callback: WecomCallback | None = request.app[CALLBACK]
    if callback is None:
        raise _error(web.HTTPNotFound, "not_found", "the WeCom callback is not configured "
                     "(TAGSTREAM_WECOM_CALLBACK_TOKEN, TAGSTREAM_WECOM_CALLBACK_AES_KEY)")
    status, text = await callback.handle(request.method, request.query,
                                         await request.read())
    return web.Response(status=status, text=text, content_type="text/plain",
                        headers=SECURITY_HEADERS)


def _refused(exc: InsightRefused) -> web.HTTPException:
    status = {400: web.HTTPBadRequest, 403: web.HTTPForbidden}[exc.status]
    return _error(status, exc.code, exc.message)


async def insight_tags(request: web.Request) -> web.Response:
    """Members per tag, tier, lifecycle stage and RFM cell: of a guide, or of everyone."""
    principal = _principal(request)
    try:
        guide = scope_of(principal, request.query)
    except InsightRefused as exc:
        raise _refused(exc) from None
    store, pack = request.app[STORE], request.app[PACK]
    counts = InsightCounts(store.redis, store.prefix)
    guides = await counts.guide_members() if guide is None else None
    as_of = pack.calendar.render(int(request.app[CLOCK]()))
    return _json(tag_insight(pack, await counts.counts(guide), guide, as_of, guides))


async def insight_tag_history(request: web.Request) -> web.Response:
    """Daily snapshots of some tags' member counts, oldest first."""
    try:
        guide = scope_of(_principal(request), request.query)
        tags_, days = history_args(request.query)
    except InsightRefused as exc:
        raise _refused(exc) from None
    store = request.app[STORE]
    return _json(await tag_history(request.app[PACK], InsightCounts(store.redis, store.prefix),
                                   guide, tags_, days, request.app[CLOCK]()))


async def prometheus(request: web.Request) -> web.Response:
    if not _principal(request).operator:
        raise _error(web.HTTPForbidden, "forbidden", "metrics are for operator tokens")
    body, content_type = metrics.render_metrics()
    response = web.Response(body=body, headers=SECURITY_HEADERS)
    response.headers["Content-Type"] = content_type
    return response


# --- the feed ----------------------------------------------------------------------------------


def _sse(cursor_text: str, event: FeedEvent | None) -> bytes:
    if event is None:  # an id-only block moves the client's Last-Event-ID; no event fires
        return b"id: " + cursor_text.encode() + b"\n\n"
    return (b"id: " + cursor_text.encode() + b"\nevent: " + event.kind.encode()
            + b"\ndata: " + event.data + b"\n\n")


async def guide_feed(request: web.Request) -> web.StreamResponse:
    guide = request.match_info["guide"]
    _require_guide(request, guide)
    return await _feed(request, guide)


async def feed(request: web.Request) -> web.StreamResponse:
    """The caller's own feed: a guide's members, or everything for an operator."""
    return await _feed(request, _principal(request).guide)


async def _feed(request: web.Request, guide: str | None) -> web.StreamResponse:
    hub = request.app[HUB]
    resume = None
    last_id = request.headers.get("Last-Event-ID", "").strip()
    if last_id:
        try:
            resume = decode_cursor(last_id, hub.names)
        except CursorError as exc:
            raise _error(web.HTTPBadRequest, "bad_request", str(exc)) from None
    try:
        await asyncio.wait_for(hub.ready.wait(), 10)
    except asyncio.TimeoutError:
        raise _error(web.HTTPServiceUnavailable, "unavailable", "the broker is not reachable yet",
                     {"Retry-After": "5"}) from None

    start = hub.subscribe(guide, resume)
    sub = start.subscription
    metrics.SSE_CLIENTS.inc()
    response = web.StreamResponse(headers={
        **SECURITY_HEADERS, "Content-Type": "text/event-stream; charset=utf-8",
        "X-Accel-Buffering": "no"})
    try:
        await response.prepare(request)
        await response.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
        cursor = dict(start.cursor)
        if start.catch_up:
            async for tp, next_offset, event in hub.read_range(guide, start.catch_up):
                cursor[tp] = next_offset
                if event is not None:
                    await _send(response, [event], cursor, hub.names)
        for event in start.backlog:
            cursor[event.tp] = event.offset + 1
            await _send(response, [event], cursor, hub.names)
        _advance(cursor, start.snapshot)
        await response.write(_sse(encode_cursor(cursor, hub.names), None))
        heartbeat = request.app[HEARTBEAT]
        while not sub.closed:
            try:
                first = await asyncio.wait_for(sub.queue.get(), heartbeat)
            except asyncio.TimeoutError:
                _advance(cursor, hub.positions)  # the queue is empty: all before is handled
                keepalive = _sse(encode_cursor(cursor, hub.names), None)
                await response.write(b": keepalive\n" + keepalive)
                continue
            events = [first] if first is not None else []
            while not sub.queue.empty() and len(events) < 200:
                item = sub.queue.get_nowait()
                if item is not None:
                    events.append(item)
            if events:
                await _send(response, events, cursor, hub.names,
                            hub.positions if sub.queue.empty() else None)
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away; it resumes with its Last-Event-ID
    finally:
        hub.unsubscribe(sub)
        metrics.SSE_CLIENTS.dec()
    return response


def _advance(cursor: dict, positions: dict) -> None:
    for tp, offset in positions.items():
        if offset > cursor.get(tp, -1):
            cursor[tp] = offset


async def _send(response: web.StreamResponse, events: list[FeedEvent], cursor: dict,
                names: TopicNames, then: dict | None = None) -> None:
    chunks = []
    for i, event in enumerate(events):
        cursor[event.tp] = max(cursor.get(event.tp, 0), event.offset + 1)
        if then is not None and i == len(events) - 1:
            _advance(cursor, then)  # nothing else is queued: the cursor passes filtered changes
        chunks.append(_sse(encode_cursor(cursor, names), event))
        metrics.SSE_EVENTS_SENT.labels(event.kind).inc()
    await response.write(b"".join(chunks))


# --- assembly ----------------------------------------------------------------------------------


def tag_catalogue(pack: Any) -> bytes:
    """Display names of the tags of the rule pack: what the page shows instead of ids; the
    marked tags are the ones a guide can set."""
    return encode_body(TagCatalogue(rules_version=pack.version, tags=[
        *(CatalogueTag(id=rule.id, name_zh=rule.name_zh, family=rule.family,
                       group=getattr(rule, "group", None)) for rule in pack.tags),
        *(CatalogueTag(id=tag.id, name_zh=tag.name_zh, family="marked", group=None,
                       share=tag.share) for tag in pack.marked.values())]))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", page, name="page")
    app.router.add_get("/static/{name}", static, name="static")
    app.router.add_get("/openapi.json", openapi, name="openapi")
    app.router.add_get("/me", me, name="me")
    app.router.add_get("/tags", tags, name="tags")
    app.router.add_get("/members/{member_id}", member, name="member")
    app.router.add_post("/members/{member_id}/tags", mark_tag, name="mark_tag")
    callback = app.router.add_resource("/wecom/callback", name="wecom_callback")
    callback.add_route("GET", wecom_callback)  # WeCom's URL verification
    callback.add_route("POST", wecom_callback)  # WeCom's event pushes
    app.router.add_get("/guides/{guide}/members", guide_members, name="guide_members")
    app.router.add_get("/guides/{guide}/feed", guide_feed, name="guide_feed")
    app.router.add_get("/guides/{guide}/tasks", guide_tasks, name="guide_tasks")
    app.router.add_post("/guides/{guide}/tasks/{task_id}/done", task_done, name="task_done")
    app.router.add_get("/insights/tasks", task_insights, name="task_insights")
    app.router.add_get("/feed", feed, name="feed")
    app.router.add_get("/tags/{tag}/members", tag_members, name="tag_members")
    app.router.add_get("/metrics", prometheus, name="metrics")
    app.router.add_get("/operator", operator_page, name="operator_page")
    app.router.add_get("/insights/tags", insight_tags, name="insight_tags")
    app.router.add_get("/insights/tags/history", insight_tag_history, name="insight_tag_history")


def create_app(settings: Settings, *, heartbeat_s: float = HEARTBEAT_S,
               feed_buffer: int = BUFFER_PER_PARTITION,
               clock: Callable[[], float] = time.time) -> web.Application:
    """The API for `settings`; Redis and the Kafka tail start with the app, not before.
    `clock` (epoch seconds) dates the insight answers."""
    app = web.Application(middlewares=[observe, authenticate])
    from taggers.rules import load_rules

    app[TOKENS] = parse_tokens(settings.api_tokens)
    app[PACK] = load_rules(settings.rules_path)
    app[CATALOGUE] = tag_catalogue(app[PACK])
    app[HEARTBEAT] = heartbeat_s
    app[CLOCK] = clock
    app[STORE] = RedisProfileStore(settings.redis_url, connection=redis_client_kwargs(settings))
    app[HUB] = FeedHub(settings.broker_bootstrap, names=topic_names(settings),
                       buffer_per_partition=feed_buffer,
                       kafka_options=kafka_client_kwargs(settings))
    app[EVENTS] = EventWriter(settings.broker_bootstrap, settings.partitions,
                              topic_names(settings), kafka_client_kwargs(settings))
    app[CALLBACK] = callback_from_settings(settings, app[PACK], app[STORE], app[EVENTS])
    add_routes(app)

    async def lifecycle(app: web.Application) -> Any:
        await app[STORE].start()
        await app[HUB].start()
        await app[EVENTS].start()
        if app[CALLBACK] is not None:
            await app[CALLBACK].start()
        yield
        if app[CALLBACK] is not None:
            await app[CALLBACK].stop()
        await app[EVENTS].stop()
        await app[HUB].stop()
        await app[STORE].stop()

    async def close_feeds(app: web.Application) -> None:
        app[HUB].close_feeds()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_feeds)
    return app


def run_api(settings: Settings) -> None:
    app = create_app(settings)
    if not len(app[TOKENS]):
        log.warning("TAGSTREAM_API_TOKENS is empty: every data request will be refused")
    web.run_app(app, host=settings.api_host, port=settings.api_port, print=None,
                access_log_format='%a "%r" %s %b %Tfs')
