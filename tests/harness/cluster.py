"""A multi-node Oxbow cluster: `oxbow controller` voters and `oxbow broker`s
sharing one s3s-fs object store, every process on free ports (on loopback
unless placed elsewhere, below) and stopped by PID at teardown (also on
failure).

A node can be killed (SIGKILL), paused (SIGSTOP/SIGCONT), stopped cleanly
(SIGTERM, exit code returned) and started again on the same data dir and
ports; brokers can be added to a running cluster. Readiness and membership
are observed from outside only: log lines, listening ports, Kafka Metadata
and DescribeCluster.

Where each node runs is its `Placement`: by default every node is on
127.0.0.1 in the tests' own network namespace; `harness/netns.py` gives each
node its own namespace and addresses instead (its argv then starts with
`ip netns exec NS`, which execs, so the PID is still the node's own).
"""
from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import env
from .procs import ManagedProcess, free_port, port_accepts, wait_until

READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Placement:
    """Where a node runs: `prefix` goes before its argv (e.g. `ip netns exec NS`);
    a controller binds its RPC on `peer_host`; a broker binds its Kafka and metrics
    listeners on `client_host` and advertises it (a broker connects out only, to
    the controllers and the object store, so it binds nothing on `peer_host`)."""
    peer_host: str = "127.0.0.1"
    client_host: str = "127.0.0.1"
    prefix: tuple[str, ...] = ()


LOOPBACK = Placement()


class ClusterNode:
    def __init__(self, name: str, argv: list[str], log_path: Path, env_vars: dict):
        self.name = name
        self.process = ManagedProcess(name, argv, log_path, env=env_vars)
        # Set by kill9/stop/terminate; an exit without it is a crash.
        self.stopped_on_purpose = False

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def log_tail(self, lines: int = 60) -> str:
        return self.process.log_tail(lines)

    def start(self) -> None:
        self.stopped_on_purpose = False
        self.process.start()

    def kill9(self) -> None:
        self.stopped_on_purpose = True
        self.process.kill9()

    def stop(self) -> int | None:
        """SIGTERM, SIGKILL after 20 s; the exit code (-9 if it had to be killed)."""
        self.stopped_on_purpose = True
        return self.process.stop(timeout=20)

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM and wait up to `timeout` s: the exit code, or None if it is still
        running (it is then left running, for the caller to report and teardown to kill)."""
        self.stopped_on_purpose = True
        self.process.signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def died_unexpectedly(self) -> bool:
        return self.process.proc is not None and not self.running() and not self.stopped_on_purpose

    def is_paused(self) -> bool:
        """True while the process is stopped by a signal (state T in /proc/PID/stat)."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")

    def pause(self) -> None:
        """SIGSTOP, and wait until the kernel shows the process stopped (delivery is asynchronous)."""
        self.process.signal(signal.SIGSTOP)
        wait_until(self.is_paused, 10, f"{self.name} to be stopped by SIGSTOP")

    def resume(self) -> None:
        self.process.signal(signal.SIGCONT)

    def running(self) -> bool:
        return self.process.running()

    def log_text(self) -> str:
        try:
            return self.process.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_since_start(self) -> str:
        """The log written since the most recent start (the harness marks each start)."""
        text = self.log_text()
        return text[text.rfind("=== start "):]


class Controller(ClusterNode):
    def __init__(self, node_id: int, workdir: Path, voters: str, port: int, env_vars: dict,
                 placement: Placement = LOOPBACK):
        self.node_id = node_id
        self.port = port
        self.host = placement.peer_host
        argv = [*placement.prefix, str(env.OXBOW_BIN), "controller", "--node-id", str(node_id),
                "--listen", self.addr, "--voters", voters,
                "--data-dir", str(workdir / f"controller-{node_id}")]
        super().__init__(f"controller-{node_id}", argv, workdir / f"controller-{node_id}.log", env_vars)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def wait_ready(self) -> None:
        """Until this start has logged that it joined a working quorum."""
        wait_until(lambda: "oxbow controller ready" in self.log_since_start() or not self.running(),
                   READY_TIMEOUT, f"{self.name} to join the quorum")
        assert self.running(), f"{self.name} exited during start-up:\n{self.process.log_tail()}"


class Broker(ClusterNode):
    def __init__(self, node_id: int, workdir: Path, controllers: str, object_store: str, env_vars: dict,
                 placement: Placement = LOOPBACK):
        self.node_id = node_id
        self.host = placement.client_host
        self.port = free_port()
        self.metrics_port = free_port()
        argv = [*placement.prefix, str(env.OXBOW_BIN), "broker", "--node-id", str(node_id),
                "--controllers", controllers, "--data-dir", str(workdir / f"broker-{node_id}"),
                "--kafka-listen", self.bootstrap, "--advertised-listener", self.bootstrap,
                "--metrics-listen", f"{self.host}:{self.metrics_port}", "--object-store", object_store]
        super().__init__(f"broker-{node_id}", argv, workdir / f"broker-{node_id}.log", env_vars)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def wait_ready(self) -> None:
        """Until this start listens for Kafka clients (bound last, once it can serve)."""
        wait_until(lambda: port_accepts(self.host, self.port) or not self.running(), READY_TIMEOUT,
                   f"{self.name} to listen")
        assert self.running(), f"{self.name} exited during start-up:\n{self.process.log_tail()}"


