"""A multi-node Oxbow cluster on loopback: `oxbow controller` voters and
`oxbow broker`s sharing one s3s-fs object store, every process on free ports
and stopped by PID at teardown (also on failure)."""
from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from . import env
from .procs import ManagedProcess, free_port, port_accepts, wait_until

READY_TIMEOUT = 60.0


class ClusterNode:
    def __init__(self, name: str, argv: list[str], log_path: Path, env_vars: dict):
        self.name = name
        self.process = ManagedProcess(name, argv, log_path, env=env_vars)

    def start(self) -> None:
        self.process.start()

    def kill9(self) -> None:
        self.process.kill9()

    def stop(self) -> int | None:
        return self.process.stop(timeout=20)

    def pause(self) -> None:
        self.process.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.signal(signal.SIGCONT)

    def running(self) -> bool:
        return self.process.running()

    def log_text(self) -> str:
        try:
            return self.process.log_path.read_text(errors="replace")
        except OSError:
            return ""


class Controller(ClusterNode):
    def __init__(self, node_id: int, workdir: Path, voters: str, port: int, env_vars: dict):
        self.node_id = node_id
        self.port = port
        argv = [str(env.OXBOW_BIN), "controller", "--node-id", str(node_id),
                "--listen", f"127.0.0.1:{port}", "--voters", voters,
                "--data-dir", str(workdir / f"controller-{node_id}")]
        super().__init__(f"controller-{node_id}", argv, workdir / f"controller-{node_id}.log", env_vars)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


class Broker(ClusterNode):
    def __init__(self, node_id: int, workdir: Path, controllers: str, object_store: str, env_vars: dict):
        self.node_id = node_id
        self.port = free_port()
        self.metrics_port = free_port()
        argv = [str(env.OXBOW_BIN), "broker", "--node-id", str(node_id), "--controllers", controllers,
                "--data-dir", str(workdir / f"broker-{node_id}"),
                "--kafka-listen", self.bootstrap, "--advertised-listener", self.bootstrap,
                "--metrics-listen", f"127.0.0.1:{self.metrics_port}", "--object-store", object_store]
        super().__init__(f"broker-{node_id}", argv, workdir / f"broker-{node_id}.log", env_vars)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        wait_until(lambda: port_accepts("127.0.0.1", self.port) or not self.running(), READY_TIMEOUT,
                   f"{self.name} to listen")
        assert self.running(), f"{self.name} exited during start-up:\n{self.process.log_tail()}"


class OxbowCluster:
    def __init__(self, workdir: Path, s3, controllers: int = 3, brokers: int = 3):
        self.workdir = Path(workdir)
        ports = [free_port() for _ in range(controllers)]
        voters = ",".join(f"{i + 1}=127.0.0.1:{p}" for i, p in enumerate(ports))
        self.env = {**s3.client_env(), "RUST_LOG": "info,openraft=warn"}
        import os
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("OXBOW_")}, **self.env}
        self.controllers = [Controller(i + 1, self.workdir, voters, p, self.env) for i, p in enumerate(ports)]
        addrs = ",".join(c.addr for c in self.controllers)
        store = f"s3://{s3.bucket}/cluster"
        self.brokers = [Broker(i + 1, self.workdir, addrs, store, self.env) for i in range(brokers)]

    def start(self) -> None:
        for c in self.controllers:
            c.start()
        for c in self.controllers:
            wait_until(lambda c=c: "oxbow controller ready" in c.log_text() or not c.running(), READY_TIMEOUT,
                       f"{c.name} to join the quorum")
            assert c.running(), f"{c.name} exited:\n{c.process.log_tail()}"
        for b in self.brokers:
            b.start()
        for b in self.brokers:
            b.wait_ready()

    def nodes(self) -> list[ClusterNode]:
        return [*self.brokers, *self.controllers]

    def stop(self) -> None:
        for n in self.nodes():
            n.resume()
        for n in self.nodes():
            n.stop()

    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers if b.running())

    def leader(self) -> Controller:
        """The controller that most recently logged that it leads."""
        best, when = None, ""
        for c in self.controllers:
            if not c.running():
                continue
            for m in re.finditer(r"^(\S+)\s+INFO controller::duties: leading", c.log_text(), re.M):
                if m.group(1) > when:
                    best, when = c, m.group(1)
        assert best is not None, "no controller says it leads"
        return best

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(f"--- {n.name}\n{n.process.log_tail(lines)}" for n in self.nodes())


def wait_leaders_on(bootstrap: str, topic: str, partitions: int, allowed: set[int], timeout: float) -> float:
    """Seconds until every partition's leader is in `allowed`, per Metadata."""
    from confluent_kafka.admin import AdminClient
    start = time.monotonic()

    def ok() -> bool:
        md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=5)
        t = md.topics.get(topic)
        return t is not None and len(t.partitions) == partitions and all(
            p.leader in allowed for p in t.partitions.values())
    wait_until(ok, timeout, f"leaders of {topic} to be on {sorted(allowed)}")
    return time.monotonic() - start
