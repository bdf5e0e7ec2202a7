"""Object compaction and compacted topics: stream-set objects rewritten into
compacted objects (`cso/`) and deleted; a `cleanup.policy=compact` topic read
back by the Java console consumer holding exactly the latest value per key at
its original offset, tombstones kept for `delete.retention.ms` and then gone;
kill -9 while compaction and garbage collection run loses no readable offset
and leaves the store holding exactly what the metadata references.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from harness import clients
from harness import kafka_cli as cli
from harness.metrics import metric
from harness.procs import wait_until

pytestmark = pytest.mark.oxbow_only

FAST_COMPACTION = """
[storage]
retention_check_ms = 200
object_delete_grace_ms = 300
compaction_interval_ms = 500
"""


def files(srv, kind: str) -> list[Path]:
    root = srv.objects_root / kind
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def produce_rounds(bootstrap: str, topic: str, rounds: list[list[tuple[bytes, bytes | None]]],
                   partition: int = 0) -> list[int]:
    """Each round its own request (so its own object); returns every record's offset."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    offsets: list[int] = []

    def ack(err, msg):
        assert err is None, err
        offsets.append(msg.offset())

    for records in rounds:
        for k, v in records:
            p.produce(topic, key=k, value=v, partition=partition, on_delivery=ack)
        assert p.flush(30) == 0
    return offsets


def console_read(bootstrap: str, topic: str, expect: int) -> list[tuple[int, str, str]]:
    """(offset, key, value) of every record the Java console consumer reads from the beginning."""
    r = cli.run_ok(cli.CONSOLE_CONSUMER, "--bootstrap-server", bootstrap, "--topic", topic,
                   "--partition", "0", "--from-beginning", "--max-messages", str(expect),
                   "--timeout-ms", "15000",
                   "--property", "print.offset=true", "--property", "print.key=true",
                   "--property", "key.separator=|")
    out = []
    for line in r.stdout.splitlines():
        # "Offset:12|key|value" (print.offset comes first, then key, then value)
        head, key, value = line.split("|", 2)
        out.append((int(head.split(":", 1)[1]), key, value))
    return out


def test_plain_topic_objects_are_compacted_and_read_back_cold(server_factory, tmp_path, topic_name):
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text(FAST_COMPACTION)
    srv = server_factory(extra_args=["--config", str(cfg)])
    clients.create_topic(srv.bootstrap, topic_name, 3)
    msgs = clients.make_messages(3000, 3, "compact-plain")
    # 30 requests, so 30 stream-set objects of three streams each.
    for i in range(30):
        clients.produce_confluent(srv.bootstrap, topic_name, msgs[i * 100:(i + 1) * 100])
    # Every slice but each stream's last goes into compacted objects, and the
    # stream-set objects they came from are deleted (compaction keeps up
    # while the producer runs).
    wait_until(lambda: files(srv, "cso") and len(files(srv, "sso")) <= 3, 30,
               "stream-set objects to be compacted away")
    wait_until(lambda: metric(srv.metrics_url, "oxbow_objects_deleted_total") >= 25, 30,
               "the compacted stream-set objects to be deleted")
    assert metric(srv.metrics_url, "oxbow_compaction_objects_total") >= 1
    written = metric(srv.metrics_url, "oxbow_compaction_bytes_written_total")
    read = metric(srv.metrics_url, "oxbow_compaction_bytes_read_total")
    assert 0 < read <= written, (read, written)  # nothing dropped, plus index and footer
    # A restart empties every cache: reads come from the compacted objects.
    srv.kill9()
    srv.restart()
    got = clients.consume_confluent(srv.bootstrap, topic_name, [0, 1, 2])
    clients.check_exactly_once_in_order(msgs, got)
    # New writes land after the compacted data.
    more = clients.make_messages(30, 3, "compact-plain-after")
    clients.produce_confluent(srv.bootstrap, topic_name, more)
    got = clients.consume_confluent(srv.bootstrap, topic_name, [0, 1, 2])
    clients.check_exactly_once_in_order(msgs + more, got)


