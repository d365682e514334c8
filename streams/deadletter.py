"""The dead-letter record: what could not be processed, why, and where it came from."""

from __future__ import annotations

import base64

import orjson

# A dead letter carries the original bytes; past this size only the head is kept (and the
# full size recorded) so the record itself stays under the broker's message limit.
MAX_RAW_BYTES = 512 * 1024


def dead_letter(error: str, topic: str, partition: int, offset: int,
                raw: bytes | None) -> bytes:
    raw = raw or b""
    record: dict[str, object] = {"error": error, "topic": topic, "partition": partition,
                                 "offset": offset, "raw_bytes": len(raw)}
    kept = raw[:MAX_RAW_BYTES]
    if len(raw) > MAX_RAW_BYTES:
        record["raw_truncated"] = True
    try:
        record["raw"] = kept.decode("utf-8")
        record["raw_encoding"] = "text"
    except UnicodeDecodeError:
        record["raw"] = base64.b64encode(kept).decode("ascii")
        record["raw_encoding"] = "base64"
    return orjson.dumps(record)
