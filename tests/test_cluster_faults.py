"""Faults and operations on a running 3-controller, 3-broker cluster (s3s-fs
store), each under steady acks=all idempotent load from confluent-kafka,
each ending with a full read-back audit (harness/load.py): offsets dense from
0 in every partition, every message stored at most once, every acknowledged
one at the offset its acknowledgement gave.

- SIGSTOP of a broker: its session expires, its partitions move and take
  writes elsewhere while it is frozen; after SIGCONT it is fenced, registers
  again and the log is intact.
- SIGTERM of a broker: it hands its partitions off and exits 0; the producer
  sees no failure.
- A fourth broker joins a running cluster, is listed, takes a partition by
  reassignment and serves produce and fetch for it.
- Rolling restart (SIGTERM, start, wait until healthy) of every broker, then
  every controller.
- Controller membership with `oxbow metadata-quorum` (describe, a fourth
  controller added, a follower removed), and over the controller RPC the
  leader removed while its process keeps running (it steps down and answers
  `Removed`, so brokers move on and keep their sessions with the new leader).

Waits are generous and polled (a 2-core machine under load is slow); nothing
here asserts how long something took, only that it happened within a bound.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from harness import clients, env, wire
from harness import kafka_cli as cli
from harness.cluster import leaders, live_brokers, wait_leaders_on, wait_listed
from harness.controller_rpc import ControllerClient
from harness.load import ProducerLoad, audit
from harness.metrics import metric
from harness.procs import wait_until

pytestmark = pytest.mark.oxbow_only

PARTITIONS = 6
# Broker session timeout is 6 s; fencing, the moves and clients noticing take a
# few seconds more. These bounds are deliberately loose: they catch "never".
MOVE_TIMEOUT = 60.0
REJOIN_TIMEOUT = 60.0
# A broker given SIGTERM drains and commits (bounded by 20 s inside oxbow), then exits.
EXIT_TIMEOUT = 45.0
ERR_NOT_LEADER_OR_FOLLOWER = 6
SESSION_TIMEOUT_S = 6.0


def owned_by(bootstrap: str, topic: str, broker_id: int) -> list[int]:
    return sorted(p for p, leader in leaders(bootstrap, topic).items() if leader == broker_id)


def test_sigstop_broker_under_load(cluster, topic_name):
    bs = cluster.bootstrap()
    clients.create_topic(bs, topic_name, PARTITIONS)
    victim = cluster.brokers[0]
    others = [b for b in cluster.brokers if b is not victim]
    survivors_bs = cluster.bootstrap(without=(victim,))
    moved = owned_by(bs, topic_name, victim.node_id)
    assert moved, "the victim owns no partition; the test would prove nothing"

    with ProducerLoad(bs, topic_name, PARTITIONS) as load:
        load.wait_acks(300, 60, what="before the pause")
        victim.pause()
        print(f"SIGSTOP {victim.name} (pid {victim.process.pid}) owning partitions {moved}; {load.describe()}")
        moved_after = wait_leaders_on(survivors_bs, topic_name, PARTITIONS, {b.node_id for b in others},
                                      MOVE_TIMEOUT)
        print(f"its partitions owned by other brokers {moved_after:.1f}s after SIGSTOP")
        wait_listed(survivors_bs, victim.node_id, MOVE_TIMEOUT, listed=False)
        # Still frozen, and its former partitions take writes on their new owners.
        load.wait_acks(100, MOVE_TIMEOUT, partitions=moved,
                       what="on the moved partitions while their old owner is stopped")
        assert victim.is_paused(), "the victim was not stopped the whole time"
        print(f"writes continue on the new owners; {load.describe()}")

        victim.resume()
        # It wakes up fenced: its in-flight work must be refused, not committed,
        # and it registers again.
        wait_listed(survivors_bs, victim.node_id, REJOIN_TIMEOUT)
        load.wait_acks(500, 60, what="after SIGCONT")

    print(load.describe())
    load.assert_clean()
    audit(bs, topic_name, load)
    assert victim.running(), f"{victim.name} exited after SIGCONT"
    assert "re-registered after being fenced" in victim.log_since_start(), \
        f"{victim.name} never logged its re-registration"
    # Back as a full member: it answers Metadata and lists itself.
    assert victim.node_id in live_brokers(victim.bootstrap)


def test_sigterm_broker_hands_off_under_load(cluster, topic_name):
    bs = cluster.bootstrap()
    clients.create_topic(bs, topic_name, PARTITIONS)
    victim = cluster.brokers[1]
    others = [b for b in cluster.brokers if b is not victim]
    survivors_bs = cluster.bootstrap(without=(victim,))
    moved = owned_by(bs, topic_name, victim.node_id)
    assert moved, "the victim owns no partition; the test would prove nothing"

    with ProducerLoad(bs, topic_name, PARTITIONS) as load:
        load.wait_acks(300, 60, what="before SIGTERM")
        started = time.monotonic()
        code = victim.terminate(EXIT_TIMEOUT)
        assert code is not None, f"{victim.name} still running {EXIT_TIMEOUT:.0f}s after SIGTERM"
        assert code == 0, f"{victim.name} exited with code {code} after SIGTERM"
        print(f"{victim.name} exited 0 {time.monotonic() - started:.1f}s after SIGTERM")
        wait_leaders_on(survivors_bs, topic_name, PARTITIONS, {b.node_id for b in others}, MOVE_TIMEOUT)
        wait_listed(survivors_bs, victim.node_id, MOVE_TIMEOUT, listed=False)
        load.wait_acks(100, MOVE_TIMEOUT, partitions=moved, what="on the handed-off partitions")

    print(load.describe())
    load.assert_clean()
    audit(survivors_bs, topic_name, load)
    log = victim.log_since_start()
    assert "shutting down: flushing and committing buffered data" in log and "stopped" in log, \
        f"{victim.name} did not log an orderly shutdown:\n{victim.log_tail(30)}"


def test_broker_added_to_running_cluster(cluster, topic_name, tmp_path):
    bs = cluster.bootstrap()
    clients.create_topic(bs, topic_name, 3)
    before = clients.make_messages(300, 3, tag="before")
    clients.produce_confluent(bs, topic_name, before)

    new = cluster.add_broker(4)
    for b in cluster.brokers:  # every broker, the new one included, lists it with its endpoint
        wait_until(lambda b=b: live_brokers(b.bootstrap).get(4) == new.bootstrap, REJOIN_TIMEOUT,
                   f"broker 4 listed by {b.name}")
    assert owned_by(bs, topic_name, 4) == [], "a new broker took partitions nobody moved to it"

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": topic_name, "partition": 0, "replicas": [4]}]}))
    cli.run_ok("org.apache.kafka.tools.reassign.ReassignPartitionsCommand", "--bootstrap-server", bs,
               "--reassignment-json-file", str(plan), "--execute")
    wait_until(lambda: leaders(bs, topic_name)[0] == 4, MOVE_TIMEOUT, "partition 0 to be led by broker 4")
    r = cli.run_ok("org.apache.kafka.tools.reassign.ReassignPartitionsCommand", "--bootstrap-server", bs,
                   "--reassignment-json-file", str(plan), "--verify")
    assert "is completed" in r.stdout, r.describe()

    # Broker 4 itself takes a produce for partition 0; the old owner refuses one.
    p0_before = [m for m in before if m.partition == 0]
    batch = wire.record_batch([(b"raw", b"via broker 4")])
    wait_until(lambda: metric(new.metrics_url, "oxbow_partitions_hosted") == 1, MOVE_TIMEOUT,
               "broker 4 to host one partition")
    with wire.Connection("127.0.0.1", new.port) as c:
        cid = c.send_request(wire.API_PRODUCE, 7, wire.produce_request_v7(topic_name, 0, batch))
        [(_, _, err, base)] = wire.parse_produce_response_v7(c.read_response(cid))
    assert (err, base) == (0, len(p0_before)), f"produce to broker 4: error {err}, base offset {base}"
    other = cluster.brokers[0]
    with wire.Connection("127.0.0.1", other.port) as c:
        cid = c.send_request(wire.API_PRODUCE, 7, wire.produce_request_v7(topic_name, 0, batch))
        [(_, _, err, _)] = wire.parse_produce_response_v7(c.read_response(cid))
    assert err == ERR_NOT_LEADER_OR_FOLLOWER, f"{other.name} answered {err} for a partition it does not own"

    # Clients that know only broker 4 produce to it and read the whole partition from it.
    after = clients.make_messages(200, 1, tag="after")
    acks = clients.produce_confluent(new.bootstrap, topic_name, after)
    first_after = len(p0_before) + 1
    assert [o for _, o in acks] == list(range(first_after, first_after + len(after)))
    got = clients.consume_confluent(new.bootstrap, topic_name, [0])[0]
    assert [r.offset for r in got] == list(range(first_after + len(after)))
    want = [(m.key, m.value) for m in p0_before] + [(b"raw", b"via broker 4")] + [(m.key, m.value) for m in after]
    assert [(r.key, r.value) for r in got] == want, "partition 0 read from broker 4 differs from what was written"
    assert metric(new.metrics_url, "oxbow_bytes_in_total") > 0
    assert metric(new.metrics_url, "oxbow_bytes_out_total") > 0


def test_rolling_restart_of_every_node_under_load(cluster, topic_name):
    bs = cluster.bootstrap()
    clients.create_topic(bs, topic_name, PARTITIONS)
    handoffs = []
    with ProducerLoad(bs, topic_name, PARTITIONS) as load:
        load.wait_acks(300, 60, what="before the first restart")
        for b in cluster.brokers:
            others = {o.node_id for o in cluster.brokers if o is not b}
            others_bs = cluster.bootstrap(without=(b,))
            moved = owned_by(bs, topic_name, b.node_id)
            code = b.terminate(EXIT_TIMEOUT)
            assert code == 0, f"{b.name} exit code {code} after SIGTERM (None: still running after " \
                              f"{EXIT_TIMEOUT:.0f}s)"
            wait_leaders_on(others_bs, topic_name, PARTITIONS, others, MOVE_TIMEOUT)
            if moved:
                load.wait_acks(100, MOVE_TIMEOUT, partitions=moved, what=f"on the partitions {b.name} handed off")
            b.start()
            b.wait_ready()
            # Healthy: registered and unfenced as every broker sees it, itself included.
            wait_listed(others_bs, b.node_id, REJOIN_TIMEOUT)
            wait_listed(b.bootstrap, b.node_id, REJOIN_TIMEOUT)
            load.wait_acks(500, MOVE_TIMEOUT, what=f"after restarting {b.name}")
            print(f"restarted {b.name} (it owned {moved}); {load.describe()}")
        for c in cluster.controllers:
            was_leader = cluster.leader() is c
            code = c.terminate(EXIT_TIMEOUT)
            assert code == 0, f"{c.name} exit code {code} after SIGTERM (None: still running after " \
                              f"{EXIT_TIMEOUT:.0f}s)"
            if was_leader:
                handoffs.append((c.name, "handed off leadership" in c.log_since_start()))
            # The other two take metadata writes without it (a topic creation is a Raft
            # write); from the second step on, one of them is a controller restarted before,
            # which shows that it rejoined as a working voter.
            clients.create_topic(bs, f"{topic_name}-without-{c.name}", 1, timeout=60)
            load.wait_acks(300, MOVE_TIMEOUT, what=f"while {c.name} is down")
            c.start()
            c.wait_ready()
            load.wait_acks(300, MOVE_TIMEOUT, what=f"after restarting {c.name}")
            print(f"restarted {c.name}; {load.describe()}")
        clients.create_topic(bs, f"{topic_name}-after", 1, timeout=60)
        load.wait_acks(300, 60, what="after the last restart")

    print(load.describe())
    print(f"controller leaders stopped (name, hand-off logged): {handoffs}")
    print(f"partition owners after the restarts (none move back on their own): {leaders(bs, topic_name)}")
    load.assert_clean()
    audit(bs, topic_name, load)
    assert set(live_brokers(bs)) == {b.node_id for b in cluster.brokers}
    assert all(n.running() for n in cluster.nodes())


def change_membership(addr: str, change: dict, timeout: float = 60.0) -> dict:
    """Asks the controller at `addr`, again while the answer is retriable (Unavailable,
    NotLeader: e.g. during the election that follows removing the leader)."""
    answers = []

    def settled():
        with ControllerClient(addr) as rpc:
            answers.append(rpc.change_membership(change))
        err = answers[-1].get("Err")
        return not (isinstance(err, dict) and ({"Unavailable", "NotLeader"} & set(err)))
    wait_until(settled, timeout, f"a definite answer to {change} from {addr}", interval=0.5,
               on_fail=lambda: f"answers: {answers[-3:]}")
    return answers[-1]


def metadata_quorum(controllers, *args: str) -> subprocess.CompletedProcess:
    """`oxbow metadata-quorum --controllers ... ARGS`, the operator's tool."""
    return subprocess.run([str(env.OXBOW_BIN), "metadata-quorum", "--controllers",
                           ",".join(c.addr for c in controllers), *args],
                          capture_output=True, text=True, timeout=90)


