"""The Faust floor for `tagstream bench`: a Faust worker whose agent does nothing.

It reads the event topics the bench pre-produced, under its own app id (so its own consumer
group), with the worker's Faust settings and adjustments (streams/worker/app.py,
streams/worker/compat.py), acknowledges every message and does nothing else. Messages per second from the first
message to the last is the most any Faust agent can do on this broker and machine: the
ceiling on the pipeline's ratio to raw passthrough, measured in the same run.

With `--direct` the same worker's fetcher hands each message straight to a handler that
acknowledges it (streams/worker/compat.py, adjustment 6), as it hands the member agent its
messages: no stream takes part. That is Faust's fetch path alone, the cost per message the
pipeline still shares with every Faust worker; the agent above is the floor the ratio is
measured against.

Run as `python -m streams.tools.bench_floor MESSAGES REPORT [--direct]`: when MESSAGES have
been seen it writes `{"messages", "seconds"}` to REPORT and exits.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from streams.platform.settings import Settings
from streams.platform.topics import topic_names
from streams.worker import compat
from streams.worker.app import create_app
from streams.worker.main import quiet_worker


def build_floor_app(settings: Settings, messages: int, report: Path,
                    direct: bool = False) -> Any:
    app = create_app(settings)
    events = topic_names(settings).events
    topic = app.topic(*events, key_type=bytes, value_type=bytes)
    seen = {"count": 0, "first": 0.0}

    def count() -> None:
        if seen["count"] == 0:
            seen["first"] = time.perf_counter()
        seen["count"] += 1
        if seen["count"] == messages:
            written = report.with_suffix(".partial")
            written.write_bytes(orjson.dumps({
                "messages": messages, "seconds": time.perf_counter() - seen["first"]}))
            os.replace(written, report)  # the bench never reads half a report
            os._exit(0)  # measured; a clean Faust shutdown would only add seconds

    async def acknowledge(message: Any) -> None:
        app.consumer.ack(message)
        count()

    # The floor's agent subscribes the topics either way; handed directly, nothing reaches it.
    compat.hand_directly(events, acknowledge if direct else None)

    @app.agent(topic, name="floor")
    async def floor(stream: Any) -> None:
        manual = stream.noack()  # acknowledged one by one, as the member agent's are
        async for event in manual.events():
            await manual.ack(event)
            count()

    return app


def main(argv: list[str]) -> None:
    messages, report, direct = int(argv[0]), Path(argv[1]), argv[2:] == ["--direct"]
    settings = Settings.from_env()
    # the worker's Faust, adjusted as streams/worker/main.py run_worker does; the floor's agent
    # acknowledges outside compat.acknowledging, so none of its topics is guarded
    compat.install(agent_topics=(), fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms)
    settings.worker_data_dir.mkdir(parents=True, exist_ok=True)
    app = build_floor_app(settings, messages, report, direct)
    quiet_worker(app, settings.log_level).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
