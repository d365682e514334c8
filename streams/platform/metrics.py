"""Every Prometheus metric tagstream exports, declared once in one registry.

The worker, the Redis sink, the WeCom sync and the guide API each increment the metrics of their
part; whichever process serves `/metrics` renders this registry with `render_metrics()`. A
process exports only what it does: a metric that process never touched is exported at zero (or
without samples, for labelled ones), which is what Prometheus expects of a known metric.

Labels are bounded on purpose: topics, tag ids, tier change types, route templates and status
codes, never a member id, a guide id or a raw path.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)
# Every timing histogram's buckets, 1 ms to 2.5 s, so their quantiles read alike.
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

# --- worker (incremented by the member agent and the timers) -----------------------------------

EVENTS_PROCESSED = Counter(
    "tagstream_events_processed_total", "Events applied to member state, by source topic.",
    ["topic"], registry=REGISTRY)
EVENTS_DEADLETTERED = Counter(
    "tagstream_events_deadlettered_total",
    "Records sent to events.deadletter instead of being applied, by source topic.",
    ["topic"], registry=REGISTRY)
RULE_FIRES = Counter(
    "tagstream_rule_fires_total",
    "Tag rule evaluations that changed a member's tag (added or removed), by tag id.",
    ["tag"], registry=REGISTRY)
TAG_CHANGES = Counter(
    "tagstream_tag_changes_total", "Tag changes published to tags.changes, by tag and op.",
    ["tag", "op"], registry=REGISTRY)
TIER_CHANGES = Counter(
    "tagstream_tier_changes_total", "Tier and points changes published to tiers.changes, by type.",
    ["type"], registry=REGISTRY)
TASK_CHANGES = Counter(
    "tagstream_task_changes_total",
    "Guide task records published to tasks.changes, by task kind and status.",
    ["kind", "status"], registry=REGISTRY)
HOLD_PAUSES = Counter(
    "tagstream_worker_hold_pauses_total",
    "Times the event clock's hold of a topic's events reached TAGSTREAM_EVENT_HOLD_LIMIT on a "
    "partition and its fetching was paused until the other topics caught up, by topic.",
    ["topic"], registry=REGISTRY)
CONSUMER_LAG = Gauge(
    "tagstream_consumer_lag", "Records behind the end of the partition, per consumed partition.",
    ["group", "topic", "partition"], registry=REGISTRY)

# Where the worker's time goes: its own code, measured around it; the rest of the process's
# CPU is Faust's per-message path, the Kafka producer, the store's writes and the event loop.
AGENT_SECONDS = Counter(
    "tagstream_worker_agent_seconds",
    "Time the member agent spent in its own code, by part: handle (routing, the event clock, "
    "loading states, the engine, encoding changed states) and seal (closing a batch: its "
    "changelog records, its states staged for the store).",
    ["part"], registry=REGISTRY)

# The worker's pauses (streams/worker/pauses.py): what a latency tail is made of.
GC_PAUSE_SECONDS = Histogram(
    "tagstream_worker_gc_pause_seconds",
    "Garbage collections of the worker process, by generation: the event loop is stopped.",
    ["generation"], buckets=_SECONDS_BUCKETS, registry=REGISTRY)
LOOP_LAG_SECONDS = Histogram(
    "tagstream_worker_loop_lag_seconds",
    "How late a sleeper on the worker's event loop woke: the time a callback held the loop.",
    buckets=_SECONDS_BUCKETS, registry=REGISTRY)

# --- Redis serving store (streams/serving/redis_sink.py) ---------------------------------------

REDIS_PROFILES_WRITTEN = Counter(
    "tagstream_redis_profiles_written_total",
    "Profiles written to Redis (stale ones, older than what Redis holds, are counted apart).",
    # skipped: a record the sink could not use, a member state that did not render or a task
    # record that did not decode (each logged as an error)
    ["result"], registry=REGISTRY)  # result: applied | stale | deleted | skipped
REDIS_WRITE_FAILURES = Counter(
    "tagstream_redis_write_failures_total",
    "Failed batch writes to Redis; the batch is retried and its offsets are not committed.",
    registry=REGISTRY)
REDIS_BATCH_SECONDS = Histogram(
    "tagstream_redis_batch_seconds", "Time to write one batch of profiles to Redis.",
    buckets=_SECONDS_BUCKETS, registry=REGISTRY)

# --- WeCom sync -------------------------------------------------------------------------------

WECOM_CALLS = Counter(
    "tagstream_wecom_calls_total", "Calls to the WeCom API, by endpoint and result "
    "(ok, or the errcode / HTTP status / timeout).", ["api", "result"], registry=REGISTRY)

# --- guide HTTP API (streams/serving/api) -----------------------------------------------------

API_REQUESTS = Counter(
    "tagstream_api_requests_total", "Guide API requests, by route template, method and status.",
    ["route", "method", "status"], registry=REGISTRY)
API_REQUEST_SECONDS = Histogram(
    "tagstream_api_request_seconds", "Guide API response time (to the response head for feeds).",
    ["route"], buckets=_SECONDS_BUCKETS,
    registry=REGISTRY)
SSE_CLIENTS = Gauge(
    "tagstream_api_sse_clients", "Feed (server-sent events) connections open now.",
    registry=REGISTRY)
SSE_EVENTS_SENT = Counter(
    "tagstream_api_sse_events_sent_total", "Changes delivered on feeds, by kind (tag or tier).",
    ["kind"], registry=REGISTRY)


def render_metrics() -> tuple[bytes, str]:
    """The registry in Prometheus text format, and its Content-Type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class Tally:
    """Counter increments collected on the hot path and added to their metrics in one go.

    `labels(...)` costs a lock and a tuple per call, several times per event in the member
    agent; counting in a dict and flushing once per batch costs a dict update.

    `also` maps a metric to another that counts the same things by the first n of its labels
    (a tag change is also a fire of its tag's rule): added at the flush, not per call."""

    def __init__(self, also: dict[Counter, tuple[Counter, int]] | None = None) -> None:
        self._counts: dict[tuple[Counter, tuple[str, ...]], float] = {}
        self._also = also or {}

    def add(self, metric: Counter, *labels: str, amount: float = 1) -> None:
        key = (metric, labels)
        self._counts[key] = self._counts.get(key, 0) + amount

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for (metric, labels), count in counts.items():
            metric.labels(*labels).inc(count)
            derived = self._also.get(metric)
            if derived is not None:
                other, width = derived
                other.labels(*labels[:width]).inc(count)
