"""Keeps secrets out of text: settings reprs, log records, tracebacks and error messages.

The secrets are whatever settings hold that would let someone act as tagstream: the WeCom
secret, the Redis and Kafka SASL passwords, the TLS key password, the API tokens, and a password
written inside a URL. `install_log_redaction` makes every log record of the process (ours,
Faust's, aiokafka's, redis-py's) and every uncaught traceback pass through `redact`, so a
library that prints its arguments or an exception that quotes a URL cannot leak one.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from types import TracebackType
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from streams.platform.settings import Settings

MASK = "***"
# Shorter values are not secrets worth the name, and masking them would garble every log line.
MIN_SECRET_LENGTH = 4
# scheme://user:password@host -> scheme://user:***@host (user may be empty: rediss://:pw@host)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s;]*):[^@\s;]*@")


def redact_url(url: str) -> str:
    """The URL with the password of its user part (if any) masked; other text unchanged."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:{MASK}@", url)


def secret_values(settings: "Settings") -> tuple[str, ...]:
    """Every secret the settings hold, longest first (so no secret is half-masked)."""
    found = [settings.wecom_secret, settings.redis_password, settings.kafka_sasl_password,
             settings.kafka_ssl_key_password, settings.wecom_callback_token,
             settings.wecom_callback_aes_key]
    for entry in settings.api_tokens.split(","):
        found.append(entry.partition("=")[0].strip())
    for url in (settings.redis_url, settings.broker):
        match = re.search(r"://[^:/@\s;]*:([^@\s;]*)@", url)
        if match:
            found.append(match.group(1))
    unique = {value for value in found if len(value) >= MIN_SECRET_LENGTH}
    return tuple(sorted(unique, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return redact_url(text)


def install_log_redaction(settings: "Settings") -> None:
    """From now on, no log record or uncaught traceback of this process shows a secret."""
    secrets = secret_values(settings)
    previous_factory = logging.getLogRecordFactory()
    if getattr(previous_factory, "tagstream_redacting", False):
        previous_factory = previous_factory.wrapped  # type: ignore[attr-defined]

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous_factory(*args, **kwargs)
        _redact_record(record, secrets)
        return record

    factory.tagstream_redacting = True  # type: ignore[attr-defined]
    factory.wrapped = previous_factory  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)

    def excepthook(kind: type[BaseException], value: BaseException,
                   tb: TracebackType | None) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb)), secrets))

    sys.excepthook = excepthook


def _redact_record(record: logging.LogRecord, secrets: tuple[str, ...]) -> None:
    """Format the message now, masked; the traceback too (formatters reuse `exc_text`)."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: leave it to the handler to report
        return
    masked = redact(message, secrets)
    if masked != message:  # otherwise untouched, so formatters still see the original args
        record.msg, record.args = masked, ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info), secrets)
    if record.stack_info:
        record.stack_info = redact(record.stack_info, secrets)
