"""A local WeCom server for tests: the four endpoints the tag sync uses, with their error codes.

Implements `GET /cgi-bin/gettoken`, `POST /cgi-bin/externalcontact/get_corp_tag_list`,
`add_corp_tag` and `mark_tag` as WeCom documents them (DESIGN.md "WeCom facts"), and enforces
what WeCom enforces: access_token validity (41001 missing, 40014 invalid, 42001 expired), the
per-API call limit (45009) and the concurrency limit (45033), tag names of at most 30
characters (40072), at most 3000 corp tags (40126), unknown tag ids in mark_tag (40068).

Tests inject trouble: N forced answers with an errcode or an HTTP status, latency, an outage
(connections refused, or HTTP 503) for a time window, and token expiry "now". Everything is
recorded: every call with its start and end time and result (so tests can measure the busiest
window and the peak concurrency), the tag state of each (userid, external_userid) pair, and
the history of every value a (pair, tag) ever took.

It also plays WeCom's side of the callback (回调) to tagstream: `guide_edits` is a guide editing a
customer's tags in the WeCom client, which changes the fake's state and then POSTs the encrypted
`change_external_contact` / `edit_external_contact` event to the callback URL; `verify_url` is
WeCom's URL-verification GET. As in WeCom, a change made through the API (mark_tag) raises no
callback: only `guide_edits` sends one. Every POST sent is kept in `callbacks` and can be sent
again byte for byte with `resend` (WeCom's retry of a callback it got no answer for).

Use it through the `wecom_fake` fixture (import it into the test module), which always stops it.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable, NamedTuple

import aiohttp
import orjson
import pytest
from aiohttp import web

if TYPE_CHECKING:
    from streams.serving.wecom.callback_crypto import CallbackCrypto

FAKE_CORP_ID = "wwfakecorp00000001"
FAKE_SECRET = "fake-secret-Zq8v3LmW0pTn6Rk2"
MAX_TAG_NAME = 30
MAX_CORP_TAGS = 3000

Pair = tuple[str, str]

ERRMSG = {
    -1: "system is busy",
    40001: "invalid credential",
    40013: "invalid corpid",
    40014: "invalid access_token",
    40058: "invalid parameter",
    40068: "invalid tagid",
    40071: "tag name already exists",
    40072: "invalid tag name length",
    40126: "corp tag count reaches limit 3000",
    41001: "access_token missing",
    41002: "corpid missing",
    41004: "corpsecret missing",
    42001: "access_token expired",
    45009: "api freq out of limit",
    45033: "api concurrent out of limit",
    84061: "not external contact",
}


@dataclass(frozen=True)
class Call:
    api: str          # last path segment: gettoken, mark_tag, ...
    start: float      # monotonic seconds
    end: float
    status: int       # HTTP status sent (0 when the connection was dropped)
    errcode: int | None
    in_flight: int    # requests open at this server when this one arrived (itself included)


@dataclass
class _Forced:
    api: str          # "*" for any
    remaining: int
    errcode: int | None = None
    status: int | None = None


@dataclass(frozen=True)
class CallbackPost:
    """One callback POST the fake sent: enough to send it again byte for byte."""

    url: str
    query: dict[str, str]
    body: bytes
    status: int
    text: str


class Verification(NamedTuple):
    status: int
    text: str   # what the callback URL answered
    echo: str   # the plaintext inside the echostr sent: the answer WeCom expects


@dataclass
class _Group:
    group_id: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)  # tag id -> name
    created: int = field(default_factory=lambda: int(time.time()))


class FakeWeCom:
    """The server. `await start()` returns its base URL; `await stop()` always cleans up."""

    def __init__(self, *, corp_id: str = FAKE_CORP_ID, secret: str = FAKE_SECRET,
                 token_ttl_s: int = 7200, calls_per_minute_limit: int = 10_000,
                 concurrency_limit: int = 5, max_corp_tags: int = MAX_CORP_TAGS) -> None:
        self.corp_id = corp_id
        self.secret = secret
        self.token_ttl_s = token_ttl_s
        self.calls_per_minute_limit = calls_per_minute_limit
        self.concurrency_limit = concurrency_limit
        self.max_corp_tags = max_corp_tags
        # records
        self.calls: list[Call] = []
        self.dropped = 0  # requests cut off by a "refuse" outage (never reached the API)
        self.state: dict[Pair, set[str]] = defaultdict(set)
        self.history: dict[tuple[str, str, str], list[tuple[float, bool]]] = defaultdict(list)
        self.tokens_issued: list[str] = []
        self.groups: dict[str, _Group] = {}
        self.unknown_pairs: set[Pair] = set()  # mark_tag on these answers 84061
        self.contacts: set[Pair] = set()  # friend relations without tags yet (for get)
        self.outage_ended_at: float | None = None
        self.callbacks: list[CallbackPost] = []  # every callback POST sent, in order
        # injections
        self._forced: list[_Forced] = []
        self._latency: dict[str, float] = {}
        self._delays: list[list[Any]] = []  # [api, remaining, seconds]
        self._outage: str | None = None  # None, "refuse" or "503"
        self._outage_task: asyncio.Task[None] | None = None
        # internals
        self._tokens: dict[str, float] = {}  # token -> expires at (monotonic)
        self._in_flight = 0
        self._recent: dict[str, deque[float]] = defaultdict(deque)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None  # for callbacks to tagstream
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> str:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/cgi-bin/gettoken", self._gettoken)
        app.router.add_post("/cgi-bin/externalcontact/get_corp_tag_list", self._get_corp_tag_list)
        app.router.add_post("/cgi-bin/externalcontact/add_corp_tag", self._add_corp_tag)
        app.router.add_post("/cgi-bin/externalcontact/mark_tag", self._mark_tag)
        app.router.add_get("/cgi-bin/externalcontact/get", self._get_contact)
        # handler_cancellation: a request whose client went away (timed out, or cut off by an
        # outage) stops being processed and leaves the in-flight count, as a client sees it.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await self._listen(0)
        return self.base_url

    async def stop(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        if self._outage_task is not None:
            self._outage_task.cancel()
            await asyncio.gather(self._outage_task, return_exceptions=True)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await self._site.start()
        self.port = self._runner.addresses[-1][1]

    # --- injections -----------------------------------------------------------------------------

    def fail_next(self, count: int, *, errcode: int | None = None, status: int | None = None,
                  api: str = "*") -> None:
        """The next `count` calls of `api` (or any) answer `errcode` (HTTP 200) or `status`."""
        if (errcode is None) == (status is None):
            raise ValueError("give exactly one of errcode and status")
        self._forced.append(_Forced(api, count, errcode, status))

    def forced_remaining(self) -> int:
        return sum(f.remaining for f in self._forced)

    def set_latency(self, seconds: float, api: str = "*") -> None:
        """Every call of `api` (or any) takes `seconds` longer from now on."""
        self._latency[api] = seconds

    def delay_next(self, count: int, seconds: float, *, api: str = "*") -> None:
        """The next `count` calls of `api` (or any) take `seconds` longer (to force timeouts)."""
        self._delays.append([api, count, seconds])

    def expire_tokens(self) -> None:
        """Every issued access_token expires now: the next use answers 42001."""
        now = time.monotonic()
        for token in self._tokens:
            self._tokens[token] = min(self._tokens[token], now)

    def revoke_tokens(self) -> None:
        """Forget every access_token: the next use answers 40014 (WeCom may do this early)."""
        self._tokens.clear()

    async def begin_outage(self, mode: str = "refuse") -> None:
        """`refuse`: stop listening and drop open connections; `503`: answer HTTP 503."""
        if mode not in ("refuse", "503"):
            raise ValueError(mode)
        self._outage = mode
        if mode == "refuse" and self._site is not None:
            site, self._site = self._site, None
            await site.stop()

    async def end_outage(self) -> None:
        if self._outage == "refuse":
            await self._listen(self.port)
        self._outage = None
        self.outage_ended_at = time.monotonic()

    def outage_for(self, seconds: float, mode: str = "refuse") -> asyncio.Task[None]:
        """An outage starting now and ending by itself after `seconds`."""
        async def window() -> None:
            await self.begin_outage(mode)
            try:
                await asyncio.sleep(seconds)
            finally:
                await self.end_outage()

        self._outage_task = asyncio.ensure_future(window())
        return self._outage_task

    # --- what tests read ------------------------------------------------------------------------

    def tag_name(self, tag_id: str) -> str | None:
        for group in self.groups.values():
            if tag_id in group.tags:
                return group.tags[tag_id]
        return None

    def state_by_name(self) -> dict[Pair, set[str]]:
        """Final tag state with tag names instead of ids; pairs with no tag left out."""
        return {pair: {self.tag_name(t) or t for t in tags}
                for pair, tags in self.state.items() if tags}

    def counts(self) -> Counter:
        """(api, result) -> calls; result: "ok", an errcode, "http_<status>" or "cut"."""
        out: Counter = Counter()
        for call in self.calls:
            if call.status == 0:  # the client went away before an answer (killed, timed out)
                out[(call.api, "cut")] += 1
            elif call.status != 200:
                out[(call.api, f"http_{call.status}")] += 1
            else:
                out[(call.api, "ok" if not call.errcode else str(call.errcode))] += 1
        return out

    def max_in_flight(self) -> int:
        return max((call.in_flight for call in self.calls), default=0)

    def max_calls_in_window(self, seconds: float, api: str | None = None) -> int:
        """The most calls (of `api`, or all) that arrived within any window of `seconds`."""
        starts = sorted(c.start for c in self.calls if api is None or c.api == api)
        best, lo = 0, 0
        for hi, t in enumerate(starts):
            while starts[lo] <= t - seconds:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    # --- plumbing -------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        api = request.path.rsplit("/", 1)[-1]
        if self._outage == "refuse":
            # a connection opened before the outage: cut it, as a crashed server would
            self.dropped += 1
            if request.transport is not None:
                request.transport.abort()
            await asyncio.Event().wait()  # cancelled when aiohttp sees the connection lost
        self._in_flight += 1
        start = time.monotonic()
        arrived_with = self._in_flight
        status, errcode = 0, None
        try:
            delay = self._latency.get(api, self._latency.get("*", 0.0))
            for rule in self._delays:
                if rule[1] > 0 and rule[0] in ("*", api):
                    rule[1] -= 1
                    delay += rule[2]
                    break
            if delay:
                await asyncio.sleep(delay)
            response = await self._gate(request, api, arrived_with)
            if response is None:
                response = await handler(request)
            status = response.status
            errcode = getattr(response, "errcode", None)
            return response
        finally:
            self._in_flight -= 1
            self.calls.append(Call(api, start, time.monotonic(), status, errcode, arrived_with))

    async def _gate(self, request: web.Request, api: str,
                    in_flight: int) -> web.Response | None:
        """Answers that come before the endpoint's own logic: outage, injections, token,
        limits. None lets the request through."""
        if self._outage == "503":
            return _http(503)
        for forced in self._forced:
            if forced.remaining > 0 and forced.api in ("*", api):
                forced.remaining -= 1
                return _http(forced.status) if forced.status else _err(forced.errcode or -1)
        recent = self._recent[api]
        now = time.monotonic()
        recent.append(now)
        while recent and recent[0] <= now - 60:
            recent.popleft()
        if len(recent) > self.calls_per_minute_limit:
            return _err(45009)
        if in_flight > self.concurrency_limit:
            return _err(45033)
        if api == "gettoken":
            return None
        token = request.query.get("access_token")
        if not token:
            return _err(41001)
        if token not in self._tokens:
            return _err(40014)
        if self._tokens[token] <= now:
            return _err(42001)
        return None

    async def _gettoken(self, request: web.Request) -> web.Response:
        corpid, secret = request.query.get("corpid"), request.query.get("corpsecret")
        if not corpid:
            return _err(41002)
        if not secret:
            return _err(41004)
        if corpid != self.corp_id:
            return _err(40013)
        if secret != self.secret:
            return _err(40001)
        now = time.monotonic()
        for token, expires in self._tokens.items():
            if expires > now:  # WeCom hands out the same token while it is valid
                return _ok({"access_token": token, "expires_in": int(expires - now)})
        token = secrets.token_urlsafe(48)
        self._tokens[token] = now + self.token_ttl_s
        self.tokens_issued.append(token)
        return _ok({"access_token": token, "expires_in": self.token_ttl_s})

    async def _get_corp_tag_list(self, request: web.Request) -> web.Response:
        body = await _json(request)
        tag_ids = set(body.get("tag_id") or [])
        group_ids = set(body.get("group_id") or [])
        groups = []
        for group in self.groups.values():
            if group_ids and group.group_id not in group_ids:
                continue
            tags = [{"id": tid, "name": name, "create_time": group.created, "order": 0,
                     "deleted": False}
                    for tid, name in group.tags.items()
                    if group_ids or not tag_ids or tid in tag_ids]
            if tags or group_ids or not tag_ids:
                groups.append({"group_id": group.group_id, "group_name": group.name,
                               "create_time": group.created, "order": 0, "deleted": False,
                               "tag": tags})
        return _ok({"tag_group": groups})

    async def _add_corp_tag(self, request: web.Request) -> web.Response:
        body = await _json(request)
        names = [str(t.get("name", "")) for t in body.get("tag") or []]
        if not names:
            return _err(40058)
        if any(not name or len(name) > MAX_TAG_NAME for name in names):
            return _err(40072)
        if sum(len(g.tags) for g in self.groups.values()) + len(names) > self.max_corp_tags:
            return _err(40126)
        group: _Group | None
        if body.get("group_id"):
            group = self.groups.get(body["group_id"])
            if group is None:
                return _err(40068)
        else:
            group_name = str(body.get("group_name") or "")
            if not group_name or len(group_name) > MAX_TAG_NAME:
                return _err(40058)
            # an existing group of that name receives the new tags
            group = next((g for g in self.groups.values() if g.name == group_name), None)
            if group is None:
                group = _Group(f"etGRP{next(self._ids):06d}", group_name)
                self.groups[group.group_id] = group
        if len(set(names)) != len(names) or set(names) & set(group.tags.values()):
            return _err(40071)
        created = []
        for name in names:
            tid = f"etTAG{next(self._ids):06d}"
            group.tags[tid] = name
            created.append({"id": tid, "name": name, "create_time": group.created, "order": 0})
        return _ok({"tag_group": {"group_id": group.group_id, "group_name": group.name,
                                  "create_time": group.created, "order": 0, "tag": created}})

    async def _mark_tag(self, request: web.Request) -> web.Response:
        body = await _json(request)
        userid, external = body.get("userid"), body.get("external_userid")
        add, remove = list(body.get("add_tag") or []), list(body.get("remove_tag") or [])
        if not userid or not external or (not add and not remove):
            return _err(40058)
        pair = (str(userid), str(external))
        if pair in self.unknown_pairs:
            return _err(84061)
        known = {tid for g in self.groups.values() for tid in g.tags}
        if any(tid not in known for tid in add + remove):
            return _err(40068)
        now = time.monotonic()
        tags = self.state[pair]
        for tid in remove:
            tags.discard(tid)
            self.history[(*pair, tid)].append((now, False))
        for tid in add:
            tags.add(tid)
            self.history[(*pair, tid)].append((now, True))
        return _ok({})


    async def _get_contact(self, request: web.Request) -> web.Response:
        """externalcontact/get: the customer's follow_user list with each guide's corp tags
        (type 1), one guide per page so that paging is exercised."""
        external = request.query.get("external_userid")
        if not external:
            return _err(40058)
        guides = sorted({userid for (userid, ext) in (*self.state, *self.contacts)
                         if ext == external})
        if not guides:
            return _err(84061)
        start = int(request.query.get("cursor") or 0)
        names = {tid: (group.name, name) for group in self.groups.values()
                 for tid, name in group.tags.items()}
        userid = guides[start]
        tags = [{"group_name": names[tid][0], "tag_name": names[tid][1], "tag_id": tid,
                 "type": 1} for tid in sorted(self.state[(userid, external)]) if tid in names]
        next_cursor = str(start + 1) if start + 1 < len(guides) else ""
        return _ok({"external_contact": {"external_userid": external, "type": 1},
                    "follow_user": [{"userid": userid, "createtime": 0, "tags": tags}],
                    "next_cursor": next_cursor})

    def add_foreign_tag(self, pair: Pair, group_name: str, tag_name: str) -> str:
        """A tag another system (or a guide) put on a pair, in a group tagstream does not own."""
        group = next((g for g in self.groups.values() if g.name == group_name), None)
        if group is None:
            group_id = f"grp{next(self._ids)}"
            group = self.groups[group_id] = _Group(group_id, group_name)
        tid = next((t for t, n in group.tags.items() if n == tag_name), None)
        if tid is None:
            tid = f"et{next(self._ids)}"
            group.tags[tid] = tag_name
        self.state[pair].add(tid)
        return tid

    # --- WeCom's callbacks to tagstream ---------------------------------------------------------

    def guide_edit_state(self, pair: Pair, *, add_names: Iterable[str] = (),
                         remove_names: Iterable[str] = (), group_name: str = "客户类型") -> None:
        """The tag part of a guide's edit in the WeCom client: corp tags of `group_name` named
        `add_names` (created as needed, like `add_foreign_tag`) go on the pair, those named
        `remove_names` come off. No callback: see `guide_edits`."""
        self.contacts.add(pair)
        now = time.monotonic()
        for name in add_names:
            tid = self.add_foreign_tag(pair, group_name, name)
            self.history[(*pair, tid)].append((now, True))
        group = next((g for g in self.groups.values() if g.name == group_name), None)
        for name in remove_names:
            for tid in [t for t, n in (group.tags.items() if group else ()) if n == name]:
                self.state[pair].discard(tid)
                self.history[(*pair, tid)].append((now, False))

    async def guide_edits(self, pair: Pair, *, add_names: Iterable[str] = (),
                          remove_names: Iterable[str] = (), group_name: str = "客户类型",
                          callback_url: str, crypto: "CallbackCrypto",
                          create_time: int | None = None) -> tuple[int, str]:
        """A guide (pair[0]) edits the customer (pair[1]) in the WeCom client: the tags change
        (`guide_edit_state`), then WeCom POSTs the edit_external_contact callback. Returns the
        callback URL's HTTP status and body."""
        self.guide_edit_state(pair, add_names=add_names, remove_names=remove_names,
                              group_name=group_name)
        return await self.send_contact_change(callback_url, crypto, userid=pair[0],
                                              external_userid=pair[1], create_time=create_time)

    async def send_contact_change(self, callback_url: str, crypto: "CallbackCrypto", *,
                                  userid: str, external_userid: str,
                                  change_type: str = "edit_external_contact",
                                  create_time: int | None = None,
                                  agent_id: str = "1000002") -> tuple[int, str]:
        """POST one encrypted change_external_contact event as WeCom documents it: query
        msg_signature, timestamp, nonce; body <xml><ToUserName/><AgentID/><Encrypt/></xml>
        around the encrypted event XML."""
        create_time = int(time.time()) if create_time is None else create_time
        inner = (f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName>"
                 f"<FromUserName><![CDATA[sys]]></FromUserName>"
                 f"<CreateTime>{create_time}</CreateTime>"
                 f"<MsgType><![CDATA[event]]></MsgType>"
                 f"<Event><![CDATA[change_external_contact]]></Event>"
                 f"<ChangeType><![CDATA[{change_type}]]></ChangeType>"
                 f"<UserID><![CDATA[{userid}]]></UserID>"
                 f"<ExternalUserID><![CDATA[{external_userid}]]></ExternalUserID></xml>")
        encrypted, query = _sealed(crypto, inner)
        body = (f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName>"
                f"<AgentID><![CDATA[{agent_id}]]></AgentID>"
                f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>").encode("utf-8")
        return await self._post_callback(callback_url, query, body)

    async def resend(self, post: CallbackPost) -> tuple[int, str]:
        """The same POST again, byte for byte: WeCom's retry when it got no answer in time."""
        return await self._post_callback(post.url, dict(post.query), post.body)

    async def verify_url(self, callback_url: str, crypto: "CallbackCrypto",
                         echo: str | None = None) -> Verification:
        """WeCom's URL verification: GET with msg_signature, timestamp, nonce and the encrypted
        `echo` (random digits by default) as echostr; the URL must answer `echo` in plain."""
        echo = echo or str(secrets.randbelow(10 ** 19))
        encrypted, query = _sealed(crypto, echo)
        async with self._client().get(callback_url,
                                      params={**query, "echostr": encrypted}) as response:
            return Verification(response.status, await response.text(), echo)

    async def _post_callback(self, url: str, query: dict[str, str],
                             body: bytes) -> tuple[int, str]:
        async with self._client().post(url, params=query, data=body,
                                       headers={"Content-Type": "text/xml"}) as response:
            status, text = response.status, await response.text()
        self.callbacks.append(CallbackPost(url, query, body, status, text))
        return status, text

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._session  # WeCom waits 5 s for an answer


def _sealed(crypto: "CallbackCrypto", plaintext: str) -> tuple[str, dict[str, str]]:
    """(the encrypted text, the query that signs it: msg_signature, timestamp, nonce)."""
    timestamp, nonce = str(int(time.time())), str(secrets.randbelow(10 ** 10))
    sealed = ET.fromstring(crypto.encrypt(plaintext, nonce, timestamp))
    return sealed.findtext("Encrypt") or "", {
        "msg_signature": sealed.findtext("MsgSignature") or "", "timestamp": timestamp,
        "nonce": nonce}


class _Answer(web.Response):
    errcode: int | None = None


def _ok(payload: dict[str, Any]) -> web.Response:
    response = _Answer(body=orjson.dumps({"errcode": 0, "errmsg": "ok", **payload}),
                       content_type="application/json")
    response.errcode = 0
    return response


def _err(errcode: int) -> web.Response:
    response = _Answer(body=orjson.dumps({"errcode": errcode,
                                          "errmsg": ERRMSG.get(errcode, "error")}),
                       content_type="application/json")
    response.errcode = errcode
    return response


def _http(status: int) -> web.Response:
    return web.Response(status=status, text="upstream unavailable")


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


@pytest.fixture
async def wecom_fake() -> AsyncIterator[FakeWeCom]:
    """A started FakeWeCom on a free loopback port, stopped after the test whatever happens."""
    fake = FakeWeCom()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
