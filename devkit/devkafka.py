"""A real single-node Apache Kafka broker (KRaft mode) on 127.0.0.1, for tests and the demo,
and a small real cluster of them for fault tests.

The jars come from Maven Central (pinned in ``deploy/kafka/pom.xml``) and are cached outside
the repository in ``${PULSE_CACHE_DIR:-~/.cache/community-pulse}/kafka-<version>/libs``.

Library use::

    with LocalKafka() as kafka:          # free ports, fresh temp dir
        print(kafka.bootstrap)           # "127.0.0.1:PORT"

    with LocalKafka(secured=True) as kafka:   # plus SASL_SSL and mutual-TLS listeners
        kafka.secured.sasl_ssl_bootstrap      # PLAIN and SCRAM-SHA-512 users, see Secured

    with LocalKafkaCluster() as cluster:      # 3 nodes (fault tests where a leader moves)
        cluster.node(cluster.partition("t", 0).leader).pause()

Command line::

    python -m devkit.devkafka fetch                       # resolve and cache the jars
    python -m devkit.devkafka run --port 9092 --dir DIR   # foreground until Ctrl-C

Requires Java 17+ on PATH (or JAVA_HOME) and, for the first fetch, Maven (``mvn``).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.kafka_auth import Acl, KafkaSecurity

KAFKA_VERSION = "4.1.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
MARKER = ".complete"
# Quick JVM start for short-lived brokers (tests, demo): C1 only, serial GC. Pass
# jvm_opts=() (or G1 options) to LocalKafka for long throughput runs.
FAST_START_JVM_OPTS: tuple[str, ...] = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


# Users of the secured listeners (test credentials, not secrets).
PLAIN_USER, PLAIN_PASSWORD = "pulse-plain", "plain-password-for-tests"
SCRAM_USER, SCRAM_PASSWORD = "pulse-scram", "scram-password-for-tests"


@dataclass(frozen=True)
class Secured:
    """How to reach a secured LocalKafka: a SASL_SSL listener (mechanisms PLAIN and
    SCRAM-SHA-512; the SCRAM user is created by Kafka's own storage tool) and an SSL
    listener that requires a client certificate (mutual TLS), both with certificates of
    a throw-away CA (devkit/devcerts.py)."""

    sasl_ssl_bootstrap: str
    ssl_bootstrap: str
    sasl_plaintext_bootstrap: str  # SASL without TLS (PLAIN, SCRAM-SHA-512)
    cafile: Path
    client_certfile: Path
    client_keyfile: Path
    plain_user: str = PLAIN_USER
    plain_password: str = PLAIN_PASSWORD
    scram_user: str = SCRAM_USER
    scram_password: str = SCRAM_PASSWORD

    def settings_env(self, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        """PULSE_* variables for a client of the SASL_SSL listener (password included)."""
        user, password = ((self.scram_user, self.scram_password) if mechanism.startswith("SCRAM")
                          else (self.plain_user, self.plain_password))
        return {"PULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "PULSE_KAFKA_SASL_MECHANISM": mechanism, "PULSE_KAFKA_SASL_USERNAME": user,
                "PULSE_KAFKA_SASL_PASSWORD": password, "PULSE_KAFKA_SSL_CAFILE": str(self.cafile)}

    def security(self, mechanism: str = "SCRAM-SHA-512") -> KafkaSecurity:
        """The product's client settings for the SASL_SSL listener."""
        from streams.kafka_auth import KafkaSecurity

        env = self.settings_env(mechanism)
        return KafkaSecurity("SASL_SSL", mechanism, env["PULSE_KAFKA_SASL_USERNAME"],
                             env["PULSE_KAFKA_SASL_PASSWORD"], cafile=str(self.cafile))


class DevKafkaError(RuntimeError):
    """An expected failure (no Java, no Maven, port busy, broker did not start); one line."""


def cache_dir() -> Path:
    base = os.environ.get("PULSE_CACHE_DIR") or "~/.cache/community-pulse"
    return Path(base).expanduser() / f"kafka-{KAFKA_VERSION}"


def libs_dir() -> Path:
    return cache_dir() / "libs"


def _libs_complete(libs: Path) -> bool:
    return (libs / MARKER).is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch_jars(quiet: bool = False) -> Path:
    """Resolve the Kafka jars into the cache (once); returns the libs directory."""
    libs = libs_dir()
    if _libs_complete(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevKafkaError(
            "Maven (mvn) not found on PATH; it is needed once to fetch the Kafka jars"
        )
    if not POM.is_file():
        raise DevKafkaError(f"missing {POM}")
    # Several processes (a test run beside a demo) may fetch at once: serialise them.
    with _file_lock(cache_dir() / ".fetch.lock"):
        if _libs_complete(libs):
            return libs
        tmp = cache_dir() / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if not quiet:
            print(f"devkafka: fetching Kafka {KAFKA_VERSION} jars into {libs}", file=sys.stderr)
        cmd = [
            mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        jars = list(tmp.glob("*.jar")) if tmp.is_dir() else []
        if proc.returncode != 0 or not any(j.name.startswith("kafka_2.13-") for j in jars):
            shutil.rmtree(tmp, ignore_errors=True)
            out = (proc.stdout + proc.stderr).strip().splitlines()
            last = [ln.strip() for ln in out if ln.strip()]
            detail = last[-1] if last else "no output"
            raise DevKafkaError(f"mvn could not fetch the Kafka jars (exit {proc.returncode}): "
                                f"{detail}")
        shutil.rmtree(libs, ignore_errors=True)  # a half copy from an older run
        tmp.rename(libs)
        (libs / MARKER).write_text(f"kafka {KAFKA_VERSION}\n")
    return libs


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise DevKafkaError("Java (java) not found on PATH or in JAVA_HOME; Kafka needs Java 17+")
    return java


_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1, never the same one twice in this process."""
    with _ports_lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port
    raise DevKafkaError("could not find a free TCP port")


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise DevKafkaError(f"port 127.0.0.1:{port} is busy") from None


def _cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this child when its parent dies (preexec_fn of Popen)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


_live: weakref.WeakSet[LocalKafka] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for k in list(_live):
        with contextlib.suppress(Exception):
            k.stop()


class LocalKafka:
    """One KRaft broker+controller process with its own ports and data directory."""

    def __init__(
        self,
        port: int | None = None,
        controller_port: int | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        heap: str = "512m",
        start_timeout: float = 90.0,
        num_partitions: int = 4,
        extra_config: dict[str, str] | None = None,
        jvm_opts: Sequence[str] = FAST_START_JVM_OPTS,
        secured: bool = False,
        acls: bool = False,
        cluster_id: str | None = None,
    ) -> None:
        self._want_port = port
        self._want_cport = controller_port
        # Absolute: the broker runs in its own directory, so a relative path (the demo's
        # default `data/demo/run`) would point somewhere else for it.
        self._run_dir = Path(run_dir).resolve() if run_dir is not None else None
        self.heap = heap
        self.start_timeout = start_timeout
        self.num_partitions = num_partitions
        self.extra_config = dict(extra_config or {})
        # A node of a LocalKafkaCluster: its id and the cluster's id come from the cluster.
        self.node_id = int(self.extra_config.get("node.id", "1"))
        self._cluster_id = cluster_id or _cluster_id()
        self.paused = False
        self.jvm_opts = list(jvm_opts)
        self.want_secured = secured
        self.acls = acls  # with `secured`: an authorizer; the SCRAM user gets only ACLs
        self.secured: Secured | None = None  # set by start() when secured
        self._broker_keystore = Path()
        self.port = 0
        self.controller_port = 0
        self.dir: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        if not self.port:
            raise DevKafkaError("LocalKafka is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_file(self) -> Path:
        if self.dir is None:
            raise DevKafkaError("LocalKafka is not started")
        return self.dir / "logs" / "server.log"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalKafka:
        self._prepare()
        self._launch()
        return self

    def _prepare(self) -> None:
        """Ports, directory, configuration and formatted storage: all but the process."""
        if self._proc is not None:
            raise DevKafkaError("LocalKafka already started")
        java = find_java()
        libs = fetch_jars()
        for p in (self._want_port, self._want_cport):
            if p:
                _check_port_free(p)
        self.port = self._want_port or free_port()
        self.controller_port = self._want_cport or free_port()
        if self.port == self.controller_port:
            raise DevKafkaError("broker and controller ports must differ")
        self._make_dir()
        assert self.dir is not None
        scram: list[str] = []
        if self.want_secured:
            self.secured = self._make_secured()
            scram = ["--add-scram",
                     f"SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"]
        props = self._write_config()
        log4j = self._write_log4j()
        base = [java, f"-Xmx{self.heap}", "-Xms128m", *self.jvm_opts,
                "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{log4j}",
                f"-Dkafka.logs.dir={self.dir / 'logs'}", "-cp", str(libs / "*")]
        fmt = subprocess.run(
            [*base, "kafka.tools.StorageTool", "format", "-t", self._cluster_id, "-c", str(props),
             *scram],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        if fmt.returncode != 0:
            lines = [ln for ln in (fmt.stdout + fmt.stderr).splitlines() if ln.strip()]
            raise DevKafkaError(
                f"kafka storage format failed: {lines[-1] if lines else fmt.returncode}"
            )
        self._base = base
        self._props = props

    def _launch(self) -> None:
        self._spawn()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> None:
        assert self.dir is not None
        stdout_log = open(self.dir / "logs" / "stdout.log", "ab")  # noqa: SIM115
        main_thread = threading.current_thread() is threading.main_thread()
        try:
            self._proc = subprocess.Popen(
                [*self._base, "kafka.Kafka", str(self._props)],
                stdin=subprocess.DEVNULL, stdout=stdout_log, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True,
                # PDEATHSIG fires when the *thread* that forked dies; only use it from main.
                preexec_fn=die_with_parent if main_thread and sys.platform == "linux" else None,
            )
        finally:
            stdout_log.close()
        self.paused = False
        _live.add(self)

    # -- faults (tests): the same broker, ports and data throughout ----------------------

    def pause(self) -> None:
        """Stall the broker (SIGSTOP): connections stay open, nothing answers."""
        assert self._proc is not None
        self._signal_group(self._proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self._proc is not None
        self._signal_group(self._proc.pid, signal.SIGCONT)
        self.paused = False

    def crash(self) -> None:
        """kill -9 the broker, keeping its data and ports for `restart`."""
        proc = self._proc
        assert proc is not None
        self._signal_group(proc.pid, signal.SIGCONT)
        self._signal_group(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.paused = False

    def restart(self) -> None:
        """Start the broker again on its data and ports after `crash`."""
        assert self._proc is not None and self._proc.poll() is not None
        self._launch()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the broker's process group, wait, then SIGKILL; idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # Anything else left in the group (there should be nothing).
        self._signal_group(proc.pid, signal.SIGKILL)
        self._proc = None
        _live.discard(self)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def create_topics(
        self, names: Sequence[str], partitions: int | None = None, timeout: float = 30.0
    ) -> None:
        """Create topics (ignoring ones that exist) and wait until they have leaders."""
        _create_topics(self.bootstrap, names, partitions or self.num_partitions, 1, {}, timeout)

    def grant(self, principal: str, acls: Sequence[Acl]) -> None:
        """Allow `principal` (e.g. "User:pulse-scram") these ACLs (broker made with acls=True)."""
        from kafka.admin import (
            ACL,
            ACLOperation,
            ACLPermissionType,
            ACLResourcePatternType,
            KafkaAdminClient,
            ResourcePattern,
            ResourceType,
        )

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="devkafka-admin")
        try:
            result = admin.create_acls([
                ACL(principal, "*", ACLOperation[acl.operation], ACLPermissionType.ALLOW,
                    ResourcePattern(ResourceType[acl.resource], acl.name,
                                    ACLResourcePatternType[acl.pattern]))
                for acl in acls])
        finally:
            admin.close()
        if result.get("failed"):
            raise DevKafkaError(f"granting ACLs failed: {result['failed']}")

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------

    def _make_dir(self) -> None:
        if self._run_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="devkafka-")
            self.dir = Path(self._tmp.name)
        else:
            self._run_dir.mkdir(parents=True, exist_ok=True)
            # A fresh sub-directory each start, so two brokers never share data.
            self.dir = Path(tempfile.mkdtemp(prefix=f"kafka-{self.port}-", dir=self._run_dir))
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)

    def _make_secured(self) -> Secured:
        from devkit.devcerts import CertError, make_certs

        assert self.dir is not None
        try:
            certs = make_certs(self.dir / "tls")
        except CertError as exc:
            raise DevKafkaError(str(exc)) from None
        self._broker_keystore = certs.broker_keystore
        return Secured(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}",
                       f"127.0.0.1:{free_port()}", certs.cafile,
                       certs.client_certfile, certs.client_keyfile)

    def _secured_config(self) -> dict[str, str]:
        """Listeners SASL_SSL and SASL_PLAINTEXT (PLAIN, SCRAM-SHA-512), SSL (client
        certificate required)."""
        if self.secured is None:
            return {}
        s = self.secured
        plain_login = "org.apache.kafka.common.security.plain.PlainLoginModule"
        scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule"
        listeners = (f"SASL_SSL://{s.sasl_ssl_bootstrap},SSL://{s.ssl_bootstrap},"
                     f"SASL_PLAINTEXT://{s.sasl_plaintext_bootstrap}")
        return {
            "listeners": listeners,
            "advertised.listeners": listeners,
            "listener.security.protocol.map":
                "SASL_SSL:SASL_SSL,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
            **{f"listener.name.{name}.plain.sasl.jaas.config":
               f'{plain_login} required user_{PLAIN_USER}="{PLAIN_PASSWORD}";'
               for name in ("sasl_ssl", "sasl_plaintext")},
            **{f"listener.name.{name}.scram-sha-512.sasl.jaas.config": f"{scram_login} required;"
               for name in ("sasl_ssl", "sasl_plaintext")},
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self._broker_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(s.cafile),
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.sasl_ssl.ssl.client.auth": "none",
            **({"authorizer.class.name":
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                # The plain listener (admin), the PLAIN user and the client certificate
                # may do anything; the SCRAM user only what `grant` allows it.
                "super.users": f"User:ANONYMOUS;User:{PLAIN_USER};User:CN=community-pulse"}
               if self.acls else {}),
        }

    def _write_config(self) -> Path:
        assert self.dir is not None
        secured = self._secured_config()
        joined = ("listeners", "advertised.listeners", "listener.security.protocol.map")
        cfg = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
                         f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.dir / "data"),
            "num.partitions": str(self.num_partitions),
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "log.retention.hours": "168",
            "log.flush.interval.messages": "9223372036854775807",
            **{k: v for k, v in secured.items() if k not in joined},
            **self.extra_config,
        }
        for key in joined:  # the secured listeners come on top of the plain ones
            if key in secured:
                cfg[key] += "," + secured[key]
        path = self.dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in cfg.items()))
        return path

    def _write_log4j(self) -> Path:
        assert self.dir is not None
        path = self.dir / "log4j.properties"
        path.write_text(
            "log4j.rootLogger=INFO, file\n"
            "log4j.appender.file=org.apache.log4j.FileAppender\n"
            f"log4j.appender.file.File={self.dir / 'logs' / 'server.log'}\n"
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka=INFO\n"
            "log4j.logger.org.apache.kafka=INFO\n"
        )
        return path

    def _wait_ready(self) -> None:
        from kafka.admin import KafkaAdminClient

        deadline = time.monotonic() + self.start_timeout
        last_err = "not reachable"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise DevKafkaError(
                    f"Kafka broker exited with code {self._proc.returncode} during start; "
                    f"log {self.log_file}:\n{self._log_tail()}"
                )
            if self._port_open():
                try:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap, client_id="devkafka-probe",
                        request_timeout_ms=5000,
                    )
                    try:
                        cluster = admin.describe_cluster()
                    finally:
                        admin.close()
                    # Our own id in our own metadata: registered and unfenced.
                    if any(b.get("broker_id") == self.node_id and not b.get("is_fenced")
                           for b in cluster.get("brokers") or ()):
                        return
                    last_err = "not registered (or still fenced) yet"
                except Exception as e:  # the broker is still coming up
                    last_err = f"{type(e).__name__}: {e}"
            time.sleep(0.25)
        raise DevKafkaError(
            f"Kafka broker on {self.bootstrap} not ready after {self.start_timeout:.0f}s "
            f"({last_err}); log {self.log_file}:\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        tail = _tail(self.log_file)
        assert self.dir is not None
        out = _tail(self.dir / "logs" / "stdout.log", 5)
        return tail if out in ("(empty log)", "(no log)") else f"{tail}\n--- stdout ---\n{out}"

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


def _create_topics(bootstrap: str, names: Sequence[str], partitions: int, replication: int,
                   config: dict[str, str], timeout: float) -> None:
    """Create topics (ignoring ones that exist) and wait until every partition has a leader
    and, when replicated, all its replicas in sync."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="devkafka-admin")
    try:
        for name in names:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, partitions, replication,
                                              topic_configs=config)])
        deadline = time.monotonic() + timeout
        while True:
            desc = admin.describe_topics(list(names))
            if all(
                not t.get("error_code") and t.get("partitions")
                and all(p.get("leader_id", -1) >= 0
                        and len(p.get("isr_nodes") or ()) >= replication
                        for p in t["partitions"])
                for t in desc
            ):
                return
            if time.monotonic() > deadline:
                raise DevKafkaError(f"topics {list(names)} not ready after {timeout}s")
            time.sleep(0.2)
    finally:
        admin.close()


