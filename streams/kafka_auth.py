"""How every Kafka client of the product connects: plaintext, TLS (CA file, mutual TLS),
SASL PLAIN or SCRAM, from the product's settings (docs/security.md).

One `KafkaSecurity` per process, built from `RuntimeConfig` (TOML / PULSE_*), gives the
keyword arguments of each client library: Faust's credentials (worker consumer, producer,
changelog, dead letters, topic creation all go through them), kafka-python and aiokafka
(generate, the producer helper, the demo, the benchmark's loaders) and librdkafka (the
benchmark's bulk loader). Secrets come from a file or the environment and never appear in
a repr, a log line or an error message.

Stdlib only at import time: the benchmark's loader imports it from another venv.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from streams.config import ConfigError, read_secret

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

    from streams.config import RuntimeConfig

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PASSWORD_ENV = "PULSE_KAFKA_SASL_PASSWORD"
KEY_PASSWORD_ENV = "PULSE_KAFKA_SSL_KEY_PASSWORD"


@dataclass(frozen=True)
class KafkaSecurity:
    """Validated connection security; `KafkaSecurity()` is plaintext."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "PLAIN"
    username: str = ""
    password: str = field(default="", repr=False)
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    key_password: str = field(default="", repr=False)
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"kafka_security_protocol must be one of {', '.join(PROTOCOLS)}: "
                              f"{self.protocol!r}")
        if self.sasl:
            if self.mechanism not in MECHANISMS:
                raise ConfigError(f"kafka_sasl_mechanism must be one of "
                                  f"{', '.join(MECHANISMS)}: {self.mechanism!r}")
            if not self.username:
                raise ConfigError(f"{self.protocol} needs kafka_sasl_username")
            if not self.password:
                raise ConfigError(f"{self.protocol} needs a password: set {PASSWORD_ENV} or "
                                  "kafka_sasl_password_file")
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("mutual TLS needs both kafka_ssl_certfile and kafka_ssl_keyfile")
        if (self.cafile or self.certfile) and not self.tls:
            raise ConfigError(f"kafka_ssl_* files are set but kafka_security_protocol is "
                              f"{self.protocol} (use SSL or SASL_SSL)")
        for name, path in (("kafka_ssl_cafile", self.cafile),
                           ("kafka_ssl_certfile", self.certfile),
                           ("kafka_ssl_keyfile", self.keyfile)):
            if path and not Path(path).is_file():
                raise ConfigError(f"{name} {path} is not a readable file")

    @classmethod
    def from_runtime(cls, runtime: RuntimeConfig) -> KafkaSecurity:
        """The settings' security, with secrets read from their files or the environment.
        SASL settings with a protocol that is not SASL_* are refused: left at PLAINTEXT,
        the protocol would silently send everything unauthenticated and in the clear."""
        protocol = runtime.kafka_security_protocol.upper()
        sasl = protocol.startswith("SASL_")
        given = _sasl_settings_given(runtime)
        if given and not sasl:
            raise ConfigError(f"{given} is set but kafka_security_protocol is {protocol}: set "
                              "kafka_security_protocol to SASL_SSL (or SASL_PLAINTEXT) to log "
                              "in, or remove the SASL settings")
        return cls(
            protocol=protocol,
            mechanism=runtime.kafka_sasl_mechanism.upper(),
            username=runtime.kafka_sasl_username,
            password=read_secret("kafka_sasl_password_file", runtime.kafka_sasl_password_file,
                                 PASSWORD_ENV) if sasl else "",
            cafile=runtime.kafka_ssl_cafile,
            certfile=runtime.kafka_ssl_certfile,
            keyfile=runtime.kafka_ssl_keyfile,
            key_password=read_secret("kafka_ssl_key_password_file",
                                     runtime.kafka_ssl_key_password_file, KEY_PASSWORD_ENV),
            check_hostname=runtime.kafka_ssl_check_hostname,
        )

    @classmethod
    def from_settings(cls, config_path: str | Path | None = None) -> KafkaSecurity:
        """From the config file (or PULSE_CONFIG) and PULSE_* variables: for tools that
        take no settings of their own (the benchmark's loaders)."""
        from streams.config import load

        return cls.from_runtime(load(config_path)[1])

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (server verified against the CA file, or the system's
        CAs; a client certificate for mutual TLS); None without TLS."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.cafile or None)
            context.check_hostname = self.check_hostname
            if self.certfile:
                context.load_cert_chain(self.certfile, self.keyfile,
                                        password=self.key_password or None)
        except (ssl.SSLError, OSError) as exc:
            # (Only file names: ssl's messages never hold key material.)
            raise ConfigError(f"cannot load the Kafka TLS files ({self.cafile or 'system CAs'}"
                              f"{', ' + self.certfile if self.certfile else ''}): "
                              f"{getattr(exc, 'reason', None) or exc}") from None
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """kafka-python and aiokafka keyword arguments (both take these names)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context
        if self.sasl:
            kwargs.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                          sasl_plain_password=self.password)
        return kwargs

    def faust_credentials(self) -> CredentialsT | None:
        """Faust's `broker_credentials`: used by the consumer, the producer (changelog,
        dead letters) and topic creation alike."""
        from faust.auth import SASLCredentials, SSLCredentials

        if self.sasl:
            return SASLCredentials(username=self.username, password=self.password,
                                   ssl_context=self.ssl_context, mechanism=self.mechanism)
        if self.tls:
            return SSLCredentials(self.ssl_context)
        return None

    def librdkafka(self) -> dict[str, Any]:
        """confluent-kafka (librdkafka) configuration properties."""
        conf: dict[str, Any] = {"security.protocol": self.protocol.lower()}
        if self.tls:
            if self.cafile:
                conf["ssl.ca.location"] = self.cafile
            if self.certfile:
                conf["ssl.certificate.location"] = self.certfile
                conf["ssl.key.location"] = self.keyfile
                if self.key_password:
                    conf["ssl.key.password"] = self.key_password
            conf["ssl.endpoint.identification.algorithm"] = (
                "https" if self.check_hostname else "none")
        if self.sasl:
            conf.update({"sasl.mechanism": self.mechanism, "sasl.username": self.username,
                         "sasl.password": self.password})
        return conf


def _sasl_settings_given(runtime: RuntimeConfig) -> str:
    """The first SASL setting that is set (a name, never a value), or ""."""
    default = type(runtime).kafka_sasl_mechanism
    for name, given in (("kafka_sasl_username", runtime.kafka_sasl_username),
                        ("kafka_sasl_password_file", runtime.kafka_sasl_password_file),
                        (PASSWORD_ENV, os.environ.get(PASSWORD_ENV, "").strip()),
                        ("kafka_sasl_mechanism",
                         runtime.kafka_sasl_mechanism.upper() != default)):
        if given:
            return name
    return ""


class Acl(NamedTuple):
    """One ACL a principal needs: e.g. Acl("TOPIC", "PREFIXED", "community.", "READ")."""

    resource: str  # TOPIC, GROUP
    pattern: str  # LITERAL, PREFIXED
    name: str
    operation: str  # READ, WRITE, DESCRIBE, CREATE


def worker_acls(runtime: RuntimeConfig) -> list[Acl]:
    """What the worker's principal needs on a cluster with an authorizer (docs/security.md;
    the secured end-to-end test grants exactly these and nothing else). CREATE only when
    the worker creates missing topics itself; pre-created topics make it unnecessary."""
    from schemas.events import DEAD_LETTER_TOPIC

    events = runtime.topic_prefix + "community."  # event topics and the dead-letter topic
    internal = runtime.app_id + "-"  # the changelog and Faust's leader-assignment topic
    return [
        *(Acl("TOPIC", "PREFIXED", events, op) for op in ("DESCRIBE", "READ", "CREATE")),
        Acl("TOPIC", "LITERAL", runtime.topic_prefix + DEAD_LETTER_TOPIC, "WRITE"),
        *(Acl("TOPIC", "PREFIXED", internal, op)
          for op in ("DESCRIBE", "READ", "WRITE", "CREATE")),
        Acl("GROUP", "LITERAL", runtime.app_id, "READ"),
    ]


def producer_acls(topic_prefix: str = "") -> list[Acl]:
    """What `generate` and applications using the producer helper need: the event topics
    by name, so that a producer cannot write the dead-letter topic (which `redrive`
    trusts, and which has the same prefix)."""
    return [Acl("TOPIC", "LITERAL", topic, op)
            for topic in event_topics(topic_prefix) for op in ("DESCRIBE", "WRITE")]


def redrive_acls(runtime: RuntimeConfig) -> list[Acl]:
    """What `community-pulse redrive` needs: read the dead letters as its own group and
    write the event topics (docs/security.md)."""
    from schemas.events import DEAD_LETTER_TOPIC

    return [
        *(Acl("TOPIC", "LITERAL", runtime.topic_prefix + DEAD_LETTER_TOPIC, op)
          for op in ("DESCRIBE", "READ")),
        Acl("GROUP", "LITERAL", f"{runtime.app_id}-redrive", "READ"),
        *producer_acls(runtime.topic_prefix),
    ]


def event_topics(topic_prefix: str = "") -> list[str]:
    """The event topics, with the prefix: the only topics producers and `redrive` write."""
    from schemas.events import DEFAULT_TOPICS

    return [topic_prefix + name for name in DEFAULT_TOPICS]


class KafkaAccessError(ConnectionError):
    """Kafka cannot be used: not reached at all (`reached` False), or a broker refused us
    (login, certificate, protocol). The message is one line."""

    def __init__(self, message: str, reached: bool) -> None:
        super().__init__(message)
        self.reached = reached


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    servers = []
    for item in bootstrap.removeprefix("kafka://").split(","):
        host, _, port = item.strip().rpartition(":")
        servers.append((host or "127.0.0.1", int(port or 9092)))
    return servers


async def _probe(host: str, port: int, security: KafkaSecurity, timeout_s: float) -> None:
    """Connect, log in and ask for metadata, as a client's bootstrap does; the errors
    raised are the underlying ones (aiokafka's bootstrap only logs them)."""
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    kwargs = security.client_kwargs()
    kwargs.pop("ssl_context", None)
    conn = await asyncio.wait_for(create_conn(
        host, port, client_id="community-pulse-check", request_timeout_ms=int(timeout_s * 1000),
        ssl_context=security.ssl_context, **kwargs), timeout_s)
    try:
        await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
    finally:
        conn.close()


def _refusal(exc: BaseException, where: str, security: KafkaSecurity) -> str | None:
    """The one-line reason a broker refused us, or None when it was not reached."""
    from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

    if isinstance(exc, SaslAuthenticationFailed):
        return (f"Kafka at {where} refused the {security.mechanism} login of user "
                f"{security.username!r}: check the password ({PASSWORD_ENV} or "
                "kafka_sasl_password_file) and the mechanism")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the TLS certificate of Kafka at {where} is not trusted "
                f"({exc.verify_message}); check kafka_ssl_cafile")
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with Kafka at {where} failed: {exc.reason or exc}"
    if isinstance(exc, KafkaConnectionError) and "closed" in str(exc):
        return (f"Kafka at {where} closed the connection during the handshake: does the "
                f"listener expect {security.protocol}"
                f"{'' if security.certfile else ' (or a client certificate)'}?")
    return None


