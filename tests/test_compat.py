"""Kafka semantics clients rely on, beyond the plain round trip: size limits, offsets by
timestamp, deleting and re-creating a topic, writing to a partition that does not exist."""
from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from harness import clients, env, wire


def test_large_message_round_trip(server, topic_name):
    clients.create_topic(server.bootstrap, topic_name, 1)
    big = bytes(range(256)) * (900_000 // 256)
    msgs = [clients.Msg(0, b"big", big), clients.Msg(0, b"small", b"after the big one")]
    clients.produce_confluent(server.bootstrap, topic_name, msgs, compression_type="none")
    clients.check_exactly_once_in_order(msgs, clients.consume_confluent(server.bootstrap, topic_name, [0]))


def test_message_over_the_broker_limit_is_rejected(server, topic_name):
    """A 2 MiB record is over the default max.message.bytes (1 MiB): MSG_SIZE_TOO_LARGE (10)."""
    clients.create_topic(server.bootstrap, topic_name, 1)
    p = clients.confluent_producer(server.bootstrap, compression_type="none", message_max_bytes=10_000_000,
                                   message_timeout_ms=30000)
    errors = []
    p.produce(topic_name, value=b"x" * (2 << 20), partition=0,
              on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(60) == 0
    assert len(errors) == 1 and errors[0] is not None, "a 2 MiB record was accepted"
    assert errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, f"error {errors[0]}"
    # The partition is still writable and holds nothing from the rejected record.
    clients.produce_confluent(server.bootstrap, topic_name, [clients.Msg(0, None, b"ok")])
    got = clients.consume_confluent(server.bootstrap, topic_name, [0])[0]
    assert [(r.offset, r.value) for r in got] == [(0, b"ok")]


def test_offsets_for_times(server, topic_name):
    clients.create_topic(server.bootstrap, topic_name, 1)
    base = 1_700_000_000_000
    p = clients.confluent_producer(server.bootstrap)
    for i in range(100):
        p.produce(topic_name, value=b"v%d" % i, partition=0, timestamp=base + i * 1000)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": "e2e-unused", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic_name, 0, 0)])
        stamps = []
        deadline = time.monotonic() + 30
        while len(stamps) < 100 and time.monotonic() < deadline:
            stamps += [m.timestamp()[1] for m in c.consume(100, 0.5) if not m.error()]
        assert stamps == [base + i * 1000 for i in range(100)], "record timestamps not preserved"
        asked = [TopicPartition(topic_name, 0, base + t) for t in (0, 41_500, 99_000, 500_000)]
        found = []
        for tp in asked:
            [r] = c.offsets_for_times([tp], timeout=10)
            assert r.error is None, r.error
            found.append(r.offset)
        # first offset with timestamp >= the one asked; past the end: -1 (no such offset)
        assert found == [0, 42, 99, -1], f"offsets for times +0s, +41.5s, +99s, +500s: {found}"
    finally:
        c.close()


def test_delete_and_recreate_topic_starts_empty(server, topic_name):
    clients.create_topic(server.bootstrap, topic_name, 2)
    old = clients.make_messages(200, 2, "old")
    clients.produce_confluent(server.bootstrap, topic_name, old)
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    admin.delete_topics([topic_name], request_timeout=30)[topic_name].result(30)
    deadline = time.monotonic() + 60
    while True:  # deletion is asynchronous in Kafka: re-create until it is accepted
        try:
            clients.create_topic(server.bootstrap, topic_name, 3)
            break
        except Exception as e:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise AssertionError(f"could not re-create {topic_name} within 60s: {e}") from e
            time.sleep(1)
    for p in range(3):
        assert clients.watermarks_confluent(server.bootstrap, topic_name, p) == (0, 0), f"partition {p} not empty"
    new = clients.make_messages(90, 3, "new")
    clients.produce_confluent(server.bootstrap, topic_name, new)
    clients.check_exactly_once_in_order(new, clients.consume_confluent(server.bootstrap, topic_name, [0, 1, 2]))


def test_produce_to_missing_partition(server, topic_name):
    clients.create_topic(server.bootstrap, topic_name, 1)
    with wire.Connection(server.host, server.port) as c:
        batch = wire.record_batch([(None, b"nowhere")])
        cid = c.send_request(wire.API_PRODUCE, 7, wire.produce_request_v7(topic_name, 5, batch))
        [(name, part, err, _)] = wire.parse_produce_response_v7(c.read_response(cid))
    assert (name, part, err) == (topic_name, 5, 3), f"error {err}, expected 3 (UNKNOWN_TOPIC_OR_PARTITION)"


def _produce(server, topic, batch):
    """Produce v7 of one batch to partition 0, sent to the partition's leader."""
    with wire.Connection(*clients.leader_address(server.bootstrap, topic, 0)) as c:
        cid = c.send_request(wire.API_PRODUCE, 7, wire.produce_request_v7(topic, 0, batch))
        [(_, _, err, base)] = wire.parse_produce_response_v7(c.read_response(cid))
    return err, base


def _idempotent_batch(pid, epoch, seq, n, tag):
    return wire.record_batch([(b"k", b"%s-%d" % (tag, seq + i)) for i in range(n)],
                             producer_id=pid, producer_epoch=epoch, base_sequence=seq)


@pytest.mark.parametrize("restart", ["none", "kill9"])
def test_idempotent_producer_retry_is_deduplicated(server, topic_name, restart):
    """A retried batch (same producer id, epoch, sequence) is not written twice, also after
    the server was killed and restarted (producer state rebuilt from storage); a gap in
    sequence numbers is OUT_OF_ORDER_SEQUENCE_NUMBER (45)."""
    clients.create_topic(server.bootstrap, topic_name, 1)
    with wire.Connection(server.host, server.port) as c:
        pid, epoch = wire.init_producer_id_v1(c)
    first = _idempotent_batch(pid, epoch, 0, 5, b"a")
    assert _produce(server, topic_name, first) == (0, 0)
    assert _produce(server, topic_name, _idempotent_batch(pid, epoch, 5, 3, b"b")) == (0, 5)
    if restart == "kill9":
        server.kill9()
        server.restart()
    # The retry of the last batch: success (or DUPLICATE_SEQUENCE_NUMBER, 46) and nothing new.
    err, base = _produce(server, topic_name, _idempotent_batch(pid, epoch, 5, 3, b"b"))
    assert err in (0, 46), f"retried batch answered error {err}"
    if err == 0:
        assert base == 5, f"retried batch reported offset {base}, the original was at 5"
    err, _ = _produce(server, topic_name, _idempotent_batch(pid, epoch, 20, 1, b"gap"))
    assert err == 45, f"a sequence gap answered error {err}, expected 45 (OUT_OF_ORDER_SEQUENCE_NUMBER)"
    assert _produce(server, topic_name, _idempotent_batch(pid, epoch, 8, 2, b"c")) == (0, 8)
    got = clients.consume_confluent(server.bootstrap, topic_name, [0])[0]
    assert [r.value for r in got] == [b"a-0", b"a-1", b"a-2", b"a-3", b"a-4", b"b-5", b"b-6", b"b-7",
                                      b"c-8", b"c-9"], [r.value for r in got]


def test_many_partitions_survive_restart(server, topic_name):
    partitions = 100
    clients.create_topic(server.bootstrap, topic_name, partitions)
    msgs = clients.make_messages(partitions * 20, partitions, "many")
    clients.produce_confluent(server.bootstrap, topic_name, msgs, compression_type="lz4")
    assert server.stop() == 0 or env.TARGET == "kafka", "exit code after SIGTERM"
    server.restart()
    clients.check_exactly_once_in_order(
        msgs, clients.consume_confluent(server.bootstrap, topic_name, list(range(partitions))))
