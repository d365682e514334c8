"""Guide tasks in Redis: each task's newest record and the per-guide indexes the API reads.

Key design (same prefix as the profile keys, `ts:` by default; the first three are the task
contract's, the rest serve paging by status, the insights and erasure):

    ts:task:{task_id}                     string  the task's newest record (TaskRecord JSON)
    ts:guide_tasks:{guide}:open           zset    the guide's open tasks, scored by due epoch
    ts:guide_tasks:{guide}:closed         zset    every closed task, scored by closed epoch
    ts:guide_tasks:{guide}:{status}       zset    closed tasks of one status (done, lapsed,
                                                  expired, cancelled), by closed epoch
    ts:guide_tasks:{guide}:converted      zset    done tasks an order converted, by closed epoch
    ts:guide_tasks:{guide}:opened         zset    every task of the guide, by opened epoch
    ts:member_tasks:{member_id}           set     the member's task ids (erasure deletes them)
    ts:task_guides                        set     every guide that has had a task

A task sits in exactly one of `open` and `closed` (and then in its status's set), so a guide's
list for any status is one sorted set read a page at a time, and every insight figure is a
ZCOUNT over a time window: O(log N) whatever a guide's history holds. Epochs are seconds.
The suffixes hold no ':' and are a fixed set, so a guide userid holding ':' cannot make one
guide's key equal another's.

Writes are one Lua script per record (atomic: the record and its index entries change
together) that keeps a record only when its `version` is higher than the stored one, so
redelivery and retries change nothing. A record cancelled by erasure (closed_by "erasure")
deletes the task instead of storing it, as does the erasure of the member (the profile
tombstone), whichever of the two the sink reads first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Sequence

import orjson
import redis.asyncio

OPEN = "open"
CLOSED = "closed"
CLOSED_STATUSES = ("done", "lapsed", "expired", "cancelled")
STATUSES = (OPEN, *CLOSED_STATUSES)
LISTS = (*STATUSES, CLOSED)  # what GET /guides/{guide}/tasks?status= names
ERASURE = "erasure"
MAX_TASK_PAGE = 500

# Every sorted set of a guide a task can be in; removing a task means removing it from all.
_GUIDE_SETS = "{'open', 'closed', 'done', 'lapsed', 'expired', 'cancelled', 'converted', 'opened'}"

_UNINDEX_LUA = """
local function unindex(prefix, id, record)
  local g = prefix .. 'guide_tasks:' .. record['guide'] .. ':'
  for _, s in ipairs(%s) do redis.call('ZREM', g .. s, id) end
  redis.call('SREM', prefix .. 'member_tasks:' .. record['member_id'], id)
  redis.call('DEL', prefix .. 'task:' .. id)
end
""" % _GUIDE_SETS

# KEYS[1] task key. ARGV: prefix, task_id, member_id, guide, version, status, opened epoch,
# due epoch, closed epoch ("" while open), converted ("1" or ""), record JSON, erased ("1"
# or ""). Returns 1 stored, 0 stale (Redis holds this version or a newer one), 2 deleted.
_APPLY_LUA = _UNINDEX_LUA + """
local prefix, id, member, guide = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cur = redis.call('GET', KEYS[1])
local old = cur and cjson.decode(cur)
if ARGV[12] == '1' then
  if old then unindex(prefix, id, old) end
  return 2
end
if old then
  if tonumber(old['version']) >= tonumber(ARGV[5]) then return 0 end
  unindex(prefix, id, old)
end
local g = prefix .. 'guide_tasks:' .. guide .. ':'
local status = ARGV[6]
if status == 'open' then
  redis.call('ZADD', g .. 'open', ARGV[8], id)
else
  redis.call('ZADD', g .. 'closed', ARGV[9], id)
  redis.call('ZADD', g .. status, ARGV[9], id)
  if ARGV[10] == '1' then redis.call('ZADD', g .. 'converted', ARGV[9], id) end
end
redis.call('ZADD', g .. 'opened', ARGV[7], id)
redis.call('SADD', prefix .. 'member_tasks:' .. member, id)
redis.call('SADD', prefix .. 'task_guides', guide)
redis.call('SET', KEYS[1], ARGV[11])
return 1
"""

# KEYS[1] the member's task set. ARGV: prefix. Deletes every task of the member.
_FORGET_MEMBER_LUA = _UNINDEX_LUA + """
local prefix = ARGV[1]
local ids = redis.call('SMEMBERS', KEYS[1])
for _, id in ipairs(ids) do
  local cur = redis.call('GET', prefix .. 'task:' .. id)
  if cur then unindex(prefix, id, cjson.decode(cur)) end
end
redis.call('DEL', KEYS[1])
return #ids
"""

# KEYS[1] a sorted set. ARGV: "asc" or "desc", cursor score ("" for the first page), cursor
# task id, count. Returns up to `count` [id, score, ...] strictly after the cursor in the
# set's order (asc: score then id; desc: the reverse). The cursor is a position, not a member,
# so it stays valid when the task it names leaves the set.
_PAGE_LUA = """
local key, dir, score, after, count = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
-- Byte order, as Redis orders equal scores (Lua's own `<=` follows the server's locale).
local function at_or_before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local start = 0
if score ~= '' then
  local ties = redis.call('ZRANGE', key, score, score, 'BYSCORE')
  local passed = 0
  for _, id in ipairs(ties) do
    local passed_it = at_or_before(id, after)
    if dir == 'desc' then passed_it = at_or_before(after, id) end
    if passed_it then passed = passed + 1 end
  end
  if dir == 'asc' then
    start = redis.call('ZCOUNT', key, '-inf', '(' .. score) + passed
  else
    start = redis.call('ZCOUNT', key, '(' .. score, '+inf') + passed
  end
