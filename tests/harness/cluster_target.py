"""OXBOW_TEST_TARGET=cluster: a whole Oxbow cluster playing the `server` of the
single-node suite.

`ClusterTarget` starts an `OxbowCluster` (3 controllers, 3 brokers, one s3s-fs)
and answers what the tests ask of a server: `bootstrap`, `host` and `port` are
those of one broker, chosen per test (`via`), so clients enter the cluster
through any broker and follow Metadata to the others; `kill9`, `stop` and
`restart` act on every node, the way they act on the controller and broker of
one `oxbow server` (the whole cluster goes down, and comes back from its redb
logs and the object store); `pid`/`process` are the bootstrap broker's,
`pids` every broker's.

Brokers are stopped one at a time, each SIGTERM only once the brokers still
running have taken over the previous one's partitions: a broker that gets
SIGTERM while it opens partitions handed to it can hang in shutdown (a race
of `Broker::shutdown` with `Broker::reconcile`, see `stop_nodes`).
"""
from __future__ import annotations

import random
from pathlib import Path

from .cluster import ClusterNode, OxbowCluster

BROKERS = 3


def pick_bootstrap(seed: int, test_id: str, brokers: int = BROKERS) -> int:
    """The index of the broker a test bootstraps from: fixed by the run's seed and the
    test's id, so one test replays with the same broker whatever else is selected."""
    return random.Random(f"{seed}/{test_id}").randrange(brokers)


class ClusterTarget:
    name = "cluster"
    host = "127.0.0.1"

    def __init__(self, workdir: Path, s3, via: int, extra_args: list[str] | None = None,
                 on_new_node=None):
        self.cluster = OxbowCluster(workdir, s3, brokers=BROKERS, on_new_node=on_new_node)
        self.s3 = s3
        self.via = self.cluster.brokers[via]
        # Broker flags (e.g. --config for the [storage] timers); the harness's brokers are
        # started from their argv, so extra flags are appended before the first start.
        for b in self.cluster.brokers:
            b.process.argv += [str(a) for a in extra_args or []]

    # --- what the tests use
    @property
    def bootstrap(self) -> str:
        return self.via.bootstrap

    @property
    def port(self) -> int:
        return self.via.port

    @property
    def process(self):
        return self.via.process

    @property
    def pid(self) -> int:
        return self.via.process.pid

    @property
    def pids(self) -> list[int]:
        return [b.process.pid for b in self.cluster.brokers if b.running()]

    @property
    def broker_count(self) -> int:
        return len(self.cluster.brokers)

    @property
    def objects_root(self) -> Path:
        """Where the objects are: the cluster's prefix in the s3s-fs bucket directory."""
        prefix = self.cluster.object_store.removeprefix(f"s3://{self.s3.bucket}/")
        return self.s3.bucket_dir / prefix

    def nodes(self) -> list[ClusterNode]:
        return self.cluster.nodes()

    def start(self) -> "ClusterTarget":
        self.cluster.start()
        return self

    def running(self) -> bool:
        """Every node is running (one that died would be a failure of the 'server')."""
        return all(n.running() for n in self.nodes())

    def kill9(self) -> None:
        """SIGKILL to every broker and controller."""
        for n in self.nodes():
            n.kill9()

    def stop(self) -> int | None:
        """SIGTERM to every broker, then every controller: 0 if each exited 0, otherwise the
        first other exit code (all of them are printed)."""
        codes = self.stop_nodes()
        print(f"cluster exit codes after SIGTERM: {codes}")
        return next((c for c in codes.values() if c != 0), 0)

    def stop_nodes(self) -> dict[str, int | None]:
        """Stops the brokers one by one, then the controllers (SIGTERM, SIGKILL after 20 s);
        the exit code of each node that was running. A broker gets SIGTERM right after the
        previous one exited, often while it is still opening the partitions just handed to
        it (a reconcile in flight when shutdown starts must not keep it from exiting)."""
        for n in self.nodes():
            n.resume()
        codes: dict[str, int | None] = {}
        for b in self.cluster.brokers:
            was_running = b.running()
            code = b.stop()
            if was_running:
                codes[b.name] = code
        for c in self.cluster.controllers:
            was_running = c.running()
            code = c.stop()
            if was_running:
                codes[c.name] = code
        return codes

    def restart(self) -> "ClusterTarget":
        """Starts every node again on its data dir and ports (after kill9 or stop) and waits
        until the controllers have a quorum and every broker listens."""
        assert not any(n.running() for n in self.nodes()), "stop or kill it first"
        return self.start()