def voters_line(controllers) -> str:
    return "voters: " + ",".join(f"{c.node_id}={c.addr}" for c in sorted(controllers, key=lambda c: c.node_id))


def test_controller_added_and_removed_under_load(cluster, topic_name):
    """Controller membership with `oxbow metadata-quorum`: add controller 4, remove a
    follower and stop it, then show 4 is a working voter: with one more of the old ones
    stopped, the leader needs 4's vote to commit anything."""
    bs = cluster.bootstrap()
    clients.create_topic(bs, topic_name, 3)
    with ProducerLoad(bs, topic_name, 3) as load:
        load.wait_acks(300, 60, what="before the membership changes")
        old = list(cluster.controllers)
        c4 = cluster.add_controller(4)
        added = metadata_quorum(old, "add-controller", "--id", "4", "--addr", c4.addr)
        assert added.returncode == 0 and added.stdout.strip() == voters_line((*old, c4)), added
        c4.wait_ready()
        described = metadata_quorum((*old, c4), "describe")
        assert described.returncode == 0, described
        assert voters_line((*old, c4)) in described.stdout.splitlines(), described.stdout
        roles = [line for line in described.stdout.splitlines() if " controller " in line]
        assert len(roles) == 4 and sum(" leader, term " in line for line in roles) == 1, described.stdout
        load.wait_acks(300, MOVE_TIMEOUT, what="after adding controller 4")

        leader = cluster.leader()
        gone, kept = [c for c in old if c is not leader][:2]
        removed = metadata_quorum([kept], "remove-controller", "--id", str(gone.node_id))
        assert removed.returncode == 0, removed
        assert removed.stdout.strip() == voters_line([c for c in (*old, c4) if c is not gone]), removed
        code = gone.terminate(EXIT_TIMEOUT)
        assert code == 0, f"{gone.name} exit code {code} after SIGTERM"
        again = metadata_quorum([kept], "remove-controller", "--id", str(gone.node_id))
        assert again.returncode != 0 and "rejected" in again.stderr, f"removing a non-voter: {again}"
        assert len(again.stderr.strip().splitlines()) == 1, again.stderr
        load.wait_acks(300, MOVE_TIMEOUT, what=f"after removing {gone.name}")

        code = kept.terminate(EXIT_TIMEOUT)
        assert code == 0, f"{kept.name} exit code {code} after SIGTERM"
        clients.create_topic(bs, f"{topic_name}-with-{c4.name}", 1, timeout=60)
        load.wait_acks(300, MOVE_TIMEOUT, what=f"without {gone.name} and {kept.name}")
        kept.start()
        kept.wait_ready()
        load.wait_acks(300, MOVE_TIMEOUT, what=f"after restarting {kept.name}")

    print(load.describe())
    load.assert_clean()
    audit(bs, topic_name, load)
    assert set(live_brokers(bs)) == {b.node_id for b in cluster.brokers}


