"""Export the event models as JSON Schema files, one per source topic, for upstream producers.

Producers in Java, Go or Node validate against `schemas/jsonschema/<family>.schema.json` before
they publish. The files are generated from the models in `schemas.events`, never hand-edited, and
checked in; `python -m schemas.export --check` (and the unit tests) fail when a model changed
without a re-export.

    python -m schemas.export            # (re)write the files
    python -m schemas.export --check    # exit 1 and list the stale files
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import msgspec

from schemas.events import FAMILY_BY_TOPIC, MAX_EVENT_BYTES

SCHEMA_DIR = Path(__file__).resolve().parent / "jsonschema"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

# What msgspec's generated schema cannot say, or says too quietly, for the producer reading it.
OCCURRED_AT = (
    "Event time, RFC 3339 with a UTC offset, e.g. \"2024-03-01T12:00:00+08:00\" or "
    "\"2024-03-01T04:00:00Z\". A timestamp without an offset (\"2024-03-01T12:00:00\") is "
    "rejected: event time drives every window and rule, so it must be unambiguous. "
    "`format: date-time` cannot require the offset (and most validators do not check formats "
    "by default), so a validator may pass a naive timestamp that tagstream rejects."
)
FEN = (
    "Money in integer fen (分; 100 fen = 1 yuan), e.g. 12800 for 128.00 yuan. Send an integer "
    "literal: tagstream rejects 100.0, \"100\" and booleans. JSON Schema counts 100.0 as an "
    "integer, so a validator will not catch that one."
)
EVENT_ID = (
    "Unique per event and stable across retries: the idempotency key, so a redelivered event "
    "changes nothing."
)


def schema_file_name(topic: str) -> str:
    """`events.orders` -> `orders.schema.json`."""
    return f"{topic.split('.', 1)[-1]}.schema.json"


def topic_schema(topic: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of every event a producer may publish to `topic`."""
    schema = msgspec.json.schema(FAMILY_BY_TOPIC[topic])
    for definition in schema.get("$defs", {}).values():
        _describe_properties(definition.get("properties", {}))
    versions = sorted(_schema_versions(schema))
    schema.update({
        "$schema": DRAFT,
        "$comment": "Generated from schemas/events.py by `python -m schemas.export`; do not edit.",
        "$id": f"urn:tagstream:schema:{topic}:v{versions[-1]}",
        "title": f"tagstream events on the Kafka topic {topic}",
        "description": (
            f"One event per Kafka message on the topic `{topic}`: a JSON object, UTF-8, at most "
            f"{MAX_EVENT_BYTES} bytes, ideally keyed by member_id. `event_type` selects the shape. "
            "`occurred_at` must carry a UTC offset (a naive timestamp is rejected; JSON Schema's "
            "date-time format cannot express that, so validators may not catch it). Money fields "
            "(`*_fen`) are integer fen (分), never floats: 100.0 is rejected, although JSON "
            "Schema calls it an integer. Unknown extra fields are ignored, so "
            "producers may add fields before tagstream uses them. An event that does not match is "
            "not processed: it goes to the topic `events.deadletter` with the reason."
        ),
    })
    return schema


def _describe_properties(properties: dict[str, Any]) -> None:
    for name, prop in properties.items():
        if name == "occurred_at":
            prop["description"] = OCCURRED_AT
        elif name.endswith("_fen"):
            prop["description"] = FEN
        elif name == "event_id":
            prop["description"] = EVENT_ID


def _schema_versions(schema: dict[str, Any]) -> set[int]:
    return {
        version
        for definition in schema.get("$defs", {}).values()
        for version in definition.get("properties", {}).get("schema_version", {}).get("enum", ())
    }


def render(schema: dict[str, Any]) -> str:
    """Deterministic text: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered_files() -> dict[str, str]:
    """File name -> content, for every source topic."""
    return {schema_file_name(topic): render(topic_schema(topic)) for topic in FAMILY_BY_TOPIC}


def stale_files(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Files that are missing or differ from a fresh export."""
    stale = []
    for name, text in rendered_files().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(path)
    return stale


def write_files(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every file that is stale; return the ones written."""
    directory.mkdir(parents=True, exist_ok=True)
    files = rendered_files()
    written = stale_files(directory)
    for path in written:
        path.write_text(files[path.name], encoding="utf-8", newline="\n")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m schemas.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if any file is missing or out of date")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help="output directory")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.dir)
        for path in stale:
            print(f"stale: {path} (run `python -m schemas.export`)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_files(args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
