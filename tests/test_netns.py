"""A real network cut, not a pause: every controller and broker runs alone in
its own network namespace (harness/netns.py), and one broker's link to the
controllers is taken down while it keeps running, keeps its Kafka clients and
keeps reaching the object store.

    controller-1..3 ──┐
    broker-1..3 ──────┴─ control bridge (controller RPC; brokers' calls to the controllers)
    broker-1..3 ──────┬─ data bridge, broker ports isolated from one another
    root namespace ───┘  (s3s-fs, the Kafka clients of this test)

Brokers do not talk to each other: broker/src connects out only through
`controller_client::RemoteController` (the `Net` seam) and the object store
client, and listens only for Kafka clients and /metrics; replication is the
object store's. So the cut (`ip link set <broker's control veth> down`, a
silent drop both ways) cuts the broker off from every peer; the data bridge,
whose broker ports are isolated, gives it no other path. The test checks the
network it relies on before and during the cut.

Under steady acks=all idempotent load (harness/load.py): the cut broker is
fenced when its session expires (the controller leader logs it) and delisted;
its partitions get other leaders and take acknowledged writes there. Produce
requests sent straight to the cut broker for a partition it still believes it
leads (one while cut off, one just before the heal, whose commit may then be
retried against the controllers) are never acknowledged and never stored:
the broker can commit nothing, and what it wrote under its old epochs is
refused once it can talk again. After the heal the broker registers again, is
listed, catches up with the moves, and a full read-back finds every
acknowledged record exactly once at its acknowledged offset, offsets dense
from 0, nothing stored that was never acknowledged as sent.

Every wait is bounded and loose; nothing asserts how long a step took.
"""
from __future__ import annotations

import re
import select
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness import clients, crash, env, wire
from harness.cluster import leaders, live_brokers, wait_leaders_on, wait_listed
from harness.load import ProducerLoad, audit
from harness.procs import port_accepts, wait_until

pytestmark = [pytest.mark.oxbow_only, pytest.mark.netns]

PARTITIONS = 6
# The broker session is 6 s; the controller leader fences a silent broker soon after.
FENCE_TIMEOUT = 30.0
MOVE_TIMEOUT = 45.0
REJOIN_TIMEOUT = 45.0
# A broker holds a produce until its writer has an outcome: while cut off it keeps
# retrying the commit; once healed the controllers refuse it at once (fenced).
PROBE_ANSWER_TIMEOUT = 60.0
# Seqs the probes carry: payloads of the load's format, far above anything the load sends,
# so the audit would also report them as "never sent" if they were stored.
PROBE_SEQ_BASE = 900_000_000
FENCED = re.compile(r"INFO controller::duties: fenced broker broker=(\d+)")


def owned_by(bootstrap: str, topic: str, broker_id: int) -> list[int]:
    return sorted(p for p, leader in leaders(bootstrap, topic).items() if leader == broker_id)


def fenced_ids(cluster) -> list[int]:
    """Broker ids the controllers have logged fencing for (the leader's duties fence a
    broker whose session expired), in log order per controller."""
    return [int(m.group(1)) for c in cluster.controllers for m in FENCED.finditer(c.log_text())]


class Probe:
    """One acks=all Produce v7 of a single record straight to `broker` for `partition`, on
    its own connection, whose answer is looked for later (`answer`)."""

    def __init__(self, broker, topic: str, partition: int, seq: int):
        assert seq % PARTITIONS == partition, "a probe is shaped like the load's own messages"
        self.partition, self.seq = partition, seq
        self.value = crash.payload(seq)
        self.conn = wire.Connection(broker.host, broker.port, timeout=10)
        batch = wire.record_batch([(b"k%d" % seq, self.value)])
        self.cid = self.conn.send_request(wire.API_PRODUCE, 7, wire.produce_request_v7(
            topic, partition, batch, acks=-1, timeout_ms=int(PROBE_ANSWER_TIMEOUT * 1000)))
        self.outcome: str | None = None  # once answered: "error N" or "closed"

    def answer(self, timeout: float) -> str | None:
        """The outcome, waiting up to `timeout` s for it (None: no answer yet, the request
        stays pending); fails the test if the broker acknowledged the record."""
        if self.outcome is None and select.select([self.conn.sock], [], [], timeout)[0]:
            try:
                [(_, _, err, base)] = wire.parse_produce_response_v7(self.conn.read_response(self.cid))
            except ConnectionError:
                self.outcome = "closed"
            else:
                assert err != wire.ERR_NONE, \
                    f"a produce the cut-off broker took was acknowledged at {self.partition}/{base} (seq {self.seq})"
                self.outcome = f"error {err}"
            self.conn.close()
        return self.outcome