end
if dir == 'asc' then
  return redis.call('ZRANGE', key, start, start + count - 1, 'WITHSCORES')
end
return redis.call('ZRANGE', key, start, start + count - 1, 'REV', 'WITHSCORES')
"""


def epoch(timestamp: str) -> float:
    """Seconds since the epoch of an ISO 8601 timestamp with an offset."""
    return datetime.fromisoformat(timestamp).timestamp()


def _score_text(value: float) -> str:
    return repr(float(value))


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


@dataclass(frozen=True)
class TaskPage:
    tasks: list[dict[str, Any]]
    next_cursor: str | None  # None: this was the last page


@dataclass(frozen=True)
class WindowCounts:
    """How many of a guide's tasks fell in one window (see task_insights)."""

    opened: int
    done: int
    lapsed: int
    expired: int
    cancelled: int
    open_past_due: int
    converted: int


class CursorInvalid(ValueError):
    """A task page cursor this store did not write."""


def encode_cursor(score: str, task_id: str) -> str:
    return f"{score}:{task_id}"


def decode_cursor(cursor: str) -> tuple[str, str]:
    score, sep, task_id = cursor.partition(":")
    try:
        if not sep or not task_id or len(cursor) > 300:
            raise ValueError
        float(score)
    except ValueError:
        raise CursorInvalid("cursor is not a task page cursor") from None
    return score, task_id


class RedisTaskIndex:
    """Task records and their indexes on a started redis client (RedisProfileStore owns the
    connection and calls `queue_*` inside its batch pipeline)."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        self._apply = client.register_script(_APPLY_LUA)
        self._forget_member = client.register_script(_FORGET_MEMBER_LUA)
        self._page = client.register_script(_PAGE_LUA)

    def task_key(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    def guide_key(self, guide: str, kind: str) -> str:
        return f"{self.prefix}guide_tasks:{guide}:{kind}"

    def member_key(self, member_id: str) -> str:
        return f"{self.prefix}member_tasks:{member_id}"

    @property
    def guides_key(self) -> str:
        return f"{self.prefix}task_guides"

    # --- writes (queued on the caller's pipeline) ---------------------------------------------

    async def queue_apply(self, pipe: Any, record: dict[str, Any]) -> None:
        task_id = record["task_id"]
        closed_at = record.get("closed_at")
        erased = record["status"] == "cancelled" and record.get("closed_by") == ERASURE
        await self._apply(
            keys=[self.task_key(task_id)],
            args=[self.prefix, task_id, record["member_id"], record["guide"], record["version"],
                  record["status"], _score_text(epoch(record["opened_at"])),
                  _score_text(epoch(record["due_at"])),
                  _score_text(epoch(closed_at)) if closed_at else "",
                  "1" if record.get("converted_at") and record["status"] == "done" else "",
                  orjson.dumps(record), "1" if erased else ""],
            client=pipe)

    async def queue_forget_member(self, pipe: Any, member_id: str) -> None:
        await self._forget_member(keys=[self.member_key(member_id)], args=[self.prefix],
                                  client=pipe)

    # --- reads --------------------------------------------------------------------------------

    async def get(self, task_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.task_key(task_id))
        return None if raw is None else orjson.loads(raw)

    async def page(self, guide: str, status: str, cursor: str | None = None,
                   limit: int = 50) -> TaskPage:
        """One page of the guide's tasks of `status` (one of LISTS): open ones due first
        (earliest due first), closed ones newest first; ties in task id order."""
        if status not in LISTS:
            raise ValueError(f"status must be one of {', '.join(LISTS)}")
        limit = max(1, min(limit, MAX_TASK_PAGE))
        score, after = decode_cursor(cursor) if cursor else ("", "")
        direction: Literal["asc", "desc"] = "asc" if status == OPEN else "desc"
        raw = await self._page(keys=[self.guide_key(guide, status)],
                               args=[direction, score, after, limit + 1])
        entries = [(_text(raw[i]), _text(raw[i + 1])) for i in range(0, len(raw), 2)]
        more = len(entries) > limit
        entries = entries[:limit]
        tasks = await self.get_many([task_id for task_id, _ in entries])
        next_cursor = encode_cursor(entries[-1][1], entries[-1][0]) if more else None
        return TaskPage([t for t in tasks if t is not None], next_cursor)

    async def get_many(self, task_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        if not task_ids:
            return []
        raw = await self.redis.mget([self.task_key(t) for t in task_ids])
        return [None if r is None else orjson.loads(r) for r in raw]

    async def guides(self) -> list[str]:
        return sorted(_text(g) for g in await self.redis.smembers(self.guides_key))

    async def member_task_ids(self, member_id: str) -> set[str]:
        return {_text(t) for t in await self.redis.smembers(self.member_key(member_id))}

    async def window_counts(self, guides: Sequence[str], windows: Sequence[tuple[float, float]]
                            ) -> dict[str, list[WindowCounts]]:
        """Per guide, per (start, end] window in epoch seconds: the counts the insights need,
        in one round trip."""
        kinds = ("opened", "done", "lapsed", "expired", "cancelled", OPEN, "converted")
        pipe = self.redis.pipeline(transaction=False)
        for guide in guides:
            for start, end in windows:
                for kind in kinds:
                    pipe.zcount(self.guide_key(guide, kind), f"({start!r}", repr(end))
        counts = iter(await pipe.execute())
        return {guide: [WindowCounts(*(next(counts) for _ in kinds)) for _ in windows]
                for guide in guides}
