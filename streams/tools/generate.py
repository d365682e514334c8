"""Deterministic synthetic member histories: the demo and benchmark input for `tagstream replay`.

`generate_events(members, days, seed)` yields event dicts in the exact DESIGN.md JSON shapes, in
non-decreasing `occurred_at` order; the same arguments always give the same bytes. Members join
over the period and then live out a persona (one-time buyer, repeat buyer, baijiu collector,
wine lover, trial-size buyer, refund-prone buyer, coupon hunter, active sharer, cap opener,
lapsing member, joined-but-never-ordered ...), so every default rule in RULES.md has members
that enter and leave its tag.

Streaming by construction: a single heap holds each active member's next pending actions (at
most a few entries per member), so memory depends on the number of members, never on `days`.
Pure: no Kafka, no clock, no global random state.
"""

from __future__ import annotations

import heapq
import io
import random
from bisect import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from itertools import accumulate
from typing import IO

import orjson

CST = timezone(timedelta(hours=8), "CST")
DEFAULT_START = datetime(2024, 1, 1, tzinfo=CST)

_DAY = 86_400
_CST_OFFSET = 8 * 3600
_NEVER = 1 << 62
_ORDINAL_1970 = date(1970, 1, 1).toordinal()
_MEMBER_DAY = 8  # 会员日: points are doubled, so some members save their order for it

# --- catalogue ---------------------------------------------------------------------------------

# sku, category, regular unit price (fen), trial-size (试用装) unit price (fen, 0 = none)
_CATALOGUE: dict[str, tuple[str, str, int, int]] = {
    sku: (sku, category, price, trial)
    for sku, category, price, trial in (
        ("BJ-JX53-500ML", "baijiu", 149_900, 0),  # flagship 53% sauce-aroma: the premium bottle
        ("BJ-JX53-1500ML", "baijiu", 459_900, 0),  # collector's 1.5 L
        ("BJ-NX52-500ML", "baijiu", 109_900, 0),
        ("BJ-NX52-GIFT", "baijiu", 69_900, 0),
        ("BJ-QX42-500ML", "baijiu", 45_900, 9_900),  # 100 ml trial
        ("BJ-JX-SERIES-500ML", "baijiu", 26_800, 3_900),  # 50 ml trial
        ("BJ-EGT-500ML", "baijiu", 2_500, 0),
        ("WN-CAB-750ML", "wine", 16_800, 2_900),  # 187 ml trial
        ("WN-BDX-750ML", "wine", 39_800, 0),
        ("WN-SPK-750ML", "wine", 59_900, 0),
        ("WN-HOUSE-750ML", "wine", 7_900, 0),
        ("BR-LAGER-500MLx12", "beer", 6_900, 0),
        ("BR-IPA-330MLx6", "beer", 8_900, 990),
        ("BR-WHEAT-500MLx12", "beer", 7_900, 0),
        ("HJ-5Y-500ML", "huangjiu", 3_800, 0),
        ("HJ-10Y-500ML", "huangjiu", 8_800, 1_500),
        ("HJ-GIFT-2x500ML", "huangjiu", 26_800, 0),
        ("OIL-PEANUT-5L", "oil", 13_900, 990),  # 400 ml trial
        ("OIL-SOY-5L", "oil", 6_900, 0),
        ("OIL-CAMELLIA-2L", "oil", 25_800, 1_990),
        ("OIL-CANOLA-5L", "oil", 7_900, 0),
        ("RICE-NE-5KG", "rice", 5_900, 590),  # 500 g trial
        ("RICE-WUCHANG-5KG", "rice", 9_900, 0),
        ("RICE-THAI-10KG", "rice", 11_900, 0),
    )
}


def _shelf(*weighted: tuple[str, int]) -> tuple[tuple[str, str, int, int], ...]:
    """A persona's shopping shelf: a product listed `weight` times is picked that much more often."""
    return tuple(_CATALOGUE[sku] for sku, weight in weighted for _ in range(weight))


