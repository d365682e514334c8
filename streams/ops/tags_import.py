"""`tagstream tags import`: mark (or unmark) one tag on every member of a list (a campaign list).

Each member id of the file becomes one `interaction.tag_marked` event (source and channel
`import`) on the member's partition of events.interactions, so the worker applies it in the
member's order like any event, and replay and the dry run reproduce it (taggers/marked.py).

The file holds one member id per line, or is a CSV whose first column is the member id; a
first row whose first cell is `member_id` is a header; blank lines and lines starting with `#`
are skipped; UTF-8, with or without a BOM. A bad row (whitespace inside the id, longer than
64 characters, rejected by the event decoder, or a member already listed above) is reported
with its line number and the valid rows still go in.

Event ids are derived, not random: `import-` + blake2b of (tag, op, member id, expires_at, the
batch id), where the batch id is a digest of the file's bytes, the tag, the op and the ttl. The
same import run again therefore sends the same ids, which the worker drops as repeats, while
another file makes new ones. With a ttl, expires_at (now + ttl) is part of the id, so a later
run is a new mark: it moves the members' expiry to the new now + ttl and changes no tag.

Parsing and validation are pure (`read_rows`, `import_events`, `parse_ttl`); `run_import`
does the writing.
"""

from __future__ import annotations

import csv
import hashlib
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

import msgspec
import orjson
from aiokafka.errors import KafkaError
from tqdm import tqdm

from schemas.errors import EventRejected, TagstreamError
from schemas.events import MarkedTagId, MemberId, TagNameZh
from streams.platform.event_writer import EventWriter, build_event
from streams.platform.topics import TopicNames

TAG_MARKED = "interaction.tag_marked"
SOURCE = CHANNEL = "import"
OPS = ("added", "removed")
CHUNK = 1000  # events per EventWriter.write: one wait for the brokers' acknowledgements
MAX_MEMBER_ID = MemberId.__metadata__[0].max_length  # type: ignore[attr-defined]
TTL_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
MAX_TTL_S = 3650 * 86_400  # ten years: longer is a mistake, not a campaign
HEADER = "member_id"
SHOWN_LINES = 10  # bad rows' line numbers in the summary line (every one goes to stderr)

_TTL = re.compile(r"(\d+)([dhms])")
_WHITESPACE = re.compile(r"\s")


class ImportUsageError(TagstreamError):
    """The import cannot start (bad ttl, file, tag or name): nothing is written. `option`
    names the command-line option at fault."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class ImportWriteError(TagstreamError):
    """Writing stopped part way: `written` events (whole chunks) are acknowledged."""

    def __init__(self, written: int, total: int, cause: BaseException) -> None:
        super().__init__(f"writing stopped after {written} of {total} events: "
                         f"{type(cause).__name__}: {cause}")
        self.written, self.total = written, total


@dataclass(frozen=True, slots=True)
class Row:
    line: int  # 1-based line number in the file
    member_id: str  # the first cell, stripped; not yet validated


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    member_id: str
    reason: str


@dataclass(frozen=True)
class ImportFile:
    rows: list[Row]
    digest: str  # blake2b of the file's bytes: part of the batch id


# --- parsing -----------------------------------------------------------------------------------


def parse_ttl(text: str) -> int:
    """`30d`, `12h`, `90m`, `3600s` -> seconds; anything else raises ImportUsageError."""
    match = _TTL.fullmatch(text.strip())
    if match is None:
        raise ImportUsageError(f"{text!r} is not a ttl: write a whole number and a unit, "
                               f"d, h, m or s (30d, 12h, 90m, 3600s)", "--ttl")
    seconds = int(match.group(1)) * TTL_UNITS[match.group(2)]
    if seconds <= 0:
        raise ImportUsageError(f"ttl {text!r} must be longer than zero", "--ttl")
    if seconds > MAX_TTL_S:
        raise ImportUsageError(f"ttl {text!r} is longer than the limit of 3650d", "--ttl")
    return seconds


def format_ttl(seconds: int | None) -> str:
    """The shortest of the accepted spellings: 2592000 -> '30d'."""
    if seconds is None:
        return "none"
    for unit, size in TTL_UNITS.items():
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"  # unreachable: every whole number of seconds has the unit s


def parse_rows(data: bytes) -> list[Row]:
    """The member rows of a file's bytes: first cell of each line that is not blank, a comment
    or the header. Invalid UTF-8 raises ImportUsageError naming the line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ImportUsageError(f"line {line} is not UTF-8 ({exc.reason} at byte {exc.start}); "
                               f"save the file as UTF-8", "--file") from None
    rows: list[Row] = []
    first = True
    # split on "\n" only: str.splitlines also breaks at \x1c, \x85 and \u2028, and the line
    # numbers would stop matching what an editor shows
    for number, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        cell = _first_cell(line).strip()
        if first and cell.lower() == HEADER:
            first = False
            continue
        first = False
        rows.append(Row(number, cell))
    return rows


