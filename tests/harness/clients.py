"""Produce and consume with the real Python clients (confluent-kafka, kafka-python).

Consumers use assign() from the beginning of each partition and read up to the
partition's high watermark; they never join a consumer group and never commit.
Every call is bounded in time and raises with a precise message on failure.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


@dataclass(frozen=True)
class Msg:
    partition: int
    key: bytes | None
    value: bytes | None
    headers: tuple = field(default_factory=tuple)  # ((str, bytes), ...)


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple


def make_messages(n: int, partitions: int, tag: str, with_headers: bool = True) -> list[Msg]:
    """Deterministic messages: some null keys, null values, empty values, binary bytes,
    sizes from 0 to ~1.5 KiB, headers on most; message i goes to partition i % partitions."""
    out = []
    for i in range(n):
        rnd = random.Random(i)
        key = None if i % 11 == 3 else f"key-{i}".encode()
        if i % 13 == 5 and key is not None:  # (kafka-python refuses a null key with a null value)
            value = None
        elif i % 17 == 7:
            value = b""
        else:
            text = f"{tag}/{i}/".encode() + b"abcdefgh" * rnd.randrange(0, 64)
            value = text + rnd.randbytes(rnd.randrange(0, 1024))
        headers = ()
        if with_headers and i % 5 != 0:
            headers = (("seq", str(i).encode()), ("tag", tag.encode()), ("empty", b""))
        out.append(Msg(i % partitions, key, value, headers))
    return out


def expected_by_partition(messages: list[Msg]) -> dict[int, list[Msg]]:
    by: dict[int, list[Msg]] = {}
    for m in messages:
        by.setdefault(m.partition, []).append(m)
    return by


def check_exactly_once_in_order(messages: list[Msg], got: dict[int, list[Rec]], first_offset: int = 0,
                                check_headers: bool = True) -> None:
    """Every message present exactly once, in produce order per partition, offsets dense."""
    exp = expected_by_partition(messages)
    for p in sorted(set(exp) | set(got)):
        want, have = exp.get(p, []), got.get(p, [])
        offsets = [r.offset for r in have]
        assert offsets == list(range(first_offset, first_offset + len(have))), (
            f"partition {p}: offsets not dense from {first_offset}: first bad at "
            f"{next((i for i, o in enumerate(offsets) if o != first_offset + i), None)}; "
            f"offsets[:10]={offsets[:10]}")
        assert len(have) == len(want), f"partition {p}: consumed {len(have)} records, produced {len(want)}"
        for i, (m, r) in enumerate(zip(want, have)):
            mism = []
            if m.key != r.key:
                mism.append(f"key {r.key!r:.60} != {m.key!r:.60}")
            if m.value != r.value:
                mism.append(f"value {r.value!r:.60} != {m.value!r:.60} (len {None if r.value is None else len(r.value)}"
                            f" vs {None if m.value is None else len(m.value)})")
            if check_headers and tuple(m.headers) != tuple(r.headers):
                mism.append(f"headers {r.headers!r} != {m.headers!r}")
            if mism:
                raise AssertionError(f"partition {p} offset {r.offset} (message #{i} of that partition): "
                                     + "; ".join(mism))


# ---------------------------------------------------------------- confluent-kafka
def create_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0, config: dict | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fut = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                        config=config or {})], request_timeout=timeout)[topic]
    fut.result(timeout=timeout)
    wait_topic_ready(bootstrap, topic, partitions, timeout)


def wait_topic_ready(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=topic, timeout=10)
        t = md.topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions and all(
                p.leader >= 0 and p.error is None for p in t.partitions.values()):
            return
        last = t
        time.sleep(0.2)
    raise TimeoutError(f"topic {topic} not ready with {partitions} partitions within {timeout}s: {last}")


def leader_address(bootstrap: str, topic: str, partition: int, timeout: float = 30.0) -> tuple[str, int]:
    """(host, port) of the broker that leads `topic`/`partition` per Metadata asked via
    `bootstrap`: where raw protocol bytes for that partition must go (on one server, the
    server itself)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=topic, timeout=10)
        t = md.topics.get(topic)
        p = t.partitions.get(partition) if t is not None and t.error is None else None
        if p is not None and p.error is None and p.leader in md.brokers:
            b = md.brokers[p.leader]
            return b.host, b.port
        last = p or t
        time.sleep(0.2)
    raise TimeoutError(f"no leader for {topic}/{partition} within {timeout}s: {last}")


def topic_partition_count(bootstrap: str, topic: str, timeout: float = 10.0) -> int:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic=topic, timeout=timeout)
    t = md.topics[topic]
    if t.error is not None:
        raise AssertionError(f"metadata for {topic}: {t.error}")
    return len(t.partitions)


def confluent_producer(bootstrap: str, **overrides) -> Producer:
    conf = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
            "linger.ms": 5, "message.timeout.ms": 60000}
    conf.update({k.replace("_", "."): v for k, v in overrides.items()})
    return Producer(conf)


