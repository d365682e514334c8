"""Security settings: Kafka TLS/SASL for Faust and the plain clients, Redis password and TLS,
and secrets kept out of reprs, log records, tracebacks and error messages."""

from __future__ import annotations

import dataclasses
import io
import logging
import ssl
import sys
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streams.worker.app import create_app
from streams.platform.redaction import (
    MASK,
    install_log_redaction,
    redact,
    redact_url,
    secret_values,
)
from streams.platform.security import kafka_client_kwargs, librdkafka_config, redis_client_kwargs
from streams.platform.settings import ENV_NAMES, Settings, SettingsError
from streams.worker.credentials import faust_broker_credentials
from tests.support.tls import make_tls_files

# Recognisable values: any of them showing up anywhere is a leak.
WECOM_SECRET = "WECOM-SECRET-q8Zr2"
REDIS_PASSWORD = "REDIS-PASSWORD-x7Lp"
URL_PASSWORD = "URL-PASSWORD-m3Kd"
SASL_PASSWORD = "SASL-PASSWORD-v9Tb"
KEY_PASSWORD = "KEY-PASSWORD-c4Wn"
API_TOKEN = "API-TOKEN-0123456789abcdef"
CALLBACK_TOKEN = "CALLBACK-TOKEN-r5Yh"
CALLBACK_AES_KEY = "CALLBACKAESKEY" + "k" * 29  # 43 characters, as WeCom's console gives
SECRETS = (WECOM_SECRET, REDIS_PASSWORD, URL_PASSWORD, SASL_PASSWORD, KEY_PASSWORD, API_TOKEN,
           CALLBACK_TOKEN, CALLBACK_AES_KEY)


def secret_settings(**overrides) -> Settings:
    values = dict(
        wecom_corp_id="ww-corp", wecom_secret=WECOM_SECRET,
        redis_url=f"rediss://tagstream:{URL_PASSWORD}@redis.internal:6380/2",
        redis_password=REDIS_PASSWORD,
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="tagstream", kafka_sasl_password=SASL_PASSWORD,
        kafka_ssl_key_password=KEY_PASSWORD,
        api_tokens=f"{API_TOKEN}=zhangsan", wecom_callback_token=CALLBACK_TOKEN,
        wecom_callback_aes_key=CALLBACK_AES_KEY)
    values.update(overrides)
    return dataclasses.replace(Settings(), **values)


