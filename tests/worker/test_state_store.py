"""The member store writes a batch's states only once its changelog records are delivered,
in the order batches were sealed, and records the changelog offset they reach (no broker: a
real Faust RocksDB store in a temporary directory, and dict stores)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust
import pytest
from faust.types import TP

from streams.worker.state_store import MemberStore

CHANGELOG = "tagstream-members-changelog"


class DictTable(dict):
    """What MemberStore uses of a Faust table with the memory store."""

    @property
    def data(self) -> dict:
        return self


def rocksdb_table(path: Path, app_id: str = "store-test") -> faust.Table:
    app = faust.App(app_id, broker="kafka://127.0.0.1:1", store="rocksdb://", datadir=str(path),
                    autodiscover=False)
    return app.Table("members", partitions=4, default=None, key_type=bytes, value_type=bytes,
                     options={"driver": "rocksdict"})


async def test_a_staged_state_is_readable_but_not_stored_until_delivered() -> None:
    table = DictTable()
    store = MemberStore(table, CHANGELOG)
    batch = store.stage([(b"M1", 0, b"state-1")])
    assert store.get(b"M1", 0) == b"state-1" and b"M1" not in table
    assert dict(store.partition_items(0, lambda key: 0)) == {b"M1": b"state-1"}
    await store.write(batch, {(CHANGELOG, 0): 7})
    assert table[b"M1"] == b"state-1"
    assert store.get(b"M1", 0) == b"state-1"


async def test_an_undelivered_batch_never_reaches_the_store() -> None:
    """Regression guard for the restart invariant: a crash between seal and delivery must
    leave the store at the last delivered batch, which the changelog replays over."""
    table = DictTable({b"M1": b"delivered"})
    store = MemberStore(table, CHANGELOG)
    failed = store.stage([(b"M1", 0, b"undelivered")])
    assert store.get(b"M1", 0) == b"undelivered"
    store.abandon(failed)  # its delivery failed; the process stops and restarts
    assert table[b"M1"] == b"delivered"
    later = store.stage([(b"M2", 0, b"next")])
    await store.write(later, None)  # a batch after the failed one is not held up by it
    assert table[b"M2"] == b"next"


async def test_batches_are_written_in_seal_order_whatever_order_they_are_delivered_in() -> None:
    table = DictTable()
    store = MemberStore(table, CHANGELOG)
    first = store.stage([(b"M1", 1, b"older")])
    second = store.stage([(b"M1", 1, b"newer")])
    first_delivered: asyncio.Future[dict] = asyncio.get_running_loop().create_future()

    async def write_first() -> None:
        await store.write(first, await first_delivered)

    writing_first = asyncio.ensure_future(write_first())
    await asyncio.sleep(0)
    writing_second = asyncio.ensure_future(store.write(second, {(CHANGELOG, 1): 2}))
    await asyncio.sleep(0.01)
    assert b"M1" not in table  # the second waits for the first
    first_delivered.set_result({(CHANGELOG, 1): 1})
    await asyncio.gather(writing_first, writing_second)
    assert table[b"M1"] == b"newer" and store.get(b"M1", 0) == b"newer"


async def test_a_restaged_member_keeps_its_newest_state_in_flight() -> None:
    table = DictTable()
    store = MemberStore(table, CHANGELOG)
    first = store.stage([(b"M1", 0, b"a")])
    store.stage([(b"M1", 0, b"b")])
    await store.write(first, None)  # the first batch lands; the second is pending
    assert store.get(b"M1", 0) == b"b"


async def test_revoked_partitions_drop_their_in_flight_states() -> None:
    table = DictTable()
    store = MemberStore(table, CHANGELOG)
    store.stage([(b"M1", 0, b"mine"), (b"M2", 3, b"theirs")])
    store.drop_in_flight({3})
    assert store.get(b"M1", 0) == b"mine" and store.get(b"M2", 0) is None


async def test_rocksdb_store_gets_the_states_and_the_persisted_changelog_offset(
        tmp_path: Path) -> None:
    table = rocksdb_table(tmp_path)
    changelog = table.changelog_topic.get_topic_name()
    store = MemberStore(table, changelog)
    batch = store.stage([(b"M1", 2, b"state-M1"), (b"M2", 3, b"state-M2")])
    await store.write(batch, {(changelog, 2): 41, (changelog, 3): 9, ("t.tags.changes", 2): 5})
    data = table.data
    assert data._db_for_partition(2).get(b"M1") == b"state-M1"  # noqa: SLF001
    assert data._db_for_partition(3).get(b"M2") == b"state-M2"  # noqa: SLF001
    # Faust's recovery starts reading the changelog from these
    assert data.persisted_offset(TP(changelog, 2)) == 41
    assert data.persisted_offset(TP(changelog, 3)) == 9
    assert data.persisted_offset(TP(changelog, 0)) is None


async def test_rocksdb_states_and_offsets_survive_reopening(tmp_path: Path) -> None:
    """What a restarted worker finds on its disk."""
    table = rocksdb_table(tmp_path)
    changelog = table.changelog_topic.get_topic_name()
    store = MemberStore(table, changelog)
    await store.write(store.stage([(b"M1", 1, b"kept")]), {(changelog, 1): 120})
    for db in list(table.data._dbs.values()):  # noqa: SLF001 - close as a stopping worker does
        db.close()
    reopened = rocksdb_table(tmp_path).data
    assert reopened._db_for_partition(1).get(b"M1") == b"kept"  # noqa: SLF001
    assert reopened.persisted_offset(TP(changelog, 1)) == 120


@pytest.mark.parametrize("delivered", [None, {}])
async def test_a_sender_that_cannot_tell_offsets_still_gets_states_written(delivered) -> None:
    table = DictTable()
    store = MemberStore(table, CHANGELOG)
    await store.write(store.stage([(b"M9", 0, b"s")]), delivered)
    assert table[b"M9"] == b"s"


async def test_partition_items_read_one_partition_with_in_flight_states_newest(
        tmp_path: Path) -> None:
    table = rocksdb_table(tmp_path)
    changelog = table.changelog_topic.get_topic_name()
    store = MemberStore(table, changelog)
    await store.write(store.stage([(b"A", 1, b"a-old"), (b"B", 1, b"b"), (b"C", 2, b"c")]),
                      {(changelog, 1): 3, (changelog, 2): 1})
    store.stage([(b"A", 1, b"a-new"), (b"D", 1, b"d")])
    found = dict(store.partition_items(1, lambda key: 0))  # RocksDB: the partition's own db
    assert found == {b"A": b"a-new", b"B": b"b", b"D": b"d"}  # no offset key, no C


async def test_partition_items_of_a_dict_store_use_the_partition_rule() -> None:
    table = DictTable({b"A": b"a", b"B": b"b"})
    store = MemberStore(table, CHANGELOG)
    assert dict(store.partition_items(1, {b"A": 1, b"B": 0}.__getitem__)) == {b"A": b"a"}


async def test_an_erased_member_reads_as_absent_at_once_and_leaves_rocksdb_when_written(
        tmp_path: Path) -> None:
    table = rocksdb_table(tmp_path)
    changelog = table.changelog_topic.get_topic_name()
    store = MemberStore(table, changelog)
    await store.write(store.stage([(b"A", 1, b"a"), (b"B", 1, b"b")]), {(changelog, 1): 2})
    batch = store.stage([(b"A", 1, None)])
    assert store.get(b"A", 1) is None  # in flight: already gone for later events
    assert dict(store.partition_items(1, lambda key: 0)) == {b"B": b"b"}
    assert table.data._db_for_partition(1).get(b"A") == b"a"  # noqa: SLF001 - not delivered
    await store.write(batch, {(changelog, 1): 3})
    assert table.data._db_for_partition(1).get(b"A") is None  # noqa: SLF001
    assert store.get(b"A", 1) is None
    assert dict(store.partition_items(1, lambda k: 0)) == {b"B": b"b"}


async def test_a_rocksdb_read_takes_the_state_from_the_members_partition_database(
        tmp_path: Path) -> None:
    table = rocksdb_table(tmp_path)
    changelog = table.changelog_topic.get_topic_name()
    store = MemberStore(table, changelog)
    await store.write(store.stage([(b"A", 1, b"a"), (b"B", 2, b"b")]),
                      {(changelog, 1): 0, (changelog, 2): 0})
    assert store.get(b"A", 1) == b"a" and store.get(b"B", 2) == b"b"
    assert store.get(b"A", 2) is None  # a state lives only in its home partition's database
    assert store.get(b"C", 1) is None
