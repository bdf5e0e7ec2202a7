"""The data lifecycle: DeleteRecords (the Kafka CLI's kafka-delete-records, i.e.
the Java admin client), retention by time and by size, and the deletion of
objects that no longer hold live data.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from harness import clients
from harness import kafka_cli as cli
from harness.procs import wait_until

FAST_LIFECYCLE = """
[storage]
retention_check_ms = 300
object_delete_grace_ms = 300
"""


def produce_batches(bootstrap: str, topic: str, batches: int, per_batch: int, size: int = 100) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    for b in range(batches):
        for i in range(per_batch):
            p.produce(topic, value=(b"%d-%d-" % (b, i)).ljust(size, b"x"), partition=0)
        assert p.flush(30) == 0  # each batch its own flush, so its own object


def earliest(bootstrap: str, topic: str) -> int:
    return clients.watermarks_confluent(bootstrap, topic, 0)[0]


def sso_objects(srv) -> list[Path]:
    """The stream-set objects in the store, as files (the default file store of one
    server, or the s3s-fs bucket directory of a cluster)."""
    root = srv.objects_root / "sso"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_delete_records_with_the_java_admin_client(server, topic_name, tmp_path):
    clients.create_topic(server.bootstrap, topic_name, 1)
    produce_batches(server.bootstrap, topic_name, 4, 25)
    spec = tmp_path / "delete.json"
    spec.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": topic_name, "partition": 0, "offset": 40}]}))
    r = cli.run_ok("org.apache.kafka.tools.DeleteRecordsCommand", "--bootstrap-server", server.bootstrap,
                   "--offset-json-file", str(spec))
    assert "low_watermark: 40" in r.stdout, r.describe()
    assert earliest(server.bootstrap, topic_name) == 40

    # A consumer positioned below the start follows auto.offset.reset.
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": "lifecycle", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic_name, 0, 0)])
        first = None
        deadline = time.monotonic() + 30
        while first is None and time.monotonic() < deadline:
            m = c.poll(1)
            if m is not None and not m.error():
                first = m.offset()
        assert first == 40
    finally:
        c.close()


@pytest.mark.oxbow_only
def test_seal_when_idle_off_gathers_concurrent_requests_into_one_object(server_factory, tmp_path, topic_name):
    """`[storage] seal_when_idle = false` (the cloud-S3 setting): an object gathers for the
    whole `linger_ms`, so requests arriving together share one PUT even with the upload
    pipeline idle (the default seals after 1 ms then)."""
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text("[storage]\nlinger_ms = 3000\nseal_when_idle = false\n")
    srv = server_factory(extra_args=["--config", str(cfg)])
    clients.create_topic(srv.bootstrap, topic_name, 1)
    producers = [Producer({"bootstrap.servers": srv.bootstrap, "acks": "all", "linger.ms": 0})
                 for _ in range(6)]
    for p in producers:  # connected before the burst
        p.list_topics(topic_name, timeout=30)
    assert not sso_objects(srv)
    acked = []

    def send(p, i):
        p.produce(topic_name, value=b"burst-%d" % i, partition=0,
                  on_delivery=lambda err, msg: acked.append((err, msg.offset())))
        assert p.flush(30) == 0

    threads = [threading.Thread(target=send, args=(p, i)) for i, p in enumerate(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o for _, o in acked) == list(range(6)) and all(e is None for e, _ in acked), acked
    assert len(sso_objects(srv)) == 1, sso_objects(srv)


@pytest.mark.oxbow_only
def test_time_retention_moves_the_start_and_deletes_objects(server_factory, tmp_path, topic_name):
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text(FAST_LIFECYCLE)
    srv = server_factory(extra_args=["--config", str(cfg)])
    clients.create_topic(srv.bootstrap, topic_name, 1, config={"retention.ms": "1500"})
    produce_batches(srv.bootstrap, topic_name, 3, 10)
    assert sso_objects(srv), "produced data must be in objects"
    wait_until(lambda: earliest(srv.bootstrap, topic_name) == 30, 20, "retention to drop every expired slice")
    wait_until(lambda: not sso_objects(srv), 20, "expired objects to be deleted from the store")
    # The partition still takes writes at the next offset.
    produce_batches(srv.bootstrap, topic_name, 1, 5)
    assert clients.watermarks_confluent(srv.bootstrap, topic_name, 0) == (30, 35)


@pytest.mark.oxbow_only
def test_size_retention_keeps_at_least_retention_bytes(server_factory, tmp_path, topic_name):
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text(FAST_LIFECYCLE)
    srv = server_factory(extra_args=["--config", str(cfg)])
    # 100 records of ~1 KB; keep at least 25 KB. Slices are whatever the
    # producer's requests made them, so only bounds can be asserted.
    clients.create_topic(srv.bootstrap, topic_name, 1, config={"retention.bytes": "25000"})
    produce_batches(srv.bootstrap, topic_name, 10, 10, size=1000)
    wait_until(lambda: earliest(srv.bootstrap, topic_name) >= 50, 20, "size retention to trim")
    time.sleep(1.0)
    start = earliest(srv.bootstrap, topic_name)
    # At least 25 records (25 KB) kept, and not more than a few slices extra.
    assert 50 <= start <= 75, f"start offset is {start}"
    got = clients.consume_confluent(srv.bootstrap, topic_name, [0])
    assert [r.offset for r in got[0]] == list(range(start, 100))


@pytest.mark.oxbow_only
def test_objects_no_metadata_references_are_collected(server_factory, tmp_path, topic_name):
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text(FAST_LIFECYCLE + "orphan_min_age_ms = 1000\norphan_scan_interval_ms = 300\n")
    srv = server_factory(extra_args=["--config", str(cfg)])
    clients.create_topic(srv.bootstrap, topic_name, 1)
    produce_batches(srv.bootstrap, topic_name, 3, 10)
    committed = set(sso_objects(srv))
    assert committed
    # An upload of this broker incarnation whose commit never happened ...
    incarnation = sorted(committed)[0].parent
    orphan = incarnation / "9999999999999999"
    orphan.write_bytes(b"never committed")
    # ... is kept while the incarnation lives (its commit may still come) ...
    time.sleep(2.5)
    assert orphan.exists(), "an upload of a live incarnation must not be collected"
    # ... and collected once the incarnation has died (kill -9, restart).
    srv.kill9()
    srv.restart()
    wait_until(lambda: not orphan.exists(), 20, "the orphaned object to be deleted")
    assert committed <= set(sso_objects(srv)), "committed objects must stay"
    got = clients.consume_confluent(srv.bootstrap, topic_name, [0])
    assert [r.offset for r in got[0]] == list(range(30))


CONFIGS = "kafka.admin.ConfigCommand"  # kafka-configs.sh


@pytest.mark.oxbow_only
def test_kafka_configs_sources_synonyms_and_cluster_defaults(server_factory, tmp_path, topic_name):
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text(FAST_LIFECYCLE)
    srv = server_factory(extra_args=["--config", str(cfg)])
    bs = srv.bootstrap
    plain, own = topic_name + "-plain", topic_name + "-own"
    clients.create_topic(bs, plain, 1)
    clients.create_topic(bs, own, 1)

    def describe(*entity: str) -> str:
        return cli.run_ok(CONFIGS, "--bootstrap-server", bs, "--describe", *entity, "--all").stdout

    # A topic override: its own source first, then the built-in default.
    cli.run_ok(CONFIGS, "--bootstrap-server", bs, "--alter", "--entity-type", "topics", "--entity-name", own,
               "--add-config", "retention.ms=3600000,cleanup.policy=[compact,delete]")
    out = describe("--entity-type", "topics", "--entity-name", own)
    assert ("retention.ms=3600000 sensitive=false synonyms={DYNAMIC_TOPIC_CONFIG:retention.ms=3600000, "
            "DEFAULT_CONFIG:log.retention.ms=604800000}") in out, out
    assert "cleanup.policy=compact,delete sensitive=false" in out, out

    # A cluster-wide default (brokers --entity-default) applies at once to
    # every topic that does not set its own, and retention follows it.
    produce_batches(bs, plain, 3, 10)
    produce_batches(bs, own, 3, 10)
    cli.run_ok(CONFIGS, "--bootstrap-server", bs, "--alter", "--entity-type", "brokers", "--entity-default",
               "--add-config", "log.retention.ms=1000")
    out = describe("--entity-type", "topics", "--entity-name", plain)
    assert ("retention.ms=1000 sensitive=false synonyms={DYNAMIC_DEFAULT_BROKER_CONFIG:log.retention.ms=1000, "
            "DEFAULT_CONFIG:log.retention.ms=604800000}") in out, out
    assert "log.retention.ms=1000" in cli.run_ok(CONFIGS, "--bootstrap-server", bs, "--describe",
                                                 "--entity-type", "brokers", "--entity-default").stdout
    wait_until(lambda: earliest(bs, plain) == 30, 20, "the cluster default retention to trim the topic")
    time.sleep(1.0)
    assert earliest(bs, own) == 0, "a topic's own retention.ms wins over the cluster default"

    # Deleting the default restores the built-in one.
    cli.run_ok(CONFIGS, "--bootstrap-server", bs, "--alter", "--entity-type", "brokers", "--entity-default",
               "--delete-config", "log.retention.ms")
    out = describe("--entity-type", "topics", "--entity-name", plain)
    assert "retention.ms=604800000 sensitive=false synonyms={DEFAULT_CONFIG:log.retention.ms=604800000}" in out, out

    # Bad values and unknown names are refused with Kafka's error.
    r = cli.run(CONFIGS, "--bootstrap-server", bs, "--alter", "--entity-type", "topics", "--entity-name", plain,
                "--add-config", "retention.ms=soon")
    assert "InvalidConfigurationException: Invalid value soon for configuration retention.ms" in r.output, \
        r.describe()
    r = cli.run(CONFIGS, "--bootstrap-server", bs, "--alter", "--entity-type", "brokers", "--entity-default",
                "--add-config", "log.cleaner.min.cleanable.ratio=2")
    assert "Invalid value 2 for configuration log.cleaner.min.cleanable.ratio" in r.output, r.describe()


def test_log_append_time_topics_stamp_the_broker_clock(server, topic_name):
    from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME
    clients.create_topic(server.bootstrap, topic_name, 1, config={"message.timestamp.type": "LogAppendTime"})
    old = int(time.time() * 1000) - 3_600_000
    before = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": server.bootstrap, "acks": "all"})
    for i in range(5):
        p.produce(topic_name, value=b"v%d" % i, partition=0, timestamp=old)
    assert p.flush(30) == 0
    after = int(time.time() * 1000)
    got = clients.consume_confluent(server.bootstrap, topic_name, [0])[0]
    assert len(got) == 5
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": "lat", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic_name, 0, 0)])
        msgs = []
        deadline = time.monotonic() + 30
        while len(msgs) < 5 and time.monotonic() < deadline:
            m = c.poll(1)
            if m is not None and not m.error():
                msgs.append(m)
    finally:
        c.close()
    assert len(msgs) == 5
    for m in msgs:
        kind, ts = m.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME, (kind, TIMESTAMP_CREATE_TIME)
        assert before - 1000 <= ts <= after + 1000, (ts, before, after)
