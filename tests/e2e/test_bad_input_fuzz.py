"""Bad input fuzzed end to end: hypothesis-made hostile messages (tests/support/fuzz_events.py:
random bytes, payloads around the 256 KiB limit, deep JSON, wrong types, unknown fields,
Unicode edge cases, GBK bytes, timestamps at year 1 / 9999 with +14:00 / -12:00 offsets, wrong
topics and keys) go to the real broker while one worker runs.

The oracle is the worker's own pure path run offline (`expected_verdict`: decode with the topic
the message arrived on, then the engine's apply): every case it rejects must be in the dead-letter
topic at the case's coordinates with exactly that reason, every case it accepts must reach its
member's profile, nothing else may be dead-lettered, and the worker must survive it all.
So: produced = processed + dead-lettered, with nothing lost and nothing extra.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any, Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemas.events import MAX_EVENT_BYTES
from streams.platform.topics import TopicNames, members_changelog, topic_names
from taggers.engine import Engine
from taggers.rules import load_rules
from tests.support.fuzz_events import FuzzCase, Verdict, expected_verdict, fuzz_case
from tests.support.kafka import at_least, create_topics, never, read_topic, running_worker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# 20 batches x 100 cases = 2,000 messages, every kind of case many times over.
BATCHES = 20
CASES_PER_BATCH = 100


async def produce(bootstrap: str, names: TopicNames,
                  cases: list[FuzzCase]) -> list[tuple[str, int, int]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_request_size=4 * MAX_EVENT_BYTES)
    await producer.start()
    try:
        futures = [await producer.send(names.actual(case.topic), case.value, key=case.key)
                   for case in cases]
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.topic, m.partition, m.offset) for m in sent]


def keys_cover(members: set[str]) -> Callable[[list[Any]], bool]:
    missing = set(members)

    def enough(new: list[Any]) -> bool:
        for record in new:
            if record.key is not None:
                missing.discard(record.key.decode("utf-8", "replace"))
        return not missing

    return enough


def test_fuzzed_input_is_processed_or_dead_lettered_and_the_worker_survives(stack, tmp_path):
    engine = Engine(load_rules(stack.rules_path), stack.allowed_lateness_s)
    names = topic_names(stack)
    asyncio.run(create_topics(stack))
    sent: list[tuple[FuzzCase, Verdict, tuple[str, int, int], str]] = []
    batch_numbers = itertools.count()

    with running_worker(stack, tmp_path, name="fuzz-worker") as worker:

        @settings(max_examples=BATCHES, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def send_batch(data):
            run = f"b{next(batch_numbers)}"
            cases = [data.draw(fuzz_case(n, run), label=f"case {n}")
                     for n in range(CASES_PER_BATCH)]
            verdicts = [expected_verdict(case, engine, names.namespace) for case in cases]
            coordinates = asyncio.run(produce(stack.broker_bootstrap, names, cases))
            sent.extend((case, verdict, where, f"F{run}-{n}")
                        for n, (case, verdict, where) in enumerate(zip(cases, verdicts,
                                                                       coordinates)))

        send_batch()
        assert len(sent) == BATCHES * CASES_PER_BATCH
        rejected = {where: verdict.reason for _, verdict, where, _ in sent
                    if not verdict.accepted}
        accepted_members = {verdict.member_id for _, verdict, _, _ in sent if verdict.accepted}
        assert rejected and accepted_members  # the generator makes both kinds

        bootstrap = stack.broker_bootstrap
        asyncio.run(read_topic(bootstrap, names.deadletter, worker=worker, timeout=180,
                               until=at_least(len(rejected))))
        states = asyncio.run(read_topic(bootstrap, members_changelog(stack), worker=worker,
                                        timeout=180, until=keys_cover(accepted_members)))
        # everything is in by now; a last full read also catches dead letters beyond the count
        letters = asyncio.run(read_topic(bootstrap, names.deadletter, worker=worker, timeout=5,
                                         until=never()))
        assert worker.alive(), worker.log_tail(80)
    log = worker.log_path.read_text(errors="replace")

    kinds = Counter(case.kind for case, _, _, _ in sent)
    dead = {}
    for record in letters:
        letter = orjson.loads(record.value)
        dead[(letter["topic"], letter["partition"], letter["offset"])] = letter["error"]
    unexpected = {where: error for where, error in dead.items() if where not in rejected}
    missing = {where: reason for where, reason in rejected.items() if where not in dead}
    wrong_reason = {where: (reason, dead[where]) for where, reason in rejected.items()
                    if where in dead and dead[where] != reason}
    cases = {where: case for case, _, where, _ in sent}

    def show(found: dict) -> str:
        return "\n".join(f"{where} {cases[where].kind} key={cases[where].key!r} "
                         f"value={cases[where].value[:300]!r}: {detail}"
                         for where, detail in list(found.items())[:5] if where in cases)

    assert not missing, f"{len(missing)} rejected cases not dead-lettered:\n{show(missing)}"
    assert not unexpected, f"{len(unexpected)} valid cases dead-lettered:\n{show(unexpected)}"
    assert not wrong_reason, f"reasons differ from the offline path:\n{show(wrong_reason)}"

    profiled = {record.key.decode("utf-8", "replace") for record in states if record.key}
    assert accepted_members <= profiled
    never_applied = {member for _, verdict, _, member in sent if not verdict.accepted}
    assert not never_applied & profiled, "a rejected case changed a member's profile"

    processed = len(accepted_members)
    assert len(sent) == processed + len(dead), (len(sent), processed, len(dead))
    assert "internal error" not in log and "Traceback" not in log, log[-4000:]
    print(f"\nbad-input fuzz: {len(sent)} cases = {processed} processed + {len(dead)} "
          f"dead-lettered; by kind: {dict(sorted(kinds.items()))}")