_EVERYDAY = _shelf(
    ("OIL-PEANUT-5L", 3), ("OIL-SOY-5L", 2), ("OIL-CANOLA-5L", 2), ("OIL-CAMELLIA-2L", 1),
    ("RICE-NE-5KG", 3), ("RICE-WUCHANG-5KG", 2), ("RICE-THAI-10KG", 1),
    ("BR-LAGER-500MLx12", 2), ("BR-WHEAT-500MLx12", 1), ("HJ-5Y-500ML", 2), ("HJ-10Y-500ML", 1),
    ("BJ-EGT-500ML", 2), ("BJ-JX-SERIES-500ML", 1), ("BJ-QX42-500ML", 1), ("WN-HOUSE-750ML", 1),
)
_COLLECTOR = _shelf(
    ("BJ-JX53-500ML", 5), ("BJ-JX53-1500ML", 1), ("BJ-NX52-500ML", 3), ("BJ-NX52-GIFT", 2),
    ("BJ-QX42-500ML", 1), ("WN-BDX-750ML", 1),
)
_WINE = _shelf(
    ("WN-CAB-750ML", 3), ("WN-BDX-750ML", 3), ("WN-SPK-750ML", 1), ("WN-HOUSE-750ML", 3),
    ("OIL-CAMELLIA-2L", 1), ("RICE-WUCHANG-5KG", 1),
)
_BEER = _shelf(
    ("BR-LAGER-500MLx12", 4), ("BR-IPA-330MLx6", 2), ("BR-WHEAT-500MLx12", 2),
    ("BJ-EGT-500ML", 1), ("HJ-5Y-500ML", 1),
)
# Marked tags of the default pack a store guide sets (导购打标).
_GUIDE_MARKS = ("vip_banquet", "gift_buyer", "prefers_call")
_TRIAL = tuple(entry for entry in _CATALOGUE.values() if entry[3])
_SCAN_VERIFY = _shelf(("BJ-JX53-500ML", 3), ("BJ-NX52-500ML", 2), ("BJ-QX42-500ML", 1),
                      ("WN-BDX-750ML", 1), ("BJ-JX-SERIES-500ML", 2))
_SCAN_CAP = _shelf(("BR-LAGER-500MLx12", 3), ("BR-IPA-330MLx6", 1), ("BR-WHEAT-500MLx12", 2),
                   ("BJ-JX-SERIES-500ML", 1), ("BJ-EGT-500ML", 1))

# --- channels, stores, guides ------------------------------------------------------------------

_CHANNELS = ("tmall", "jd", "douyin", "youzan", "weimob", "miniprogram", "pos", "wecom")
_CHANNEL_WEIGHTS = (22, 18, 15, 6, 6, 15, 12, 6)
_ONLINE = ("tmall", "jd", "douyin", "youzan", "weimob", "miniprogram")

# store_id, province, city, the store's shopping guides (their WeCom userids)
_STORES = (
    ("st_chengdu_01", "四川", "成都", ("guide_zhang", "guide_li")),
    ("st_chongqing_01", "重庆", "重庆", ("guide_wang",)),
    ("st_guiyang_01", "贵州", "贵阳", ("guide_liu", "guide_chen")),
    ("st_beijing_01", "北京", "北京", ("guide_yang",)),
    ("st_shanghai_01", "上海", "上海", ("guide_zhao", "guide_huang")),
    ("st_guangzhou_01", "广东", "广州", ("guide_zhou",)),
    ("st_hangzhou_01", "浙江", "杭州", ("guide_wu", "guide_xu")),
    ("st_wuhan_01", "湖北", "武汉", ("guide_sun",)),
)
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# --- interactions ------------------------------------------------------------------------------

_CASUAL = (("interaction.browse", 40), ("interaction.sign_in", 15), ("interaction.lottery", 10),
           ("interaction.share", 8), ("interaction.coupon_claimed", 10), ("interaction.review", 6),
           ("interaction.event_attended", 4), ("interaction.profile_updated", 2))
_ENGAGED = (("interaction.sign_in", 45), ("interaction.share", 25), ("interaction.browse", 14),
            ("interaction.lottery", 8), ("interaction.review", 3), ("interaction.event_attended", 5))
