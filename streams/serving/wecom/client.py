"""A small WeCom server-API client: token cache, per-API rate limit, ≤ N in flight, retries.

It speaks the four endpoints the tag sync needs (gettoken, get_corp_tag_list, add_corp_tag,
mark_tag) against a configurable base URL, so tests run it against a local fake.

What it guarantees, because WeCom punishes clients that don't (DESIGN.md "WeCom facts"):

- one `access_token` per client, cached until shortly before `expires_in`, fetched by one caller
  at a time, and dropped and re-fetched when an API answers 42001 (expired) or 40014 (invalid);
- per API path, a token bucket sized so that no 60-second window ever holds more than
  `calls_per_minute` requests (bucket depth + refill × 60 s ≤ the limit, with 2 % headroom);
- at most `max_in_flight` requests open at once over all APIs (WeCom answers 45033 beyond ~5);
- 45009 (frequency limit), 45033 (concurrency limit), -1 (system busy), HTTP 5xx, timeouts and
  connection errors are retried with exponential backoff and jitter. The backoff is shared per
  API: one caller's 45009 pauses every caller of that API, so a storm is not met with a
  stampede. Attempts per call are bounded; the caller (the sync) decides what happens next.

The secret and the access token never reach a log line, an exception or a repr: they travel only
as query parameters built at send time, every aiohttp exception is replaced by one of ours that
names the API path alone, and `redact()` scrubs both parameters from any text that might carry
a URL.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping

import aiohttp
import orjson

from schemas.errors import TagstreamError
from streams.platform.backoff import backoff_delay
from streams.platform.metrics import WECOM_CALLS

log = logging.getLogger(__name__)

GETTOKEN = "/cgi-bin/gettoken"
GET_CORP_TAG_LIST = "/cgi-bin/externalcontact/get_corp_tag_list"
ADD_CORP_TAG = "/cgi-bin/externalcontact/add_corp_tag"
MARK_TAG = "/cgi-bin/externalcontact/mark_tag"
GET_CONTACT = "/cgi-bin/externalcontact/get"

SYSTEM_BUSY = -1
FREQUENCY_LIMIT = 45009
CONCURRENCY_LIMIT = 45033
TOKEN_INVALID = 40014
TOKEN_EXPIRED = 42001
RETRYABLE_ERRCODES = frozenset({SYSTEM_BUSY, FREQUENCY_LIMIT, CONCURRENCY_LIMIT})
TOKEN_ERRCODES = frozenset({TOKEN_INVALID, TOKEN_EXPIRED})

_SENSITIVE = re.compile(r"((?:corpsecret|access_token)=)[^&\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the values of `corpsecret=` and `access_token=` replaced by `***`."""
    return _SENSITIVE.sub(r"\1***", text)


def api_name(path: str) -> str:
    """The metric / log label of an API path: its last segment (`mark_tag`)."""
    return path.rsplit("/", 1)[-1]


class Secret:
    """A string that does not show itself: repr, str and format print `***`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class WeComError(TagstreamError):
    """WeCom refused a call (`errcode` set) or could not be reached (`errcode` None).

    `retryable` says whether trying the same call later may succeed without anyone changing
    anything; the message names the API, never a URL, a token or the secret.
    """

    def __init__(self, api: str, errcode: int | None, errmsg: str, *,
                 retryable: bool = False) -> None:
        self.api = api
        self.errcode = errcode
        self.errmsg = redact(errmsg)
        self.retryable = retryable
        code = f"errcode {errcode}" if errcode is not None else "unreachable"
        super().__init__(f"WeCom {api_name(api)}: {code}: {self.errmsg}")


class WeComUnavailable(WeComError):
    """Every attempt of a call failed with a transient error (busy, limited, 5xx, network)."""

    def __init__(self, api: str, last_result: str, attempts: int) -> None:
        errcode = int(last_result) if _is_int(last_result) else None
        super().__init__(api, errcode, f"{attempts} attempts failed, last: {last_result}",
                         retryable=True)
        self.last_result = last_result
        self.attempts = attempts


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


class TokenBucket:
    """Grants at most `burst + rate × w` requests in any window of `w` seconds.

    Sized from a per-minute limit so that the 60-second bound is below the limit: a plain bucket
    refilled at limit/60 per second would allow burst + limit in one minute.
    """

    def __init__(self, per_minute: int, *, headroom: float = 0.98,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        if per_minute < 10:
            raise ValueError(f"calls_per_minute must be at least 10, not {per_minute}")
        budget = per_minute * headroom
        self.burst = float(max(1, min(10, int(budget // 120))))
        self.rate = (budget - self.burst) / 60.0
        self._tokens = self.burst
        self._clock = clock
        self._sleep = sleep
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def window_bound(self, seconds: float) -> float:
        """The most grants any window of `seconds` can hold."""
        return self.burst + self.rate * seconds

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: waiters are served in arrival order
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1.0 - 1e-9:  # float dust must not make it spin
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return
                await self._sleep(max(1e-4, (1.0 - self._tokens) / self.rate))


class _Backoff:
    """Shared exponential backoff of one API: failures push `not_before` out for every caller.

    Failures of requests that were already under way when the last failure was recorded do not
    escalate it again: five callers failing together are one failed round, not five.
    """

    def __init__(self, base: float, cap: float, rng: random.Random,
                 clock: Callable[[], float]) -> None:
        self.base, self.cap, self.rng, self.clock = base, cap, rng, clock
        self.failures = 0
        self.not_before = 0.0
        self.failed_at = float("-inf")

    async def wait(self) -> None:
        while (delay := self.not_before - self.clock()) > 0:
            await asyncio.sleep(delay)

    def failed(self, started: float) -> float:
        """Record a failed attempt that started at `started`; the delay now in force."""
        now = self.clock()
        if started < self.failed_at:
            return max(0.0, self.not_before - now)
        self.failures += 1
        self.failed_at = now
        delay = backoff_delay(self.failures, self.base, self.cap, self.rng)
        self.not_before = max(self.not_before, now + delay)
        return delay

    def succeeded(self) -> None:
        self.failures = 0


class _Transient(Exception):
    """One attempt failed in a way worth retrying; `label` is its metric result."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.label = label


