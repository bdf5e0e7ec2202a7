"""confluent-kafka and kafka-python, every compression codec: produce with keys, headers,
null and empty values (acks=all, idempotent), consume with assign() from the beginning of
every partition, and check each message arrives exactly once, in order, intact."""
from __future__ import annotations

import pytest

from harness import clients, env

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
# Per (client, codec) case; the default gives 10 x 20,000 = 200,000 messages in all.
MESSAGES = env.env_int("OXBOW_TEST_MESSAGES", 20_000)
PARTITIONS = 4


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_kafka_round_trip(server, topic_name, codec):
    clients.create_topic(server.bootstrap, topic_name, PARTITIONS)
    messages = clients.make_messages(MESSAGES, PARTITIONS, f"confluent-{codec}")
    acked = clients.produce_confluent(server.bootstrap, topic_name, messages, compression_type=codec)
    assert [p for p, _ in acked] == [m.partition for m in messages]

    got = clients.consume_confluent(server.bootstrap, topic_name, list(range(PARTITIONS)))
    clients.check_exactly_once_in_order(messages, got)
    # The offsets the producer was given are where the records are.
    assert sorted(acked) == sorted((r.partition, r.offset) for rs in got.values() for r in rs)


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_round_trip(server, topic_name, codec):
    clients.create_topic(server.bootstrap, topic_name, PARTITIONS)
    messages = clients.make_messages(MESSAGES, PARTITIONS, f"kafka-python-{codec}")
    acked = clients.produce_kafka_python(server.bootstrap, topic_name, messages,
                                         compression=None if codec == "none" else codec)
    assert [p for p, _ in acked] == [m.partition for m in messages]

    got = clients.consume_kafka_python(server.bootstrap, topic_name, list(range(PARTITIONS)))
    clients.check_exactly_once_in_order(messages, got)
    assert sorted(acked) == sorted((r.partition, r.offset) for rs in got.values() for r in rs)


def test_cross_client_read(server, topic_name):
    """What one client writes (zstd), the other reads byte for byte."""
    clients.create_topic(server.bootstrap, topic_name, 2)
    messages = clients.make_messages(2_000, 2, "cross")
    clients.produce_confluent(server.bootstrap, topic_name, messages, compression_type="zstd")
    clients.check_exactly_once_in_order(
        messages, clients.consume_kafka_python(server.bootstrap, topic_name, [0, 1]))


def test_topic_auto_created_with_one_partition(server, topic_name):
    msgs = [clients.Msg(0, b"k", b"auto-created")]
    clients.produce_confluent(server.bootstrap, topic_name, msgs)
    assert clients.topic_partition_count(server.bootstrap, topic_name) == 1
    clients.check_exactly_once_in_order(msgs, clients.consume_confluent(server.bootstrap, topic_name, [0]))
