"""Make docs/operator-page.png: the operator page over a few thousand generated members.

    .venv/bin/python -m tests.support.operator_screenshot [--members 3000] [--days 45]

Starts a private Kafka and Redis, runs a 400-day generated history through the engine, and
publishes what the worker would have published by each of the last `--days` midnights to the
profiles and tasks topics; the real Redis sink writes them, a snapshot is taken each midnight;
then headless chromium signs in as an operator and takes a full-page screenshot.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
from pathlib import Path

from streams.tools.stack import LocalStack
from tests.support import free_port, private_stack_settings
from tests.support.api import OPERATOR, TOKENS, running_api
from tests.support.insights import history_by_day, replay_days, running_sink
from tests.support.kafka import create_topics

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run", "--disable-sync"]


async def screenshot(members: int, days: int, out: Path, workdir: Path) -> None:
    settings = dataclasses.replace(private_stack_settings(workdir), api_tokens=TOKENS,
                                   api_port=free_port())
    with LocalStack(settings) as stack:
        stack.up(1)
        await create_topics(settings)
        async with running_sink(settings):
            # guides answer every third task, so the completion chart has something to show
            last = await replay_days(settings, history_by_day(members, 400, 15, days,
                                                              tasks_done_every=3))
        now = last.at + 9 * 3600
        from playwright.async_api import async_playwright

        async with running_api(settings, clock=lambda: now) as base, \
                async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 900},
                                          locale="zh-CN")
            await page.goto(base + "/operator")
            await page.fill("#token", OPERATOR)
            await page.click("#sign-in-button")
            await page.wait_for_selector("body[data-loaded]", timeout=30_000)
            await page.screenshot(path=str(out), full_page=True)
            await browser.close()
    print(f"{out}: {len(last.profiles)} members, {days} daily snapshots")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=3000)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--out", type=Path, default=Path("docs/operator-page.png"))
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(screenshot(options.members, options.days, options.out.resolve(),
                               Path(workdir)))


if __name__ == "__main__":
    main()
