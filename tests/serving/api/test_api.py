"""The guide API on the real broker and Redis: auth matrix, profiles, audiences, OpenAPI, metrics."""

from __future__ import annotations

import dataclasses
import logging

import aiohttp
import pytest
from aiohttp import web

from streams.platform.settings import Settings
from streams.serving.api.app import add_routes, create_app
from streams.serving.api.auth import TokenConfigError, parse_tokens
from streams.serving.api.openapi import build_openapi, openapi_bytes
from streams.serving.redis_store import RedisProfileStore
from tests.support.api import LI, OPERATOR, TOKENS, ZHANG, api_settings, bearer, running_api
from tests.support.kafka import create_topics
from tests.support.profiles import make_profile
from tests.support import REPO_ROOT

pytestmark = pytest.mark.e2e

ROOT = REPO_ROOT
DATA_ROUTES = ["/me", "/tags", "/members/M1", "/guides/zhang/members", "/guides/zhang/feed",
               "/feed", "/tags/member/members", "/metrics"]


@pytest.fixture
async def api(stack):
    settings = api_settings(stack)
    await create_topics(settings)
    async with RedisProfileStore(settings.redis_url) as store:
        await store.apply([
            make_profile("M1", tags=["member", "high_value"], guides=["zhang"]),
            make_profile("M2", tags=["member"], guides=["li"]),
            make_profile("M3", tags=["member", "repeat_buyer"], guides=["zhang", "li"]),
            *[make_profile(f"Z{i:02d}", tags=["member"], guides=["zhang"]) for i in range(5)],
        ])
    async with running_api(settings) as base, aiohttp.ClientSession(base) as session:
        yield session


async def status(session: aiohttp.ClientSession, path: str, token: str | None = None,
                 **headers: str) -> int:
    all_headers = {**(bearer(token) if token else {}), **headers}
    async with session.get(path, headers=all_headers) as response:
        if response.status >= 400:
            assert response.content_type == "application/json"
        return response.status


async def test_no_token_or_wrong_token_is_refused_everywhere(api):
    for path in DATA_ROUTES:
        assert await status(api, path) == 401, path
        assert await status(api, path, "not-a-configured-token-at-all") == 401, path
        assert await status(api, path, Authorization=f"Basic {ZHANG}") == 401, path
    async with api.get("/me") as response:
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_guide_sees_only_their_own_members(api):
    assert await status(api, "/members/M1", ZHANG) == 200
    assert await status(api, "/members/M3", ZHANG) == 200  # bound to both guides
    assert await status(api, "/members/M3", LI) == 200
    assert await status(api, "/members/M2", ZHANG) == 403
    assert await status(api, "/members/M1", LI) == 403
    assert await status(api, "/members/NOPE", ZHANG) == 403  # no existence oracle for guides
    assert await status(api, "/guides/li/members", ZHANG) == 403
    assert await status(api, "/guides/li/members?tag=member", ZHANG) == 403
    assert await status(api, "/guides/li/feed", ZHANG) == 403
    assert await status(api, "/tags/member/members", ZHANG) == 403
    assert await status(api, "/metrics", ZHANG) == 403


async def test_operator_sees_all(api):
    for path in ("/members/M1", "/members/M2", "/guides/li/members", "/guides/zhang/members",
                 "/tags/member/members", "/metrics"):
        assert await status(api, path, OPERATOR) == 200, path
    assert await status(api, "/members/NOPE", OPERATOR) == 404
    async with api.get("/me", headers=bearer(OPERATOR)) as response:
        assert await response.json() == {"guide": None, "operator": True}
    async with api.get("/me", headers=bearer(ZHANG)) as response:
        assert await response.json() == {"guide": "zhang", "operator": False}


async def test_public_routes_need_no_token_and_serve_only_shipped_files(api):
    for path in ("/", "/static/app.js", "/static/app.css", "/openapi.json"):
        assert await status(api, path) == 200, path
    assert await status(api, "/static/nope.js") == 404
    assert await status(api, "/static/..%2Fapp.py") == 404
    async with api.get("/") as response:
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]