def produce_confluent(bootstrap: str, topic: str, messages: list[Msg], timeout: float = 120.0,
                      **config) -> list[tuple[int, int]]:
    """Produces all messages; returns (partition, offset) per message; raises on any failure."""
    p = confluent_producer(bootstrap, **config)
    results: list = [None] * len(messages)
    errors: list[str] = []

    def on_delivery(i):
        def cb(err, msg):
            if err is not None:
                errors.append(f"message {i}: {err}")
            else:
                results[i] = (msg.partition(), msg.offset())
        return cb

    for i, m in enumerate(messages):
        while True:
            try:
                p.produce(topic, value=m.value, key=m.key, partition=m.partition,
                          headers=list(m.headers) or None, on_delivery=on_delivery(i))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(timeout)
    assert left == 0, f"{left} messages still undelivered after {timeout}s; errors so far: {errors[:5]}"
    assert not errors, f"{len(errors)} delivery errors, first: {errors[:5]}"
    missing = [i for i, r in enumerate(results) if r is None]
    assert not missing, f"no delivery report for {len(missing)} messages, first {missing[:5]}"
    return results


def _rec_from_confluent(msg) -> Rec:
    return Rec(msg.partition(), msg.offset(), msg.key(), msg.value(), tuple(msg.headers() or ()))


def consume_confluent(bootstrap: str, topic: str, partitions: list[int], timeout: float = 120.0,
                      end_offsets: dict[int, int] | None = None) -> dict[int, list[Rec]]:
    """Reads every partition from the beginning up to its high watermark (or `end_offsets`)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-unused-{time.time_ns()}",
                  "enable.auto.commit": False, "enable.auto.offset.store": False,
                  "auto.offset.reset": "earliest", "enable.partition.eof": False})
    try:
        if end_offsets is None:
            end_offsets = {p: _high_watermark(c, topic, p) for p in partitions}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got: dict[int, list[Rec]] = {p: [] for p in partitions}
        pos = {p: 0 for p in partitions}
        deadline = time.monotonic() + timeout
        while any(pos[p] < end_offsets[p] for p in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"consume {topic}: timed out at positions {pos}, wanted {end_offsets}")
            for msg in c.consume(num_messages=1000, timeout=0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(msg.error())
                r = _rec_from_confluent(msg)
                if r.offset < end_offsets[r.partition]:
                    got[r.partition].append(r)
                pos[r.partition] = max(pos[r.partition], r.offset + 1)
        return got
    finally:
        c.close()


def _high_watermark(c: Consumer, topic: str, partition: int, timeout: float = 30.0) -> int:
    """The partition's high watermark, retrying errors for a while (e.g. a leader still
    loading after a restart: NOT_LEADER_FOR_PARTITION), as a client would."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
        except KafkaException as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"no high watermark for {topic}/{partition} within {timeout}s: {e}") from e
            time.sleep(0.2)


def watermarks_confluent(bootstrap: str, topic: str, partition: int, timeout: float = 10.0) -> tuple[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-unused-{time.time_ns()}",
                  "enable.auto.commit": False})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
    finally:
        c.close()


# ---------------------------------------------------------------- kafka-python
def produce_kafka_python(bootstrap: str, topic: str, messages: list[Msg], compression: str | None,
                         timeout: float = 120.0) -> list[tuple[int, int]]:
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type=compression,
                         linger_ms=5, request_timeout_ms=30000)
    try:
        futures = [prod.send(topic, key=m.key, value=m.value, partition=m.partition,
                             headers=list(m.headers)) for m in messages]
        prod.flush(timeout=timeout)
        results = []
        for i, f in enumerate(futures):
            md = f.get(timeout=max(1.0, timeout / 10))
            results.append((md.partition, md.offset))
        return results
    finally:
        prod.close(timeout=10)


def consume_kafka_python(bootstrap: str, topic: str, partitions: list[int], timeout: float = 120.0) -> dict[int, list[Rec]]:
    from kafka import KafkaConsumer, TopicPartition as KTP

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest", consumer_timeout_ms=1000)
    try:
        tps = [KTP(topic, p) for p in partitions]
        c.assign(tps)
        ends = c.end_offsets(tps)
        c.seek_to_beginning(*tps)
        got: dict[int, list[Rec]] = {p: [] for p in partitions}
        pos = {p: 0 for p in partitions}
        deadline = time.monotonic() + timeout
        while any(pos[tp.partition] < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"consume {topic}: timed out at positions {pos}, wanted "
                                   f"{ {tp.partition: ends[tp] for tp in tps} }")
            for tp, recs in c.poll(timeout_ms=500, max_records=2000).items():
                for r in recs:
                    if r.offset < ends[tp]:
                        got[tp.partition].append(Rec(tp.partition, r.offset, r.key, r.value,
                                                     tuple((k, v) for k, v in (r.headers or ()))))
                    pos[tp.partition] = max(pos[tp.partition], r.offset + 1)
        return got
    finally:
        c.close()