class LocalKafkaCluster:
    """A real KRaft cluster of `nodes` processes on 127.0.0.1, each broker and controller
    (combined mode, one static `controller.quorum.voters`), for fault tests where a
    partition's leader has to move: kill -9, stall or restart one node
    (`cluster.node(id).crash()` / `.pause()` / `.resume()` / `.restart()`) while the
    others carry on. Three nodes keep a controller quorum with one of them down.

        with LocalKafkaCluster() as cluster:
            cluster.create_topics(["t"])                  # replication 3, min ISR 2
            leader = cluster.partition("t", 0).leader     # a node id
            cluster.node(leader).pause()                  # a stalled leader
            cluster.wait_for_leader("t", 0, not_on=leader)
    """

    def __init__(
        self,
        nodes: int = 3,
        run_dir: str | os.PathLike[str] | None = None,
        heap: str = "256m",  # three JVMs on a small machine; plenty for test traffic
        start_timeout: float = 120.0,
        num_partitions: int = 4,
        min_insync_replicas: int = 2,
        session_timeout_ms: int = 6000,
        extra_config: dict[str, str] | None = None,
        jvm_opts: Sequence[str] = FAST_START_JVM_OPTS,
    ) -> None:
        ports = [(free_port(), free_port()) for _ in range(nodes)]
        voters = ",".join(f"{i}@127.0.0.1:{cport}" for i, (_, cport) in enumerate(ports, 1))
        replicas, min_isr = str(nodes), str(min_insync_replicas)
        config = {
            "controller.quorum.voters": voters,
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            # Group offsets and transaction state replicated too: the consumer group
            # survives the loss of any one node.
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            # The controller fences a node it has not heard from for this long and moves
            # its partition leaderships to in-sync replicas (default 9 s, heartbeats every
            # 2 s): shorter keeps a stalled-leader test short, with heartbeats every second
            # so a busy but live node is not fenced.
            "broker.session.timeout.ms": str(session_timeout_ms),
            "broker.heartbeat.interval.ms": "1000",
            # No preferred-leader election behind the test's back: a leader moves only
            # because of the fault a test injects.
            "auto.leader.rebalance.enable": "false",
            **(extra_config or {}),
        }
        self.min_insync_replicas = min_insync_replicas
        self.session_timeout_ms = session_timeout_ms
        self.num_partitions = num_partitions
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if run_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="devkafka-cluster-")
            run_dir = self._tmp.name
        cluster_id = _cluster_id()
        self.nodes = [
            LocalKafka(port=port, controller_port=cport, run_dir=Path(run_dir) / f"node-{i}",
                       heap=heap, start_timeout=start_timeout, num_partitions=num_partitions,
                       extra_config={**config, "node.id": str(i)}, jvm_opts=jvm_opts,
                       cluster_id=cluster_id)
            for i, (port, cport) in enumerate(ports, 1)
        ]

    @property
    def bootstrap(self) -> str:
        """Every node, as clients are configured for a cluster."""
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id - 1]

    def live_bootstrap(self) -> str:
        """The nodes that run and answer (an admin client asking a stalled node hangs)."""
        live = [node.bootstrap for node in self.nodes if node.running() and not node.paused]
        if not live:
            raise DevKafkaError("no node of the cluster is running")
        return ",".join(live)

    def start(self) -> LocalKafkaCluster:
        # All nodes up before waiting for any: a node is ready only once a quorum of
        # controllers has elected a leader.
        try:
            for node in self.nodes:
                node._prepare()
            for node in self.nodes:
                node._spawn()
            for node in self.nodes:
                node._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            # Throw-away data: no controlled shutdown, which waits out its timeouts once
            # the controller quorum is leaving too.
            if node.running():
                node.crash()
            node.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalKafkaCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def create_topics(self, names: Sequence[str], partitions: int | None = None,
                      timeout: float = 60.0) -> None:
        """Topics replicated on every node, `min.insync.replicas` as the cluster's."""
        _create_topics(self.live_bootstrap(), names, partitions or self.num_partitions,
                       len(self.nodes), {"min.insync.replicas": str(self.min_insync_replicas)},
                       timeout)

    def partitions(self, topic: str) -> dict[int, PartitionState]:
        """Leader and in-sync replicas of each partition of `topic`, as a live node sees
        them (no entry while the topic is unknown)."""
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.live_bootstrap(),
                                 client_id="devkafka-admin", request_timeout_ms=10_000)
        try:
            (desc,) = admin.describe_topics([topic])
        finally:
            admin.close()
        if desc.get("error_code"):
            return {}
        return {p["partition_index"]: PartitionState(p["leader_id"], tuple(p["isr_nodes"]))
                for p in desc["partitions"]}

    def partition(self, topic: str, partition: int) -> PartitionState:
        return self.partitions(topic)[partition]

    def group_coordinator(self, group: str) -> int:
        """The node coordinating consumer group `group`: the leader of its partition of
        `__consumer_offsets` (Java's String.hashCode of the name, modulo the partitions)."""
        java_hash = 0
        for char in group:
            java_hash = (31 * java_hash + ord(char)) & 0xFFFFFFFF
        if java_hash >= 1 << 31:
            java_hash -= 1 << 32
        offsets = self.partitions("__consumer_offsets")
        return offsets[abs(java_hash) % len(offsets)].leader

    def wait_for_leader(self, topic: str, partition: int, not_on: int | None = None,
                        timeout: float = 60.0) -> int:
        """The partition's leader once it has one (other than node `not_on`)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):  # a node going or coming: ask again
                leader = self.partition(topic, partition).leader
                if leader >= 0 and leader != not_on:
                    return leader
            if time.monotonic() > deadline:
                raise DevKafkaError(f"{topic}[{partition}] has no leader other than "
                                    f"{not_on} after {timeout}s")
            time.sleep(0.2)

    def wait_in_sync(self, topics: Sequence[str], timeout: float = 120.0) -> None:
        """Until every partition of `topics` has all its replicas in sync again (after a
        node came back)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                states = [s for t in topics for s in self.partitions(t).values()]
                if states and all(len(s.isr) == len(self.nodes) for s in states):
                    return
            if time.monotonic() > deadline:
                raise DevKafkaError(f"{list(topics)} not fully in sync after {timeout}s")
            time.sleep(0.5)