_BARGAIN = (("interaction.coupon_claimed", 40), ("interaction.lottery", 20),
            ("interaction.browse", 25), ("interaction.sign_in", 10), ("interaction.share", 5))


@dataclass(frozen=True, slots=True)
class _Persona:
    name: str
    weight: int
    order_every: float = 0.0  # mean days between orders; 0 = never orders
    first_order_within: float = 30.0  # days after joining
    max_orders: int = 0  # 0 = no limit
    shelf: tuple[tuple[str, str, int, int], ...] = _EVERYDAY
    max_items: int = 2
    max_quantity: int = 2
    refund_p: float = 0.02
    coupon_p: float = 0.1
    interact_every: float = 20.0
    interactions: tuple[tuple[str, int], ...] = _CASUAL
    scan_every: float = 0.0  # 0 = never scans
    cap_share: float = 0.0  # of scans, the share that are open-cap scans (the rest: verification)
    lapse_p: float = 0.0  # goes dormant for 95-260 days; half of them come back
    trial: bool = False


_PERSONAS = (
    _Persona("browser", 14, interact_every=18),
    _Persona("one_time", 17, order_every=1, first_order_within=60, max_orders=1, interact_every=30),
    _Persona("repeat", 19, order_every=25, max_items=3, interact_every=12, scan_every=120,
             cap_share=0.4, lapse_p=0.15),
    _Persona("collector", 4, order_every=40, first_order_within=10, shelf=_COLLECTOR, max_items=2,
             max_quantity=2, coupon_p=0.0, interact_every=10, scan_every=25, cap_share=0.3,
             lapse_p=0.3),
    _Persona("whale", 1, order_every=25, first_order_within=5, shelf=_COLLECTOR, max_items=2,
             max_quantity=6, coupon_p=0.0, interact_every=10, scan_every=15, cap_share=0.2,
             lapse_p=0.2),
    _Persona("wine_lover", 6, order_every=30, first_order_within=20, shelf=_WINE, max_quantity=3,
             interact_every=15, scan_every=60),
    _Persona("trial", 8, order_every=40, first_order_within=20, interact_every=20, trial=True),
    _Persona("refund_prone", 4, order_every=12, first_order_within=10, max_items=3, refund_p=0.5,
             interact_every=15),
    _Persona("coupon_hunter", 6, order_every=15, first_order_within=15, coupon_p=0.85,
             interact_every=6, interactions=_BARGAIN),
    _Persona("engaged", 7, order_every=45, interact_every=1.5, interactions=_ENGAGED,
             scan_every=90, cap_share=0.5),
    _Persona("cap_opener", 6, order_every=14, shelf=_BEER, max_quantity=4, interact_every=15,
             scan_every=7, cap_share=0.85),
    _Persona("lapsing", 6, order_every=15, first_order_within=15, max_items=3, interact_every=12,
             lapse_p=1.0),
)
_PERSONA_CUM = tuple(accumulate(p.weight for p in _PERSONAS))


