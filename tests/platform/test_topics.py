"""Topic names and the topic namespace (TAGSTREAM_TOPIC_NAMESPACE): tests that share one broker
get topics of their own, and the empty namespace keeps the names DESIGN.md gives."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from schemas.decode import decode_event
from schemas.errors import EventRejected
from schemas.events import INTERACTIONS_TOPIC, ORDERS_TOPIC, SCANS_TOPIC
from streams.platform.settings import Settings, SettingsError
from streams.serving.api.feed import decode_cursor, encode_cursor
from streams.platform.topics import (
    ALL_TOPIC_NAMES,
    DEADLETTER_TOPIC,
    EVENT_TOPICS,
    REROUTE_TOPIC,
    TAG_CHANGES_TOPIC,
    TIER_CHANGES_TOPIC,
    TopicNames,
    declare_topics,
    members_changelog,
    topic_names,
    topic_partitions,
)
from tests.factories import raw_event

NAME_FIELDS = ("orders", "interactions", "scans", "deadletter", "tag_changes", "tier_changes",
               "reroute")
CANONICAL = dict(zip(NAME_FIELDS, ALL_TOPIC_NAMES))


def test_the_empty_namespace_gives_the_names_of_the_design():
    names = TopicNames.for_namespace("")
    assert {f: getattr(names, f) for f in NAME_FIELDS} == {
        "orders": "events.orders", "interactions": "events.interactions",
        "scans": "events.scans", "deadletter": "events.deadletter",
        "tag_changes": "tags.changes", "tier_changes": "tiers.changes",
        "reroute": "tagstream-events.reroute"}
    assert names.events == EVENT_TOPICS and names.all == ALL_TOPIC_NAMES
    assert topic_names(Settings()) == names  # the default: production and docker-compose


def test_the_canonical_constants_are_the_names_without_a_namespace():
    assert CANONICAL == {"orders": ORDERS_TOPIC, "interactions": INTERACTIONS_TOPIC,
                         "scans": SCANS_TOPIC, "deadletter": DEADLETTER_TOPIC,
                         "tag_changes": TAG_CHANGES_TOPIC, "tier_changes": TIER_CHANGES_TOPIC,
                         "reroute": REROUTE_TOPIC}


def test_a_namespace_goes_before_every_name():
    names = TopicNames.for_namespace("t1.")
    assert {f: getattr(names, f) for f in NAME_FIELDS} == {
        f: "t1." + canonical for f, canonical in CANONICAL.items()}
    assert names.events == ("t1.events.orders", "t1.events.interactions", "t1.events.scans")
    assert names.all == tuple("t1." + name for name in ALL_TOPIC_NAMES)


@pytest.mark.parametrize("first, second", [("t1.", "t2."), ("", "t1."), ("a", "b"),
                                           ("run-1_x", "run-1_y"), ("t1", "t1.")])
def test_two_namespaces_give_disjoint_names_for_every_topic(first, second):
    one, other = TopicNames.for_namespace(first), TopicNames.for_namespace(second)
    assert len(set(one.all)) == len(set(other.all)) == len(ALL_TOPIC_NAMES) == 10
    assert set(one.all).isdisjoint(other.all)


@pytest.mark.parametrize("namespace", ["", "t1.", "ci-4711_test."])
def test_the_canonical_name_round_trips(namespace):
    names = TopicNames.for_namespace(namespace)
    for field, canonical in CANONICAL.items():
        actual = getattr(names, field)
        assert names.canonical(actual) == canonical
        assert names.actual(canonical) == actual


def test_a_topic_of_another_namespace_has_no_canonical_name():
    names = TopicNames.for_namespace("t1.")
    for name in (*ALL_TOPIC_NAMES, *TopicNames.for_namespace("t2.").all, "t1.", "t1.other"):
        assert names.canonical(name) is None
    assert TopicNames.for_namespace("").canonical("t1.events.orders") is None


def test_settings_read_the_namespace_from_the_environment():
    settings = Settings.from_env({"TAGSTREAM_TOPIC_NAMESPACE": "ci-42."})
    assert settings.topic_namespace == "ci-42."
    assert topic_names(settings).orders == "ci-42.events.orders"
    assert settings.to_env()["TAGSTREAM_TOPIC_NAMESPACE"] == "ci-42."  # reaches a worker
    assert Settings.from_env({"TAGSTREAM_TOPIC_NAMESPACE": ""}).topic_namespace == ""
    assert Settings.from_env({"TAGSTREAM_TOPIC_NAMESPACE": "x" * 100}).topic_namespace == "x" * 100


@pytest.mark.parametrize("bad", ["t 1.", "t1/", "t1:", "ns,2", "名前.", "t1.\n", "*",
                                 "x" * 101])
def test_a_bad_namespace_is_a_settings_error_naming_the_variable(bad):
    with pytest.raises(SettingsError, match="TAGSTREAM_TOPIC_NAMESPACE"):
        Settings.from_env({"TAGSTREAM_TOPIC_NAMESPACE": bad})
    with pytest.raises(SettingsError, match="TAGSTREAM_TOPIC_NAMESPACE"):
        topic_names(dataclasses.replace(Settings(), topic_namespace=bad))


def test_topic_partitions_creates_the_namespaced_topics():
    names = TopicNames.for_namespace("t1.")
    assert topic_partitions(3, names) == {"t1." + name: 3 for name in ALL_TOPIC_NAMES}


def test_the_faust_topics_are_declared_with_the_namespaced_names():
    declared: list[tuple[str, ...]] = []

    class FakeApp:
        def topic(self, *topics: str, **_: Any) -> tuple[str, ...]:
            declared.append(topics)
            return topics

    names = TopicNames.for_namespace("t1.")
    topics = declare_topics(FakeApp(), 4, names)
    assert topics.inbound == (*names.events, names.reroute)
    assert (topics.reroute, topics.deadletter, topics.tag_changes, topics.tier_changes) == (
        (names.reroute,), (names.deadletter,), (names.tag_changes,), (names.tier_changes,))
    assert all(name.startswith("t1.") for topics in declared for name in topics)


def test_decode_is_by_canonical_family_and_a_reason_names_the_topics_on_the_broker():
    order = orjson.dumps(raw_event("order.paid", "2024-03-01T12:00:00+08:00", amount_fen=1))
    assert decode_event(order, ORDERS_TOPIC, namespace="t1.").event_type == "order.paid"
    with pytest.raises(EventRejected) as rejected:
        decode_event(order, SCANS_TOPIC, namespace="t1.")
    assert rejected.value.reason == ("event_type 'order.paid' belongs on topic "
                                     "'t1.events.orders', not 't1.events.scans'")


def test_a_feed_cursor_names_topics_by_their_canonical_code_in_any_namespace():
    plain, spaced = TopicNames.for_namespace(""), TopicNames.for_namespace("t1.")
    cursor = {TopicPartition("t1.tags.changes", 0): 812, TopicPartition("t1.tiers.changes", 1): 33}
    text = encode_cursor(cursor, spaced)
    assert text == "t0=812,r1=33"
    assert decode_cursor(text, spaced) == cursor
    assert decode_cursor(text, plain) == {TopicPartition("tags.changes", 0): 812,
                                          TopicPartition("tiers.changes", 1): 33}


def test_the_member_changelog_is_the_worker_tables_and_follows_the_app_id(tmp_path):
    # The Redis sink reads it by this name; Faust names it after the app id and the table.
    from streams.worker.main import build_worker

    settings = Settings(app_id="brand-a", data_dir=tmp_path)
    assert members_changelog(settings) == "brand-a-members-changelog"
    parts = build_worker(settings)
    assert parts.processor.changelog_topic == members_changelog(settings)