@dataclass(frozen=True)
class PartitionState:
    leader: int  # node id; -1 while the partition has none
    isr: tuple[int, ...]


# -- command line -------------------------------------------------------------------------


def _run(port: int, controller_port: int | None, run_dir: str | None, heap: str,
         secured: bool = False) -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    kafka = LocalKafka(port=port, controller_port=controller_port, run_dir=run_dir, heap=heap,
                       secured=secured)
    try:
        kafka.start()
        print(f"devkafka: Kafka {KAFKA_VERSION} ready on {kafka.bootstrap} "
              f"(dir {kafka.dir}); Ctrl-C to stop", file=sys.stderr, flush=True)
        if kafka.secured is not None:  # settings for the product's clients (test users)
            env = " ".join(f"{k}={v}" for k, v in kafka.secured.settings_env().items())
            print(f"devkafka: SASL_SSL on {kafka.secured.sasl_ssl_bootstrap}: {env}",
                  file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            if not kafka.running():
                raise DevKafkaError(f"Kafka broker exited unexpectedly; see {kafka.log_file}")
    finally:
        kafka.stop()
    print("devkafka: stopped", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.devkafka", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="resolve and cache the Kafka jars")
    run = sub.add_parser("run", help="run a broker in the foreground until Ctrl-C")
    run.add_argument("--port", type=int, default=9092, help="broker port (0 = pick a free one)")
    run.add_argument("--controller-port", type=int, default=None, help="default: a free port")
    run.add_argument("--dir", default=None, help="run directory (default: a temp dir)")
    run.add_argument("--heap", default="512m", help="JVM max heap (default 512m)")
    run.add_argument("--secured", action="store_true",
                     help="also SASL_SSL, SASL_PLAINTEXT and mutual-TLS listeners")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            print(fetch_jars())
        else:
            _run(args.port or 0, args.controller_port, args.dir, args.heap, args.secured)
    except DevKafkaError as e:
        print(f"devkafka: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
