"""The Faust app's Kafka credentials, from the same settings as every other client."""

from __future__ import annotations

import faust
from faust.types.auth import CredentialsT

from streams.platform.security import kafka_ssl_context
from streams.platform.settings import Settings, check_security


def faust_broker_credentials(settings: Settings) -> CredentialsT | None:
    """`broker_credentials` for `faust.App`: the same protocol, mechanism, user and TLS
    context as `kafka_client_kwargs` (Faust maps them back onto its aiokafka clients)."""
    check_security(settings)
    protocol = settings.kafka_security_protocol
    context = kafka_ssl_context(settings)
    if protocol.startswith("SASL_"):
        # A TLS context is what makes Faust choose SASL_SSL over SASL_PLAINTEXT.
        return faust.SASLCredentials(username=settings.kafka_sasl_username,
                                     password=settings.kafka_sasl_password,
                                     mechanism=settings.kafka_sasl_mechanism,
                                     ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None
