"""The checked-in JSON Schema files are a fresh export of the models, valid draft 2020-12, and
agree with decode_event on what a producer may send."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from schemas import export
from schemas.decode import decode_event
from schemas.errors import EventRejected
from schemas.events import EVENT_TYPES_BY_TOPIC, FAMILY_BY_TOPIC, TOPIC_BY_EVENT_TYPE

EXPECTED_FILES = {"orders.schema.json", "interactions.schema.json", "scans.schema.json"}

ITEM = {"sku": "MT-53-500", "category": "baijiu", "unit_price_fen": 149900, "quantity": 2}
REQUIRED_EXTRA: dict[str, dict[str, Any]] = {
    "order.paid": {"order_id": "T1", "amount_fen": 299800, "items": [ITEM]},
    "order.refunded": {"order_id": "T1", "amount_fen": 149900},
    "interaction.wecom_friend_added": {"guide_id": "zhangsan", "external_userid": "wmAbC"},
    "interaction.wecom_friend_removed": {"guide_id": "zhangsan", "external_userid": "wmAbC"},
    "interaction.consent_changed": {"marketing": False},
    "interaction.tag_marked": {"tag": "vip_banquet", "op": "added", "source": "guide",
                               "guide_id": "zhangsan"},
    "interaction.task_done": {"task_id": "0123456789abcdef0123456789abcdef",
                              "guide_id": "zhangsan"},
    "scan.verified": {"code_id": "C-1", "sku": "MT-53-500", "category": "baijiu"},
    "scan.cap_opened": {"code_id": "C-1", "sku": "MT-53-500", "category": "baijiu"},
}


def sample(event_type: str, **fields: Any) -> dict[str, Any]:
    body = {
        "event_id": "e-1", "event_type": event_type, "member_id": "M000123",
        "occurred_at": "2024-03-01T12:00:00+08:00", "channel": "tmall", "schema_version": 1,
        **copy.deepcopy(REQUIRED_EXTRA.get(event_type, {})),
    }
    body.update(fields)
    return body


def without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != field}


def load(topic: str) -> dict[str, Any]:
    return json.loads((export.SCHEMA_DIR / export.schema_file_name(topic)).read_text("utf-8"))


def draft_2020_12() -> Any:
    # jsonschema is a test dependency, imported here rather than at the top so that a machine
    # without it fails these tests loudly but still collects and runs every other test.
    from jsonschema import Draft202012Validator

    return Draft202012Validator


def validator(topic: str) -> Any:
    return draft_2020_12()(load(topic))


def decodes(body: Any, topic: str) -> bool:
    try:
        decode_event(json.dumps(body).encode(), topic)
    except EventRejected:
        return False
    return True


# --- the files are current -----------------------------------------------------------------

def test_checked_in_files_equal_a_fresh_export():
    stale = export.stale_files()
    assert not stale, (
        f"{[p.name for p in stale]} differ from the models: run `python -m schemas.export` "
        "and commit schemas/jsonschema/"
    )


def test_one_file_per_source_topic_and_no_others():
    assert {export.schema_file_name(t) for t in FAMILY_BY_TOPIC} == EXPECTED_FILES
    assert {p.name for p in export.SCHEMA_DIR.glob("*.json")} == EXPECTED_FILES


def test_output_is_deterministic_sorted_two_space_and_newline_terminated():
    first, second = export.rendered_files(), export.rendered_files()
    assert first == second
    for text in first.values():
        assert text.endswith("}\n") and not text.endswith("\n\n")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True,
                                  ensure_ascii=False) + "\n"


def test_check_mode_lists_missing_and_changed_files_and_write_fixes_them(tmp_path: Path, capsys):
    assert export.main(["--check", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("stale:") == 3

    assert export.main(["--dir", str(tmp_path)]) == 0
    assert export.main(["--check", "--dir", str(tmp_path)]) == 0

    scans = tmp_path / "scans.schema.json"
    scans.write_text(scans.read_text("utf-8").replace("code_id", "code"), encoding="utf-8")
    capsys.readouterr()
    assert export.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "scans.schema.json" in err and "orders.schema.json" not in err

    export.main(["--dir", str(tmp_path)])
    assert scans.read_text("utf-8") == export.rendered_files()["scans.schema.json"]


# --- the files are valid draft 2020-12 and say what a producer needs -----------------------

@pytest.mark.parametrize("topic", sorted(FAMILY_BY_TOPIC))
def test_file_is_valid_draft_2020_12_with_id_title_description(topic):
    from jsonschema.validators import validator_for  # see draft_2020_12()

    schema = load(topic)

    draft_2020_12().check_schema(schema)
    assert validator_for(schema) is draft_2020_12()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:tagstream:schema:{topic}:v1"
    assert topic in schema["title"]
    assert f"`{topic}`" in schema["description"]
    assert "offset" in schema["description"] and "integer fen" in schema["description"]


@pytest.mark.parametrize("topic", sorted(FAMILY_BY_TOPIC))
def test_field_descriptions_warn_about_naive_timestamps_and_float_money(topic):
    for definition in load(topic)["$defs"].values():
        properties = definition["properties"]
        if "occurred_at" in properties:
            assert "without an offset" in properties["occurred_at"]["description"]
        for name, prop in properties.items():
            if name.endswith("_fen"):
                assert "integer fen" in prop["description"] and "100.0" in prop["description"]


@pytest.mark.parametrize("topic", sorted(FAMILY_BY_TOPIC))
def test_every_event_type_of_the_topic_is_in_its_schema(topic):
    schema = load(topic)
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES_BY_TOPIC[topic])


# --- the schema and the decoder agree ------------------------------------------------------

@pytest.mark.parametrize("event_type", sorted(TOPIC_BY_EVENT_TYPE))
def test_valid_event_passes_schema_and_decoder(event_type):
    topic = TOPIC_BY_EVENT_TYPE[event_type]
    body = sample(event_type, future_field={"anything": [1, 2]})

    assert list(validator(topic).iter_errors(body)) == []
    assert decodes(body, topic)


INVALID = [
    pytest.param("order.paid", without(sample("order.paid"), "order_id"), id="missing-field"),
    pytest.param("order.paid", without(sample("order.paid"), "event_type"), id="no-event_type"),
    pytest.param("order.paid", sample("order.shipped"), id="unknown-event_type"),
    pytest.param("order.paid", sample("scan.verified"), id="event_type-of-another-topic"),
    pytest.param("order.paid", sample("order.paid", amount_fen=-1), id="negative-money"),
    pytest.param("order.paid", sample("order.paid", amount_fen="100"), id="string-money"),
    pytest.param("order.paid", sample("order.paid", amount_fen=True), id="bool-money"),
    pytest.param("order.paid", sample("order.paid", amount_fen=99.5), id="fractional-money"),
    pytest.param("order.paid", sample("order.paid", items=[{**ITEM, "quantity": 0}]),
                 id="quantity-0"),
    pytest.param("order.paid", sample("order.paid", items=[{**ITEM, "spec": "sample"}]),
                 id="spec-unknown"),
    pytest.param("order.paid", sample("order.paid", event_id=""), id="event_id-empty"),
    pytest.param("order.paid", sample("order.paid", event_id="e" * 129), id="event_id-129"),
    pytest.param("order.paid", sample("order.paid", member_id="M 1"), id="member_id-space"),
    pytest.param("order.paid", sample("order.paid", member_id="M1\n"),
                 id="member_id-trailing-newline"),
    pytest.param("order.paid", sample("order.paid", schema_version=2), id="schema_version-2"),
    pytest.param("order.paid", sample("order.paid", occurred_at=1709265600),
                 id="timestamp-not-a-string"),
    pytest.param("interaction.profile_updated",
                 sample("interaction.profile_updated", birthday="13-01"), id="birthday-13-01"),
    pytest.param("scan.verified", sample("scan.verified", category="Baijiu"),
                 id="category-uppercase"),
    pytest.param("order.paid", [sample("order.paid")], id="array-not-object"),
]


@pytest.mark.parametrize(("event_type", "body"), INVALID)
def test_invalid_event_fails_schema_and_decoder(event_type, body):
    topic = TOPIC_BY_EVENT_TYPE[event_type]

    assert not validator(topic).is_valid(body)
    assert not decodes(body, topic)


# JSON Schema cannot say these; the descriptions do, and the decoder enforces them.
GAPS = [
    pytest.param("order.paid", {"amount_fen": 100.0}, id="whole-float-money"),
    pytest.param("order.paid", {"occurred_at": "2024-03-01T12:00:00"}, id="naive-timestamp"),
]


@pytest.mark.parametrize(("event_type", "change"), GAPS)
def test_what_json_schema_cannot_express_is_enforced_by_the_decoder(event_type, change):
    topic = TOPIC_BY_EVENT_TYPE[event_type]
    body = sample(event_type, **change)

    assert validator(topic).is_valid(body)  # if this starts failing, drop the gap note
    assert not decodes(body, topic)
