"""The Faust floor for `tagstream bench`: a Faust worker whose agent does nothing.

It reads the event topics the bench pre-produced, under its own app id (so its own consumer
group), with the worker's Faust settings and adjustments (streams/worker/app.py,
streams/worker/compat.py), acknowledges every message and does nothing else. Messages per second from the first
message to the last is the most any Faust agent can do on this broker and machine: the
ceiling on the pipeline's ratio to raw passthrough, measured in the same run.

Run as `python -m streams.tools.bench_floor MESSAGES REPORT`: when MESSAGES have been seen it writes
`{"messages", "seconds"}` to REPORT and exits.
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


def build_floor_app(settings: Settings, messages: int, report: Path) -> Any:
    app = create_app(settings)
    topic = app.topic(*topic_names(settings).events, key_type=bytes, value_type=bytes)
    seen = {"count": 0, "first": 0.0}

    @app.agent(topic, name="floor")
    async def floor(stream: Any) -> None:
        manual = stream.noack()  # acknowledged one by one, as the member agent's are
        async for event in manual.events():
            if seen["count"] == 0:
                seen["first"] = time.perf_counter()
            seen["count"] += 1
            await manual.ack(event)
            if seen["count"] == messages:
                written = report.with_suffix(".partial")
                written.write_bytes(orjson.dumps({
                    "messages": messages, "seconds": time.perf_counter() - seen["first"]}))
                os.replace(written, report)  # the bench never reads half a report
                os._exit(0)  # measured; a clean Faust shutdown would only add seconds

    return app


def main(argv: list[str]) -> None:
    messages, report = int(argv[0]), Path(argv[1])
    settings = Settings.from_env()
    # the worker's Faust, adjusted as streams/worker/main.py run_worker does; the floor's agent
    # acknowledges outside compat.acknowledging, so none of its topics is guarded
    compat.install(agent_topics=(), fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms)
    settings.worker_data_dir.mkdir(parents=True, exist_ok=True)
    app = build_floor_app(settings, messages, report)
    quiet_worker(app, settings.log_level).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
