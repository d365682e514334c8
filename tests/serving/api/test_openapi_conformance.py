"""Every JSON body the API serves matches the schema its OpenAPI document gives for that route
and status. The profiles are the worker's own: a dry run of a generated history rendered with
the default pack (tiers and points on), written to the real Redis, served by the real app."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from streams.platform.settings import DEFAULT_RULES
from streams.serving.api.openapi import build_openapi
from streams.serving.redis_store import RedisProfileStore
from streams.tools.generate import generate_events
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.profile import render_profile
from taggers.rules import load_rules
from tests.support.api import OPERATOR, bearer, running_api
from tests.support import free_port
from tests.support.kafka import create_topics

pytestmark = pytest.mark.e2e

DOCUMENT = build_openapi()
URI = "urn:tagstream:openapi"
REGISTRY = Registry().with_resource(URI, Resource.opaque(DOCUMENT))


def check(path_template: str, status: int, body: Any) -> None:
    """Validate `body` against the document's schema for GET `path_template` -> `status`."""
    response = DOCUMENT["paths"][path_template]["get"]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    ref = schema["$ref"].removeprefix("#")
    validator = Draft202012Validator({"$ref": f"{URI}#{ref}"}, registry=REGISTRY,
                                     format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(body)]
    assert not errors, f"GET {path_template} {status}: {errors[:5]}"


@pytest.fixture(scope="module")
def dry_profiles() -> list[dict[str, Any]]:
    lines = [orjson.dumps(e) for e in generate_events(members=120, days=400, seed=7)]
    pack = load_rules(DEFAULT_RULES)
    result = dry_run(Engine(pack), lines)
    return [msgspec.to_builtins(render_profile(s, pack)) for s in result.states.values()]


@pytest.fixture
async def served(stack, dry_profiles):
    guide = next(p["guides"][0]["userid"] for p in dry_profiles if p["guides"])
    guide_token = "conformance-guide-token-0123456789"
    settings = dataclasses.replace(stack, api_port=free_port(),
                                   api_tokens=f"{guide_token}={guide},{OPERATOR}=*")
    await create_topics(settings)
    async with RedisProfileStore(settings.redis_url) as store:
        await store.apply(dry_profiles)
    async with running_api(settings) as base, aiohttp.ClientSession(base) as session:
        yield session, guide, guide_token


async def get(session: aiohttp.ClientSession, path: str, token: str | None) -> tuple[int, Any]:
    async with session.get(path, headers=bearer(token) if token else {}) as response:
        return response.status, await response.json()


async def test_every_json_response_matches_the_openapi_document(served, dry_profiles):
    session, guide, guide_token = served
    assert any("tier" in p and p["points_lots"] for p in dry_profiles)  # loyalty fields present
    assert any(p["rfm"] for p in dry_profiles) and any(p["tags"] for p in dry_profiles)
    others = [p["member_id"] for p in dry_profiles
              if guide not in {g["userid"] for g in p["guides"]}]
    held = next(t["id"] for p in dry_profiles for t in p["tags"])
    checked = 0
    for template, path, token, expected in [
        ("/me", "/me", guide_token, 200),
        ("/me", "/me", OPERATOR, 200),
        ("/me", "/me", None, 401),
        ("/tags", "/tags", guide_token, 200),
        ("/members/{member_id}", f"/members/{others[0]}", guide_token, 403),
        ("/members/{member_id}", "/members/NO-SUCH-MEMBER", OPERATOR, 404),
        ("/guides/{guide}/members", f"/guides/{guide}/members", guide_token, 200),
        ("/guides/{guide}/members", f"/guides/{guide}/members?tag={held}", guide_token, 200),
        ("/guides/{guide}/members", f"/guides/{guide}/members?limit=0", guide_token, 400),
        ("/guides/{guide}/members", "/guides/someone-else/members", guide_token, 403),
        ("/tags/{tag}/members", f"/tags/{held}/members?limit=7", OPERATOR, 200),
        ("/tags/{tag}/members", f"/tags/{held}/members", guide_token, 403),
        ("/insights/tags", "/insights/tags", OPERATOR, 200),
        ("/insights/tags", "/insights/tags", guide_token, 200),
        ("/insights/tags", "/insights/tags?guide=someone-else", guide_token, 403),
        ("/insights/tags/history", f"/insights/tags/history?tag={held}&days=3", OPERATOR, 200),
        ("/insights/tags/history", "/insights/tags/history?days=3", OPERATOR, 400),
    ]:
        status, body = await get(session, path, token)
        assert status == expected, (path, body)
        check(template, status, body)
        checked += 1
    for profile in dry_profiles:
        status, body = await get(session, f"/members/{profile['member_id']}", OPERATOR)
        assert status == 200 and body == profile
        check("/members/{member_id}", 200, body)
        checked += 1
    assert checked == 17 + len(dry_profiles)


def test_the_check_rejects_a_profile_that_breaks_the_document(dry_profiles):
    """The validator is live: a wrong type and a missing required field both fail it."""
    profile = dict(dry_profiles[0])
    with pytest.raises(AssertionError, match="orders"):
        check("/members/{member_id}", 200, {**profile, "orders": "seven"})
    del profile["tags"]
    with pytest.raises(AssertionError, match="tags"):
        check("/members/{member_id}", 200, profile)
