"""Throwaway TLS material for tests: a CA and a client certificate with an encrypted key,
made with the `openssl` command (Debian's openssl package; no Python crypto dependency)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    client_cert: Path
    client_key: Path  # encrypted with `key_password`
    key_password: str


def make_tls_files(directory: Path, key_password: str) -> TlsFiles:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed: apt-get install -y openssl")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=tagstream-test-ca")
    run("req", "-newkey", "rsa:2048", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=tagstream-worker", "-passout", f"pass:{key_password}")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "client.pem", "-days", "2")
    return TlsFiles(directory / "ca.pem", directory / "client.pem", directory / "client.key",
                    key_password)