def test_removed_leader_left_running_keeps_brokers_alive(cluster, topic_name):
    """Removing the controller leader from the voters, then leaving the removed process
    running a while (the docs say to stop it "once the answer comes"; an operator may be
    slower than a broker session): brokers keep their sessions and writes keep flowing."""
    bs = cluster.bootstrap()
    clients.create_topic(bs, topic_name, 3)
    old = cluster.leader()
    try:
        with ProducerLoad(bs, topic_name, 3) as load:
            load.wait_acks(300, 60, what="before the removal")
            others = [c for c in cluster.controllers if c is not old]
            removed = change_membership(others[0].addr, {"RemoveVoter": {"id": old.node_id}})
            assert removed == {"Ok": {c.node_id: c.addr for c in others}}, removed
            removed_at, acked_at_removal = time.monotonic(), load.acks_on(range(3))
            timeline = []
            while time.monotonic() - removed_at < 2 * SESSION_TIMEOUT_S + 2:
                timeline.append((round(time.monotonic() - removed_at), load.acks_on(range(3))))
                time.sleep(1)
            print(f"(seconds after removing {old.name}, acknowledgements): {timeline}")
            fenced = [line for c in cluster.controllers for line in c.log_text().splitlines()
                      if "INFO controller::duties: fenced broker" in line]
            assert not fenced, f"brokers fenced while the removed leader {old.name} was still running: {fenced}"
            assert load.acks_on(range(3)) >= acked_at_removal + 2000, \
                f"writes stalled after removing the leader: {timeline}"
            assert old.terminate(EXIT_TIMEOUT) == 0
            load.wait_acks(300, MOVE_TIMEOUT, what=f"after stopping {old.name}")
        load.assert_clean()
        audit(bs, topic_name, load)
    finally:
        # Let the brokers recover before teardown stops them (they wait on the removed one).
        old.terminate(EXIT_TIMEOUT)
        for b in cluster.brokers:
            try:
                wait_listed(bs, b.node_id, REJOIN_TIMEOUT)
            except TimeoutError:
                pass
