"""Tags a guide sets in WeCom itself, read back through WeCom's callback (回调).

When a guide edits a customer in WeCom (tags among them), WeCom POSTs an encrypted
`change_external_contact` event with ChangeType `edit_external_contact` to the URL set in
its admin console; `tagstream api` serves it at /wecom/callback. The event names the guide
(UserID) and the customer (ExternalUserID), not the tags, so the receiver reads the customer
(`externalcontact/get`), takes that guide's corp tags outside tagstream's own group, compares
them with what the receiver saw on that customer last time, and writes one
`interaction.tag_marked` event per difference.

Invariants:
- tags of tagstream's own group are never read back: tagstream's own writes cannot echo
  (WeCom raises no callback for changes made through the API, and they would be filtered);
- a WeCom tag whose name is a marked tag's name_zh in the rule pack becomes that tag (rules
  can read it); any other becomes `wecom:<WeCom tag id>` with the WeCom name;
- the comparison is with the receiver's own record of the pair (Redis, `SeenTags`), never
  with the served profile, which lags the events just written: a quick undo in WeCom
  (add, then remove) must not be lost. Without a record (the first callback of a pair, or
  one idle 30 days) the profile's `wecom` tags of that guide stand in;
- each comparison bumps the record's version, and event ids derive from (guide, customer,
  version, tag, op): a callback retried after a failure repeats its ids (the worker drops
  them), while a new edit, even within the same second, gets new ones;
- a failure answers 503, so WeCom retries rather than the edit being lost; callbacks of one
  customer are handled one at a time per process.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Protocol

import orjson

from streams.platform.event_writer import build_event
from streams.serving.wecom.callback_crypto import ContactChange
from streams.serving.wecom.sync import GROUP_NAME
from taggers.marked import marked_guides

log = logging.getLogger(__name__)

EDIT = "edit_external_contact"
CORP_TAG = 1  # follow_user.tags.type: 1 corp tag, 2 the guide's personal tag
WECOM_TAG_PREFIX = "wecom:"


class Contacts(Protocol):
    async def get_external_contact(self, external_userid: str) -> list[dict[str, Any]]: ...


class Profiles(Protocol):
    async def members_of_contact(self, external_userid: str) -> list[str]: ...

    async def get_profile(self, member_id: str) -> dict[str, Any] | None: ...


class Events(Protocol):
    async def write(self, events: Iterable[bytes]) -> int: ...


class SeenTags(Protocol):
    """What the receiver last saw on a (guide, customer): (version, tagstream tag ids)."""

    async def get(self, userid: str, external_userid: str) -> tuple[int, set[str]] | None: ...

    async def put(self, userid: str, external_userid: str, version: int,
                  tags: set[str]) -> None: ...


class RedisSeenTags:
    """SeenTags in the profile store's Redis (connected once the store has started), one
    small key per pair, forgotten after `ttl_s` without a change."""

    def __init__(self, store: Any, ttl_s: int = 30 * 24 * 3600) -> None:
        self.store, self.ttl_s = store, ttl_s

    def key(self, userid: str, external_userid: str) -> str:
        return f"{self.store.prefix}wecom_seen:{userid}:{external_userid}"

    async def get(self, userid: str, external_userid: str) -> tuple[int, set[str]] | None:
        raw = await self.store.redis.get(self.key(userid, external_userid))
        if raw is None:
            return None
        record = orjson.loads(raw)
        return int(record["v"]), set(record["tags"])

    async def put(self, userid: str, external_userid: str, version: int,
                  tags: set[str]) -> None:
        await self.store.redis.set(self.key(userid, external_userid),
                             orjson.dumps({"v": version, "tags": sorted(tags)}), ex=self.ttl_s)


@dataclass
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(frozen=True)
class ShownTag:
    tag: str  # tagstream's id for it
    name_zh: str


def shown_tags(follow_users: list[Mapping[str, Any]], userid: str,
               marked_by_name: Mapping[str, str],
               group_name: str = GROUP_NAME) -> dict[str, ShownTag] | None:
    """The guide's corp tags on the customer outside tagstream's group, by tagstream id;
    None when the customer is not (any more) that guide's contact."""
    entry = next((f for f in follow_users if f.get("userid") == userid), None)
    if entry is None:
        return None
    shown: dict[str, ShownTag] = {}
    for tag in entry.get("tags") or ():
        if tag.get("type") != CORP_TAG or tag.get("group_name") == group_name:
            continue
        name, wecom_id = str(tag.get("tag_name") or ""), str(tag.get("tag_id") or "")
        if not name or not wecom_id:
            continue
        tag_id = marked_by_name.get(name) or WECOM_TAG_PREFIX + wecom_id
        shown[tag_id] = ShownTag(tag_id, name[:30])
    return shown


