"""A 3-controller, 3-broker Oxbow cluster on loopback with s3s-fs: clients
bootstrap from any broker; kill -9 of a broker or of the controller leader
under acks=all idempotent load loses and duplicates nothing; reassignment
moves a partition between brokers.
"""
from __future__ import annotations

import json
import threading
import time

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from harness import clients
from harness import kafka_cli as cli
from harness.cluster import OxbowCluster, wait_leaders_on

pytestmark = pytest.mark.oxbow_only

SESSION_TIMEOUT_S = 6.0


@pytest.fixture
def cluster(server_factory, tmp_path):
    s3 = server_factory("s3s-fs")
    c = OxbowCluster(tmp_path / "cluster", s3)
    try:
        c.start()
        yield c
    except BaseException:
        print(c.log_tails())
        raise
    finally:
        c.stop()
        panics = [n.name for n in c.nodes() if "panicked at" in n.log_text()]
        assert not panics, f"panics in {panics}"


class Load:
    """An idempotent acks=all producer writing unique values until stopped."""

    def __init__(self, bootstrap: str, topic: str):
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                                  "linger.ms": 5, "message.timeout.ms": 120_000})
        self.topic = topic
        self.acked: set[int] = set()
        self.errors: list[str] = []
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _cb(self, err, msg):
        if err:
            self.errors.append(str(err))
        else:
            self.acked.add(int(msg.value()))

    def _run(self):
        i = 0
        while not self.stop_flag.is_set():
            try:
                self.producer.produce(self.topic, value=b"%d" % i, key=b"%d" % i, callback=self._cb)
                i += 1
            except BufferError:
                pass
            self.producer.poll(0.001 if i % 100 == 0 else 0)
        self.sent = i

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(30)
        assert self.producer.flush(120) == 0, "messages still unacknowledged after 120 s"


def audit(bootstrap: str, topic: str, partitions: int, load: Load) -> None:
    got = clients.consume_confluent(bootstrap, topic, list(range(partitions)))
    values = [int(r.value) for recs in got.values() for r in recs]
    assert not load.errors, f"producer errors: {load.errors[:5]}"
    assert len(values) == len(set(values)), f"{len(values) - len(set(values))} duplicates"
    missing = load.acked - set(values)
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"
    for p, recs in got.items():
        offsets = [r.offset for r in recs]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))) if offsets else True, \
            f"partition {p} has gaps"


def test_any_broker_bootstraps_and_partitions_spread(cluster, topic_name):
    first = cluster.brokers[0].bootstrap
    clients.create_topic(first, topic_name, 6)
    md = AdminClient({"bootstrap.servers": first}).list_topics(topic_name, timeout=10)
    leaders = {p.leader for p in md.topics[topic_name].partitions.values()}
    assert leaders == {1, 2, 3}, f"partitions not spread over the brokers: {leaders}"
    for b in cluster.brokers:
        msgs = clients.make_messages(300, 6, tag=f"via-{b.node_id}")
        clients.produce_confluent(b.bootstrap, topic_name, msgs)
    for b in cluster.brokers:
        got = clients.consume_confluent(b.bootstrap, topic_name, list(range(6)))
        assert sum(len(v) for v in got.values()) == 900


def test_kill9_broker_under_load(cluster, topic_name):
    bs = cluster.bootstrap()
    clients.create_topic(bs, topic_name, 6)
    victim = cluster.brokers[0]
    with Load(bs, topic_name) as load:
        time.sleep(3)
        victim.kill9()
        killed_at = time.monotonic()
        survivors = {b.node_id for b in cluster.brokers if b is not victim}
        moved_after = wait_leaders_on(cluster.bootstrap(), topic_name, 6, survivors, SESSION_TIMEOUT_S + 10)
        print(f"partitions served by survivors {moved_after:.2f}s after kill -9")
        assert time.monotonic() - killed_at <= SESSION_TIMEOUT_S + 2 + 1, "failover slower than session + 2 s"
        time.sleep(3)
    assert len(load.acked) > 100
    audit(cluster.bootstrap(), topic_name, 6, load)


def test_kill9_controller_leader_under_load(cluster, topic_name):
    bs = cluster.bootstrap()
    clients.create_topic(bs, topic_name, 3)
    with Load(bs, topic_name) as load:
        time.sleep(2)
        leader = cluster.leader()
        leader.kill9()
        time.sleep(5)
        # Admin calls work again after the election.
        clients.create_topic(bs, topic_name + "-after", 1)
    audit(cluster.bootstrap(), topic_name, 3, load)


def test_reassignment_with_the_kafka_tool(cluster, topic_name, tmp_path):
    bs = cluster.bootstrap()
    clients.create_topic(bs, topic_name, 1)
    msgs = clients.make_messages(1000, 1, tag="before")
    clients.produce_confluent(bs, topic_name, msgs)
    md = AdminClient({"bootstrap.servers": bs}).list_topics(topic_name, timeout=10)
    owner = md.topics[topic_name].partitions[0].leader
    target = next(b.node_id for b in cluster.brokers if b.node_id != owner)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": topic_name, "partition": 0, "replicas": [target]}]}))
    started = time.monotonic()
    cli.run_ok("org.apache.kafka.tools.reassign.ReassignPartitionsCommand", "--bootstrap-server", bs,
               "--reassignment-json-file", str(plan), "--execute")
    wait_leaders_on(bs, topic_name, 1, {target}, 10)
    print(f"reassignment took {time.monotonic() - started:.2f}s including the tool's JVM start")
    r = cli.run_ok("org.apache.kafka.tools.reassign.ReassignPartitionsCommand", "--bootstrap-server", bs,
                   "--reassignment-json-file", str(plan), "--verify")
    assert "is completed" in r.stdout, r.describe()
    more = clients.make_messages(500, 1, tag="after")
    clients.produce_confluent(bs, topic_name, more)
    got = clients.consume_confluent(bs, topic_name, [0])
    assert [r.offset for r in got[0]] == list(range(1500))