def _cumulative(weighted: Iterable[tuple[str, int]]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    names, weights = zip(*weighted)
    return names, tuple(accumulate(weights))


_CHANNEL_CUM = tuple(accumulate(_CHANNEL_WEIGHTS))
_INTERACTION_TABLES = {id(t): _cumulative(t) for t in (_CASUAL, _ENGAGED, _BARGAIN)}

# Local hour-of-day activity profile (orders and interactions peak at lunch and in the evening).
_HOURLY = (1.0, 0.6, 0.3, 0.2, 0.2, 0.3, 0.8, 1.5, 2.5, 3.0, 3.5, 4.0,
           4.5, 3.5, 3.0, 3.0, 3.2, 3.5, 4.0, 5.0, 6.0, 6.5, 5.0, 3.0)


def _time_of_day_table(size: int = 4096) -> tuple[int, ...]:
    """Seconds-of-day quantiles of `_HOURLY`: table[int(random() * size)] samples the profile."""
    cum = tuple(accumulate(_HOURLY))
    total = cum[-1]
    out = []
    for i in range(size):
        q = (i + 0.5) / size * total
        hour = bisect(cum, q)
        low = cum[hour - 1] if hour else 0.0
        out.append(int((hour + (q - low) / _HOURLY[hour]) * 3600) % _DAY)
    return tuple(out)


_TOD = _time_of_day_table()
_TOD_N = len(_TOD)

_HH_MM = tuple(f"T{m // 60:02d}:{m % 60:02d}:" for m in range(24 * 60))
_SS_CST = tuple(f"{s:02d}+08:00" for s in range(60))

_PREFIX = {"order.paid": "ord", "order.refunded": "rfd", "scan.verified": "scn",
           "scan.cap_opened": "scn"}

# heap entry kinds
_EMIT, _JOIN, _ORDER, _INTERACT, _SCAN = range(5)


class _Member:
    __slots__ = ("id", "persona", "channel", "store", "guide", "orders", "birthday",
                 "dorm_start", "dorm_end", "trial_sku", "external_userid")

    def __init__(self, member_id: str, persona: _Persona, channel: str, store: tuple,
                 guide: str) -> None:
        self.id = member_id
        self.persona = persona
        self.channel = channel
        self.store = store
        self.guide = guide
        self.orders = 0
        self.birthday: str | None = None
        self.dorm_start = _NEVER
        self.dorm_end = _NEVER
        self.trial_sku: tuple[str, str, int, int] | None = None
        self.external_userid = ""


class _History:
    """One generation run: the random source, the heap of pending actions and the counters."""

    def __init__(self, members: int, days: int, seed: int, start: datetime) -> None:
        if start.tzinfo is None:
            start = start.replace(tzinfo=CST)
        self.r = random.Random(seed)
        self.seed = seed
        self.start = int(start.timestamp())
        self.end = self.start + days * _DAY
        self.members = members
        self.width = max(7, len(str(members)))
        self.heap: list[tuple[int, int, int, object]] = []
        self.pushed = 0
        self.order_seq = 0
        self.code_seq = 0
        self.days: dict[int, tuple[str, str, int]] = {}

    # -- time ---------------------------------------------------------------------------------

    def day_info(self, day: int) -> tuple[str, str, int]:
        """(YYYY-MM-DD, YYYYMMDD, day of month) of a local (UTC+8) day number."""
        info = self.days.get(day)
        if info is None:
            if len(self.days) >= 512:  # bounded: memory must not grow with the length of history
                self.days.clear()
            d = date.fromordinal(day + _ORDINAL_1970)
            iso = d.isoformat()
            info = self.days[day] = (iso, iso.replace("-", ""), d.day)
        return info

    def later(self, now: int, mean_days: float) -> int:
        """The next time after `now` of a Poisson process with `mean_days`, at a plausible hour."""
        gap = self.r.expovariate(1.0 / mean_days)
        day = (now + _CST_OFFSET + int(gap * _DAY)) // _DAY
        t = day * _DAY - _CST_OFFSET + _TOD[int(self.r.random() * _TOD_N)]
        if t <= now:
            t = now + 60 + int(self.r.random() * 7200)
        return t

    def after(self, now: int, low_days: float, high_days: float) -> int:
        """A time `low_days`..`high_days` after `now` (give or take the hour), at a plausible hour."""
        r = self.r.random
        day = (now + _CST_OFFSET + int((low_days + r() * (high_days - low_days)) * _DAY)) // _DAY
        t = day * _DAY - _CST_OFFSET + _TOD[int(r() * _TOD_N)]
        if t <= now:
            t = now + 60 + int(r() * 7200)
        return t

    def member_day(self, t: int) -> int:
        """`t` moved to the next member day (the 8th), same hour."""
        day = (t + _CST_OFFSET) // _DAY
        d = date.fromordinal(day + _ORDINAL_1970)
        target = d.replace(day=_MEMBER_DAY)
        if target < d:
            target = (target.replace(day=28) + timedelta(days=4)).replace(day=_MEMBER_DAY)
        return t + (target - d).days * _DAY

    def push(self, t: int, kind: int, obj: object) -> None:
        if t < self.end:
            self.pushed += 1
            heapq.heappush(self.heap, (t, self.pushed, kind, obj))

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> Iterator[dict]:
        r = self.r.random
        period = self.end - self.start
        # A third of the base was already enrolled in the first days; the rest join throughout.
        first_days = min(period, 7 * _DAY)
        # Join times are known up front: kept sorted beside the heap (not in it), which keeps
        # the heap down to the members already active.
        joins = sorted(
            (self.start + int(r() * (first_days if r() < 0.3 else period * 0.95)), i, _JOIN, i + 1)
            for i in range(self.members)
        )
        joins.append((_NEVER, 0, _JOIN, 0))  # sentinel
        next_join = 0
        join_t = joins[0][0]
        self.pushed = self.members
        heap = self.heap
        pop = heapq.heappop
        handlers = {_JOIN: self.on_join, _ORDER: self.on_order, _INTERACT: self.on_interact,
                    _SCAN: self.on_scan}
        prefix = _PREFIX
        day_info = self.day_info
        days = self.days
        end = self.end
        emitted = 0
        while True:
            if heap and heap[0][0] < join_t:  # on a tie the join goes first
                t, _, kind, obj = pop(heap)
            else:
                t, _, kind, obj = joins[next_join]
                next_join += 1
                join_t = joins[next_join][0] if next_join < len(joins) else _NEVER
            if t >= end:
                break
            ev = obj if kind == _EMIT else handlers[kind](obj, t)
            if ev is None:
                continue
            day, sod = divmod(t + _CST_OFFSET, _DAY)
            info = days.get(day) or day_info(day)
            minute, second = divmod(sod, 60)
            emitted += 1
            ev["event_id"] = f"{prefix.get(ev['event_type'], 'int')}-{info[1]}-{emitted:08d}"
            ev["occurred_at"] = info[0] + _HH_MM[minute] + _SS_CST[second]
            yield ev

    @staticmethod
    def base(event_type: str, member: _Member, channel: str) -> dict:
        # event_id and occurred_at are filled in when the event is emitted, in file order
        return {"event_id": None, "event_type": event_type, "member_id": member.id,
                "occurred_at": None, "channel": channel, "schema_version": 1}

    def campaign(self, t: int) -> str:
        iso = self.day_info((t + _CST_OFFSET) // _DAY)[0]
        return f"cmp-{iso[:4]}{iso[5:7]}-{1 + int(self.r.random() * 3)}"

    # -- members ------------------------------------------------------------------------------

    def on_join(self, number: int, t: int) -> dict:
        r = self.r.random
        persona = _PERSONAS[bisect(_PERSONA_CUM, r() * _PERSONA_CUM[-1])]
        channel = _CHANNELS[bisect(_CHANNEL_CUM, r() * _CHANNEL_CUM[-1])]
        store = _STORES[int(r() * len(_STORES))]
        guide = store[3][int(r() * len(store[3]))]
        m = _Member(f"M{number:0{self.width}d}", persona, channel, store, guide)
        if persona.lapse_p and r() < persona.lapse_p:
            m.dorm_start = t + int((45 + r() * 105) * _DAY)
            if r() < 0.5:  # won back after 95-260 quiet days
                m.dorm_end = m.dorm_start + int((95 + r() * 165) * _DAY)
        ev = self.base("interaction.member_joined", m, channel)
        if channel == "pos":
            ev["store_id"] = store[0]
        if r() < 0.2:
            ev["campaign_id"] = self.campaign(t)

        if r() < 0.4:
            self.push(t + 30 + int(r() * 3600), _EMIT,
                      self.base("interaction.follow_official_account", m, "miniprogram"))
        if r() < 0.6:
            profile = self.base("interaction.profile_updated", m, self.online(m))
            if r() < 0.85:
                month = int(r() * 12)
                m.birthday = f"{month + 1:02d}-{1 + int(r() * _DAYS_IN_MONTH[month]):02d}"
                profile["birthday"] = m.birthday
            self.push(t + 60 + int(r() * 20 * _DAY), _EMIT, profile)
        if r() < (0.8 if channel in ("pos", "wecom") else 0.3):
            self.befriend(m, guide, t + 120 + int(r() * 30 * _DAY), remove_p=0.15)
            if r() < 0.1:  # a second guide, from another store, also has them as a contact
                other = _STORES[int(r() * len(_STORES))][3][0]
                if other != guide:
                    self.befriend(m, other, t + int((30 + r() * 120) * _DAY), remove_p=0.3)

        self.consent(m, number, t)
        self.marks(m, number, t, guide)

        if persona.order_every:
            self.push(self.after(t, 0.0, persona.first_order_within), _ORDER, m)
        self.push(self.later(t, persona.interact_every), _INTERACT, m)
        if persona.scan_every:
            self.push(self.later(t, persona.scan_every), _SCAN, m)
        if persona.trial:
            m.trial_sku = _TRIAL[int(r() * len(_TRIAL))]
        return ev

    def befriend(self, m: _Member, guide: str, t: int, remove_p: float) -> None:
        if not m.external_userid:
            m.external_userid = f"wm{self.r.getrandbits(120):030x}"
        added = self.base("interaction.wecom_friend_added", m, "wecom")
        added["guide_id"] = guide
        added["external_userid"] = m.external_userid
        self.push(t, _EMIT, added)
        if self.r.random() < remove_p:
            removed = self.base("interaction.wecom_friend_removed", m, "wecom")
            removed["guide_id"] = guide
            removed["external_userid"] = m.external_userid
            self.push(self.after(t, 20, 200), _EMIT, removed)

    def consent(self, m: _Member, number: int, t: int) -> None:
        """About 3 % of members refuse marketing at some point; 4 in 10 of them allow it again.
        A random stream of its own, so that the rest of the history is what it was before."""
        own = random.Random(f"{self.seed}:consent:{number}").random
        if own() >= 0.03:
            return
        refused_at = t + int((10 + own() * 200) * _DAY)
        refuse = self.base("interaction.consent_changed", m, self.online(m))
        self.push(refused_at, _EMIT, {**refuse, "marketing": False})
        if own() < 0.4:
            self.push(refused_at + int((5 + own() * 60) * _DAY), _EMIT,
                      {**refuse, "marketing": True})

    def marks(self, m: _Member, number: int, t: int, guide: str) -> None:
        """Tags people set: about 8 % of members get one from their store's guide (a fifth
        of those taken off again later), about 5 % land on a 30-day campaign import list.
        A random stream of its own, like consent."""
        own = random.Random(f"{self.seed}:marks:{number}").random
        if own() < 0.08:
            tag = _GUIDE_MARKS[int(own() * len(_GUIDE_MARKS))]
            marked = {**self.base("interaction.tag_marked", m, "guide_api"), "tag": tag,
                      "op": "added", "source": "guide", "guide_id": guide}
            at = t + int((1 + own() * 90) * _DAY)
            self.push(at, _EMIT, marked)
            if own() < 0.2:
                self.push(at + int((10 + own() * 120) * _DAY), _EMIT,
                          {**marked, "op": "removed"})
        if own() < 0.05:
            at = t + int((5 + own() * 200) * _DAY)
            self.push(at, _EMIT, {**self.base("interaction.tag_marked", m, "import"),
                                  "tag": "spring_tasting", "op": "added", "source": "import",
                                  "name_zh": "春季品鉴会", "expires_at": self.iso_at(at + 30 * _DAY)})

    def iso_at(self, t: int) -> str:
        day, sod = divmod(t + _CST_OFFSET, _DAY)
        minute, second = divmod(sod, 60)
        return self.day_info(day)[0] + _HH_MM[minute] + _SS_CST[second]

    def online(self, m: _Member) -> str:
        return m.channel if m.channel in _ONLINE else "miniprogram"

    def resting(self, m: _Member, t: int, kind: int) -> bool:
        """True if `m` is dormant at `t`; their stream `kind` resumes when they come back."""
        if m.dorm_start <= t < m.dorm_end:
            if m.dorm_end < self.end:  # else they never come back
                self.push(self.after(m.dorm_end, 0, 5), kind, m)
            return True
        return False

    # -- orders -------------------------------------------------------------------------------

    def on_order(self, m: _Member, t: int) -> dict | None:
        if self.resting(m, t, _ORDER):
            return None
        r = self.r.random
        p = m.persona
        next_t: int | None = None
        if p.trial and m.orders == 0:
            sku, category, _, trial_price = m.trial_sku  # type: ignore[misc]
            items = [{"sku": sku, "category": category, "unit_price_fen": trial_price,
                      "quantity": 1 + (r() < 0.3), "spec": "trial"}]
            outcome = r()
            if outcome < 0.45:  # converts to the full size within the 30-day window
                next_t = self.after(t, 2, 28)
            elif outcome < 0.65:  # converts, but too late for the window
                next_t = self.after(t, 35, 80)
            else:  # never converts
                next_t = _NEVER
        elif p.trial and m.orders == 1:
            sku, category, price, _ = m.trial_sku  # type: ignore[misc]
            items = [{"sku": sku, "category": category, "unit_price_fen": price,
                      "quantity": 1 + (r() < 0.2), "spec": "regular"}]
        else:
            items = self.basket(p)
        amount = 0
        for item in items:
            amount += item["unit_price_fen"] * item["quantity"]

        channel = m.channel if r() < 0.75 else _ONLINE[int(r() * len(_ONLINE))]
        order = self.base("order.paid", m, channel)
        self.order_seq += 1
        day = self.day_info((t + _CST_OFFSET) // _DAY)
        order["order_id"] = f"SO{day[1]}{self.order_seq:08d}"
        order["amount_fen"] = amount
        order["items"] = items
        if channel == "pos":
            order["store_id"] = m.store[0]
            if r() < 0.7:
                order["guide_id"] = m.guide
        elif channel in ("wecom", "miniprogram") and r() < 0.4:
            order["guide_id"] = m.guide

        emit: dict = order
        paid_t = t
        if p.coupon_p and r() < p.coupon_p and amount > 3_000:
            # claim now, pay with the coupon a little later
            claimed = self.base("interaction.coupon_claimed", m, self.online(m))
            claimed["campaign_id"] = campaign = self.campaign(t)
            emit = claimed
            paid_t = t + 600 + int(r() * 2 * _DAY)
            order["amount_fen"] = amount = amount - min(amount // 5, (1 + int(r() * 5)) * 1_000)
            self.push(paid_t, _EMIT, order)
            redeemed = self.base("interaction.coupon_redeemed", m, channel)
            redeemed["campaign_id"] = campaign
            self.push(paid_t, _EMIT, redeemed)
        if r() < p.refund_p:
            self.push(self.after(paid_t, 0.5, 10), _EMIT, self.refund(m, order, channel))
        m.orders += 1

        if next_t is None:
            if p.max_orders and m.orders >= p.max_orders:
                next_t = _NEVER
            else:
                next_t = self.later(paid_t, p.order_every)
                if r() < 0.12:  # wait for the member day, when points are doubled
                    next_t = self.member_day(next_t)
        self.push(next_t, _ORDER, m)
        return emit

    def basket(self, p: _Persona) -> list[dict]:
        r = self.r.random
        shelf = p.shelf
        n = 1 + int(r() * p.max_items) if r() < 0.5 else 1
        items: list[dict] = []
        seen: set[str] = set()
        for _ in range(n):
            sku, category, price, _trial = shelf[int(r() * len(shelf))]
            if sku in seen:
                continue
            seen.add(sku)
            items.append({"sku": sku, "category": category, "unit_price_fen": price,
                          "quantity": 1 + int(r() * r() * p.max_quantity), "spec": "regular"})
        return items

    def refund(self, m: _Member, order: dict, channel: str) -> dict:
        r = self.r.random
        refund = self.base("order.refunded", m, channel)
        refund["order_id"] = order["order_id"]
        items = order["items"]
        if r() < 0.65:
            refund["amount_fen"] = order["amount_fen"]
            return refund
        # partial: one unit of one line comes back
        item = items[int(r() * len(items))]
        refund["amount_fen"] = min(item["unit_price_fen"], order["amount_fen"])
        refund["items"] = [dict(item, quantity=1)]
        return refund

    # -- interactions and scans ---------------------------------------------------------------

    def on_interact(self, m: _Member, t: int) -> dict | None:
        if self.resting(m, t, _INTERACT):
            return None
        r = self.r.random
        p = m.persona
        names, cum = _INTERACTION_TABLES[id(p.interactions)]
        kind = names[bisect(cum, r() * cum[-1])]
        if kind == "interaction.review" and not m.orders:
            kind = "interaction.browse"
        ev = self.base(kind, m, self.online(m))
        if kind in ("interaction.lottery", "interaction.coupon_claimed", "interaction.share"):
            if r() < 0.6:
                ev["campaign_id"] = self.campaign(t)
        elif kind == "interaction.event_attended":
            ev["campaign_id"] = self.campaign(t)
            ev["store_id"] = m.store[0]
        elif kind == "interaction.profile_updated" and m.birthday:
            ev["birthday"] = m.birthday
        self.push(self.later(t, p.interact_every), _INTERACT, m)
        return ev

    def on_scan(self, m: _Member, t: int) -> dict | None:
        if self.resting(m, t, _SCAN):
            return None
        r = self.r.random
        p = m.persona
        cap = r() < p.cap_share
        ev = self.scan(m, t, cap)
        if cap:  # a case is opened over an evening: a few more caps follow
            for _ in range(int(r() * r() * 4)):
                t += 300 + int(r() * 3600)
                self.push(t, _EMIT, self.scan(m, t, True))
        self.push(self.later(t, p.scan_every), _SCAN, m)
        return ev

    def scan(self, m: _Member, t: int, cap: bool) -> dict:
        r = self.r.random
        shelf = _SCAN_CAP if cap else _SCAN_VERIFY
        sku, category, _, _ = shelf[int(r() * len(shelf))]
        ev = self.base("scan.cap_opened" if cap else "scan.verified", m, "miniprogram")
        self.code_seq += 1
        # odd multiplier: a bijection on 48 bits, so codes are unique but look random
        ev["code_id"] = f"{(self.code_seq * 0x9E3779B97F4B) & 0xFFFF_FFFF_FFFF:012X}"
        ev["sku"] = sku
        ev["category"] = category
        if r() < 0.7:
            ev["batch"] = f"{self.day_info((t + _CST_OFFSET) // _DAY - 30 - int(r() * 300))[1][:6]}-{sku[:2]}"
        if r() < 0.85:
            ev["province"] = m.store[1]
            ev["city"] = m.store[2]
        if m.channel == "pos" and r() < 0.3:
            ev["store_id"] = m.store[0]
        return ev


def generate_events(members: int, days: int, seed: int,
                    start: datetime | None = None) -> Iterator[dict]:
    """Yield the history of `members` members over `days` days from `start` (default 2024-01-01
    00:00 +08:00), oldest first. Deterministic: the output depends only on the arguments."""
    if members < 0 or days < 0:
        raise ValueError("members and days must not be negative")
    return _History(members, days, seed, start or DEFAULT_START).run()


def write_jsonl(events: Iterable[dict], fp: IO) -> int:
    """Write one compact JSON event per line to `fp` (binary, or text with a `.buffer`);
    returns the number of events written."""
    if isinstance(fp, io.TextIOBase):
        fp.flush()
        out = getattr(fp, "buffer", None) or _TextSink(fp)
    else:
        out = fp
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    count = 0
    chunk: list[bytes] = []
    for ev in events:
        chunk.append(dumps(ev, option=newline))
        if len(chunk) >= 4096:
            out.write(b"".join(chunk))
            count += len(chunk)
            chunk.clear()
    out.write(b"".join(chunk))
    count += len(chunk)
    out.flush()
    return count


class _TextSink:
    """Bytes in, text out: for a text stream with no binary buffer (e.g. io.StringIO)."""

    def __init__(self, fp: IO[str]) -> None:
        self.fp = fp

    def write(self, data: bytes) -> None:
        self.fp.write(data.decode("utf-8"))

    def flush(self) -> None:
        self.fp.flush()