async def test_profile_and_paged_audience(api):
    async with api.get("/members/M1", headers=bearer(ZHANG)) as response:
        profile = await response.json()
    assert profile == make_profile("M1", tags=["member", "high_value"], guides=["zhang"])

    seen, cursor = [], None
    while True:
        query = "tag=member&limit=3" + (f"&cursor={cursor}" if cursor else "")
        async with api.get(f"/guides/zhang/members?{query}", headers=bearer(ZHANG)) as response:
            assert response.status == 200
            page = await response.json()
        seen += [p["member_id"] for p in page["members"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["M1", "M3", "Z00", "Z01", "Z02", "Z03", "Z04"]

    async with api.get("/guides/zhang/members?tag=high_value", headers=bearer(ZHANG)) as response:
        assert [p["member_id"] for p in (await response.json())["members"]] == ["M1"]
    async with api.get("/tags/repeat_buyer/members", headers=bearer(OPERATOR)) as response:
        assert [p["member_id"] for p in (await response.json())["members"]] == ["M3"]
    for bad in ("0", "501", "x"):
        assert await status(api, f"/guides/zhang/members?limit={bad}", ZHANG) == 400


async def test_tag_catalogue_has_chinese_display_names(api):
    async with api.get("/tags", headers=bearer(ZHANG)) as response:
        catalogue = await response.json()
    names = {t["id"]: t["name_zh"] for t in catalogue["tags"]}
    assert names["member"] == "会员" and names["high_value"] == "高价值"


async def test_metrics_count_requests_by_route_and_status(api):
    await status(api, "/members/M2", ZHANG)
    await status(api, "/members/M1", ZHANG)
    async with api.get("/metrics", headers=bearer(OPERATOR)) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert ('tagstream_api_requests_total{method="GET",route="/members/{member_id}",'
            'status="403"}') in text
    assert ('tagstream_api_requests_total{method="GET",route="/members/{member_id}",'
            'status="200"}') in text
    assert "tagstream_api_sse_clients " in text
    for worker_metric in ("tagstream_events_processed_total", "tagstream_rule_fires_total",
                          "tagstream_tag_changes_total", "tagstream_consumer_lag",
                          "tagstream_events_deadlettered_total", "tagstream_wecom_calls_total"):
        assert f"# TYPE {worker_metric.removesuffix('_total')}" in text
    assert "M1" not in text and "zhang" not in text  # labels never carry members or guides


async def test_openapi_is_served_as_checked_in_and_documents_every_route(api):
    async with api.get("/openapi.json") as response:
        served = await response.read()
    assert served == openapi_bytes()
    assert served == (ROOT / "docs" / "openapi.json").read_bytes(), (
        "docs/openapi.json is stale: run `tagstream api --openapi > docs/openapi.json`")

    app = web.Application()
    add_routes(app)
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD"}
    documented = {(method, path) for path, ops in build_openapi()["paths"].items()
                  for method in ops}
    assert routes == documented


async def test_tokens_never_reach_logs_errors_or_settings_repr(stack, caplog):
    settings = api_settings(stack)
    await create_topics(settings)
    caplog.set_level(logging.DEBUG)
    async with running_api(settings) as base, aiohttp.ClientSession(base) as session:
        for token in (ZHANG, LI, OPERATOR, "wrong-token-that-is-long-enough"):
            for path in DATA_ROUTES[:4] + ["/members/M2", "/guides/li/feed"]:
                async with session.get(path, headers=bearer(token)) as response:
                    if response.content_type != "text/event-stream":  # feeds never end
                        assert token.encode() not in await response.read()
    text = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records) + caplog.text
    assert "GET /members/M2" in text  # the access log was captured
    for token in (ZHANG, LI, OPERATOR, "wrong-token-that-is-long-enough"):
        assert token not in text
        assert token not in repr(settings) and token not in str(settings)
    app = create_app(settings)
    assert all(t not in repr(app._state) for t in (ZHANG, LI, OPERATOR))  # noqa: SLF001


def test_token_config_errors_never_echo_the_token():
    secret = "a-secret-that-must-not-be-shown"
    for raw in (secret, f"{secret}=", f"=zhang,{secret}", "short=zhang",
                f"{secret}=zhang,{secret}=li"):
        with pytest.raises(TokenConfigError) as info:
            parse_tokens(raw)
        assert secret not in str(info.value) and "short" not in str(info.value)
    tokens = parse_tokens(TOKENS)
    assert len(tokens) == 3 and repr(tokens) == "TokenMap(3 tokens)"
    assert tokens.principal(OPERATOR).operator and tokens.principal(ZHANG).guide == "zhang"
    assert tokens.principal("nope") is None


def test_settings_read_api_variables(tmp_path):
    settings = Settings.from_env({"TAGSTREAM_API_PORT": "9123", "TAGSTREAM_API_TOKENS": TOKENS})
    assert settings.api_port == 9123 and settings.api_tokens == TOKENS
    assert ZHANG not in repr(dataclasses.replace(settings))