def _unreached(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer in {timeout_s:.0f} s"
    return " ".join(str(exc).split()) or type(exc).__name__


def check_access(bootstrap: str, security: KafkaSecurity, timeout_s: float = 15.0) -> None:
    """The one broker preflight of every client (worker, generate, producer helper): try
    the bootstrap servers in turn (connect, log in, read metadata) until one answers.
    Raises KafkaAccessError with one line when a broker refuses us (a wrong password, an
    untrusted certificate, another protocol) or none is reached, instead of a client
    that retries forever or fails with a page of traceback."""
    refusals, unreached = [], []
    kafka_log = logging.getLogger("aiokafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)  # its own lines about the same failure: we say it once
    loop = asyncio.new_event_loop()  # (not the current loop: Faust's comes later)
    try:
        for host, port in _servers(bootstrap):
            try:
                loop.run_until_complete(_probe(host, port, security, timeout_s))
                return
            except Exception as exc:  # sorted out below: refused, or not reached
                reason = _refusal(exc, f"{host}:{port}", security)
                if reason is not None:
                    refusals.append(reason)
                else:
                    unreached.append(_unreached(exc, timeout_s))
    finally:
        loop.close()
        kafka_log.setLevel(level)
    if refusals:
        raise KafkaAccessError(refusals[0], reached=True)
    raise KafkaAccessError(f"cannot reach Kafka at {bootstrap} ({unreached[0]}); is the "
                           "broker running?", reached=False)