def _first_cell(line: str) -> str:
    try:
        return next(csv.reader([line]), [""])[0] if line else ""
    except (csv.Error, IndexError):
        return line.split(",", 1)[0]


def read_file(path: Path) -> ImportFile:
    """The file's rows and the digest of its bytes; an unreadable file raises
    ImportUsageError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImportUsageError(f"cannot read {path}: {exc.strerror or exc}", "--file") from None
    return ImportFile(parse_rows(data), hashlib.blake2b(data).hexdigest())


def read_rows(path: Path) -> list[Row]:
    return read_file(path).rows


# --- checks and events -------------------------------------------------------------------------


def check_mark(tag: str, name_zh: str | None, op: str, ttl_s: int | None,
               pack: Any = None) -> None:
    """What must hold before any row is looked at; raises ImportUsageError. With `pack` (the
    rule pack the workers run), a tag the rules set is refused, as the worker would refuse
    every event of the import."""
    try:
        msgspec.convert(tag, MarkedTagId)
    except msgspec.ValidationError:
        raise ImportUsageError(f"tag id {tag!r} must be 1 to 64 of A-Z a-z 0-9 _ : . - and "
                               f"start with a letter or digit", "--tag") from None
    if name_zh is not None:
        try:
            msgspec.convert(name_zh, TagNameZh)
        except msgspec.ValidationError:
            raise ImportUsageError(f"name {name_zh!r} must be 1 to 30 characters (WeCom's "
                                   f"limit for a tag name)", "--name-zh") from None
        if not name_zh.strip():
            raise ImportUsageError("the name must not be blank", "--name-zh")
    if op not in OPS:
        raise ImportUsageError(f"op is 'added' or 'removed', not {op!r}", "--op")
    if op == "removed" and ttl_s is not None:
        raise ImportUsageError("a ttl applies to added tags only", "--ttl")
    if pack is not None:
        rule = pack.tag(tag)
        if rule is not None:
            raise ImportUsageError(f"tag {tag!r} is set by the rule pack ({rule.family}); an "
                                   f"import marks only tags under marked_tags or tags of its "
                                   f"own id", "--tag")
        if op == "added" and name_zh is None and tag not in pack.marked:
            raise ImportUsageError(f"tag {tag!r} is not declared under marked_tags, so it "
                                   f"needs a name for guides and WeCom", "--name-zh")


def batch_id(file_digest: str, tag: str, op: str, ttl_s: int | None) -> str:
    """One import: the file's bytes (by digest), the tag, the op and the ttl."""
    return hashlib.blake2b(orjson.dumps([file_digest, tag, op, ttl_s]),
                           digest_size=16).hexdigest()


def event_id(tag: str, op: str, member_id: str, expires_at: str | None, batch: str) -> str:
    digest = hashlib.blake2b(orjson.dumps([tag, op, member_id, expires_at or "", batch]),
                             digest_size=16).hexdigest()
    return f"import-{digest}"


def expiry(now: datetime, ttl_s: int | None) -> datetime | None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return None if ttl_s is None else now + timedelta(seconds=ttl_s)