class OxbowCluster:
    """`controllers` voters and `brokers` brokers on one s3s-fs; `on_new_node` is
    called with every node made (e.g. to show its log tail when a test fails);
    `placement` says where the node of a name ("controller-1", "broker-2") runs
    (default: all on loopback)."""

    def __init__(self, workdir: Path, s3, controllers: int = 3, brokers: int = 3, on_new_node=None,
                 placement: Callable[[str], Placement] = lambda name: LOOPBACK):
        self.workdir = Path(workdir)
        self.on_new_node = on_new_node or (lambda node: None)
        self.placement = placement
        ports = [free_port() for _ in range(controllers)]
        hosts = [placement(f"controller-{i + 1}").peer_host for i in range(controllers)]
        voters = ",".join(f"{i + 1}={h}:{p}" for i, (h, p) in enumerate(zip(hosts, ports)))
        self.voters = voters  # as given to the first controllers
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("OXBOW_")},
                    **s3.client_env(), "RUST_LOG": "info,openraft=warn"}
        self.controllers = [Controller(i + 1, self.workdir, voters, p, self.env, placement(f"controller-{i + 1}"))
                            for i, p in enumerate(ports)]
        self.controller_addrs = ",".join(c.addr for c in self.controllers)
        self.object_store = f"s3://{s3.bucket}/cluster"
        self.brokers = [Broker(i + 1, self.workdir, self.controller_addrs, self.object_store, self.env,
                               placement(f"broker-{i + 1}"))
                        for i in range(brokers)]
        for n in self.nodes():
            self.on_new_node(n)

    def start(self) -> None:
        for c in self.controllers:
            c.start()
        for c in self.controllers:
            c.wait_ready()
        for b in self.brokers:
            b.start()
        for b in self.brokers:
            b.wait_ready()

    def add_broker(self, node_id: int) -> Broker:
        """Starts one more broker against the running quorum and waits until it listens;
        it is stopped with the others at teardown."""
        assert all(b.node_id != node_id for b in self.brokers), f"broker {node_id} exists"
        b = Broker(node_id, self.workdir, self.controller_addrs, self.object_store, self.env,
                   self.placement(f"broker-{node_id}"))
        self.brokers.append(b)
        self.on_new_node(b)
        b.start()
        b.wait_ready()
        return b

    def add_controller(self, node_id: int) -> Controller:
        """Starts a controller with a fresh data dir that is not a voter yet; it waits to be
        contacted once a voter adds it (ChangeMembership AddVoter). `oxbow controller`
        requires its own id in --voters, so it gets the first voters plus itself; its id
        must not be the smallest, or it would form a cluster of its own."""
        assert all(c.node_id != node_id for c in self.controllers), f"controller {node_id} exists"
        assert node_id > min(c.node_id for c in self.controllers), "a joining controller never has the smallest id"
        port = free_port()
        placement = self.placement(f"controller-{node_id}")
        c = Controller(node_id, self.workdir, f"{self.voters},{node_id}={placement.peer_host}:{port}", port,
                       self.env, placement)
        self.controllers.append(c)
        self.on_new_node(c)
        c.start()
        wait_until(lambda: port_accepts(c.host, port) or not c.running(), READY_TIMEOUT,
                   f"{c.name} to listen")
        assert c.running(), f"{c.name} exited during start-up:\n{c.process.log_tail()}"
        return c

    def nodes(self) -> list[ClusterNode]:
        return [*self.brokers, *self.controllers]

    def stop(self) -> dict[str, int | None]:
        """Stops brokers, then controllers (SIGTERM, SIGKILL after 20 s); the exit code
        of each node that was still running."""
        for n in self.nodes():
            n.resume()
        codes = {}
        for n in self.nodes():
            was_running = n.running()
            code = n.stop()
            if was_running:
                codes[n.name] = code
        return codes

    def bootstrap(self, without: tuple = ()) -> str:
        """Bootstrap list of the running brokers (minus `without`, e.g. a paused one)."""
        return ",".join(b.bootstrap for b in self.brokers if b.running() and b not in without)

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


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> leader broker id (-1: none) for `topic`, per Metadata."""
    from confluent_kafka.admin import AdminClient
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    t = md.topics.get(topic)
    assert t is not None and t.error is None, f"no metadata for {topic}: {t and t.error}"
    return {p: pm.leader for p, pm in t.partitions.items()}


def live_brokers(bootstrap: str) -> dict[int, str]:
    """The brokers DescribeCluster lists (live, unfenced), id -> host:port."""
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    desc = admin.describe_cluster(request_timeout=10).result(timeout=15)
    return {n.id: f"{n.host}:{n.port}" for n in desc.nodes}


def wait_listed(bootstrap: str, broker_id: int, timeout: float, listed: bool = True) -> None:
    """Until DescribeCluster (answered via `bootstrap`) lists `broker_id` (or no longer does)."""
    def ok():
        try:
            return (broker_id in live_brokers(bootstrap)) == listed
        except Exception:  # noqa: BLE001 - a broker briefly unreachable; keep polling
            return False
    wait_until(ok, timeout, f"broker {broker_id} to be {'listed' if listed else 'gone'} in DescribeCluster "
                            f"via {bootstrap}", interval=0.3)


def wait_leaders_on(bootstrap: str, topic: str, partitions: int, allowed: set[int], timeout: float) -> float:
    """Seconds until every partition's leader is in `allowed`, per Metadata."""
    from confluent_kafka.admin import AdminClient
    start = time.monotonic()

    last: list = []

    def ok() -> bool:
        try:
            md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=5)
        except Exception as e:  # noqa: BLE001 - a broker briefly unreachable; keep polling
            last[:] = [repr(e)]
            return False
        t = md.topics.get(topic)
        last[:] = [t and {p: pm.leader for p, pm in t.partitions.items()}]
        return t is not None and len(t.partitions) == partitions and all(
            p.leader in allowed for p in t.partitions.values())
    wait_until(ok, timeout, f"leaders of {topic} to be on {sorted(allowed)}", interval=0.25,
               on_fail=lambda: f"last seen: {last}")
    return time.monotonic() - start
