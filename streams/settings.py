"""Every setting tagstream reads, from the environment, in one place (STYLE.md rule 7).

Nothing else in the code base reads `os.environ`: components take a `Settings` and use its
fields. Defaults match `tagstream stack up`, so a newcomer needs no configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

from schemas.errors import TagstreamError

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "taggers" / "rules" / "default.yaml"


class SettingsError(TagstreamError):
    """A setting has a value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    # Kafka
    broker: str = "kafka://127.0.0.1:9092"
    app_id: str = "tagstream"
    partitions: int = 4
    replication: int = 1
    # Serving store
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Rules and time
    rules_path: Path = DEFAULT_RULES
    clock: str = "wall"  # "wall" (live) or "event" (replay/backfill: the event-time watermark)
    # How far behind a member's newest event an event may arrive and still be applied.
    allowed_lateness_s: int = 7 * 86400
    timer_interval_s: float = 1.0
    # How often a worker checks the rule file for a new version (0: never).
    rules_reload_s: float = 5.0
    # Worker
    web_port: int = 6066
    data_dir: Path = Path(".tagstream")
    log_level: str = "info"
    # Embedded stack (tagstream stack up): where the broker binary and logs live
    stack_dir: Path = Path(".tagstream/stack")
    # WeCom sync (tagstream wecom-sync). The secret stays out of repr and logs. The call limit
    # applies per API; WeCom allows 10,000/min and 150,000/h per API per corp, so the default
    # (2,000/min = 120,000/h) keeps under both, with room for other apps of the same corp.
    wecom_base_url: str = "https://qyapi.weixin.qq.com"
    wecom_corp_id: str = ""
    wecom_secret: str = field(default="", repr=False)
    wecom_calls_per_minute: int = 2000
    wecom_coalesce_ms: int = 200
    # Guide HTTP API (tagstream api)
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # "token=guide_userid,..." ("*" for an operator): secrets, so kept out of repr and logs;
    # parsed by streams.api.auth.parse_tokens.
    api_tokens: str = field(default="", repr=False)

    @property
    def broker_bootstrap(self) -> str:
        """`host:port[,host:port]` for plain Kafka clients (aiokafka, librdkafka)."""
        return ",".join(url.split("://", 1)[-1] for url in self.broker.split(";") if url)

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
        return settings


ENV_NAMES: dict[str, str] = {
    "broker": "TAGSTREAM_BROKER",
    "app_id": "TAGSTREAM_APP_ID",
    "partitions": "TAGSTREAM_PARTITIONS",
    "replication": "TAGSTREAM_REPLICATION",
    "redis_url": "TAGSTREAM_REDIS_URL",
    "rules_path": "TAGSTREAM_RULES",
    "clock": "TAGSTREAM_CLOCK",
    "allowed_lateness_s": "TAGSTREAM_ALLOWED_LATENESS_S",
    "timer_interval_s": "TAGSTREAM_TIMER_INTERVAL_S",
    "rules_reload_s": "TAGSTREAM_RULES_RELOAD_S",
    "web_port": "TAGSTREAM_WEB_PORT",
    "data_dir": "TAGSTREAM_DATA_DIR",
    "log_level": "TAGSTREAM_LOG_LEVEL",
    "stack_dir": "TAGSTREAM_STACK_DIR",
    "wecom_base_url": "TAGSTREAM_WECOM_BASE_URL",
    "wecom_corp_id": "TAGSTREAM_WECOM_CORP_ID",
    "wecom_secret": "TAGSTREAM_WECOM_SECRET",
    "wecom_calls_per_minute": "TAGSTREAM_WECOM_CALLS_PER_MINUTE",
    "wecom_coalesce_ms": "TAGSTREAM_WECOM_COALESCE_MS",
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
