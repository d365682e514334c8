"""Connection security from settings: Kafka SSL/SASL for every aiokafka client (Faust's too) and librdkafka client, and Redis TLS and password. One place, so no client is left connecting in plain text.

Kafka (streams.platform.settings: TAGSTREAM_KAFKA_*): `kafka_client_kwargs` for aiokafka
producers, consumers and admin clients (the Faust app gets the same values from
streams.worker.credentials); `librdkafka_config` for confluent-kafka's (the bench's reader
of tag changes). Redis: `redis_client_kwargs` for `Redis.from_url`.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from streams.platform.settings import Settings, SettingsError, check_security

_TLS_PROTOCOLS = ("SSL", "SASL_SSL")


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context (server certificate and host name verified), or None."""
    if settings.kafka_security_protocol not in _TLS_PROTOCOLS:
        return None
    try:
        return create_ssl_context(
            cafile=settings.kafka_ssl_cafile or None,
            certfile=settings.kafka_ssl_certfile or None,
            keyfile=settings.kafka_ssl_keyfile or None,
            password=settings.kafka_ssl_key_password or None)
    except (OSError, ssl.SSLError) as exc:
        # The message names files and the OpenSSL reason, never the key password.
        raise SettingsError(
            "cannot build the Kafka TLS context from TAGSTREAM_KAFKA_SSL_CAFILE="
            f"{settings.kafka_ssl_cafile!r}, TAGSTREAM_KAFKA_SSL_CERTFILE="
            f"{settings.kafka_ssl_certfile!r}, TAGSTREAM_KAFKA_SSL_KEYFILE="
            f"{settings.kafka_ssl_keyfile!r}: {type(exc).__name__}: {exc}") from None


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """The security keyword arguments of any aiokafka client (bootstrap_servers excluded):
    `kafka_consumer(bootstrap, **kafka_client_kwargs(settings), ...)`."""
    check_security(settings)
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if protocol.startswith("SASL_"):
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                      sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password)
    return kwargs


def librdkafka_config(settings: Settings) -> dict[str, str]:
    """The same security as librdkafka configuration properties, for confluent-kafka clients:
    `Producer({"bootstrap.servers": bootstrap, **librdkafka_config(settings), ...})`.
    librdkafka verifies the server's certificate and host name by default, as aiokafka's
    context above does."""
    check_security(settings)
    protocol = settings.kafka_security_protocol
    config = {"security.protocol": protocol.lower()}
    if protocol in _TLS_PROTOCOLS:
        files = {"ssl.ca.location": settings.kafka_ssl_cafile,
                 "ssl.certificate.location": settings.kafka_ssl_certfile,
                 "ssl.key.location": settings.kafka_ssl_keyfile,
                 "ssl.key.password": settings.kafka_ssl_key_password}
        config.update({key: value for key, value in files.items() if value})
    if protocol.startswith("SASL_"):
        config.update({"sasl.mechanism": settings.kafka_sasl_mechanism,
                       "sasl.username": settings.kafka_sasl_username,
                       "sasl.password": settings.kafka_sasl_password})
    return config


def redis_client_kwargs(settings: Settings) -> dict[str, Any]:
    """Extra keyword arguments for `redis.asyncio.Redis.from_url(settings.redis_url, ...)`.

    TLS comes from the URL scheme (rediss://); a password in the URL wins over
    TAGSTREAM_REDIS_PASSWORD (redis-py lets URL parts override keyword arguments)."""
    kwargs: dict[str, Any] = {}
    if settings.redis_password:
        kwargs["password"] = settings.redis_password
    if settings.redis_url.startswith("rediss://") and settings.redis_ssl_cafile:
        kwargs["ssl_ca_certs"] = settings.redis_ssl_cafile
    return kwargs
