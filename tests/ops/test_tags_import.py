"""`tagstream tags import`: a member list in, one `interaction.tag_marked` event per valid row out.

Pure: parsing, validation, ttl, deterministic ids. CLI: exit codes and the summary with
--dry-run (no broker). End to end: the shared broker gets exactly the valid members' events,
each on its member's partition, and the engine gives each member the tag with its expiry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from click.testing import CliRunner

from schemas.decode import decode_event
from schemas.events import TagMarked
from streams.ops.cli import main
from streams.ops.tags_import import (ImportUsageError, Row, batch_id, check_mark, format_ttl,
                                     import_events, parse_rows, parse_ttl, prepare_import,
                                     read_rows)
from streams.platform.partitioning import partition_for
from streams.platform.settings import DEFAULT_RULES, Settings
from streams.platform.topics import topic_names
from taggers.clock import to_epoch
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.profile import render_profile
from taggers.rules import load_rules
from tests.support import free_port
from tests.support.kafka import at_least, create_topics, read_topic

TAG, NAME = "spring_vip_2025", "春季VIP"
NOW = datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=8)))
DAY = 86_400


@pytest.fixture(scope="module")
def pack():
    return load_rules(DEFAULT_RULES)


def write(tmp_path: Path, text: str | bytes, name: str = "members.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def bodies(events: list[bytes]) -> list[dict]:
    return [orjson.loads(value) for value in events]


# --- rows ----------------------------------------------------------------------------------------


def test_rows_skip_bom_header_blanks_and_comments_and_take_the_first_csv_column(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbfmember_id,name,city\r\n"
                           b"M001,Li Lei,Shanghai\r\n"
                           b"\r\n"
                           b"# sent by the CRM team\r\n"
                           b"   \n"
                           b'"M002","Han, Meimei",Beijing\n'
                           b"  M003  \n"
                           b"  # indented comment\n"
                           b"M004")
    assert read_rows(path) == [Row(2, "M001"), Row(6, "M002"), Row(7, "M003"), Row(9, "M004")]


def test_a_plain_list_has_no_header_and_member_id_is_a_header_only_on_the_first_row():
    assert parse_rows(b"M1\nM2\n") == [Row(1, "M1"), Row(2, "M2")]
    assert parse_rows(b"# export\n\nMEMBER_ID\nM1\nmember_id\n") == [
        Row(4, "M1"), Row(5, "member_id")]
    # without a BOM the same header is recognised too
    assert parse_rows("member_id\nM1\n".encode()) == [Row(2, "M1")]


def test_a_file_that_is_not_utf8_is_a_usage_error_naming_its_line(tmp_path):
    path = write(tmp_path, "member_id\nM1\nM2\n张三\n".encode("gbk"))
    with pytest.raises(ImportUsageError, match="line 4 is not UTF-8") as caught:
        read_rows(path)
    assert caught.value.option == "--file"
    with pytest.raises(ImportUsageError, match="cannot read"):
        read_rows(tmp_path / "missing.csv")


# --- validation ----------------------------------------------------------------------------------


def test_bad_rows_are_reported_with_line_numbers_and_the_valid_rows_become_events():
    rows = parse_rows(("member_id\n"
                       "M1\n"
                       "M 2\n"                # whitespace inside
                       f"{'X' * 65}\n"       # too long
                       f"{'Y' * 64}\n"       # exactly the limit: fine
                       ",no id here\n"        # empty first cell
                       "M\u30003\n"           # ideographic space is whitespace too
                       "M4,extra\n").encode())
    events, errors = import_events(rows, TAG, NAME, "added", None, NOW, batch="b")
    assert [body["member_id"] for body in bodies(events)] == ["M1", "Y" * 64, "M4"]
    assert [(e.line, e.member_id) for e in errors] == [
        (3, "M 2"), (4, "X" * 65), (6, ""), (7, "M\u30003")]
    assert "whitespace inside" in errors[0].reason
    assert "65 characters" in errors[1].reason and "at most 64" in errors[1].reason
    assert "no member id" in errors[2].reason
    assert "whitespace inside" in errors[3].reason
    for value in events:  # every event is what the worker's decoder accepts
        event = decode_event(value)
        assert isinstance(event, TagMarked)
        assert (event.tag, event.op, event.source, event.channel, event.name_zh) == (
            TAG, "added", "import", "import", NAME)
        assert event.guide_id is None and event.expires_at is None


def test_rows_the_decoder_rejects_are_reported_with_its_reason():
    # a name over WeCom's 30 characters fails in build_event (the decoder), on every row
    events, errors = import_events([Row(3, "M1"), Row(9, "M2")], TAG, "名" * 31, "added",
                                   None, NOW)
    assert events == []
    assert [e.line for e in errors] == [3, 9]
    assert all(e.reason.startswith("rejected: invalid event") and "name_zh" in e.reason
               for e in errors)


def test_a_duplicate_member_is_reported_once_and_marked_once():
    rows = [Row(1, "M1"), Row(2, "M2"), Row(5, "M1"), Row(6, "M 3"), Row(7, "M 3")]
    events, errors = import_events(rows, TAG, NAME, "added", None, NOW)
    assert [body["member_id"] for body in bodies(events)] == ["M1", "M2"]
    duplicates = [e for e in errors if "already" in e.reason]
    assert [(e.line, e.reason) for e in duplicates] == [(5, "member 'M1' is already on line 1")]
    # a bad id listed twice is bad twice, for its own reason (it was never marked)
    assert [(e.line, "whitespace" in e.reason) for e in errors if e.member_id == "M 3"] == [
        (6, True), (7, True)]


def test_check_mark_refuses_what_the_worker_would_refuse(pack):
    check_mark(TAG, NAME, "added", 30 * DAY, pack)
    check_mark("vip_banquet", None, "added", None, pack)  # declared: its name is the pack's
    check_mark(TAG, None, "removed", None, pack)
    cases = [
        (("repeat_buyer", NAME, "added", None), "--tag", "set by the rule pack"),
        (("bad tag", NAME, "added", None), "--tag", "must be 1 to 64"),
        (("_x", NAME, "added", None), "--tag", "must be 1 to 64"),
        (("t" * 65, NAME, "added", None), "--tag", "must be 1 to 64"),
        ((TAG, "名" * 31, "added", None), "--name-zh", "1 to 30"),
        ((TAG, "  ", "added", None), "--name-zh", "blank"),
        ((TAG, None, "added", None), "--name-zh", "not declared under marked_tags"),
        ((TAG, NAME, "removed", DAY), "--ttl", "added tags only"),
        ((TAG, NAME, "cleared", None), "--op", "'added' or 'removed'"),
    ]
    for args, option, message in cases:
        with pytest.raises(ImportUsageError, match=message) as caught:
            check_mark(*args, pack)
        assert caught.value.option == option, args


# --- ttl and expiry ------------------------------------------------------------------------------


def test_ttl_syntax():
    assert [parse_ttl(t) for t in ("30d", "12h", "90m", "3600s", " 1d ", "3650d")] == [
        30 * DAY, 12 * 3600, 90 * 60, 3600, DAY, 3650 * DAY]
    for bad in ("30", "1w", "0d", "0s", "-1d", "1.5h", "", "30 d", "d", "30D", "3651d",
                "1d12h"):
        with pytest.raises(ImportUsageError, match="ttl") as caught:
            parse_ttl(bad)
        assert caught.value.option == "--ttl"
    assert [format_ttl(s) for s in (30 * DAY, 36 * 3600, 90 * 60, 61, None)] == [
        "30d", "36h", "90m", "61s", "none"]


def test_expires_at_is_now_plus_ttl_exactly_and_occurred_at_is_now():
    for ttl_s in (30 * DAY, 12 * 3600, 90 * 60, 1):
        (event,), errors = import_events([Row(1, "M1")], TAG, NAME, "added", ttl_s, NOW)
        body = orjson.loads(event)
        assert errors == []
        assert datetime.fromisoformat(body["occurred_at"]) == NOW
        expires_at = datetime.fromisoformat(body["expires_at"])
        assert expires_at == NOW + timedelta(seconds=ttl_s)
        assert expires_at - datetime.fromisoformat(body["occurred_at"]) == \
            timedelta(seconds=ttl_s)
    (event,), _ = import_events([Row(1, "M1")], TAG, NAME, "removed", None, NOW)
    assert "expires_at" not in orjson.loads(event)
    with pytest.raises(ValueError, match="timezone-aware"):
        import_events([Row(1, "M1")], TAG, NAME, "added", DAY, NOW.replace(tzinfo=None))


# --- deterministic ids ---------------------------------------------------------------------------


def ids(path: Path, now: datetime = NOW, tag: str = TAG, op: str = "added",
        ttl_s: int | None = None) -> dict[str, str]:
    prepared = prepare_import(path, tag, NAME, op, ttl_s, now)
    return {body["member_id"]: body["event_id"] for body in bodies(prepared.events)}


def test_the_same_import_gives_the_same_ids_and_another_file_new_ones(tmp_path):
    text = "member_id\n" + "".join(f"M{n:04d}\n" for n in range(50))
    first = ids(write(tmp_path, text, "a.csv"))
    assert len(set(first.values())) == 50
    assert all(re.fullmatch(r"import-[0-9a-f]{32}", event_id) for event_id in first.values())
    # the same bytes, from another path, run an hour later: the same ids (no ttl)
    again = ids(write(tmp_path, text, "copy.csv"), now=NOW + timedelta(hours=1))
    assert again == first
    # the same file and the same now with a ttl: deterministic too
    with_ttl = ids(write(tmp_path, text, "a.csv"), ttl_s=DAY)
    assert with_ttl == ids(write(tmp_path, text, "a.csv"), ttl_s=DAY)
    # another file (one member more), another tag, op or ttl: every id differs
    others = [ids(write(tmp_path, text + "M9999\n", "b.csv")),
              ids(write(tmp_path, text, "a.csv"), tag="autumn_vip"),
              ids(write(tmp_path, text, "a.csv"), op="removed"),
              with_ttl,
              ids(write(tmp_path, text, "a.csv"), ttl_s=DAY, now=NOW + timedelta(hours=1))]
    for other in others:
        assert not set(other.values()) & set(first.values())
    assert not set(others[-1].values()) & set(with_ttl.values())  # expires_at is in the id
    assert batch_id("d", TAG, "added", None) != batch_id("e", TAG, "added", None)


# --- the command, dry run (no broker) ------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None):
    if env is None:  # a broker port nothing listens on: a dry run must not need one
        env = dataclasses.replace(Settings(), broker=f"kafka://127.0.0.1:{free_port()}").to_env()
    return CliRunner().invoke(main, ["tags", "import", *args], env=env)


def test_dry_run_of_a_clean_file_exits_0_with_the_summary(tmp_path):
    path = write(tmp_path, "member_id,name\nM1,a\nM2,b\n\n# note\nM3,c\n")
    result = run_cli("--tag", TAG, "--name-zh", NAME, "--file", str(path), "--ttl", "30d",
                     "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert re.fullmatch(
        rf"tags import \(dry run\): 3 rows read, 0 events written \(dry run: 3 valid\), "
        rf"0 bad rows; tag {TAG} added, ttl 30d \(expires \S+\); \d+\.\d\d s\n",
        result.stdout), result.stdout


def test_dry_run_with_bad_rows_exits_1_naming_each_line(tmp_path):
    path = write(tmp_path, "member_id\nM1\nM 2\nM3\nM1\n" + "Z" * 70 + "\n")
    result = run_cli("--tag", TAG, "--name-zh", NAME, "--file", str(path), "--dry-run",
                     "--op", "removed")
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"{path}:3: member id 'M 2' has whitespace inside",
        f"{path}:5: member 'M1' is already on line 2",
        f"{path}:6: member id is 70 characters long; at most 64"]
    assert ("5 rows read, 0 events written (dry run: 2 valid), 3 bad rows (lines 3, 5, 6); "
            f"tag {TAG} removed, ttl none;") in result.stdout


@pytest.mark.parametrize(("args", "content", "message"), [
    (["--ttl", "1w"], "M1\n", "Invalid value for '--ttl': '1w' is not a ttl"),
    (["--ttl", "0d"], "M1\n", "Invalid value for '--ttl'"),
    (["--tag", "no spaces"], "M1\n", "Invalid value for '--tag'"),
    (["--tag", "repeat_buyer"], "M1\n", "set by the rule pack"),
    (["--name-zh", "名" * 31], "M1\n", "Invalid value for '--name-zh'"),
    ([], "member_id\n# nothing\n", "holds no member ids"),
    ([], "M1\n张三\n".encode("gbk"), "line 2 is not UTF-8"),
    (["--file", "/nonexistent/members.csv"], None, "cannot read /nonexistent/members.csv"),
])
def test_usage_errors_exit_2_and_write_nothing(tmp_path, args, content, message):
    path = write(tmp_path, content) if content is not None else None
    options = {"--tag": TAG, "--name-zh": NAME, "--file": str(path),
               **dict(zip(args[::2], args[1::2]))}
    argv = [item for pair in options.items() for item in pair]
    result = run_cli(*argv, "--dry-run")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stdout == ""  # no summary: nothing was imported


def test_bad_settings_exit_2(tmp_path):
    env = {**Settings().to_env(), "TAGSTREAM_PARTITIONS": "many"}
    result = run_cli("--tag", TAG, "--name-zh", NAME, "--file", str(write(tmp_path, "M1\n")),
                     "--dry-run", env=env)
    assert result.exit_code == 2 and "TAGSTREAM_PARTITIONS" in result.stderr, result.output


def test_without_dry_run_an_unreachable_broker_exits_3_after_reporting(tmp_path):
    path = write(tmp_path, "M1\nM 2\n")
    started = time.monotonic()
    result = run_cli("--tag", TAG, "--name-zh", NAME, "--file", str(path), "--quiet")
    assert result.exit_code == 3, result.output
    assert f"{path}:2: member id 'M 2' has whitespace inside" in result.stderr
    assert "writing stopped after 0 of 1 events" in result.stderr
    assert "running the same command again is safe" in result.stderr
    assert result.stdout == ""
    assert time.monotonic() - started < 60


# --- end to end on the shared broker -------------------------------------------------------------


async def records_on(bootstrap: str, topic: str, count: int) -> int:
    """How many records the topic holds: the sum of its partitions' end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(count)]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


