"""A 3-controller, 3-broker Oxbow cluster on loopback with s3s-fs: clients
bootstrap from any broker; kill -9 of a broker or of the controller leader
under acks=all idempotent load loses and duplicates nothing; reassignment
moves a partition between brokers.
"""
from __future__ import annotations

import json
import time

import pytest
from confluent_kafka.admin import AdminClient

from harness import clients
from harness import kafka_cli as cli
from harness.cluster import wait_leaders_on
from harness.load import ProducerLoad, audit

pytestmark = pytest.mark.oxbow_only

SESSION_TIMEOUT_S = 6.0


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
    with ProducerLoad(bs, topic_name, 6) as load:
        time.sleep(3)
        victim.kill9()
        killed_at = time.monotonic()
        survivors = {b.node_id for b in cluster.brokers if b is not victim}
        moved_after = wait_leaders_on(cluster.bootstrap(), topic_name, 6, survivors, SESSION_TIMEOUT_S + 10)
        print(f"partitions served by survivors {moved_after:.2f}s after kill -9")
        assert time.monotonic() - killed_at <= SESSION_TIMEOUT_S + 2 + 1, "failover slower than session + 2 s"
        time.sleep(3)
    assert len(load.acked) > 100
    load.assert_clean()
    audit(cluster.bootstrap(), topic_name, load)


def test_kill9_controller_leader_under_load(cluster, topic_name):
    bs = cluster.bootstrap()
    clients.create_topic(bs, topic_name, 3)
    with ProducerLoad(bs, topic_name, 3) as load:
        time.sleep(2)
        leader = cluster.leader()
        leader.kill9()
        time.sleep(5)
        # Admin calls work again after the election.
        clients.create_topic(bs, topic_name + "-after", 1)
    load.assert_clean()
    audit(cluster.bootstrap(), topic_name, load)


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
