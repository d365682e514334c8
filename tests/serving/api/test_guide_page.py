"""The guide page in a real browser: Debian's headless chromium, driven by Playwright.

Signs in with a guide token, sees a live tag change arrive from Kafka, opens the member's
profile with the evidence behind each tag in Chinese, and never puts the token in a URL.
The screenshot is kept at tmp_path/guide-page.png (its path is printed) for a person to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.platform.topics import topic_names
from streams.serving.redis_store import RedisProfileStore
from tests.support.api import ZHANG, api_settings, running_api
from tests.support.kafka import create_topics
from tests.support.profiles import make_profile

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync",
                 "--disable-quic"]


@pytest.fixture
async def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run ./dev test as root, or "
                    "apt-get install -y chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                   args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def test_guide_signs_in_sees_a_live_change_and_opens_the_evidence(stack, browser,
                                                                          tmp_path):
    settings = api_settings(stack)
    await create_topics(settings)
    profile = make_profile("M000123", tags=["member", "repeat_buyer", "high_value"],
                           guides=["zhang"], spend_fen=612000)
    async with RedisProfileStore(settings.redis_url) as store:
        await store.apply([profile, make_profile("M000777", tags=["member"], guides=["li"])])
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_bootstrap, acks="all")
    await producer.start()
    urls: list[str] = []
    async with running_api(settings) as base:
        page = await browser.new_page(viewport={"width": 1280, "height": 860}, locale="zh-CN")
        page.on("request", lambda request: urls.append(request.url))
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            await page.goto(base + "/")
            # A wrong token is refused on the page, with a message.
            await page.fill("#token", "this-is-not-a-valid-token")
            await page.click("#sign-in-button")
            await page.wait_for_selector("#sign-in-error:not([hidden])")
            assert "令牌无效" in await page.inner_text("#sign-in-error")

            await page.fill("#token", ZHANG)
            await page.click("#sign-in-button")
            await page.wait_for_selector("#workspace:not([hidden])")
            assert await page.inner_text("#who-name") == "导购 zhang"
            await page.wait_for_selector('#feed-status[data-state="live"]', timeout=15_000)

            change = {
                "change_id": "chg-browser-1", "member_id": "M000123", "tag": "high_value",
                "op": "added", "rule_id": "high_value", "rules_version": "2024-03-01.1",
                "cause": {"event_id": "ord-20240301-000123"},
                "evidence": {"spend_fen[365d]": 612000, "refund_fen[365d]": 0},
                "at": "2024-03-01T12:00:00+08:00",
                "guides": [{"userid": "zhang", "external_userid": "wmzhang"}],
                "name_zh": "高价值", "family": "transaction", "source": "rule"}
            other = {**change, "change_id": "chg-browser-2", "member_id": "M000777",
                     "guides": [{"userid": "li", "external_userid": "wmli"}]}
            tier = {"change_id": "tier-browser-1", "member_id": "M000123",
                    "type": "tier.upgraded", "from": "silver", "to": "gold", "growth": 6120,
                    "cause": {"event_id": "ord-20240301-000123"},
                    "at": "2024-03-01T12:00:05+08:00",
                    "guides": [{"userid": "zhang", "external_userid": "wmzhang"}]}
            names = topic_names(settings)
            for topic, record in ((names.tag_changes, other), (names.tag_changes, change),
                                  (names.tier_changes, tier)):
                await producer.send_and_wait(topic, key=record["member_id"].encode(),
                                             value=orjson.dumps(record))

            item = page.locator('li.change[data-change="chg-browser-1"]')
            await item.wait_for(timeout=15_000)
            text = await item.inner_text()
            assert "高价值" in text and "新增标签" in text and "来源：规则" in text
            assert "近365天消费金额 ¥6,120.00" in text
            await page.locator('li.change[data-change="tier-browser-1"]').wait_for(timeout=15_000)
            assert "等级升级" in await page.inner_text("#feed")
            assert await page.locator('li.change[data-change="chg-browser-2"]').count() == 0

            await item.locator("button.member-link").click()
            held = page.locator('#profile .held[data-tag="high_value"]')
            await held.wait_for()
            held_text = await held.inner_text()
            assert "高价值" in held_text and "近365天消费金额" in held_text
            assert "来源：规则" in held_text
            assert "¥6,120.00" in held_text
            profile_text = await page.inner_text("#profile")
            assert "复购客" in profile_text and "近365天支付订单：3 单" in profile_text
            assert "累计消费" in profile_text and "¥6,120.00" in profile_text
            assert "营销同意" in profile_text and "同意" in profile_text

            # Another guide's member: refused, and the page says so.
            await page.fill("#member-input", "M000777")
            await page.click("#lookup-form button")
            await page.wait_for_selector("#profile .error")
            assert "未绑定" in await page.inner_text("#profile")
            await page.fill("#member-input", "M000123")
            await page.click("#lookup-form button")
            await held.wait_for()

            shot = tmp_path / "guide-page.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            keep = Path("/tmp/tagstream-guide-page.png")
            try:
                shutil.copyfile(shot, keep)
            except OSError:
                pass
            assert errors == []
        finally:
            await page.close()
            await producer.stop()
    assert urls and all(ZHANG not in url for url in urls), "the token must never be in a URL"


async def test_page_is_served_with_a_strict_content_security_policy(stack):
    settings = api_settings(stack)
    await create_topics(settings)
    async with running_api(settings) as base, aiohttp.ClientSession(base) as session:
        async with session.get("/") as response:
            html = await response.text()
            policy = response.headers["Content-Security-Policy"]
    assert "<script src=\"/static/app.js\" defer>" in html and "http" not in html.split("<body")[0]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