def held_from_wecom(profile: Mapping[str, Any], userid: str) -> set[str]:
    """The tags the profile holds because this guide set them in WeCom."""
    return {tag["id"] for tag in profile.get("tags") or ()
            if tag.get("source") == "wecom"
            and userid in marked_guides(tag.get("evidence") or {})}


def mark_events(member_id: str, change: ContactChange, shown: Mapping[str, ShownTag],
                held: set[str], version: int) -> list[bytes]:
    """One tag_marked event per difference between WeCom now and what was seen before."""
    at = datetime.fromtimestamp(change.create_time, timezone.utc)
    events = []
    for op, tags in (("added", sorted(set(shown) - held)), ("removed", sorted(held - set(shown)))):
        for tag in tags:
            digest = hashlib.blake2b(
                f"{member_id}\x1f{change.userid}\x1f{change.external_userid}\x1f{version}\x1f"
                f"{tag}\x1f{op}".encode(), digest_size=12).hexdigest()
            events.append(build_event(
                "interaction.tag_marked", member_id, channel="wecom",
                event_id=f"wecom-{digest}", occurred_at=at, tag=tag, op=op, source="wecom",
                guide_id=change.userid,
                name_zh=shown[tag].name_zh if op == "added" else None))
    return events


class CallbackReceiver:
    """Turns one decrypted contact change into tag_marked events (none for other changes)."""

    def __init__(self, contacts: Contacts, profiles: Profiles, events: Events,
                 marked_by_name: Mapping[str, str], seen: SeenTags) -> None:
        self.contacts, self.profiles, self.events, self.seen = contacts, profiles, events, seen
        self.marked_by_name = dict(marked_by_name)
        self._locks: dict[str, _Turn] = {}  # one customer's callbacks, one at a time

    async def receive(self, change: ContactChange) -> int:
        """How many events it wrote. Raises when WeCom, Redis or Kafka failed (retry)."""
        if change.change_type != EDIT:
            return 0
        key = change.external_userid
        entry = self._locks.setdefault(key, _Turn())
        entry.users += 1
        try:
            async with entry.lock:
                return await self._receive(change)
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[key]

    async def _receive(self, change: ContactChange) -> int:
        member_ids = await self.profiles.members_of_contact(change.external_userid)
        if not member_ids:
            log.info("wecom callback: customer %s of %s is no member tagstream serves",
                     change.external_userid, change.userid)
            return 0
        follow_users = await self.contacts.get_external_contact(change.external_userid)
        shown = shown_tags(follow_users, change.userid, self.marked_by_name)
        if shown is None:
            return 0
        seen = await self.seen.get(change.userid, change.external_userid)
        version = seen[0] + 1 if seen is not None else 1
        events: list[bytes] = []
        for member_id in member_ids:
            if seen is not None:
                before = seen[1]
            else:
                profile = await self.profiles.get_profile(member_id)
                before = held_from_wecom(profile, change.userid) if profile else set()
            events += mark_events(member_id, change, shown, before, version)
        if events:
            await self.events.write(events)
        # only once the events are written: a failure before this repeats the same ids
        await self.seen.put(change.userid, change.external_userid, version, set(shown))
        return len(events)