def assert_no_secret(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"leaked {leaked} in: {text}"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"), KEY_PASSWORD)


@pytest.fixture
def restore_logging():
    factory, hook = logging.getLogRecordFactory(), sys.excepthook
    yield
    logging.setLogRecordFactory(factory)
    sys.excepthook = hook


# --- settings ------------------------------------------------------------------------------


def test_settings_repr_shows_no_secret_and_masks_the_url_password():
    settings = secret_settings()
    for text in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        assert_no_secret(text)
    assert f"rediss://tagstream:{MASK}@redis.internal:6380/2" in repr(settings)
    assert "kafka_sasl_username='tagstream'" in repr(settings)  # the rest is still shown


def test_every_secret_field_is_repr_false():
    secret_fields = {"wecom_secret", "redis_password", "kafka_sasl_password",
                     "kafka_ssl_key_password", "api_tokens", "wecom_callback_token",
                     "wecom_callback_aes_key"}
    for field in dataclasses.fields(Settings):
        assert field.repr is (field.name not in secret_fields), field.name


def test_to_env_round_trips_every_setting_including_secrets(tmp_path):
    settings = secret_settings(
        broker="kafka://k1:9093;kafka://k2:9093", partitions=12, replication=3,
        kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=str(tmp_path / "ca.pem"),
        kafka_ssl_certfile=str(tmp_path / "c.pem"), kafka_ssl_keyfile=str(tmp_path / "c.key"),
        redis_ssl_cafile=str(tmp_path / "redis-ca.pem"), rules_path=tmp_path / "rules.yaml",
        clock="event", allowed_lateness_s=3600, timer_interval_s=0.5, rules_reload_s=0.0,
        web_port=7001, data_dir=tmp_path / "data", log_level="debug",
        stack_dir=tmp_path / "stack", wecom_base_url="http://127.0.0.1:9/",
        wecom_calls_per_minute=100, wecom_coalesce_ms=0, api_host="0.0.0.0", api_port=8443)
    env = settings.to_env()
    assert set(env) == set(ENV_NAMES.values())
    assert Settings.from_env(env) == settings
    assert env["TAGSTREAM_KAFKA_SASL_PASSWORD"] == SASL_PASSWORD  # a child worker needs it


def test_secret_values_and_redaction():
    settings = secret_settings()
    assert set(secret_values(settings)) == set(SECRETS)
    text = f"connect failed: {settings.redis_url} user tagstream password {SASL_PASSWORD}"
    masked = redact(text, secret_values(settings))
    assert_no_secret(masked)
    assert "redis.internal:6380" in masked and MASK in masked
    assert redact_url("redis://:pw-1234@h:1/0") == f"redis://:{MASK}@h:1/0"
    assert redact_url("kafka://a:1;kafka://b:2") == "kafka://a:1;kafka://b:2"
    assert redact_url("no url here") == "no url here"


@pytest.mark.parametrize("env, wrong", [
    ({"TAGSTREAM_KAFKA_SECURITY_PROTOCOL": "TLS"}, "TAGSTREAM_KAFKA_SECURITY_PROTOCOL"),
    ({"TAGSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "TAGSTREAM_KAFKA_SASL_USERNAME": "u",
      "TAGSTREAM_KAFKA_SASL_PASSWORD": SASL_PASSWORD, "TAGSTREAM_KAFKA_SASL_MECHANISM": "GSSAPI"},
     "TAGSTREAM_KAFKA_SASL_MECHANISM"),
    ({"TAGSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
      "TAGSTREAM_KAFKA_SASL_PASSWORD": SASL_PASSWORD}, "TAGSTREAM_KAFKA_SASL_USERNAME"),
    ({"TAGSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "TAGSTREAM_KAFKA_SSL_KEYFILE": "k.pem"},
     "TAGSTREAM_KAFKA_SSL_CERTFILE"),
])
def test_unusable_security_settings_fail_at_start_without_showing_secrets(env, wrong):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert wrong in str(caught.value)
    assert_no_secret(str(caught.value))


# --- Kafka ---------------------------------------------------------------------------------


def test_plaintext_is_the_default_and_needs_nothing():
    settings = Settings()
    assert kafka_client_kwargs(settings) == {"security_protocol": "PLAINTEXT"}
    assert faust_broker_credentials(settings) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_for_plain_clients_and_faust_alike(mechanism):
    settings = secret_settings(kafka_sasl_mechanism=mechanism)
    kwargs = kafka_client_kwargs(settings)
    assert kwargs == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
                      "sasl_plain_username": "tagstream", "sasl_plain_password": SASL_PASSWORD}
    app = create_app(settings)
    # what Faust hands its own aiokafka consumer and producer
    assert credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context) == {
        **kwargs, "ssl_context": None}
    assert_no_secret(repr(app.conf.broker_credentials))


def sasl_ssl_settings(tls) -> Settings:
    """SASL over TLS with the test CA, a client certificate and its encrypted key."""
    return secret_settings(
        kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=str(tls.ca),
        kafka_ssl_certfile=str(tls.client_cert), kafka_ssl_keyfile=str(tls.client_key),
        kafka_ssl_key_password=tls.key_password)


def test_sasl_ssl_verifies_the_broker_with_the_configured_ca_and_presents_a_client_cert(tls):
    settings = sasl_ssl_settings(tls)
    kwargs = kafka_client_kwargs(settings)
    context = kwargs.pop("ssl_context")
    assert kwargs == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                      "sasl_plain_username": "tagstream", "sasl_plain_password": SASL_PASSWORD}
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any(ca["subject"] == ((("commonName", "tagstream-test-ca"),),)
               for ca in context.get_ca_certs())
    app = create_app(settings)
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_password"] == SASL_PASSWORD
    assert auth["ssl_context"].get_ca_certs() == context.get_ca_certs()


def test_ssl_without_sasl(tls):
    settings = dataclasses.replace(Settings(), kafka_security_protocol="SSL",
                                   kafka_ssl_cafile=str(tls.ca))
    kwargs = kafka_client_kwargs(settings)
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    assert kwargs["security_protocol"] == "SSL"
    app = create_app(settings)
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == "SSL" and "sasl_mechanism" not in auth


