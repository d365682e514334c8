"""A single-node Apache Kafka (KRaft) whose client listener requires a SASL login.

The client listener (CLIENT) is SASL_PLAINTEXT with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512
enabled; the broker talks to itself over a separate PLAINTEXT listener (INTERNAL) and the
controller over another (CONTROLLER), so no inter-broker credentials are needed. The user exists
for every mechanism, with the same password: for PLAIN in the listener's JAAS config (the broker
checks PLAIN logins against its `user_<name>` options), for SCRAM as credentials the storage tool
writes into the cluster's bootstrap metadata at format time (`--add-scram`), which is how KRaft
gets its first SCRAM users without an already authenticated client.

    with sasl_kafka(tmp_path / "kafka", "tagstream-worker", "secret") as kafka:
        settings = kafka.settings(Settings(), "SCRAM-SHA-512")
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from streams.tools.kafka_server import (NodeConfig, format_nodes, new_cluster_id, node_argv,
                                  require_fetched)
from streams.platform.settings import Settings
from streams.tools.processes import (ProcessRecord, free_ports, is_running, log_tail,
                                     start_process, stop_process)

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_MECHANISMS = tuple(m for m in MECHANISMS if m.startswith("SCRAM-"))
HOST = "127.0.0.1"


@dataclass(frozen=True)
class SaslKafka:
    """A running SASL Kafka: where its SASL listener is, and the one user it knows."""

    bootstrap: str  # host:port of the SASL_PLAINTEXT listener
    internal_bootstrap: str  # host:port of the PLAINTEXT listener (no login; for diagnosis)
    username: str
    password: str
    record: ProcessRecord

    @property
    def broker(self) -> str:
        return f"kafka://{self.bootstrap}"

    def settings(self, base: Settings, mechanism: str, password: str | None = None) -> Settings:
        """`base` pointed at this broker's SASL listener, logging in with `mechanism` as the
        user (with `password` instead of the right one, to test a refused login)."""
        return dataclasses.replace(
            base, broker=self.broker, kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism=mechanism, kafka_sasl_username=self.username,
            kafka_sasl_password=self.password if password is None else password)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.record, lines)


def _jaas_quote(value: str) -> str:
    if '"' in value or "\\" in value or "\n" in value:
        raise ValueError("the test user's name and password must not hold quotes, backslashes "
                         "or newlines (they go into a JAAS config string)")
    return f'"{value}"'


def sasl_properties(client_port: int, internal_port: int, controller_port: int,
                    username: str, password: str) -> dict[str, object]:
    """The server.properties settings (over `server_properties`' defaults) for the listeners."""
    prefix = "listener.name.client."
    return {
        "listeners": (f"CLIENT://{HOST}:{client_port},INTERNAL://{HOST}:{internal_port},"
                      f"CONTROLLER://{HOST}:{controller_port}"),
        "advertised.listeners": f"CLIENT://{HOST}:{client_port},INTERNAL://{HOST}:{internal_port}",
        "listener.security.protocol.map": ("CLIENT:SASL_PLAINTEXT,INTERNAL:PLAINTEXT,"
                                           "CONTROLLER:PLAINTEXT"),
        "inter.broker.listener.name": "INTERNAL",
        "controller.listener.names": "CONTROLLER",
        "sasl.enabled.mechanisms": ",".join(MECHANISMS),
        f"{prefix}plain.sasl.jaas.config": (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f"user_{username}={_jaas_quote(password)};"),
        **{f"{prefix}{mechanism.lower()}.sasl.jaas.config":
           "org.apache.kafka.common.security.scram.ScramLoginModule required;"
           for mechanism in SCRAM_MECHANISMS},
        # Nothing may create a topic by naming it: tagstream creates its own.
        "auto.create.topics.enable": "false",
    }


def scram_format_args(username: str, password: str) -> list[str]:
    """The storage tool's arguments that create the SCRAM user for both SCRAM mechanisms."""
    args = []
    for mechanism in SCRAM_MECHANISMS:
        args += ["--add-scram", f"{mechanism}=[name={username},password={password}]"]
    return args


@contextmanager
def sasl_kafka(directory: Path, username: str, password: str,
               timeout: float = 120.0) -> Iterator[SaslKafka]:
    """Format and start the node under `directory`, wait until the user can log in over SASL,
    yield it; the JVM is stopped on the way out, whatever happened."""
    require_fetched()
    client_port, internal_port, controller_port = free_ports(3)
    node = NodeConfig(1, client_port, controller_port, directory / "node-1")
    format_nodes([node], new_cluster_id(),
                 extra=sasl_properties(client_port, internal_port, controller_port,
                                       username, password),
                 format_args=scram_format_args(username, password))
    record = start_process(node_argv(node, jit="client"), directory / "kafka.log")
    try:
        kafka = SaslKafka(f"{HOST}:{client_port}", f"{HOST}:{internal_port}", username,
                          password, record)
        _wait_until_ready(kafka, time.monotonic() + timeout)
        yield kafka
    finally:
        stop_process(record, timeout=20)


def _wait_until_ready(kafka: SaslKafka, deadline: float) -> None:
    """Until the SASL port accepts connections and the user logs in with every mechanism
    (SCRAM users come from the bootstrap metadata, which the broker loads before it serves)."""
    host, _, port = kafka.bootstrap.rpartition(":")
    while True:
        _check_alive(kafka, deadline, "accept connections")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    for mechanism in MECHANISMS:
        while not asyncio.run(_logs_in(kafka, mechanism)):
            _check_alive(kafka, deadline, f"accept a {mechanism} login")
            time.sleep(0.5)


def _check_alive(kafka: SaslKafka, deadline: float, what: str) -> None:
    if not is_running(kafka.record):
        raise RuntimeError(f"the SASL Kafka exited before it would {what}:\n{kafka.log_tail()}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"the SASL Kafka did not {what} in time:\n{kafka.log_tail()}")


async def _logs_in(kafka: SaslKafka, mechanism: str) -> bool:
    """True if a client logged in with `mechanism` and saw the broker in the metadata."""
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=kafka.bootstrap, request_timeout_ms=5000,
                            **client_kwargs(kafka, mechanism))
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    except Exception:  # noqa: BLE001 - not up yet, or the login is not accepted yet
        return False
    finally:
        await client.close()


def client_kwargs(kafka: SaslKafka, mechanism: str) -> dict[str, Any]:
    """aiokafka keyword arguments that log in as the user (right password) with `mechanism`."""
    return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
            "sasl_plain_username": kafka.username, "sasl_plain_password": kafka.password}
