"""The dead-letter record: what could not be processed, why, and where it came from."""

from __future__ import annotations

import base64

import orjson

# A dead letter carries the original bytes; past this size only the head is kept (and the
# full size recorded) so the record itself stays under the broker's message limit.
MAX_RAW_BYTES = 512 * 1024
# The whole encoded record stays below this: Kafka's default message limit is ~1 MB, and a
# record the producer refuses would leave the message neither processed nor dead-lettered.
# Text is JSON-escaped, so control characters cost six bytes each (256 KiB of NUL bytes made a
# 1.5 MB record); past this size the raw bytes go as base64 instead (a third larger, bounded).
MAX_RECORD_BYTES = 900_000
MAX_ERROR_CHARS = 4_000


def dead_letter(error: str, topic: str, partition: int, offset: int,
                raw: bytes | None) -> bytes:
    raw = raw or b""
    if len(error) > MAX_ERROR_CHARS:
        error = error[:MAX_ERROR_CHARS] + "…"
    record: dict[str, object] = {"error": error, "topic": topic, "partition": partition,
                                 "offset": offset, "raw_bytes": len(raw)}
    kept = raw[:MAX_RAW_BYTES]
    if len(raw) > MAX_RAW_BYTES:
        record["raw_truncated"] = True
    try:
        record["raw"] = kept.decode("utf-8")
        record["raw_encoding"] = "text"
        encoded = orjson.dumps(record)
        if len(encoded) <= MAX_RECORD_BYTES:
            return encoded
    except UnicodeDecodeError:
        pass
    record["raw"] = base64.b64encode(kept).decode("ascii")
    record["raw_encoding"] = "base64"
    return orjson.dumps(record)