def test_compacted_topic_keeps_the_latest_value_per_key(server_factory, tmp_path, topic_name):
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text(FAST_COMPACTION)
    srv = server_factory(extra_args=["--config", str(cfg)])
    clients.create_topic(srv.bootstrap, topic_name, 1, config={
        "cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "3600000"})
    keys = [b"k%02d" % i for i in range(20)]
    rounds = [[(k, b"%s-v%d" % (k, r)) for k in keys] for r in range(10)]
    # Tombstones for five keys, then one more record so they are not in the tail.
    rounds.append([(k, None) for k in keys[:5]])
    rounds.append([(b"last", b"last-v0")])
    offsets = produce_rounds(srv.bootstrap, topic_name, rounds)
    flat = [rec for rnd in rounds for rec in rnd]
    assert offsets == list(range(len(flat)))
    latest: dict[bytes, int] = {}
    for off, (k, _) in zip(offsets, flat):
        latest[k] = off
    expected = sorted((off, flat[off][0].decode(), "null" if flat[off][1] is None else flat[off][1].decode())
                      for off in latest.values())
    assert len(expected) == 21

    # Compaction keeps exactly the latest record per key (the tombstones
    # too, within delete.retention.ms) at its original offset.
    last: list = []

    def compacted():
        last[:] = console_read(srv.bootstrap, topic_name, len(expected))
        return last == expected
    wait_until(compacted, 60, "the topic to be compacted to the latest value per key", interval=1.0,
               on_fail=lambda: f"read {last}\nwanted {expected}")
    hw = clients.watermarks_confluent(srv.bootstrap, topic_name, 0)
    assert hw == (0, len(flat)), "compaction moves neither the start nor the end"

    # With delete.retention.ms lowered (IncrementalAlterConfigs, no restart)
    # the tombstones go at the next cleaning, which new data triggers.
    admin = AdminClient({"bootstrap.servers": srv.bootstrap})
    res = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("delete.retention.ms", "100", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(timeout=30)
    time.sleep(0.5)
    # (The last slice is never cleaned, as Kafka never cleans the active
    # segment: the final record gets a key of its own.)
    more = produce_rounds(srv.bootstrap, topic_name, [[(b"k19", b"k19-v10")], [(b"end", b"end-v0")]])
    no_tombstones = sorted(e for e in expected if e[2] != "null" and e[1] != "k19")
    no_tombstones += [(more[0], "k19", "k19-v10"), (more[1], "end", "end-v0")]
    no_tombstones.sort()

    def cleaned():
        last[:] = console_read(srv.bootstrap, topic_name, len(no_tombstones))
        return last == no_tombstones
    wait_until(cleaned, 60, "tombstones past delete.retention.ms to be removed", interval=1.0,
               on_fail=lambda: f"read {last}\nwanted {no_tombstones}")
    # The dirty stream-set objects are gone from the store.
    wait_until(lambda: len(files(srv, "sso")) <= 2, 30, "cleaned stream-set objects to be deleted")


def test_kill9_during_compaction_and_gc_loses_nothing(server_factory, tmp_path, topic_name):
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text(FAST_COMPACTION.replace("compaction_interval_ms = 500", "compaction_interval_ms = 200")
                   + "orphan_min_age_ms = 1000\norphan_scan_interval_ms = 300\n")
    srv = server_factory(extra_args=["--config", str(cfg)])
    clients.create_topic(srv.bootstrap, topic_name, 4)
    acked: list[clients.Msg] = []
    stop = threading.Event()
    errors: list[str] = []

    def produce():
        p = Producer({"bootstrap.servers": srv.bootstrap, "acks": "all", "linger.ms": 2,
                      "enable.idempotence": True, "message.timeout.ms": 60000})
        n = 0
        while not stop.is_set():
            batch = []
            for _ in range(50):
                m = clients.Msg(n % 4, b"k%d" % n, b"v%d" % n)
                n += 1
                batch.append(m)

                def ack(err, msg, m=m):
                    if err is None:
                        acked.append(m)
                    else:
                        errors.append(str(err))
                p.produce(topic_name, key=m.key, value=m.value, partition=m.partition, on_delivery=ack)
            p.flush(60)
        p.flush(60)

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    try:
        for i in range(4):
            # Let objects pile up and compaction start, then kill it mid-way.
            wait_until(lambda: metric(srv.metrics_url, "oxbow_compaction_objects_total") >= 1, 30,
                       "a compaction before the kill")
            time.sleep(0.15 * (i + 1))
            srv.kill9()
            srv.restart()
    finally:
        stop.set()
        t.join(90)
    assert not t.is_alive()
    assert len(acked) > 1000, f"only {len(acked)} records acknowledged ({errors[:3]})"
    # Every acknowledged record is readable, from compacted and uncompacted objects alike.
    ends = {p: clients.watermarks_confluent(srv.bootstrap, topic_name, p)[1] for p in range(4)}
    got = clients.consume_confluent(srv.bootstrap, topic_name, [0, 1, 2, 3], end_offsets=ends)
    seen = {(r.partition, r.value) for recs in got.values() for r in recs}
    lost = [m for m in acked if (m.partition, m.value) not in seen]
    assert not lost, f"{len(lost)} acknowledged records lost, first {lost[:3]}"
    for p, recs in got.items():
        assert [r.offset for r in recs] == list(range(ends[p])), f"partition {p} has gaps or repeats"
    # Once the killed incarnations' uploads are collected and marked objects
    # deleted, the store holds exactly the objects the metadata references
    # (and the reads above prove every referenced object is there).

    def settled():
        in_store = len(files(srv, "sso")) + len(files(srv, "cso"))
        live = metric(srv.metrics_url, "oxbow_metadata_objects")
        marked = metric(srv.metrics_url, "oxbow_metadata_objects_marked")
        return marked == 0 and in_store == live
    wait_until(settled, 60, "the store to match the metadata", interval=0.5,
               on_fail=lambda: f"store {len(files(srv, 'sso'))} sso + {len(files(srv, 'cso'))} cso, metadata "
                               f"{metric(srv.metrics_url, 'oxbow_metadata_objects')} live "
                               f"{metric(srv.metrics_url, 'oxbow_metadata_objects_marked')} marked")