def test_cut_off_broker_is_fenced_and_rejoins_without_acking_what_it_took(netns_cluster, topic_name):
    cluster, net = netns_cluster
    victim = cluster.brokers[0]
    others = [b for b in cluster.brokers if b is not victim]
    bs, survivors_bs = cluster.bootstrap(), cluster.bootstrap(without=(victim,))
    store = urlsplit(cluster.env["AWS_ENDPOINT_URL"])

    def reaches_controllers() -> list[bool]:
        return [net.can_connect(victim.name, c.host, c.port, timeout=1) for c in cluster.controllers]

    # Each node's PID is the oxbow process itself, in its own namespace, and the network
    # is the one the docstring describes.
    for n in cluster.nodes():
        assert Path(f"/proc/{n.process.pid}/exe").resolve() == env.OXBOW_BIN.resolve(), \
            f"{n.name}'s PID is not the oxbow process"
        assert net.runs_in(n.name, n.process.pid), f"{n.name} is not in its own namespace"
    assert reaches_controllers() == [True] * 3, "a broker cannot reach every controller"
    assert not any(net.can_connect(victim.name, o.host, o.port, timeout=1) for o in others), \
        "brokers reach each other's Kafka ports over the data bridge"
    assert net.can_connect(victim.name, store.hostname, store.port), "a broker cannot reach the store"

    clients.create_topic(bs, topic_name, PARTITIONS)
    moved = owned_by(bs, topic_name, victim.node_id)
    assert moved, "the victim owns no partition; the test would prove nothing"
    assert fenced_ids(cluster) == [], "a broker was fenced before the cut"

    with ProducerLoad(bs, topic_name, PARTITIONS) as load:
        load.wait_acks(300, 60, what="before the cut")
        net.cut(victim.name)
        cut_at = time.monotonic()
        print(f"cut {victim.name} ({net.hosts[victim.name].control_ip}) off, owning partitions {moved}; "
              f"{load.describe()}")
        assert reaches_controllers() == [False] * 3, "the cut broker still reaches a controller"
        assert port_accepts(victim.host, victim.port), "the cut broker is no longer reachable by clients"
        assert net.can_connect(victim.name, store.hostname, store.port), "the cut broker lost the store"

        wait_until(lambda: victim.node_id in fenced_ids(cluster), FENCE_TIMEOUT,
                   f"a controller to fence {victim.name}",
                   on_fail=lambda: f"fenced so far: {fenced_ids(cluster)}")
        fenced_after = time.monotonic() - cut_at
        print(f"fenced {fenced_after:.1f}s after the cut")
        # Still cut off, so it does not know: it takes a produce for a partition it led.
        probe_cut = Probe(victim, topic_name, moved[0], PROBE_SEQ_BASE + moved[0])

        wait_leaders_on(survivors_bs, topic_name, PARTITIONS, {b.node_id for b in others}, MOVE_TIMEOUT)
        wait_listed(survivors_bs, victim.node_id, MOVE_TIMEOUT, listed=False)
        load.wait_acks(100, MOVE_TIMEOUT, partitions=moved,
                       what="on the moved partitions while their old owner is cut off")
        print(f"its partitions led by {sorted({leaders(survivors_bs, topic_name)[p] for p in moved})}, "
              f"taking writes, {time.monotonic() - cut_at:.1f}s after the cut; {load.describe()}")
        answer_cut = probe_cut.answer(1.0)  # not acknowledged so far (answered or not)
        assert reaches_controllers() == [False] * 3, "the cut healed by itself"

        # One more just before the heal: if it reaches the writer, its commit is retried
        # against the controllers after the heal, under epochs they have moved past.
        probe_heal = Probe(victim, topic_name, moved[-1], PROBE_SEQ_BASE + PARTITIONS + moved[-1])
        net.heal(victim.name)
        print(f"healed {time.monotonic() - cut_at:.1f}s after the cut")
        assert reaches_controllers() == [True] * 3, "the healed broker does not reach the controllers"
        healed_at = time.monotonic()
        wait_listed(survivors_bs, victim.node_id, REJOIN_TIMEOUT)
        for probe in (probe_cut, probe_heal):
            assert probe.answer(max(0.0, healed_at + PROBE_ANSWER_TIMEOUT - time.monotonic())), \
                f"the healed broker never answered a produce it took while cut off (seq {probe.seq})"
        print(f"probe answers: the one sent {fenced_after:.0f}s into the cut: {answer_cut} while cut off, "
              f"{probe_cut.outcome} after the heal; the one sent just before the heal: {probe_heal.outcome}")
        # Back with current metadata: its own Metadata shows the moves, its own DescribeCluster lists it.
        wait_leaders_on(victim.bootstrap, topic_name, PARTITIONS, {b.node_id for b in others}, REJOIN_TIMEOUT)
        wait_listed(victim.bootstrap, victim.node_id, REJOIN_TIMEOUT)
        load.wait_acks(500, 60, what="after the heal")

    print(load.describe())
    load.assert_clean()
    for probe in (probe_cut, probe_heal):
        stored = [r for r in clients.consume_confluent(bs, topic_name, [probe.partition])[probe.partition]
                  if r.value == probe.value]
        assert not stored, f"the cut-off broker's unacknowledged write (seq {probe.seq}) was committed: " \
                           f"{[(r.partition, r.offset) for r in stored]}"
    audit(bs, topic_name, load)
    assert victim.running(), f"{victim.name} exited after the heal"
    assert "re-registered after being fenced" in victim.log_since_start(), \
        f"{victim.name} never logged its re-registration"
    assert set(fenced_ids(cluster)) == {victim.node_id}, \
        f"brokers other than the cut one were fenced: {fenced_ids(cluster)}"
    assert set(live_brokers(bs)) == {b.node_id for b in cluster.brokers}
