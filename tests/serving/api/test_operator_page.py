"""The operator page (人群透视) in a real browser: Debian's headless chromium, driven by Playwright.

Six days of a generated history go through the production path (engine -> member changelog ->
the real Redis sink -> Redis, a snapshot each midnight); the page signs in with an operator
token, and every number its charts were drawn from equals a count over the last day's
profiles (or the history route, for the trend). The screenshot is kept at
tmp_path/operator-page.png and /tmp/tagstream-operator-page.png for a person to look at.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.serving.api.test_guide_page import browser  # noqa: F401  (the chromium fixture)
from tests.support.api import OPERATOR, api_settings, bearer, running_api
from tests.support.insights import held_counts, history_by_day, replay_days, running_sink
from tests.support.kafka import create_topics

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # ~10 s: six days through the sink, a browser

CJK_FONT = "Noto Sans CJK"
GUIDE_TOKEN = "operator-page-guide-token-0123456789"


def marks(selector: str) -> str:
    """JS: the (data-key, data-count) of every mark under `selector`, as an object."""
    return (f"() => Object.fromEntries([...document.querySelectorAll('{selector} [data-key]"
            f"[data-count]')].filter(e => e.tagName !== 'text').map(e => [e.dataset.key, "
            f"Number(e.dataset.count)]))")


def expected_group(counts: dict[str, int], prefix: str, tags: list[str]) -> dict[str, int]:
    return {t: counts.get(t, 0) for t in tags if t.startswith(prefix)}


async def read_charts(page: Any) -> dict[str, Any]:
    return {name: await page.evaluate(marks(f"#{name}-chart"))
            for name in ("tier", "funnel", "rfm", "tag")}


async def test_operator_page_draws_the_counts_of_the_members(stack, browser, tmp_path):  # noqa: F811
    fonts = subprocess.run(["fc-list"], capture_output=True, text=True).stdout
    if CJK_FONT not in fonts:
        pytest.fail("Noto CJK is missing, so the page's Chinese would be boxes: run ./dev test "
                    "as root, or apt-get install -y fonts-noto-cjk")
    settings = api_settings(stack)
    await create_topics(settings)
    async with running_sink(settings):
        last = await replay_days(settings, history_by_day(members=200, days=400, seed=15,
                                                          last_days=6))
    # A token for the first generated guide (by userid), besides the operator's.
    first_guide = min(g["userid"] for p in last.profiles for g in p["guides"])
    settings = dataclasses.replace(settings, api_tokens=f"{OPERATOR}=*,{GUIDE_TOKEN}={first_guide}")
    counts = held_counts(last.profiles)
    now = last.at + 9 * 3600  # 09:00 on the last day
    urls: list[str] = []
    errors: list[str] = []
    async with running_api(settings, clock=lambda: now) as base, \
            aiohttp.ClientSession(base) as session:
        async with session.get("/insights/tags", headers=bearer(OPERATOR)) as response:
            insight = await response.json()
        all_tags = [t["id"] for t in insight["tags"]]
        page = await browser.new_page(viewport={"width": 1280, "height": 900}, locale="zh-CN")
        page.on("request", lambda request: urls.append(request.url))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            await page.goto(base + "/operator")
            family = await page.evaluate("getComputedStyle(document.body).fontFamily")
            assert family.startswith('"Noto Sans CJK SC"') and "sans-serif" in family
            await page.fill("#token", OPERATOR)
            await page.click("#sign-in-button")
            await page.wait_for_selector("body[data-loaded]", timeout=15_000)
            assert await page.inner_text("#who-name") == "运营"

            charts = await read_charts(page)
            assert charts["tier"] == expected_group(counts, "tier_", all_tags)
            assert charts["funnel"] == expected_group(counts, "lc_", all_tags)
            assert charts["rfm"] == expected_group(counts, "rfm_", all_tags)
            assert charts["tag"] == {t: n for t, n in counts.items() if t != ":members"}
            assert int(await page.get_attribute("#total-members", "data-count")) == len(
                last.profiles)
            assert (await page.inner_text("#total-members")) == f"{len(last.profiles)}"
            assert list(charts["funnel"]) == ["lc_new", "lc_first", "lc_active", "lc_silent",
                                              "lc_lost"]

            # The trend: a dot per snapshot day and tag, as the history route answers; the
            # last day's snapshot holds the counts above.
            dots = await page.evaluate(
                "() => [...document.querySelectorAll('#trend-chart circle')].map(e => "
                "[e.dataset.key, e.dataset.date, Number(e.dataset.count)])")
            trend_tags = sorted({key for key, _, _ in dots})
            assert trend_tags == sorted(["member", "repeat_buyer", "high_value", "dormant_90d",
                                         "churn_risk"])
            query = "&".join(f"tag={t}" for t in trend_tags)
            async with session.get(f"/insights/tags/history?{query}&days=30",
                                   headers=bearer(OPERATOR)) as response:
                history = await response.json()
            served = sorted((s["tag"], d, n) for s in history["series"]
                            for d, n in zip(history["dates"], s["members"]) if n is not None)
            assert sorted((k, d, n) for k, d, n in dots) == served
            assert len(served) == 6 * len(trend_tags)
            assert {(k, n) for k, d, n in dots if d == history["dates"][-1]} == {
                (t, counts.get(t, 0)) for t in trend_tags}

            # Task completion per guide: bars when the tasks route answers, else a message.
            async with session.get("/insights/tasks", headers=bearer(OPERATOR)) as response:
                tasks = await response.json() if response.status == 200 else {"guides": []}
            rates = await page.evaluate(
                "() => Object.fromEntries([...document.querySelectorAll('#task-chart rect')]"
                ".map(e => [e.dataset.key, Number(e.dataset.rate)]))")
            expected_rates = {f"{g['guide']}:{w['days']}": w["completion_rate"] or 0
                              for g in tasks["guides"] for w in g["windows"]}
            assert rates == expected_rates
            if not expected_rates:
                assert await page.inner_text("#task-empty") == "暂无任务数据"

            # One guide's members: the same charts, counted over that guide's members only.
            guide = insight["guides"][0]["guide"]
            await page.select_option("#guide-select", guide)
            await page.wait_for_selector('body[data-loaded="2"]', timeout=15_000)
            mine = held_counts(last.profiles, guide)
            charts = await read_charts(page)
            assert charts["tier"] == expected_group(mine, "tier_", all_tags)
            assert charts["rfm"] == expected_group(mine, "rfm_", all_tags)
            assert charts["tag"] == {t: n for t, n in mine.items() if t != ":members"}

            await page.select_option("#guide-select", "")
            await page.wait_for_selector('body[data-loaded="3"]', timeout=15_000)
            shot = tmp_path / "operator-page.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            try:
                shutil.copyfile(shot, Path("/tmp/tagstream-operator-page.png"))
            except OSError:
                pass

            # A guide's token: the same page, scoped to that guide's members, no other scope.
            await page.click("#sign-out")
            await page.fill("#token", GUIDE_TOKEN)
            await page.click("#sign-in-button")
            await page.wait_for_selector('#who-name:has-text("导购")')
            await page.wait_for_selector("body[data-loaded]")
            await page.wait_for_function(
                f"() => document.querySelector('#total-members').dataset.count === "
                f"'{held_counts(last.profiles, first_guide)[':members']}'", timeout=15_000)
            assert await page.is_disabled("#guide-select")
            mine = held_counts(last.profiles, first_guide)
            charts = await read_charts(page)
            assert charts["tier"] == expected_group(mine, "tier_", all_tags)
            assert charts["tag"] == {t: n for t, n in mine.items() if t != ":members"}
            assert errors == []
        finally:
            await page.close()
    assert urls and all(OPERATOR not in url for url in urls), "the token must never be in a URL"
