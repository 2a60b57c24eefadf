"""A throw-away certificate authority for the local broker's TLS listeners (tests, demo).

`make_certs(folder)` runs `openssl` to create a CA, a broker certificate for 127.0.0.1 /
localhost and a client certificate (mutual TLS), all PEM, valid for a few days. Kafka
reads PEM key stores directly (`ssl.keystore.type=PEM`), so no Java key store is needed.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "3"


class CertError(RuntimeError):
    """openssl is missing or failed; one line."""


@dataclass(frozen=True)
class DevCerts:
    cafile: Path  # the CA certificate clients trust
    broker_keystore: Path  # broker key + certificate chain (PEM), for ssl.keystore.location
    client_certfile: Path  # client certificate signed by the CA (mutual TLS)
    client_keyfile: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertError("openssl not found on PATH; it makes the local broker's certificates")
    proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise CertError(f"openssl {args[0]} failed: {lines[-1] if lines else proc.returncode}")


def _signed(name: str, subject: str, extensions: str, folder: Path) -> None:
    """name.key (PKCS#8, unencrypted) and name.pem signed by ca.key."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", subject, cwd=folder)
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", DAYS,
             "-extfile", f"{name}.ext", cwd=folder)


def make_certs(folder: Path) -> DevCerts:
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", DAYS, "-subj", "/CN=community-pulse dev CA", cwd=folder)
    _signed("broker", "/CN=localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n", folder)
    _signed("client", "/CN=community-pulse",
            "extendedKeyUsage=clientAuth\n", folder)
    keystore = folder / "broker-keystore.pem"
    keystore.write_text((folder / "broker.key").read_text() + (folder / "broker.pem").read_text())
    for private in ("ca.key", "broker.key", "client.key", "broker-keystore.pem"):
        (folder / private).chmod(0o600)
    return DevCerts(folder / "ca.pem", keystore, folder / "client.pem", folder / "client.key")
