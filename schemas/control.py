"""Control messages that share the event topics: the event-time watermark marker, and the
backfill marker (`tagstream backfill`: re-evaluate every member of the partition with the
current rules; empty body, on the re-route topic).

`tagstream replay` ends by writing one marker to every partition of every event topic, so each
partition's event-time clock reaches the last event's time and due timers fire, exactly as in
`tagstream dryrun` (DESIGN.md "Time"). A marker is recognised by its header, never by its body,
so a real event can never be mistaken for one.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas.errors import EventRejected

CONTROL_HEADER = "tagstream-control"
WATERMARK = b"watermark"
BACKFILL = b"backfill"


def encode_backfill() -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of a backfill marker."""
    return b"", [(CONTROL_HEADER, BACKFILL)]


class WatermarkMarker(msgspec.Struct, frozen=True, kw_only=True):
    watermark: datetime


_decoder = msgspec.json.Decoder(WatermarkMarker)


def encode_watermark(at: datetime) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of a watermark marker for `at` (timezone-aware)."""
    return msgspec.json.encode(WatermarkMarker(watermark=at)), [(CONTROL_HEADER, WATERMARK)]


def control_kind(headers: object) -> bytes | None:
    """The control kind named in a message's headers, or None for an ordinary event."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:  # type: ignore[misc]
        if name == CONTROL_HEADER:
            return value if isinstance(value, bytes) else str(value).encode()
    return None


def decode_watermark(raw: bytes) -> datetime:
    try:
        marker = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EventRejected(f"invalid watermark marker: {exc}") from None
    if marker.watermark.tzinfo is None:
        raise EventRejected("invalid watermark marker: watermark must carry a UTC offset")
    return marker.watermark