@pytest.mark.e2e
def test_import_of_200_members_with_3_bad_rows_reaches_the_engine(stack_settings, tmp_path,
                                                                   pack):
    settings = stack_settings
    names = topic_names(settings)
    asyncio.run(create_topics(settings))
    valid = [f"M{n:06d}" for n in range(1, 201)]
    lines = ["member_id,source", "# spring campaign list"]
    lines += [f"{member},crm" for member in valid[:100]]
    lines += ["M 999,crm", valid[10], "L" * 65]  # whitespace, duplicate, too long
    lines += [f"{member},crm" for member in valid[100:]]
    path = write(tmp_path, "\n".join(lines) + "\n")

    before = datetime.now(timezone.utc)
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["tags", "import", "--tag", TAG, "--name-zh", NAME,
                                       "--file", str(path), "--ttl", "30d", "--quiet"],
                                env=settings.to_env())
    wall_s = time.perf_counter() - started
    after = datetime.now(timezone.utc)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"{path}:103: member id 'M 999' has whitespace inside",
        f"{path}:104: member 'M000011' is already on line 13",
        f"{path}:105: member id is 65 characters long; at most 64"]
    assert "203 rows read, 200 events written, 3 bad rows (lines 103, 104, 105)" in \
        result.stdout
    reported = re.search(r"; (\d+\.\d\d) s \(([\d,]+) events/s\)", result.stdout)
    assert reported, result.stdout
    print(f"\ntags import e2e: 200 events (203 rows) in {reported[1]} s by the command's own "
          f"clock ({reported[2]} events/s); CliRunner wall time {wall_s:.2f} s "
          f"({200 / wall_s:,.0f} events/s)")

    records = asyncio.run(read_topic(settings.broker_bootstrap, names.interactions,
                                     until=at_least(len(valid)), timeout=60))
    assert len(records) == len(valid)
    assert asyncio.run(records_on(settings.broker_bootstrap, names.interactions,
                                  settings.partitions)) == len(valid)
    by_member = {}
    for record in records:
        body = orjson.loads(record.value)
        member = body["member_id"]
        assert record.key == member.encode()
        assert record.partition == partition_for(member, settings.partitions), member
        assert body["event_id"].startswith("import-") and body["source"] == "import"
        by_member[member] = body
    assert sorted(by_member) == valid
    expires = {datetime.fromisoformat(body["expires_at"]) for body in by_member.values()}
    occurred = {datetime.fromisoformat(body["occurred_at"]) for body in by_member.values()}
    assert len(expires) == 1 and len(occurred) == 1
    (expires_at,), (now,) = expires, occurred
    assert before <= now <= after and expires_at == now + timedelta(days=30)

    outcome = dry_run(Engine(pack, settings.allowed_lateness_s),
                      [record.value for record in records])
    assert outcome.rejected == [] and outcome.duplicates == 0
    assert sorted(outcome.states) == valid
    expected_expiry = pack.calendar.render(to_epoch(expires_at))
    for member in valid:
        profile = render_profile(outcome.states[member], pack)
        (held,) = [tag for tag in profile.tags if tag.id == TAG]
        assert (held.source, held.name_zh, held.family, held.share) == (
            "import", NAME, "marked", "all"), member
        assert held.expires_at == expected_expiry, member
