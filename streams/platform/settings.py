"""Every setting tagstream reads, from the environment, in one place (STYLE.md rule 7).

Nothing else in the code base reads `os.environ`: components take a `Settings` and use its
fields. Defaults match `tagstream stack up`, so a newcomer needs no configuration.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

from schemas.errors import TagstreamError
from streams.platform.redaction import redact_url

DEFAULT_RULES = Path(__file__).resolve().parents[2] / "taggers" / "rules" / "default.yaml"


class SettingsError(TagstreamError):
    """A setting has a value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    # Kafka
    broker: str = "kafka://127.0.0.1:9092"
    app_id: str = "tagstream"
    # Put before every topic name tagstream reads or writes ("t1." reads t1.events.orders):
    # several deployments, or tests, can then share one broker. "" keeps the names DESIGN.md
    # gives. Faust's own topics (the changelog) and the consumer groups follow app_id instead.
    topic_namespace: str = ""
    partitions: int = 4
    # Copies of each tagstream topic; 0: min(3, brokers in the cluster) (streams/platform/admin.py).
    replication: int = 0
    # Kafka security (streams/platform/security.py applies these to Faust and every Kafka client):
    # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; SASL PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    # Empty file settings mean "not set" (the system CAs, no client certificate).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    kafka_ssl_key_password: str = field(default="", repr=False)
    # Serving store. The URL may be rediss:// (TLS) and may carry a password; repr masks it.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: str = field(default="", repr=False)  # used when the URL has none
    redis_ssl_cafile: str = ""  # CA for a rediss:// server with a private CA
    # Rules and time
    rules_path: Path = DEFAULT_RULES
    clock: str = "wall"  # "wall" (live) or "event" (replay/backfill: the event-time watermark)
    # How far behind a member's newest event an event may arrive and still be applied.
    allowed_lateness_s: int = 7 * 86400
    # TAGSTREAM_CLOCK=event: how far out of time order events may arrive within one topic.
    # They are held and applied in order; an event arriving after the clock passed it is
    # dead-lettered as late (the replay tool writes each topic in order, so 0 suffices).
    reorder_window_s: int = 0
    # TAGSTREAM_CLOCK=event: how many events of one topic-partition may wait for the clock
    # before that topic-partition's fetching pauses (a topic read ahead of the others in event
    # time would otherwise be held in memory whole); it resumes at half.
    event_hold_limit: int = 5000
    timer_interval_s: float = 0.25
    # How long the member agent's open batch collects before it is shipped (the latency a
    # quiet stream adds; a busy one ships every batch this often, or at 5,000 events).
    batch_linger_ms: int = 20
    # How long a worker's fetch may wait at the broker for a message: the longest a message
    # can sit behind a fetch of quiet partitions (streams/worker/compat.py, item 4).
    consumer_fetch_max_wait_ms: int = 100
    # How the worker's producer compresses what it writes (tag, tier and task changes,
    # profiles, WeCom marks, its changelog): "none" (Kafka's default), "lz4", "zstd",
    # "snappy" or "gzip". lz4 shrinks its ~2.5 kB an event about fourfold, for a network or
    # disk that is the bottleneck; on loopback it gained no throughput (README, Measured).
    producer_compression: str = "none"
    # How often a worker checks the rule file for a new version (0: never).
    rules_reload_s: float = 5.0
    # Worker
    web_port: int = 6066
    data_dir: Path = Path(".tagstream")
    log_level: str = "info"
    # Embedded stack (tagstream stack up): where the broker binary and logs live
    stack_dir: Path = Path(".tagstream/stack")
    # How the local stack's Kafka nodes compile: "full" (the JVM's default, as in production)
    # or "client" (C1 only: less compiling for short-lived brokers, as the tests run them);
    # streams/tools/kafka_server/__init__.py gives the measurements.
    stack_broker_jit: str = "full"
    # WeCom sync (tagstream wecom-sync). The secret stays out of repr and logs. The call limit
    # applies per API; WeCom allows 10,000/min and 150,000/h per API per corp, so the default
    # (2,000/min = 120,000/h) keeps under both, with room for other apps of the same corp.
    wecom_base_url: str = "https://qyapi.weixin.qq.com"
    wecom_corp_id: str = ""
    wecom_secret: str = field(default="", repr=False)
    wecom_calls_per_minute: int = 2000
    wecom_coalesce_ms: int = 200
    # How often wecom-sync reconciles every pair with what WeCom shows (0: only on demand,
    # `tagstream wecom-reconcile`).
    wecom_reconcile_s: float = 0.0
    # The callback WeCom calls when a guide edits a customer (served by `tagstream api` at
    # /wecom/callback): the Token and EncodingAESKey set in WeCom's admin console. Secrets.
    wecom_callback_token: str = field(default="", repr=False)
    wecom_callback_aes_key: str = field(default="", repr=False)
    # Guide HTTP API (tagstream api)
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # "token=guide_userid,..." ("*" for an operator): secrets, so kept out of repr and logs;
    # parsed by streams.serving.api.auth.parse_tokens.
    api_tokens: str = field(default="", repr=False)

    def __repr__(self) -> str:
        """Every field but the secrets (repr=False), with any password inside a URL masked."""
        shown = (f"{f.name}={redact_url(value)!r}" if isinstance(value, str)
                 else f"{f.name}={value!r}"
                 for f in fields(self) if f.repr for value in (getattr(self, f.name),))
        return f"Settings({', '.join(shown)})"

    @property
    def worker_data_dir(self) -> Path:
        """This worker's own data directory: one per web port, so workers share a host."""
        return self.data_dir / f"worker-{self.web_port}"

    @property
    def broker_bootstrap(self) -> str:
        """`host:port[,host:port]` for plain Kafka clients (aiokafka, librdkafka)."""
        return ",".join(url.strip().split("://", 1)[-1]
                        for url in self.broker.replace(";", ",").split(",") if url.strip())

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, for a child process (a worker)."""
        return {ENV_NAMES[f.name]: str(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = ENV_NAMES[f.name]
            if name not in env or env[name] == "":
                continue
            raw = env[name]
            values[f.name] = _parse(name, raw, f.default)
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.clock not in ("wall", "event"):
            raise SettingsError(f"TAGSTREAM_CLOCK must be 'wall' or 'event', not {settings.clock!r}")
        if settings.partitions < 1:
            raise SettingsError("TAGSTREAM_PARTITIONS must be at least 1")
        if settings.wecom_calls_per_minute < 10:
            raise SettingsError("TAGSTREAM_WECOM_CALLS_PER_MINUTE must be at least 10")
        if settings.wecom_coalesce_ms < 0:
            raise SettingsError("TAGSTREAM_WECOM_COALESCE_MS must not be negative")
        if settings.stack_broker_jit not in ("full", "client"):
            raise SettingsError("TAGSTREAM_STACK_BROKER_JIT must be 'full' or 'client', not "
                                f"{settings.stack_broker_jit!r}")
        if settings.consumer_fetch_max_wait_ms < 0:
            raise SettingsError("TAGSTREAM_CONSUMER_FETCH_MAX_WAIT_MS must not be negative")
        if settings.event_hold_limit < 2:
            raise SettingsError("TAGSTREAM_EVENT_HOLD_LIMIT must be at least 2")
        if settings.producer_compression not in PRODUCER_COMPRESSIONS:
            raise SettingsError(f"TAGSTREAM_PRODUCER_COMPRESSION must be one of "
                                f"{', '.join(PRODUCER_COMPRESSIONS)}, not "
                                f"{settings.producer_compression!r}")
        check_topic_namespace(settings.topic_namespace)
        check_security(settings)
        return settings


PRODUCER_COMPRESSIONS = ("none", "lz4", "zstd", "snappy", "gzip")


ENV_NAMES: dict[str, str] = {
    "broker": "TAGSTREAM_BROKER",
    "app_id": "TAGSTREAM_APP_ID",
    "topic_namespace": "TAGSTREAM_TOPIC_NAMESPACE",
    "partitions": "TAGSTREAM_PARTITIONS",
    "replication": "TAGSTREAM_REPLICATION",
    "kafka_security_protocol": "TAGSTREAM_KAFKA_SECURITY_PROTOCOL",
    "kafka_sasl_mechanism": "TAGSTREAM_KAFKA_SASL_MECHANISM",
    "kafka_sasl_username": "TAGSTREAM_KAFKA_SASL_USERNAME",
    "kafka_sasl_password": "TAGSTREAM_KAFKA_SASL_PASSWORD",
    "kafka_ssl_cafile": "TAGSTREAM_KAFKA_SSL_CAFILE",
    "kafka_ssl_certfile": "TAGSTREAM_KAFKA_SSL_CERTFILE",
    "kafka_ssl_keyfile": "TAGSTREAM_KAFKA_SSL_KEYFILE",
    "kafka_ssl_key_password": "TAGSTREAM_KAFKA_SSL_KEY_PASSWORD",
    "redis_url": "TAGSTREAM_REDIS_URL",
    "redis_password": "TAGSTREAM_REDIS_PASSWORD",
    "redis_ssl_cafile": "TAGSTREAM_REDIS_SSL_CAFILE",
    "rules_path": "TAGSTREAM_RULES",
    "clock": "TAGSTREAM_CLOCK",
    "allowed_lateness_s": "TAGSTREAM_ALLOWED_LATENESS_S",
    "reorder_window_s": "TAGSTREAM_REORDER_WINDOW_S",
    "event_hold_limit": "TAGSTREAM_EVENT_HOLD_LIMIT",
    "timer_interval_s": "TAGSTREAM_TIMER_INTERVAL_S",
    "batch_linger_ms": "TAGSTREAM_BATCH_LINGER_MS",
    "consumer_fetch_max_wait_ms": "TAGSTREAM_CONSUMER_FETCH_MAX_WAIT_MS",
    "producer_compression": "TAGSTREAM_PRODUCER_COMPRESSION",
    "rules_reload_s": "TAGSTREAM_RULES_RELOAD_S",
    "web_port": "TAGSTREAM_WEB_PORT",
    "data_dir": "TAGSTREAM_DATA_DIR",
    "log_level": "TAGSTREAM_LOG_LEVEL",
    "stack_dir": "TAGSTREAM_STACK_DIR",
    "stack_broker_jit": "TAGSTREAM_STACK_BROKER_JIT",
    "wecom_base_url": "TAGSTREAM_WECOM_BASE_URL",
    "wecom_corp_id": "TAGSTREAM_WECOM_CORP_ID",
    "wecom_secret": "TAGSTREAM_WECOM_SECRET",
    "wecom_calls_per_minute": "TAGSTREAM_WECOM_CALLS_PER_MINUTE",
    "wecom_coalesce_ms": "TAGSTREAM_WECOM_COALESCE_MS",
    "wecom_reconcile_s": "TAGSTREAM_WECOM_RECONCILE_S",
    "wecom_callback_token": "TAGSTREAM_WECOM_CALLBACK_TOKEN",
    "wecom_callback_aes_key": "TAGSTREAM_WECOM_CALLBACK_AES_KEY",
    "api_host": "TAGSTREAM_API_HOST",
    "api_port": "TAGSTREAM_API_PORT",
    "api_tokens": "TAGSTREAM_API_TOKENS",
}


def _parse(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
        return raw
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {type(default).__name__}") from None


# Kafka topic names may use only these characters, and at most 249 of them: 100 leaves room
# for every topic name tagstream puts after the namespace.
TOPIC_NAMESPACE = re.compile(r"[A-Za-z0-9._-]{0,100}")


def check_topic_namespace(namespace: str) -> None:
    if not TOPIC_NAMESPACE.fullmatch(namespace):
        raise SettingsError(f"TAGSTREAM_TOPIC_NAMESPACE must be at most 100 of the characters "
                            f"A-Z a-z 0-9 . _ - (it goes before every topic name), not "
                            f"{namespace!r}")


KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def check_security(settings: Settings) -> None:
    """Security settings that cannot work together fail at start; no message shows a secret."""
    protocol = settings.kafka_security_protocol
    if protocol not in KAFKA_SECURITY_PROTOCOLS:
        raise SettingsError(f"TAGSTREAM_KAFKA_SECURITY_PROTOCOL must be one of "
                            f"{', '.join(KAFKA_SECURITY_PROTOCOLS)}, not {protocol!r}")
    if protocol.startswith("SASL_"):
        if settings.kafka_sasl_mechanism not in KAFKA_SASL_MECHANISMS:
            raise SettingsError(f"TAGSTREAM_KAFKA_SASL_MECHANISM must be one of "
                                f"{', '.join(KAFKA_SASL_MECHANISMS)}, not "
                                f"{settings.kafka_sasl_mechanism!r}")
        if not settings.kafka_sasl_username or not settings.kafka_sasl_password:
            raise SettingsError(f"TAGSTREAM_KAFKA_SECURITY_PROTOCOL={protocol} needs "
                                "TAGSTREAM_KAFKA_SASL_USERNAME and TAGSTREAM_KAFKA_SASL_PASSWORD")
    if settings.kafka_ssl_keyfile and not settings.kafka_ssl_certfile:
        raise SettingsError("TAGSTREAM_KAFKA_SSL_KEYFILE is set without "
                            "TAGSTREAM_KAFKA_SSL_CERTFILE (the client certificate)")
