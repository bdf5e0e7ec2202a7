"""The servers the tests run: oxbow itself, Apache Kafka (to check the tests), s3s-fs.

Each listens on 127.0.0.1 ports picked at run time, logs to a file in the test's
tmp dir, can be killed with SIGKILL and restarted on the same data dir and port,
and is stopped by PID.
"""
from __future__ import annotations

import base64
import os
import subprocess
import time
import uuid
from pathlib import Path

from . import env
from .procs import ManagedProcess, free_port, port_accepts

START_TIMEOUT = env.env_float("OXBOW_TEST_START_TIMEOUT", 30.0)
STOP_TIMEOUT = env.env_float("OXBOW_TEST_STOP_TIMEOUT", 10.0)


class ServerStartError(RuntimeError):
    pass


class _Server:
    """Shared behaviour: start and wait until ready, kill -9, restart, stop."""

    name = "server"
    host = "127.0.0.1"
    broker_count = 1  # brokers a client sees in Metadata and DescribeCluster

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.port = free_port()
        self.process: ManagedProcess | None = None
        self.stopped_on_purpose = False  # set by kill9/stop; an exit without it is a crash

    # --- to be provided by each server kind
    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict:
        return dict(os.environ)

    def _ready(self) -> bool:
        return port_accepts(self.host, self.port)

    def _reallocate_ports(self) -> None:
        self.port = free_port()

    # --- common
    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def pids(self) -> list[int]:
        """Every process serving clients (one here; every broker of a cluster target)."""
        return [self.pid]

    def log_tail(self, lines: int = 60) -> str:
        return self.process.log_tail(lines) if self.process else f"<{self.name} not started>"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def start(self, retries_on_port_clash: int = 2) -> "_Server":
        self.stopped_on_purpose = False
        for attempt in range(retries_on_port_clash + 1):
            self.process = ManagedProcess(self.name, self._argv(), self.log_path, env=self._env(),
                                          cwd=self.workdir)
            self.process.start()
            try:
                self._wait_ready()
                return self
            except ServerStartError:
                clash = "address already in use" in self.log_tail(20).lower()
                self.process.kill9()
                if clash and attempt < retries_on_port_clash:
                    self._reallocate_ports()
                    continue
                self.stopped_on_purpose = True  # already reported by this exception
                raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.process.running():
                raise ServerStartError(
                    f"{self.name} exited with code {self.process.returncode()} before it was ready;"
                    f" log tail:\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.1)
        raise ServerStartError(f"{self.name} not ready after {START_TIMEOUT:.0f}s on {self.bootstrap};"
                               f" log tail:\n{self.log_tail()}")

    def restart(self) -> "_Server":
        """Starts again on the same data dir and ports (after kill9 or stop)."""
        assert self.process is not None and not self.process.running(), "stop or kill it first"
        return self.start(retries_on_port_clash=0)

    def kill9(self) -> None:
        self.stopped_on_purpose = True
        if self.process:
            self.process.kill9()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, SIGKILL after `timeout`; the exit code (-9 if it had to be killed)."""
        self.stopped_on_purpose = True
        return self.process.stop(timeout) if self.process else None

    def died_unexpectedly(self) -> bool:
        return bool(self.process and self.process.proc and not self.process.running()
                    and not self.stopped_on_purpose)

    def running(self) -> bool:
        return bool(self.process and self.process.running())


class OxbowServer(_Server):
    """`oxbow server` with a fresh data dir (or the one given) and its own ports."""

    name = "oxbow"

    def __init__(self, workdir: Path, object_store: str | None = None, extra_env: dict | None = None,
                 extra_args: list[str] | None = None, data_dir: Path | None = None):
        super().__init__(workdir)
        self.data_dir = Path(data_dir) if data_dir else self.workdir / "data"
        self.metrics_port = free_port()
        self.object_store = object_store
        self.extra_env = extra_env or {}
        self.extra_args = extra_args or []

    def _reallocate_ports(self) -> None:
        super()._reallocate_ports()
        self.metrics_port = free_port()

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def objects_root(self) -> Path:
        """Where the default object store (a directory in the data dir) keeps the objects."""
        assert self.object_store is None, f"objects are in {self.object_store}"
        return self.data_dir / "objects"

    def _argv(self) -> list[str]:
        if not env.OXBOW_BIN.exists():
            raise ServerStartError(f"oxbow binary not found at {env.OXBOW_BIN} (set OXBOW_BIN or"
                                   " run `cargo build -p oxbow`)")
        argv = [str(env.OXBOW_BIN), "server", "--data-dir", str(self.data_dir),
                "--kafka-listen", self.bootstrap, "--advertised-listener", self.bootstrap,
                "--metrics-listen", f"{self.host}:{self.metrics_port}"]
        if self.object_store:
            argv += ["--object-store", self.object_store]
        return argv + self.extra_args

    def _env(self) -> dict:
        e = {k: v for k, v in os.environ.items() if not k.startswith("OXBOW_")}
        e.update(self.extra_env)
        return e


class KafkaServer(_Server):
    """Apache Kafka 4.1.1 in KRaft combined mode (one node), from the Maven jars."""

    name = "kafka"

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.controller_port = free_port()
        self.data_dir = self.workdir / "kafka-data"
        self.config = self.workdir / "server.properties"
        self._formatted = False

    def _reallocate_ports(self) -> None:
        super()._reallocate_ports()
        self.controller_port = free_port()

    def _java(self, main: str, *args: str) -> list[str]:
        if not (env.KAFKA_BROKER_LIBS / "kafka_2.13-4.1.1.jar").exists():
            raise ServerStartError(f"Kafka broker jars missing in {env.KAFKA_BROKER_LIBS}; run"
                                   " OXBOW_TEST_TARGET=kafka scripts/setup.sh")
        return ["java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                "-cp", f"{env.KAFKA_BROKER_LIBS}/*", main, *args]

    def _write_config(self) -> None:
        self.config.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{self.host}:{self.controller_port}",
            f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self.data_dir}",
            "num.partitions=1",
            "auto.create.topics.enable=true",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "",
        ]))

    def _argv(self) -> list[str]:
        if not self._formatted:
            self._write_config()
            cluster_id = "-"
            while cluster_id.startswith("-"):  # would be read as an option
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            out = subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cluster_id,
                                            "-c", str(self.config)),
                                 capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                raise ServerStartError(f"kafka storage format failed:\n{out.stdout}\n{out.stderr}")
            self._formatted = True
        return self._java("kafka.Kafka", str(self.config))

    def start(self, retries_on_port_clash: int = 0) -> "KafkaServer":
        # A port clash would need a re-format with a new config; rare enough to just fail.
        return super().start(retries_on_port_clash=0)

    def _ready(self) -> bool:
        # Kafka opens its port before the broker is usable; wait for its own "started" line
        # written after the most recent start.
        text = self.log_text()
        last_start = text.rfind("=== start ")
        return "Kafka Server started" in text[last_start:] and port_accepts(self.host, self.port)


class S3sFs(_Server):
    """s3s-fs, an S3-compatible server over a local directory (one directory per bucket)."""

    name = "s3s-fs"
    access_key = "oxbowtestkey"
    secret_key = "oxbowtestsecret0123456789"
    region = "us-east-1"

    def __init__(self, workdir: Path, bucket: str = "oxbow-test"):
        super().__init__(workdir)
        self.root = self.workdir / "s3root"
        self.bucket = bucket
        (self.root / bucket).mkdir(parents=True, exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def bucket_dir(self) -> Path:
        return self.root / self.bucket

    def client_env(self) -> dict:
        """Environment an S3 client (oxbow) needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def _argv(self) -> list[str]:
        if not env.S3S_FS_BIN.exists():
            raise ServerStartError(f"s3s-fs not found at {env.S3S_FS_BIN}; run scripts/setup.sh")
        return [str(env.S3S_FS_BIN), "--host", self.host, "--port", str(self.port),
                "--access-key", self.access_key, "--secret-key", self.secret_key, str(self.root)]

    def stored_objects(self) -> list[Path]:
        return [p for p in self.bucket_dir.rglob("*") if p.is_file()]