def test_unreadable_tls_files_name_the_setting_not_the_key_password(tls, tmp_path):
    missing = secret_settings(kafka_security_protocol="SSL",
                              kafka_ssl_cafile=str(tmp_path / "nope.pem"))
    with pytest.raises(SettingsError, match="TAGSTREAM_KAFKA_SSL_CAFILE") as caught:
        kafka_client_kwargs(missing)
    assert_no_secret(str(caught.value))
    wrong_password = secret_settings(
        kafka_security_protocol="SSL", kafka_ssl_cafile=str(tls.ca),
        kafka_ssl_certfile=str(tls.client_cert), kafka_ssl_keyfile=str(tls.client_key),
        kafka_ssl_key_password="not-the-password")
    with pytest.raises(SettingsError) as caught:
        kafka_client_kwargs(wrong_password)
    assert_no_secret(str(caught.value))
    assert "not-the-password" not in str(caught.value)


def test_librdkafka_clients_get_the_same_security():
    assert librdkafka_config(Settings()) == {"security.protocol": "plaintext"}
    assert librdkafka_config(secret_settings(kafka_sasl_mechanism="SCRAM-SHA-256")) == {
        "security.protocol": "sasl_plaintext", "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "tagstream", "sasl.password": SASL_PASSWORD}


def test_librdkafka_loads_the_configured_ca_client_cert_and_key(tls):
    from confluent_kafka import KafkaException, Producer

    settings = sasl_ssl_settings(tls)
    config = librdkafka_config(settings)
    assert config == {
        "security.protocol": "sasl_ssl", "ssl.ca.location": str(tls.ca),
        "ssl.certificate.location": str(tls.client_cert),
        "ssl.key.location": str(tls.client_key), "ssl.key.password": tls.key_password,
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "tagstream",
        "sasl.password": SASL_PASSWORD}
    # librdkafka reads the files when the client is made: a wrong key password fails there
    Producer({"bootstrap.servers": "127.0.0.1:9", **config}).flush(0)
    with pytest.raises(KafkaException):
        Producer({"bootstrap.servers": "127.0.0.1:9", **config,
                  "ssl.key.password": "not-the-password"})


# --- Redis ---------------------------------------------------------------------------------


def test_redis_password_and_tls_ca(tls):
    assert redis_client_kwargs(Settings()) == {}
    settings = dataclasses.replace(Settings(), redis_url="rediss://r:6380/0",
                                   redis_password=REDIS_PASSWORD, redis_ssl_cafile=str(tls.ca))
    assert redis_client_kwargs(settings) == {"password": REDIS_PASSWORD,
                                             "ssl_ca_certs": str(tls.ca)}
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(settings.redis_url, **redis_client_kwargs(settings))
    pool_kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert pool_kwargs["password"] == REDIS_PASSWORD
    assert pool_kwargs["ssl_ca_certs"] == str(tls.ca)
    assert_no_secret(repr(client))


# --- log redaction -------------------------------------------------------------------------


def test_log_records_and_tracebacks_are_redacted(restore_logging):
    settings = secret_settings()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("tagstream.test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        install_log_redaction(settings)
        install_log_redaction(settings)  # idempotent: no double wrapping
        logger.info("connecting with %s and %r", SASL_PASSWORD, {"secret": WECOM_SECRET})
        logger.warning("redis at %s", settings.redis_url)
        logger.info("no secret, %d args kept", 2)
        try:
            raise ConnectionError(f"AUTH {REDIS_PASSWORD} refused for token {API_TOKEN}")
        except ConnectionError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert_no_secret(output)
    assert "ConnectionError: AUTH *** refused for token ***" in output
    assert "no secret, 2 args kept" in output
    assert f"rediss://tagstream:{MASK}@redis.internal" in output

    err = io.StringIO()
    real_stderr, sys.stderr = sys.stderr, err
    try:
        sys.excepthook(RuntimeError, RuntimeError(f"boom {KEY_PASSWORD}"), None)
    finally:
        sys.stderr = real_stderr
    assert "RuntimeError: boom ***" in err.getvalue()
    assert_no_secret(err.getvalue())


def test_secret_shorter_than_four_characters_is_not_masked_everywhere():
    settings = dataclasses.replace(Settings(), redis_password="ab")
    assert secret_values(settings) == ()


def test_worker_data_dir_follows_the_web_port(tmp_path):
    settings = dataclasses.replace(Settings(), data_dir=tmp_path, web_port=7123)
    assert settings.worker_data_dir == Path(tmp_path) / "worker-7123"
    assert create_app(settings).conf.datadir == Path(tmp_path) / "worker-7123"