@dataclass
class ClientStats:
    """What the client did, for tests, logs and the closing report."""

    results: Counter = field(default_factory=Counter)  # (api, result) -> count
    retries: int = 0
    token_fetches: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def calls(self) -> int:
        return sum(self.results.values())

    def count(self, api: str, result: str | None = None) -> int:
        name = api_name(api)
        return sum(n for (a, r), n in self.results.items()
                   if a == name and (result is None or r == result))


class WeComClient:
    """WeCom API client with a lifecycle: `await start()` (e.g. in a faust.Service on_start),
    calls, `await stop()`. Also an async context manager."""

    def __init__(self, base_url: str, corp_id: str, secret: str | Secret, *,
                 calls_per_minute: int, max_in_flight: int = 5, timeout_s: float = 10.0,
                 max_attempts: int = 5, backoff_base_s: float = 0.2, backoff_cap_s: float = 8.0,
                 token_margin_s: float = 300.0, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.corp_id = corp_id
        self._secret = secret if isinstance(secret, Secret) else Secret(secret)
        self.calls_per_minute = calls_per_minute
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.token_margin_s = token_margin_s
        self.stats = ClientStats()
        self._clock = clock
        self._rng = rng or random.Random()
        self._backoff_base, self._backoff_cap = backoff_base_s, backoff_cap_s
        self._buckets: dict[str, TokenBucket] = {}
        self._backoffs: dict[str, _Backoff] = {}
        self._gate = asyncio.Semaphore(max_in_flight)
        self._token: Secret | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        TokenBucket(calls_per_minute)  # validate now, not at the first call

    def __repr__(self) -> str:
        return (f"WeComClient(base_url={self.base_url!r}, corp_id={self.corp_id!r}, "
                f"calls_per_minute={self.calls_per_minute}, max_in_flight={self.max_in_flight})")

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=self.max_in_flight * 2),
                raise_for_status=False)

    async def stop(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> "WeComClient":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the endpoints --------------------------------------------------------------------------

    async def get_corp_tag_list(self, tag_ids: Iterable[str] = (),
                                group_ids: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Corp tag groups with their tags (all of them when both filters are empty)."""
        data = await self.call(GET_CORP_TAG_LIST,
                               {"tag_id": list(tag_ids), "group_id": list(group_ids)})
        return list(data.get("tag_group") or [])

    async def add_corp_tag(self, *, names: Iterable[str], group_name: str,
                           group_id: str | None = None) -> dict[str, Any]:
        """Create tags (into `group_id`, or the group called `group_name`); the new tag group."""
        payload: dict[str, Any] = {"tag": [{"name": name} for name in names]}
        if group_id:
            payload["group_id"] = group_id
        else:
            payload["group_name"] = group_name
        data = await self.call(ADD_CORP_TAG, payload)
        return dict(data.get("tag_group") or {})

    async def mark_tag(self, userid: str, external_userid: str, *, add: Iterable[str] = (),
                       remove: Iterable[str] = ()) -> None:
        await self.call(MARK_TAG, {"userid": userid, "external_userid": external_userid,
                                   "add_tag": list(add), "remove_tag": list(remove)})

    async def get_external_contact(self, external_userid: str) -> list[dict[str, Any]]:
        """The customer's `follow_user` list (every guide who has them, with the tags each
        guide's view carries: group_name, tag_name, tag_id, type), all pages."""
        follow: list[dict[str, Any]] = []
        cursor = ""
        while True:
            params = {"external_userid": external_userid}
            if cursor:
                params["cursor"] = cursor
            data = await self.call(GET_CONTACT, None, params=params)
            follow.extend(data.get("follow_user") or [])
            cursor = str(data.get("next_cursor") or "")
            if not cursor:
                return follow

    async def call(self, api: str, payload: Mapping[str, Any] | None,
                   params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """POST `payload` (GET with `params` when it is None) to `api` with the access token;
        the JSON answer when errcode is 0.

        Raises WeComUnavailable when every attempt failed transiently, WeComError otherwise.
        """
        body = None if payload is None else orjson.dumps(payload)
        errcode, errmsg = 0, ""
        for _ in range(3):  # a fresh token is tried twice before giving up on it
            token = await self._access_token()
            data = await self._attempts(api, lambda: self._send(api, token=token, body=body,
                                                                params=params))
            errcode, errmsg = _errcode(data), str(data.get("errmsg", ""))
            if errcode == 0:
                return data
            if errcode not in TOKEN_ERRCODES:
                raise WeComError(api, errcode, errmsg)
            self._drop_token(token)
        raise WeComError(api, errcode, f"access_token refused after refreshing: {errmsg}")

    # --- token ----------------------------------------------------------------------------------

    async def _access_token(self) -> str:
        if self._token is not None and self._clock() < self._token_expires:
            return self._token.reveal()
        async with self._token_lock:
            if self._token is not None and self._clock() < self._token_expires:
                return self._token.reveal()
            params = {"corpid": self.corp_id, "corpsecret": self._secret.reveal()}
            data = await self._attempts(GETTOKEN, lambda: self._send(GETTOKEN, params=params))
            errcode = _errcode(data)
            if errcode != 0 or not data.get("access_token"):
                raise WeComError(GETTOKEN, errcode, str(data.get("errmsg", "no access_token")))
            expires_in = float(data.get("expires_in") or 7200)
            self.stats.token_fetches += 1
            self._token = Secret(str(data["access_token"]))
            self._token_expires = self._clock() + max(expires_in - self.token_margin_s,
                                                      expires_in / 2)
            return self._token.reveal()

    def _drop_token(self, token: str) -> None:
        if self._token is not None and self._token.reveal() == token:  # not a newer one
            self._token = None

    # --- attempts -------------------------------------------------------------------------------

    async def _attempts(self, api: str, attempt: Callable[[], Awaitable[dict[str, Any]]]
                        ) -> dict[str, Any]:
        """Run `attempt` until it gives a non-retryable answer or attempts run out."""
        backoff = self._backoff(api)
        attempts = 0
        while True:
            await backoff.wait()
            started = self._clock()
            try:
                data = await attempt()
            except _Transient as failure:
                result = failure.label
            else:
                errcode = _errcode(data)
                if errcode not in RETRYABLE_ERRCODES:
                    backoff.succeeded()
                    return data
                result = str(errcode)
            attempts += 1
            delay = backoff.failed(started)
            if attempts >= self.max_attempts:
                log.warning("WeCom %s: giving up after %d attempts (last: %s)",
                            api_name(api), attempts, result)
                raise WeComUnavailable(api, result, attempts)
            self.stats.retries += 1
            log.debug("WeCom %s: %s, retry %d in ≥ %.2f s", api_name(api), result, attempts,
                      delay)

    async def _send(self, api: str, *, token: str | None = None,
                    params: Mapping[str, str] | None = None,
                    body: bytes | None = None) -> dict[str, Any]:
        """One HTTP request: JSON answer, or _Transient. Never lets an aiohttp error (whose
        text can hold the URL with its query) escape."""
        if self._session is None:
            raise WeComError(api, None, "client not started")
        query = dict(params or {})
        if token is not None:
            query["access_token"] = token
        url = self.base_url + api
        failure: str | None = None
        status, raw = 0, b""
        async with self._gate:
            await self._bucket(api).acquire()
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            try:
                if body is None:
                    request = self._session.get(url, params=query)
                else:
                    request = self._session.post(
                        url, params=query, data=body,
                        headers={"Content-Type": "application/json; charset=utf-8"})
                async with request as response:
                    status = response.status
                    raw = await response.read()
            except TimeoutError:
                failure = "timeout"
            except aiohttp.ClientError:
                failure = "connection"
            finally:
                self.stats.in_flight -= 1
        if failure is None and status >= 500:
            failure = f"http_{status}"
        if failure is not None:
            self._record(api, failure)
            raise _Transient(failure)
        if status != 200:
            self._record(api, f"http_{status}")
            raise WeComError(api, None, f"HTTP {status}")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._record(api, "bad_body")
            raise _Transient("bad_body") from None
        if not isinstance(data, dict):
            self._record(api, "bad_body")
            raise _Transient("bad_body")
        errcode = _errcode(data)
        self._record(api, "ok" if errcode == 0 else str(errcode))
        return data

    def _record(self, api: str, result: str) -> None:
        self.stats.results[(api_name(api), result)] += 1
        WECOM_CALLS.labels(api_name(api), result).inc()

    def _bucket(self, api: str) -> TokenBucket:
        if api not in self._buckets:
            self._buckets[api] = TokenBucket(self.calls_per_minute, clock=self._clock)
        return self._buckets[api]

    def _backoff(self, api: str) -> _Backoff:
        if api not in self._backoffs:
            self._backoffs[api] = _Backoff(self._backoff_base, self._backoff_cap, self._rng,
                                           self._clock)
        return self._backoffs[api]


def _errcode(data: Mapping[str, Any]) -> int:
    try:
        return int(data.get("errcode", 0))
    except (TypeError, ValueError):
        return SYSTEM_BUSY