def import_events(rows: Sequence[Row], tag: str, name_zh: str | None, op: str,
                  ttl_s: int | None, now: datetime, *, batch: str = ""
                  ) -> tuple[list[bytes], list[RowError]]:
    """One event per valid row, in file order, and the bad rows with their reasons. Every
    event has occurred_at `now` and, with a ttl, expires_at `now + ttl`."""
    expires_at = expiry(now, ttl_s)
    expires_text = expires_at.isoformat() if expires_at is not None else None
    events: list[bytes] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for row in rows:
        member_id = row.member_id
        reason = _member_problem(member_id)
        if reason is None and member_id in seen:
            reason = f"member {member_id!r} is already on line {seen[member_id]}"
        if reason is None:
            try:
                events.append(build_event(
                    TAG_MARKED, member_id, channel=CHANNEL, occurred_at=now,
                    event_id=event_id(tag, op, member_id, expires_text, batch),
                    tag=tag, op=op, source=SOURCE, name_zh=name_zh, expires_at=expires_text))
            except EventRejected as exc:
                reason = f"rejected: {exc.reason}"
            else:
                seen[member_id] = row.line
                continue
        errors.append(RowError(row.line, member_id, reason))
    return events, errors


def _member_problem(member_id: str) -> str | None:
    if not member_id:
        return "no member id in the first column"
    if _WHITESPACE.search(member_id):
        return f"member id {_short(member_id)} has whitespace inside"
    if len(member_id) > MAX_MEMBER_ID:
        return f"member id is {len(member_id)} characters long; at most {MAX_MEMBER_ID}"
    return None


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


# --- the import --------------------------------------------------------------------------------


@dataclass
class PreparedImport:
    tag: str
    op: str
    ttl_s: int | None
    expires_at: datetime | None
    rows: int
    events: list[bytes]
    errors: list[RowError]
    batch: str


def prepare_import(path: Path, tag: str, name_zh: str | None, op: str, ttl_s: int | None,
                   now: datetime, pack: Any = None) -> PreparedImport:
    """Check the mark, read the file and build its events; nothing is written."""
    check_mark(tag, name_zh, op, ttl_s, pack)
    source = read_file(path)
    if not source.rows:
        raise ImportUsageError(f"{path} holds no member ids", "--file")
    batch = batch_id(source.digest, tag, op, ttl_s)
    events, errors = import_events(source.rows, tag, name_zh, op, ttl_s, now, batch=batch)
    return PreparedImport(tag, op, ttl_s, expiry(now, ttl_s), len(source.rows), events, errors,
                          batch)


async def run_import(events: Sequence[bytes], *, bootstrap: str, partitions: int,
                     names: TopicNames, security: Mapping[str, Any] | None = None,
                     chunk: int = CHUNK, progress: bool = False, label: str = "import") -> int:
    """Write the events, `chunk` at a time, each on its member's partition; returns how many
    were acknowledged. A broker failure raises ImportWriteError with the count so far. The
    progress bar (stderr) shows only when `progress` and stderr is a terminal."""
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    written = 0
    bar = tqdm(total=len(events), unit="event", unit_scale=True, desc=label, file=sys.stderr,
               disable=not (progress and sys.stderr.isatty()))
    writer = EventWriter(bootstrap, partitions, names, security)
    try:
        try:
            await writer.start()
            for start in range(0, len(events), chunk):
                sent = await writer.write(events[start:start + chunk])
                written += sent
                bar.update(sent)
        finally:
            await writer.stop()
    except (KafkaError, OSError) as exc:
        raise ImportWriteError(written, len(events), exc) from exc
    finally:
        bar.close()
    return written


@dataclass
class ImportResult:
    prepared: PreparedImport
    written: int
    elapsed_s: float
    dry_run: bool = False

    @property
    def events_per_s(self) -> float:
        return self.written / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        p = self.prepared
        bad = len(p.errors)
        text = "tags import (dry run): " if self.dry_run else "tags import: "
        text += f"{p.rows} rows read, {self.written} events written"
        if self.dry_run:
            text += f" (dry run: {len(p.events)} valid)"
        text += f", {bad} bad row{'' if bad == 1 else 's'}"
        if bad:
            shown = ", ".join(str(e.line) for e in p.errors[:SHOWN_LINES])
            more = f" and {bad - SHOWN_LINES} more" if bad > SHOWN_LINES else ""
            text += f" (line{'' if bad == 1 else 's'} {shown}{more})"
        text += f"; tag {p.tag} {p.op}, ttl {format_ttl(p.ttl_s)}"
        if p.expires_at is not None:
            text += f" (expires {p.expires_at.isoformat(timespec='seconds')})"
        text += f"; {self.elapsed_s:.2f} s"
        if self.written:
            text += f" ({self.events_per_s:,.0f} events/s)"
        return text


def row_error_line(path: Path | str, error: RowError) -> str:
    return f"{path}:{error.line}: {error.reason}"
