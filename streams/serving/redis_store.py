"""Redis as the serving store: each member's current profile and the audience indexes over it.

Key design (prefix `ts:` by default):

    ts:member:{member_id}        hash  profile (JSON), at + seq (the version), tags, guides
    ts:tag:{tag}                 zset  members holding the tag                (score 0)
    ts:guide:{guide}             zset  members bound to the guide             (score 0)
    ts:aud:{tag}:{guide}         zset  members holding the tag AND bound to the guide
    ts:sink:offsets              hash  "{topic}:{partition}" -> next offset written
    ts:task:{task_id}, ts:guide_tasks:...  guide tasks (streams/serving/task_store.py)
    ts:counts:..., ts:snap:...   members per tag, overall and per guide, and their daily copies
                                 (streams/serving/insight_counts.py; kept by the scripts below)

The audience question guides ask ("my members tagged dormant_90d") is one sorted set, read a page
at a time with ZRANGE BYLEX from the last member id returned: O(log N + page) however large the
sets are, and a cursor that stays valid while members come and go (members present throughout are
returned exactly once, in member id order). The alternatives were rejected: SINTER of the tag set
and the guide set costs O(smallest set x sets) on every page and has no cursor; SSCAN cursors may
return a member twice. The price is one extra index entry per (tag, guide) pair of a member,
typically a handful. Tag ids cannot contain ':' (taggers.rules.TAG_ID), so `ts:aud:{tag}:{guide}`
is unambiguous whatever the guide's userid holds.

Writes: a Lua script applies up to APPLY_CHUNK profiles a call, so a profile and its index entries
change together (Redis runs a script atomically), and reads the member's previous tags and guides
from the hash to remove exactly the index entries that no longer hold. The sink hands it the
profile JSON it rendered, with the ids the indexes need (ServedProfile.joined). Every profile
carries a version (`as_of` in ms, then a sequence: the Kafka offset of the state's changelog
record, since `as_of` has whole seconds and two updates may share one); the script keeps the
newest and ignores an older or a replayed one, so re-applying anything is harmless and order
of retries does not matter.

Not for Redis Cluster: the script touches index keys it derives itself (one Redis, or Sentinel).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, AsyncIterator, Iterable, Mapping, NamedTuple, Sequence

import msgspec
import orjson
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from streams.serving.insight_counts import COUNT_LUA
from streams.serving.task_store import RedisTaskIndex

log = logging.getLogger(__name__)

SEP = "\x1f"  # joins tag ids and guide userids in the member hash; neither may contain it
DEFAULT_PREFIX = "ts:"
MAX_PAGE = 500

# KEYS: the members' hashes. ARGV: prefix, then seven per profile, in KEYS' order:
# member_id, at, seq, profile JSON, tags, guides, contacts (the last three SEP-joined; contacts
# are the member's WeCom external_userids). Returns, per profile, 1 if written, 0 if Redis
# already held this version or a newer one. Profiles apply in order, as separate calls would.
# A write that keeps the member's tags, guides and contacts (about 70% of live writes: most
# events change a member's figures, not its tags) stores only the profile and its version:
# the indexes and counts already hold, and skipping them took Redis from ~38 to ~29 us a
# profile.
_APPLY_LUA = COUNT_LUA + """
local prefix = ARGV[1]
local function split(s)
  local out = {}
  if s then for x in string.gmatch(s, '[^\\31]+') do out[x] = true end end
  return out
end
local function pairs_of(tags, guides)
  local out = {}
  for t in pairs(tags) do for g in pairs(guides) do out[t .. ':' .. g] = true end end
  return out
end
local function sync(id, old, new, kind)
  for x in pairs(old) do
    if not new[x] then redis.call('ZREM', prefix .. kind .. ':' .. x, id) end
  end
  for x in pairs(new) do
    if not old[x] then redis.call('ZADD', prefix .. kind .. ':' .. x, 0, id) end
  end
end
local function apply_one(key, id, at_arg, seq_arg, json, tags_arg, guides_arg, contacts_arg)
  local at, seq = tonumber(at_arg), tonumber(seq_arg)
  local cur = redis.call('HMGET', key, 'at', 'seq', 'tags', 'guides', 'contacts')
  if cur[1] then
    local cur_at, cur_seq = tonumber(cur[1]), tonumber(cur[2])
    if at < cur_at or (at == cur_at and seq < cur_seq) then return 0 end
    if cur[3] == tags_arg and cur[4] == guides_arg and cur[5] == contacts_arg then
      redis.call('HSET', key, 'profile', json, 'at', at_arg, 'seq', seq_arg)
      return 1
    end
  end
  local old_tags, old_guides = split(cur[3]), split(cur[4])
  local new_tags, new_guides = split(tags_arg), split(guides_arg)
  sync(id, old_tags, new_tags, 'tag')
  sync(id, old_guides, new_guides, 'guide')
  sync(id, pairs_of(old_tags, old_guides), pairs_of(new_tags, new_guides), 'aud')
  sync(id, split(cur[5]), split(contacts_arg), 'contact')
  count_member(prefix, old_tags, new_tags, old_guides, new_guides, cur[1] ~= false, true)
  redis.call('HSET', key, 'profile', json, 'at', at_arg, 'seq', seq_arg,
             'tags', tags_arg, 'guides', guides_arg, 'contacts', contacts_arg)
  return 1
end
local results = {}
for i, key in ipairs(KEYS) do
  local a = 1 + (i - 1) * 7
  results[i] = apply_one(key, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5],
                         ARGV[a + 6], ARGV[a + 7])
end
return results
"""
# Profiles per script call. One call per profile cost the sink ~85 us of its own CPU a profile
# (redis-py packs, times and reads each pipelined command in Python); a call per 50 about 27,
# and holds Redis about a millisecond, so readers barely wait behind a batch.
APPLY_CHUNK = 50

# KEYS[1] member hash. ARGV: prefix, member_id. Removes the member and every index entry.
_FORGET_LUA = COUNT_LUA + """
local key = KEYS[1]
local prefix, id = ARGV[1], ARGV[2]
local cur = redis.call('HMGET', key, 'tags', 'guides', 'contacts')
local tags, guides = {}, {}
if cur[1] then for x in string.gmatch(cur[1], '[^\\31]+') do tags[#tags + 1] = x end end
if cur[2] then for x in string.gmatch(cur[2], '[^\\31]+') do guides[#guides + 1] = x end end
if redis.call('EXISTS', key) == 1 then
  local tag_set, guide_set = {}, {}
  for _, t in ipairs(tags) do tag_set[t] = true end
  for _, g in ipairs(guides) do guide_set[g] = true end
  count_member(prefix, tag_set, {}, guide_set, {}, true, false)
end
for _, t in ipairs(tags) do
  redis.call('ZREM', prefix .. 'tag:' .. t, id)
  for _, g in ipairs(guides) do redis.call('ZREM', prefix .. 'aud:' .. t .. ':' .. g, id) end
end
for _, g in ipairs(guides) do redis.call('ZREM', prefix .. 'guide:' .. g, id) end
if cur[3] then
  for x in string.gmatch(cur[3], '[^\\31]+') do redis.call('ZREM', prefix .. 'contact:' .. x, id) end
end
return redis.call('DEL', key)
"""


@dataclass(frozen=True)
class ApplyResult:
    applied: int = 0
    stale: int = 0  # Redis already held this version or a newer one
    deleted: int = 0
    tasks_applied: int = 0
    tasks_stale: int = 0
    tasks_deleted: int = 0  # cancelled by erasure


@dataclass(frozen=True)
class Page:
    member_ids: list[str]
    next_cursor: str | None  # pass back to get the next page; None: this was the last page


def profile_version(profile: dict[str, Any]) -> int:
    """`as_of` in epoch milliseconds, the first part of a profile's version (-1 if absent)."""
    return _version(profile.get("as_of"))


def _version(as_of: str | None) -> int:
    if not as_of:
        return -1
    return int(datetime.fromisoformat(as_of).timestamp() * 1000)


class ServedProfile(NamedTuple):
    """What a profile write needs: the JSON as served, its version and its index entries."""

    member_id: str
    version: int  # profile_version
    json: bytes
    tags: str  # SEP-joined, sorted
    guides: str
    contacts: str  # WeCom external_userids

    @classmethod
    def of(cls, profile: dict[str, Any]) -> "ServedProfile":
        return cls.joined(
            profile["member_id"], profile_version(profile), orjson.dumps(profile),
            {tag["id"] for tag in profile.get("tags") or ()},
            {g["userid"] for g in profile.get("guides") or () if g.get("userid")},
            {g["external_userid"] for g in profile.get("guides") or ()
             if g.get("external_userid")})

    @classmethod
    def from_json(cls, raw: bytes) -> "ServedProfile":
        """From a profile's JSON, reading only the fields the indexes need and keeping the
        JSON as it is. Raises ValueError for a record that is not
        a profile (msgspec's errors are ValueErrors)."""
        view = _profile_view.decode(raw)
        return cls.joined(view.member_id, _version(view.as_of), bytes(raw),
                           {tag.id for tag in view.tags},
                           {g.userid for g in view.guides if g.userid},
                           {g.external_userid for g in view.guides if g.external_userid})

    @classmethod
    def joined(cls, member_id: str, version: int, json: bytes, tags: set[str],
                guides: set[str], contacts: set[str]) -> "ServedProfile":
        if any(SEP in x for x in (*tags, *guides, *contacts)):
            raise ValueError(f"member {member_id!r}: a tag, guide or contact id contains U+001F")
        return cls(member_id, version, json, SEP.join(sorted(tags)), SEP.join(sorted(guides)),
                   SEP.join(sorted(contacts)))


class _TagView(msgspec.Struct, gc=False):
    id: str


class _GuideView(msgspec.Struct, gc=False):
    userid: str | None = None
    external_userid: str | None = None


class _ProfileView(msgspec.Struct, gc=False):
    """The fields of a profile (schemas.profile.Profile) the Redis indexes read; decoding
    skips the rest."""

    member_id: str
    tags: list[_TagView] = []
    guides: list[_GuideView] = []
    as_of: str | None = None


_profile_view = msgspec.json.Decoder(_ProfileView)


class RedisProfileStore:
    """Profiles and audience indexes in Redis. Connects on `start()`, never at import."""

    def __init__(self, redis_url: str, *, prefix: str = DEFAULT_PREFIX,
                 socket_timeout: float = 5.0, connection: Mapping[str, Any] | None = None) -> None:
        """`connection`: extra `Redis.from_url` arguments, e.g. the password and TLS CA from
        `streams.platform.security.redis_client_kwargs(settings)`."""
        self.redis_url = redis_url
        self.connection = dict(connection or {})
        self.prefix = prefix
        self.socket_timeout = socket_timeout
        self._redis: redis.asyncio.Redis | None = None
        self._tasks: RedisTaskIndex | None = None

    async def start(self) -> None:
        # No retries inside redis-py: callers (the sink) own the retry policy and its backoff,
        # and must learn promptly that a write did not happen.
        self._redis = redis.asyncio.Redis.from_url(
            self.redis_url, socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout, retry=Retry(NoBackoff(), 0),
            health_check_interval=30, **self.connection)
        self._apply = self._redis.register_script(_APPLY_LUA)
        self._forget = self._redis.register_script(_FORGET_LUA)
        self._tasks = RedisTaskIndex(self._redis, self.prefix)

    async def stop(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
            self._tasks = None

    async def __aenter__(self) -> "RedisProfileStore":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def redis(self) -> redis.asyncio.Redis:
        if self._redis is None:
            raise RuntimeError("RedisProfileStore is not started")
        return self._redis

    @property
    def tasks(self) -> RedisTaskIndex:
        """The guide tasks held on the same connection (tasks.changes)."""
        if self._tasks is None:
            raise RuntimeError("RedisProfileStore is not started")
        return self._tasks

    @property
    def offsets_key(self) -> str:
        return f"{self.prefix}sink:offsets"

    def member_key(self, member_id: str) -> str:
        return f"{self.prefix}member:{member_id}"

    def tag_key(self, tag: str) -> str:
        return f"{self.prefix}tag:{tag}"

    def guide_key(self, guide: str) -> str:
        return f"{self.prefix}guide:{guide}"

    def contact_key(self, external_userid: str) -> str:
        return f"{self.prefix}contact:{external_userid}"

    def audience_key(self, guide: str, tag: str) -> str:
        return f"{self.prefix}aud:{tag}:{guide}"

    # --- writes -------------------------------------------------------------------------------

    async def apply(self, profiles: Sequence[dict[str, Any]],
                    seqs: Sequence[int] | None = None) -> ApplyResult:
        """Write each profile unless Redis holds a newer version of that member.

        `seqs` orders profiles with the same `as_of` (the sink passes Kafka offsets); without
        it, the later of two equal versions wins. One pipeline round trip for the whole batch;
        each profile is atomic on its own. Raises redis errors; what was written before the
        error is correct on its own, and writing the batch again is harmless.
        """
        return await self.write_batch([ServedProfile.of(p) for p in profiles], seqs)

    async def forget(self, member_ids: Iterable[str]) -> int:
        """Delete members (a tombstone on the member changelog: an erasure), their index entries
        and their tasks."""
        return (await self.write_batch((), forget=list(member_ids))).deleted

    async def write_batch(self, profiles: Sequence[ServedProfile],
                          seqs: Sequence[int] | None = None, *, forget: Sequence[str] = (),
                          offsets: dict[str, int] | None = None,
                          tasks: Sequence[dict[str, Any]] = (),
                          forget_tasks_of: Sequence[str] = ()) -> ApplyResult:
        """Profiles, task records, deletions and then the source offsets they reach, in one
        round trip. A deleted member's tasks go with it (after the batch's task records, so a
        record read in the same batch does not bring one back). `forget_tasks_of`: members
        whose tasks a tombstone on tasks.changes deletes, before the batch's task records.

        `offsets` ({"topic:partition": next offset}) are written last, after every profile
        of the batch: Redis runs a connection's commands in order and persists them in order
        (AOF) or as a point-in-time snapshot (RDB), so whenever Redis holds an offset it also
        holds every profile before it. That is what lets the sink resume from Redis itself,
        and rebuild everything when Redis comes back empty.
        """
        if seqs is not None and len(seqs) != len(profiles):
            raise ValueError("seqs must have one sequence number per profile")
        if not (profiles or forget or offsets or tasks or forget_tasks_of):
            return ApplyResult()
        pipe = self.redis.pipeline(transaction=False)
        chunks = 0
        for start in range(0, len(profiles), APPLY_CHUNK):
            keys: list[str] = []
            args: list[Any] = [self.prefix]
            for i in range(start, min(start + APPLY_CHUNK, len(profiles))):
                profile = profiles[i]
                keys.append(self.member_key(profile.member_id))
                args += (profile.member_id, profile.version, 0 if seqs is None else seqs[i],
                         profile.json, profile.tags, profile.guides, profile.contacts)
            await self._apply(keys=keys, args=args, client=pipe)
            chunks += 1
        for member_id in forget_tasks_of:
            await self.tasks.queue_forget_member(pipe, member_id)
        for record in tasks:
            await self.tasks.queue_apply(pipe, record)
        for member_id in forget:
            await self._forget(keys=[self.member_key(member_id)], args=[self.prefix, member_id],
                               client=pipe)
            await self.tasks.queue_forget_member(pipe, member_id)
        if offsets:
            pipe.hset(self.offsets_key, mapping=offsets)
        results = await pipe.execute()
        applied = sum(chunk.count(1) for chunk in results[:chunks])
        results = results[chunks + len(forget_tasks_of):]
        task_results = results[:len(tasks)]
        forgotten = results[len(tasks):len(tasks) + 2 * len(forget)]
        return ApplyResult(applied=applied, stale=len(profiles) - applied,
                           deleted=sum(int(r) for r in forgotten[::2]),
                           tasks_applied=task_results.count(1),
                           tasks_stale=task_results.count(0),
                           tasks_deleted=task_results.count(2))

    async def read_offsets(self, fields: Sequence[str]) -> dict[str, int | None]:
        """The source offsets Redis reached, per "topic:partition" (None: nothing from it)."""
        if not fields:
            return {}
        raw = await self.redis.hmget(self.offsets_key, list(fields))
        return {f: None if v is None else int(v) for f, v in zip(fields, raw)}

    # --- reads --------------------------------------------------------------------------------

    async def get_profile(self, member_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.member_key(member_id), "profile")
        return None if raw is None else orjson.loads(raw)

    async def get_profiles(self, member_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        if not member_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for member_id in member_ids:
            pipe.hget(self.member_key(member_id), "profile")
        return [None if raw is None else orjson.loads(raw) for raw in await pipe.execute()]

    async def guides_of(self, member_ids: Sequence[str]) -> dict[str, list[str]]:
        """Guide userids each member is bound to, as Redis knows now (missing: no entry)."""
        if not member_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for member_id in member_ids:
            pipe.hget(self.member_key(member_id), "guides")
        out = {}
        for member_id, raw in zip(member_ids, await pipe.execute()):
            if raw is not None:
                text = raw.decode() if isinstance(raw, bytes) else raw
                out[member_id] = [g for g in text.split(SEP) if g]
        return out

    async def members_for(self, guide: str | None, tag: str | None, cursor: str | None = None,
                          limit: int = 50) -> Page:
        """One page of the members bound to `guide` (any guide if None) holding `tag` (any tag
        if None; at least one of the two is needed), in member id order after `cursor`."""
        if guide is None and tag is None:
            raise ValueError("members_for needs a guide, a tag or both")
        limit = max(1, min(limit, MAX_PAGE))
        if guide is not None and tag is not None:
            key = self.audience_key(guide, tag)
        elif guide is not None:
            key = self.guide_key(guide)
        else:
            key = self.tag_key(tag)  # type: ignore[arg-type]
        start = "-" if not cursor else f"({cursor}"
        raw = await self.redis.zrange(key, start, "+", bylex=True, offset=0, num=limit + 1)
        ids = [m.decode() if isinstance(m, bytes) else m for m in raw]
        more = len(ids) > limit
        ids = ids[:limit]
        return Page(ids, ids[-1] if more else None)

    async def member_ids(self, batch: int = 500) -> AsyncIterator[str]:
        """Every served member id (SCAN: no order, each id once unless it is rewritten while
        the scan runs)."""
        prefix = self.member_key("")
        async for key in self.redis.scan_iter(match=prefix + "*", count=batch):
            name = key.decode() if isinstance(key, bytes) else key
            yield name[len(prefix):]

    async def members_of_contact(self, external_userid: str) -> list[str]:
        """The members whose profile names this WeCom customer (normally one)."""
        raw = await self.redis.zrange(self.contact_key(external_userid), 0, -1)
        return [m.decode() if isinstance(m, bytes) else m for m in raw]

    async def is_bound(self, member_id: str, guide: str) -> bool:
        return await self.redis.zscore(self.guide_key(guide), member_id) is not None
