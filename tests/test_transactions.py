"""Kafka transactions (exactly-once): transactional producers, read_committed consumers,
fencing, timeouts, read-process-write loops in Python (confluent-kafka) and Java
(kafka-clients 4.1.1, `java/txn/TxnCopier.java`), and the coordinator's error codes in raw
protocol bytes. Checked against Apache Kafka 4.1.1 (OXBOW_TEST_TARGET=kafka).

- Committed and aborted transactions interleaved over 3 partitions: read_committed sees
  every committed record exactly once and in order, and no aborted one, also when it starts
  inside an aborted transaction; read_uncommitted sees both; each transaction leaves exactly
  one control marker per partition it touched, right after its last record there, and the
  read_committed end offset (the LSO) catches up with the high watermark and is reached.
- An open transaction holds the LSO at its first offset: read_committed gets nothing of it
  (nor of later non-transactional records) until it commits; read_uncommitted gets it all.
- A second producer with the same transactional.id fences the first (confluent-kafka: fatal
  _FENCED) and aborts its open transaction.
- A transaction left open past transaction.timeout.ms is aborted by the coordinator (not
  before): the LSO moves past it, its records are never visible, the stalled producer's
  commit fails (fatal _FENCED: the abort bumped the epoch), the id is usable again.
- confluent-kafka consume-transform-produce with send_offsets_to_transaction, every 7th
  transaction aborted and the consumer rewound to the committed offsets (which an abort must
  not have moved), a restart mid-way that leaves a zombie producer with an open transaction
  (its commit is fenced): the output holds every input exactly once, in order.
- The same with the Java client (TxnCopier, its own JVM), every 10th transaction aborted;
  in the 3-broker cluster target (OXBOW_TEST_TARGET=cluster only), also through a kill -9 of
  a broker.
- Raw protocol: EndTxn for an unknown transactional id (49), InitProducerId with a bad
  timeout (50), AddPartitionsToTxn/EndTxn with a wrong epoch (47 before v2, 90 from v2),
  unknown producer id (49), unknown partitions (3 and 55), EndTxn of an empty transaction
  (48), of the other outcome once ended (48), transactional Produce v3/v7 to a partition not
  in the transaction (48); a zombie epoch after a new InitProducerId aborted its open
  transaction: AddPartitionsToTxn/EndTxn 47/90, Produce 47.
- Raw TxnOffsetCommit (KIP-890 for offsets): before AddOffsetsToTxn and after the
  transaction's abort completed it is refused (48), in between taken; nothing is left open
  on __consumer_offsets (a read_committed OffsetFetch answers at once, with no offset).

Record counts (scaled by OXBOW_TEST_SCALE): OXBOW_TEST_TXN_RECORDS_PER_TXN (120),
OXBOW_TEST_TXN_EOS_RECORDS (20000), OXBOW_TEST_TXN_JAVA_RECORDS (100000). Every wait is
bounded; Java processes are killed at teardown.
"""
from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import (OFFSET_BEGINNING, OFFSET_INVALID, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)

from harness import env
from harness.clients import Msg, create_topic, leader_address, produce_confluent
from harness.wire import Connection, _Reader, crc32c, i8, i16, i32, i64, record, string, u32, uvarint

EOS_RECORDS = env.env_int("OXBOW_TEST_TXN_EOS_RECORDS", 20_000)
JAVA_RECORDS = env.env_int("OXBOW_TEST_TXN_JAVA_RECORDS", 100_000)
RECORDS_PER_TXN = env.env_int("OXBOW_TEST_TXN_RECORDS_PER_TXN", 120)
COPIER = Path(__file__).parent / "java" / "txn" / "TxnCopier.java"


# ---------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def txn_producer(bootstrap: str, transactional_id: str, **conf) -> Producer:
    c = {"bootstrap.servers": bootstrap, "transactional.id": transactional_id, "linger.ms": 5}
    c.update(conf)
    return Producer(c)


def kafka_error(e: KafkaException) -> KafkaError:
    return e.args[0]


def describe(err: KafkaError) -> str:
    return (f"{err.name()} ({err.code()}) fatal={err.fatal()} retriable={err.retriable()} "
            f"txn_requires_abort={err.txn_requires_abort()}: {err.str()}")


def _consumer(bootstrap: str, isolation: str, **conf) -> Consumer:
    c = {"bootstrap.servers": bootstrap, "group.id": f"txn-reader-{time.time_ns()}",
         "isolation.level": isolation, "enable.auto.commit": False, "auto.offset.reset": "earliest",
         "enable.partition.eof": True}
    c.update(conf)
    return Consumer(c)


def end_offsets(bootstrap: str, topic: str, partitions: list[int], isolation: str,
                timeout: float = 30.0) -> dict[int, int]:
    """The end offset of each partition as ListOffsets answers it for `isolation`: the high
    watermark for read_uncommitted, the last stable offset (LSO) for read_committed."""
    c = _consumer(bootstrap, isolation)
    try:
        out = {}
        for p in partitions:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    out[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    break
                except KafkaException as e:
                    assert time.monotonic() < deadline, f"no {isolation} end offset for {topic}/{p}: {e}"
                    time.sleep(0.2)
        return out
    finally:
        c.close()


def wait_lso_caught_up(bootstrap: str, topic: str, partitions: list[int], timeout: float = 30.0) -> dict[int, int]:
    """Until the read_committed end offset (LSO) equals the high watermark on every partition
    (every transaction decided and its markers written); returns the end offsets."""
    deadline = time.monotonic() + timeout
    while True:
        lso = end_offsets(bootstrap, topic, partitions, "read_committed")
        hw = end_offsets(bootstrap, topic, partitions, "read_uncommitted")
        if lso == hw:
            return hw
        assert time.monotonic() < deadline, (
            f"{topic}: read_committed end offsets (LSO) {lso} still behind the high watermarks {hw} "
            f"{timeout}s after every transaction ended")
        time.sleep(0.2)


def read_to_end(bootstrap: str, topic: str, partitions: list[int], isolation: str, timeout: float = 90.0,
                start: dict[int, int] | None = None) -> tuple[dict[int, list[Rec]], dict[int, int]]:
    """Reads each partition from `start` (default: the beginning) until the consumer reports
    the end of the partition at or beyond the end offset ListOffsets gave for `isolation`
    when the read began. Returns (records by partition, those end offsets)."""
    ends = end_offsets(bootstrap, topic, partitions, isolation)
    c = _consumer(bootstrap, isolation)
    try:
        c.assign([TopicPartition(topic, p, (start or {}).get(p, OFFSET_BEGINNING)) for p in partitions])
        got: dict[int, list[Rec]] = {p: [] for p in partitions}
        eof: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while any(eof.get(p, -1) < ends[p] for p in partitions):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{isolation} read of {topic} did not reach the end offsets {ends} within {timeout}s: "
                    f"end of partition reported at {eof}, records read "
                    f"{ {p: len(v) for p, v in got.items()} }, last offsets "
                    f"{ {p: v[-1].offset if v else None for p, v in got.items()} }")
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof[m.partition()] = m.offset()
                        continue
                    raise KafkaException(m.error())
                got[m.partition()].append(Rec(m.partition(), m.offset(), m.key(), m.value()))
        return got, ends
    finally:
        c.close()


def values(recs: list[Rec]) -> list[bytes]:
    return [r.value for r in recs]


def first_difference(want: list, have: list) -> str:
    for i, (w, h) in enumerate(zip(want, have)):
        if w != h:
            return f"first difference at #{i}: want {w!r}, have {h!r}"
    return f"lengths differ: want {len(want)}, have {len(have)}"


def check_exactly_once_in_order(what: str, want: dict[int, list[bytes]], have: dict[int, list[Rec]]) -> None:
    for p in sorted(set(want) | set(have)):
        w, h = want.get(p, []), values(have.get(p, []))
        if w == h:
            continue
        counts = Counter(h)
        missing = [v for v in w if v not in counts]
        dups = [v for v, n in counts.items() if n > 1]
        unexpected = sorted(set(counts) - set(w))
        raise AssertionError(
            f"{what}, partition {p}: {len(h)} records, expected {len(w)}: {len(missing)} missing "
            f"(first {missing[:3]}), {len(dups)} duplicated (first {dups[:3]}), {len(unexpected)} unexpected "
            f"(first {unexpected[:3]}); {first_difference(w, h)}")


class Deliveries:
    """Delivery reports of one producer: (partition, offset) per message id, and errors."""

    def __init__(self):
        self.offsets: dict[bytes, tuple[int, int]] = {}
        self.errors: list[str] = []

    def cb(self, err, msg):
        if err is not None:
            self.errors.append(f"{msg.value()!r}: {err}")
        else:
            self.offsets[msg.value()] = (msg.partition(), msg.offset())


# ---------------------------------------------------------------- 1. commit and abort
def test_committed_and_aborted_transactions_interleaved(server, topic_name):
    parts = [0, 1, 2]
    create_topic(server.bootstrap, topic_name, len(parts))
    aborted_txns = {1, 4, 5, 8, 10}  # interleaved, two in a row
    txns = 12
    plan = []  # (txn, partition, key, value, aborted) in produce order
    for k in range(txns):
        aborted = k in aborted_txns
        for i in range(RECORDS_PER_TXN):
            # Every 4th transaction touches a single partition, the others all three.
            p = (k % 3) if k % 4 == 2 else i % 3
            kind = "abort" if aborted else "commit"
            plan.append((k, p, f"t{k}-r{i}".encode(), f"txn{k}/rec{i}/{kind}".encode(), aborted))
    d = Deliveries()
    producer = txn_producer(server.bootstrap, f"{topic_name}-tx")
    producer.init_transactions(60)
    for k in range(txns):
        producer.begin_transaction()
        for t, p, key, value, _ in plan:
            if t == k:
                producer.produce(topic_name, key=key, value=value, partition=p, on_delivery=d.cb)
        if k in aborted_txns:
            assert producer.flush(30) == 0, "aborted transaction's records not delivered within 30s"
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
    assert producer.flush(30) == 0
    assert not d.errors, f"{len(d.errors)} delivery errors, first {d.errors[:3]}"
    assert len(d.offsets) == len(plan), f"{len(d.offsets)} delivery reports for {len(plan)} records"

    hw = wait_lso_caught_up(server.bootstrap, topic_name, parts)

    # read_uncommitted: every data record, committed or aborted, where it was acknowledged.
    everything, _ = read_to_end(server.bootstrap, topic_name, parts, "read_uncommitted")
    check_exactly_once_in_order("read_uncommitted", {p: [v for _, q, _, v, _ in plan if q == p] for p in parts},
                                everything)
    for p in parts:
        for r in everything[p]:
            assert d.offsets[r.value] == (p, r.offset), f"{r.value!r} read at {p}/{r.offset}, acknowledged at " \
                                                        f"{d.offsets[r.value]}"

    # The offsets that hold no data record are the control markers: exactly one per
    # transaction and partition it touched, right after the transaction's last record there.
    for p in parts:
        data = {r.offset for r in everything[p]}
        markers = set(range(hw[p])) - data
        expected_markers = set()
        for k in range(txns):
            offs = [d.offsets[v][1] for t, q, _, v, _ in plan if t == k and q == p]
            if offs:
                expected_markers.add(max(offs) + 1)
        assert markers == expected_markers, (
            f"partition {p}: offsets without a data record (control markers) {sorted(markers)}, expected one "
            f"right after each transaction's last record there: {sorted(expected_markers)} (high watermark "
            f"{hw[p]}, {len(data)} data records)")

    # read_committed: the committed records only, in order, up to the end.
    committed, ends = read_to_end(server.bootstrap, topic_name, parts, "read_committed")
    assert ends == hw, f"read_committed end offsets {ends} != high watermarks {hw} with no open transaction"
    check_exactly_once_in_order("read_committed",
                                {p: [v for _, q, _, v, a in plan if q == p and not a] for p in parts}, committed)
    for p in parts:
        offs = [r.offset for r in committed[p]]
        gaps = sum(1 for a, b in zip(offs, offs[1:]) if b != a + 1)
        boundaries = len({t for t, q, *_, a in plan if q == p and not a}) - 1
        # Between two committed transactions there is at least a marker: offsets never run on.
        assert gaps >= boundaries, (f"partition {p}: read_committed offsets have {gaps} gaps over {boundaries} "
                                    f"transaction boundaries; markers missing?")

    # read_committed from the middle of each partition's first aborted transaction.
    start = {}
    for p in parts:
        for k in sorted(aborted_txns):
            offs = sorted(d.offsets[v][1] for t, q, _, v, _ in plan if t == k and q == p)
            if offs:
                start[p] = offs[len(offs) // 2]
                break
    middle, _ = read_to_end(server.bootstrap, topic_name, sorted(start), "read_committed", start=start)
    check_exactly_once_in_order(
        "read_committed from inside an aborted transaction",
        {p: [v for _, q, _, v, a in plan if q == p and not a and d.offsets[v][1] >= start[p]] for p in start},
        middle)
    del producer


# ---------------------------------------------------------------- 2. an open transaction
def test_open_transaction_holds_back_read_committed(server, topic_name):
    create_topic(server.bootstrap, topic_name, 1)
    d = Deliveries()
    producer = txn_producer(server.bootstrap, f"{topic_name}-tx")
    producer.init_transactions(60)
    first = [f"first/{i}".encode() for i in range(5)]
    producer.begin_transaction()
    for v in first:
        producer.produce(topic_name, value=v, partition=0, on_delivery=d.cb)
    producer.commit_transaction(30)
    pending = [f"pending/{i}".encode() for i in range(10)]
    producer.begin_transaction()
    for v in pending:
        producer.produce(topic_name, value=v, partition=0, on_delivery=d.cb)
    assert producer.flush(30) == 0 and not d.errors, d.errors
    # Non-transactional records after the open transaction: held back too (the LSO is a
    # single offset, the open transaction's first).
    after = [f"after/{i}".encode() for i in range(3)]
    produce_confluent(server.bootstrap, topic_name, [Msg(0, None, v) for v in after])
    open_first = d.offsets[pending[0]][1]
    assert open_first == d.offsets[first[-1]][1] + 2, f"offsets {d.offsets}: one marker after the first transaction"

    lso = end_offsets(server.bootstrap, topic_name, [0], "read_committed")[0]
    hw = end_offsets(server.bootstrap, topic_name, [0], "read_uncommitted")[0]
    assert lso == open_first, f"read_committed end offset (LSO) {lso} while a transaction is open from {open_first}"
    assert hw == open_first + len(pending) + len(after), f"high watermark {hw}"

    committed_reader = _consumer(server.bootstrap, "read_committed", **{"enable.partition.eof": False})
    try:
        committed_reader.assign([TopicPartition(topic_name, 0, OFFSET_BEGINNING)])
        seen: list[Rec] = []

        def poll_for(seconds: float, until: int | None = None) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and (until is None or len(seen) < until):
                for m in committed_reader.consume(num_messages=100, timeout=0.3):
                    if m.error():
                        raise KafkaException(m.error())
                    seen.append(Rec(0, m.offset(), m.key(), m.value()))

        poll_for(4.0)
        assert values(seen) == first, (
            f"read_committed with a transaction open got {values(seen)}, expected only the committed {first}")

        uncommitted, _ = read_to_end(server.bootstrap, topic_name, [0], "read_uncommitted", timeout=30)
        assert values(uncommitted[0]) == first + pending + after, values(uncommitted[0])

        producer.commit_transaction(30)
        poll_for(30.0, until=len(first) + len(pending) + len(after))
        assert values(seen) == first + pending + after, (
            f"read_committed after the commit got {values(seen)}")
        assert [r.offset for r in seen[len(first):]] == [
            *range(open_first, open_first + len(pending) + len(after))], [r.offset for r in seen]
        poll_for(1.0)
        assert len(seen) == len(first) + len(pending) + len(after), f"more records than written: {values(seen)}"
    finally:
        committed_reader.close()
    ends = wait_lso_caught_up(server.bootstrap, topic_name, [0])
    assert ends[0] == hw + 1, f"end offset {ends[0]} after the commit: expected {hw} and one marker"
    del producer


# ---------------------------------------------------------------- 3. fencing
def test_second_producer_fences_the_first(server, topic_name):
    parts = [0, 1, 2]
    create_topic(server.bootstrap, topic_name, len(parts))
    tid = f"{topic_name}-tx"
    d = Deliveries()
    first = txn_producer(server.bootstrap, tid)
    first.init_transactions(60)
    first.begin_transaction()
    committed = [f"first-committed/{i}".encode() for i in range(30)]
    for i, v in enumerate(committed):
        first.produce(topic_name, value=v, partition=i % 3, on_delivery=d.cb)
    first.commit_transaction(30)
    first.begin_transaction()
    zombie = [f"first-open/{i}".encode() for i in range(30)]
    for i, v in enumerate(zombie):
        first.produce(topic_name, value=v, partition=i % 3, on_delivery=d.cb)
    assert first.flush(30) == 0 and not d.errors, d.errors

    second = txn_producer(server.bootstrap, tid)
    second.init_transactions(60)  # fences `first` and aborts its open transaction

    # The first producer's next write and its commit fail: it has been fenced.
    errors: list[KafkaError] = []
    late = Deliveries()
    try:
        for i in range(3):
            first.produce(topic_name, value=f"first-late/{i}".encode(), partition=i, on_delivery=late.cb)
        first.flush(30)
    except KafkaException as e:
        errors.append(kafka_error(e))
    try:
        first.commit_transaction(30)
        pytest.fail(f"the fenced producer committed (errors so far: {[describe(e) for e in errors]}, "
                    f"late deliveries {late.offsets}, {late.errors})")
    except KafkaException as e:
        errors.append(kafka_error(e))
    print("fenced producer's errors:", [describe(e) for e in errors])
    err = errors[-1]
    # confluent-kafka turns Produce's INVALID_PRODUCER_EPOCH and the coordinator's
    # PRODUCER_FENCED/INVALID_PRODUCER_EPOCH into its fatal _FENCED for a transactional producer.
    assert err.fatal() and err.code() == KafkaError._FENCED, f"commit of the fenced producer: {describe(err)}"
    assert not late.offsets, f"the fenced producer's records were acknowledged: {late.offsets}"

    # The new instance works.
    second.begin_transaction()
    fresh = [f"second/{i}".encode() for i in range(30)]
    for i, v in enumerate(fresh):
        second.produce(topic_name, value=v, partition=i % 3, on_delivery=d.cb)
    second.commit_transaction(30)
    assert not d.errors, d.errors

    wait_lso_caught_up(server.bootstrap, topic_name, parts)
    got, _ = read_to_end(server.bootstrap, topic_name, parts, "read_committed")
    check_exactly_once_in_order("read_committed after fencing",
                                {p: committed[p::3] + fresh[p::3] for p in parts}, got)
    everything, _ = read_to_end(server.bootstrap, topic_name, parts, "read_uncommitted")
    check_exactly_once_in_order("read_uncommitted after fencing",
                                {p: committed[p::3] + zombie[p::3] + fresh[p::3] for p in parts}, everything)
    del first, second


# ---------------------------------------------------------------- 4. timeout
def test_transaction_timeout_aborts(server, topic_name):
    create_topic(server.bootstrap, topic_name, 1)
    tid = f"{topic_name}-tx"
    timeout_ms = 3000
    d = Deliveries()
    producer = txn_producer(server.bootstrap, tid, **{"transaction.timeout.ms": timeout_ms})
    producer.init_transactions(60)
    committed = [f"committed/{i}".encode() for i in range(5)]
    producer.begin_transaction()
    for v in committed:
        producer.produce(topic_name, value=v, partition=0, on_delivery=d.cb)
    producer.commit_transaction(30)
    stalled = [f"stalled/{i}".encode() for i in range(5)]
    began = time.monotonic()
    producer.begin_transaction()
    for v in stalled:
        producer.produce(topic_name, value=v, partition=0, on_delivery=d.cb)
    assert producer.flush(30) == 0 and not d.errors, d.errors
    open_first = d.offsets[stalled[0]][1]

    time.sleep(max(0.0, began + 1.0 - time.monotonic()))
    lso = end_offsets(server.bootstrap, topic_name, [0], "read_committed")[0]
    if time.monotonic() - began < timeout_ms / 1000 - 0.5:  # (the timeout cannot have struck yet)
        assert lso == open_first, f"LSO {lso} while a {timeout_ms} ms transaction is open from {open_first}"

    # Kafka looks for expired transactions every 10 s (transaction.abort.timed.out.
    # transaction.cleanup.interval.ms), so the abort comes 3 to ~13 s after the start.
    ends = wait_lso_caught_up(server.bootstrap, topic_name, [0], timeout=45)
    waited = time.monotonic() - began
    print(f"the coordinator aborted the stalled transaction after {waited:.1f}s (timeout {timeout_ms} ms)")
    assert waited >= timeout_ms / 1000 - 0.5, f"aborted after {waited:.1f}s, before the {timeout_ms} ms timeout"
    assert ends[0] == open_first + len(stalled) + 1, f"end offset {ends[0]}: expected the records and a marker"

    got, _ = read_to_end(server.bootstrap, topic_name, [0], "read_committed")
    assert values(got[0]) == committed, f"read_committed after the timeout: {values(got[0])}"
    everything, _ = read_to_end(server.bootstrap, topic_name, [0], "read_uncommitted")
    assert values(everything[0]) == committed + stalled, values(everything[0])

    with pytest.raises(KafkaException) as info:
        producer.commit_transaction(30)
    err = kafka_error(info.value)
    print("commit after the timeout:", describe(err))
    # The coordinator bumped the producer epoch when it aborted (KIP-360): the late commit is
    # fenced, and confluent-kafka makes that fatal.
    assert err.fatal() and err.code() == KafkaError._FENCED, f"commit after the timeout abort: {describe(err)}"
    del producer

    # The transactional id is usable again.
    again = txn_producer(server.bootstrap, tid)
    again.init_transactions(60)
    again.begin_transaction()
    later = [f"later/{i}".encode() for i in range(5)]
    for v in later:
        again.produce(topic_name, value=v, partition=0, on_delivery=d.cb)
    again.commit_transaction(30)
    assert not d.errors, d.errors
    wait_lso_caught_up(server.bootstrap, topic_name, [0])
    got, _ = read_to_end(server.bootstrap, topic_name, [0], "read_committed")
    assert values(got[0]) == committed + later, values(got[0])
    del again


# ---------------------------------------------------------------- 5. read-process-write, Python
class EosWorker:
    """One instance of a confluent-kafka consume-transform-produce application."""

    def __init__(self, bootstrap: str, src: str, dst: str, group: str, tid: str):
        self.src, self.dst = src, dst
        self.deliveries = Deliveries()
        # The producer first: its init_transactions aborts what an earlier instance left
        # open, so that the committed offsets the consumer then fetches are stable.
        self.producer = txn_producer(bootstrap, tid)
        self.producer.init_transactions(60)
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "isolation.level": "read_committed",
            "enable.auto.commit": False, "auto.offset.reset": "earliest", "session.timeout.ms": 10000,
        })
        self.consumer.subscribe([src])

    def rewind(self, started: dict[int, int]) -> list[str]:
        """Seeks every assigned partition to its committed offset; returns how those differ
        from `started` (where the aborted transaction began reading)."""
        assignment = self.consumer.assignment()
        committed = self.consumer.committed(assignment, timeout=30)
        problems = []
        for tp in committed:
            if tp.error is not None:
                raise KafkaException(tp.error)
            got = tp.offset if tp.offset >= 0 else 0  # no commit yet: from the beginning (offset 0)
            if tp.partition in started and got != started[tp.partition]:
                problems.append(f"partition {tp.partition}: committed offset {tp.offset} after an aborted "
                                f"transaction that began at {started[tp.partition]}")
            self.consumer.seek(TopicPartition(self.src, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
        return problems


def transform(value: bytes) -> bytes:
    return b"out/" + value


def test_confluent_read_process_write_exactly_once(server, topic_name):
    parts = [0, 1, 2]
    src, dst = f"{topic_name}-in", f"{topic_name}-out"
    create_topic(server.bootstrap, src, len(parts))
    create_topic(server.bootstrap, dst, len(parts))
    n = EOS_RECORDS
    inputs = [Msg(i % 3, f"k{i}".encode(), f"in/{i}".encode()) for i in range(n)]
    produce_confluent(server.bootstrap, src, inputs, timeout=120)
    ends = {p: sum(1 for m in inputs if m.partition == p) for p in parts}
    group, tid = f"{topic_name}-eos", f"{topic_name}-eos-tx"

    per_txn = max(20, min(500, n // 40))  # some 40+ transactions whatever the scale
    worker = EosWorker(server.bootstrap, src, dst, group, tid)
    committed = {p: 0 for p in parts}  # what our committed transactions committed
    txn = aborted_txns = aborted_records = abandoned_records = 0
    restarted = False
    rewind_problems: list[str] = []
    deadline = time.monotonic() + 240
    try:
        while committed != ends:
            assert time.monotonic() < deadline, (
                f"read-process-write not done in 240s: committed offsets {committed} of {ends}, "
                f"{txn} transactions, {aborted_txns} aborted")
            batch = worker.consumer.consume(num_messages=per_txn, timeout=1.0)
            if not batch:
                continue
            for m in batch:
                if m.error():
                    raise KafkaException(m.error())
            txn += 1
            started: dict[int, int] = {}
            last: dict[int, int] = {}
            for m in batch:
                started.setdefault(m.partition(), m.offset())
                last[m.partition()] = m.offset()
            worker.producer.begin_transaction()
            for m in batch:
                worker.producer.produce(dst, key=m.key(), value=transform(m.value()), partition=m.partition(),
                                        on_delivery=worker.deliveries.cb)
            positions = [tp for tp in worker.consumer.position(worker.consumer.assignment()) if tp.offset >= 0]
            for tp in positions:
                if tp.partition in last:
                    assert tp.offset == last[tp.partition] + 1, (
                        f"consumer position {tp} after reading up to offset {last[tp.partition]}")
            worker.producer.send_offsets_to_transaction(positions, worker.consumer.consumer_group_metadata(), 30)

            if not restarted and sum(committed.values()) >= n // 2:
                # The application dies mid-transaction: the records are written, the offsets
                # sent, nothing committed. A new instance (same transactional.id and group)
                # takes over; the old producer lives on as a zombie.
                assert worker.producer.flush(30) == 0
                abandoned_records = len(batch)
                worker.consumer.close()
                zombie = worker.producer
                worker = EosWorker(server.bootstrap, src, dst, group, tid)
                with pytest.raises(KafkaException) as info:
                    zombie.commit_transaction(30)
                err = kafka_error(info.value)
                print("zombie's commit:", describe(err))
                assert err.fatal() and err.code() == KafkaError._FENCED, f"zombie's commit: {describe(err)}"
                del zombie
                restarted = True
                continue

            if txn % 7 == 0:
                assert worker.producer.flush(30) == 0  # the aborted records are in the log
                worker.producer.abort_transaction(30)
                aborted_txns += 1
                aborted_records += len(batch)
                rewind_problems += worker.rewind(started)
                continue
            try:
                worker.producer.commit_transaction(30)
            except KafkaException as e:
                err = kafka_error(e)
                if not err.txn_requires_abort():
                    raise AssertionError(f"commit of transaction {txn}: {describe(err)}") from e
                print(f"transaction {txn}: abortable commit error {describe(err)}; aborting")
                worker.producer.abort_transaction(30)
                aborted_txns += 1
                aborted_records += len(batch)
                worker.rewind({})
                continue
            for tp in positions:
                committed[tp.partition] = tp.offset
        assert worker.producer.flush(30) == 0
        assert not worker.deliveries.errors, worker.deliveries.errors[:5]
    finally:
        worker.consumer.close()
    del worker
    print(f"read-process-write: {n} records, {txn} transactions, {aborted_txns} aborted ({aborted_records} "
          f"records), {abandoned_records} records in the transaction abandoned at the restart")
    assert restarted and aborted_txns >= 2, (restarted, aborted_txns)
    assert not rewind_problems, "an aborted transaction moved the committed offsets: " + "; ".join(rewind_problems[:5])

    wait_lso_caught_up(server.bootstrap, dst, parts)
    out, _ = read_to_end(server.bootstrap, dst, parts, "read_committed", timeout=120)
    check_exactly_once_in_order("read_committed output", {p: [transform(m.value) for m in inputs if m.partition == p]
                                                           for p in parts}, out)
    raw, _ = read_to_end(server.bootstrap, dst, parts, "read_uncommitted", timeout=120)
    total = sum(len(v) for v in raw.values())
    assert total == n + aborted_records + abandoned_records, (
        f"read_uncommitted output holds {total} records: expected {n} committed + {aborted_records} aborted + "
        f"{abandoned_records} abandoned")
    checker = Consumer({"bootstrap.servers": server.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        offsets = checker.committed([TopicPartition(src, p) for p in parts], timeout=30)
    finally:
        checker.close()
    assert {tp.partition: tp.offset for tp in offsets} == ends, f"group {group} committed {offsets}, ends {ends}"


# ---------------------------------------------------------------- 6. read-process-write, Java
@pytest.fixture(scope="module")
def copier_classes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("java-txn")
    r = subprocess.run(["javac", "-nowarn", "-d", str(out), "-cp", f"{env.KAFKA_CLI_LIBS}/*", str(COPIER)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"javac {COPIER.name} failed:\n{r.stdout}\n{r.stderr}"
    return out


class JavaCopier:
    """One TxnCopier JVM; its output (one line per transaction, see TxnCopier.java) in a file."""

    def __init__(self, classes: Path, workdir: Path, name: str, bootstrap: str, src: str, dst: str,
                 group: str, tid: str, abort_every: int = 10, max_poll: int = 500):
        self.name = name
        self.out_path = workdir / f"{name}.out"
        self.stop_path = workdir / f"{name}.stop"
        with open(self.out_path, "w") as out:
            self.proc = subprocess.Popen(
                ["java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                 "-cp", f"{env.KAFKA_CLI_LIBS}/*:{classes}", "TxnCopier",
                 bootstrap, src, dst, group, tid, str(abort_every), str(max_poll), str(self.stop_path)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def lines(self) -> list[str]:
        return self.out_path.read_text(errors="replace").splitlines()

    def kind(self, prefix: str) -> list[str]:
        return [line for line in self.lines() if line.startswith(prefix + " ")]

    def committed_records(self) -> int:
        return sum(int(line.split()[2]) for line in self.kind("C"))

    def aborted_records(self, prefix: str = "A") -> int:
        return sum(int(line.split()[2]) for line in self.kind(prefix))

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def summary(self) -> str:
        lines = self.lines()
        noise = [line for line in lines if line[:2] not in ("C ", "A ", "G ")]
        return (f"{self.name}: exit {self.proc.poll()}, {len(self.kind('C'))} commits ({self.committed_records()} "
                f"records), {len(self.kind('A'))} aborts on purpose, {len(self.kind('B'))} after errors; "
                f"other output (last 30 lines):\n" + "\n".join(noise[-30:]))


@dataclass
class CopierInput:
    inputs: list[Msg]  # the committed input records, in produce order
    aborted: int  # input records in aborted transactions (never to be copied)
    last_offset: dict[int, int]  # partition -> offset of its last committed input record


def copier_poll_size(n: int) -> int:
    """Records per poll, hence per transaction: some 200 transactions whatever the scale."""
    return max(20, min(500, n // 200))


def produce_copier_input(bootstrap: str, topic: str, n: int, partitions: int) -> CopierInput:
    """`n` committed input records, in transactions of 1000 over every partition, with every
    7th transaction (its records recognisable, "aborted/<i>") aborted: the copier's
    read_committed consumer must skip those and the markers."""
    producer = txn_producer(bootstrap, f"{topic}-input-tx")
    producer.init_transactions(60)
    d = Deliveries()
    inputs: list[Msg] = []
    aborted = i = txn = 0
    while len(inputs) < n:
        txn += 1
        abort = txn % 7 == 0
        producer.begin_transaction()
        batch = []
        for _ in range(min(1000, n - len(inputs))):
            m = Msg(i % partitions, f"k{i}".encode(), (f"aborted/{i}" if abort else f"v{i}").encode())
            batch.append(m)
            i += 1
            while True:
                try:
                    producer.produce(topic, key=m.key, value=m.value, partition=m.partition, on_delivery=d.cb)
                    break
                except BufferError:
                    producer.poll(0.05)
        if abort:
            assert producer.flush(60) == 0
            producer.abort_transaction(60)
            aborted += len(batch)
        else:
            producer.commit_transaction(60)
            inputs += batch
    assert producer.flush(60) == 0 and not d.errors, d.errors[:5]
    del producer
    last = {}
    for m in inputs:
        last[m.partition] = max(last.get(m.partition, -1), d.offsets[m.value][1])
    wait_lso_caught_up(bootstrap, topic, list(range(partitions)), timeout=60)
    return CopierInput(inputs, aborted, last)


def check_copier_output(bootstrap: str, src: str, dst: str, group: str, given: CopierInput, partitions: int,
                        aborted_at_least: int, aborted_exactly: int | None) -> None:
    inputs = given.inputs
    parts = list(range(partitions))
    wait_lso_caught_up(bootstrap, dst, parts, timeout=60)
    out, _ = read_to_end(bootstrap, dst, parts, "read_committed", timeout=180)
    counts = Counter(r.value for p in parts for r in out[p])
    missing = [m.value for m in inputs if m.value not in counts]
    dups = {v: c for v, c in counts.items() if c > 1}
    strays = [v for v in counts if v.startswith(b"aborted/")]
    assert not missing and not dups and not strays and sum(counts.values()) == len(inputs), (
        f"read_committed output of {dst}: {sum(counts.values())} records for {len(inputs)} inputs, "
        f"{len(missing)} missing (first {missing[:5]}), {len(dups)} more than once (first {list(dups.items())[:5]}), "
        f"{len(strays)} copied from aborted input transactions (first {strays[:5]})")
    check_exactly_once_in_order("read_committed output, per partition",
                                {p: [m.value for m in inputs if m.partition == p] for p in parts}, out)
    raw, _ = read_to_end(bootstrap, dst, parts, "read_uncommitted", timeout=180)
    total = sum(len(v) for v in raw.values())
    if aborted_exactly is not None:
        assert total == len(inputs) + aborted_exactly, (
            f"read_uncommitted output holds {total} records: {len(inputs)} committed + {aborted_exactly} aborted")
    assert total >= len(inputs) + aborted_at_least, (total, len(inputs), aborted_at_least)
    hw = end_offsets(bootstrap, src, parts, "read_uncommitted")
    checker = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        offsets = {tp.partition: tp.offset for tp in checker.committed([TopicPartition(src, p) for p in parts],
                                                                      timeout=30)}
    finally:
        checker.close()
    # Past the last committed input record; at most the end (the last marker may or may not be
    # included, depending on whether a poll that returned records had passed it).
    for p in parts:
        assert given.last_offset[p] < offsets[p] <= hw[p], (
            f"group {group} committed {offsets} for {src}: partition {p} should be past the last input record "
            f"(offset {given.last_offset[p]}) and at most the end ({hw[p]})")


def test_java_read_process_write_exactly_once(server, topic_name, tmp_path, copier_classes):
    partitions = 4
    src, dst = f"{topic_name}-in", f"{topic_name}-out"
    create_topic(server.bootstrap, src, partitions)
    create_topic(server.bootstrap, dst, partitions)
    given = produce_copier_input(server.bootstrap, src, JAVA_RECORDS, partitions)
    group, tid = f"{topic_name}-copier", f"{topic_name}-copier-tx"
    copier = JavaCopier(copier_classes, tmp_path, "copier", server.bootstrap, src, dst, group, tid,
                        max_poll=copier_poll_size(len(given.inputs)))
    try:
        code = copier.wait(240)
        assert code == 0, f"TxnCopier did not finish within 240s:\n{copier.summary()}"
    finally:
        copier.kill()
    print(copier.summary())
    assert copier.kind("D"), copier.summary()
    assert not copier.kind("X"), "an aborted transaction moved the committed offsets:\n" + "\n".join(copier.kind("X")[:5])
    assert not copier.kind("E"), copier.summary()
    assert len(copier.kind("A")) >= 2, copier.summary()
    assert copier.committed_records() == len(given.inputs), copier.summary()
    b_records = copier.aborted_records("B")
    check_copier_output(server.bootstrap, src, dst, group, given, partitions,
                        aborted_at_least=copier.aborted_records("A"),
                        aborted_exactly=None if b_records else copier.aborted_records("A"))


def broker_of(cluster, host: str, port: int):
    return next((b for b in cluster.brokers if b.host == host and b.port == port), None)


@pytest.mark.timeout(600)
@pytest.mark.skipif(env.TARGET != "cluster",
                    reason="kills one broker of the 3-broker cluster target: OXBOW_TEST_TARGET=cluster only")
def test_java_txn_copier_survives_broker_kill(server, topic_name, tmp_path, copier_classes):
    cluster = server.cluster
    partitions = 4
    src, dst = f"{topic_name}-in", f"{topic_name}-out"
    create_topic(server.bootstrap, src, partitions)
    create_topic(server.bootstrap, dst, partitions)
    given = produce_copier_input(server.bootstrap, src, JAVA_RECORDS, partitions)
    group, tid = f"{topic_name}-copier", f"{topic_name}-copier-tx"
    poll = copier_poll_size(len(given.inputs))
    copiers = [JavaCopier(copier_classes, tmp_path, "copier-1", server.bootstrap, src, dst, group, tid, max_poll=poll)]
    victim = None
    try:
        deadline = time.monotonic() + 150
        while copiers[0].committed_records() < len(given.inputs) // 3:
            assert copiers[0].proc.poll() is None, f"TxnCopier exited before the kill:\n{copiers[0].summary()}"
            assert time.monotonic() < deadline, f"a third of the records not copied in 150s:\n{copiers[0].summary()}"
            time.sleep(0.2)
        # The victim: never the broker the clients bootstrap from; the transaction
        # coordinator if it is another broker, otherwise a leader of an output partition.
        others = [b for b in cluster.brokers if b is not server.via]
        coordinator = broker_of(cluster, *find_coordinator(server.host, server.port, tid, 1))
        leaders = {leader_address(server.bootstrap, dst, p) for p in range(partitions)}
        victim = (coordinator if coordinator in others else
                  next((b for b in others if (b.host, b.port) in leaders), others[0]))
        print(f"bootstrap via {server.via.name}; transaction coordinator "
              f"{coordinator.name if coordinator else '?'}; killing {victim.name} after "
              f"{copiers[0].committed_records()} records committed")
        committed_before = len(copiers[0].kind("C"))
        victim.kill9()
        time.sleep(5)
        victim.start()
        victim.wait_ready()
        code = copiers[0].wait(200)
        if code != 0:
            # A fatal error (e.g. fenced after a coordinator move): restart once, as an
            # application would, with the same transactional.id and group.
            print(f"first copier did not finish cleanly:\n{copiers[0].summary()}")
            copiers[0].kill()
            copiers.append(JavaCopier(copier_classes, tmp_path, "copier-2", server.bootstrap, src, dst, group, tid,
                                      max_poll=poll))
            code = copiers[1].wait(180)
            assert code == 0, f"the restarted TxnCopier did not finish:\n{copiers[1].summary()}"
    finally:
        for c in copiers:
            c.kill()
        if victim is not None and not victim.running():
            victim.start()
    for c in copiers:
        print(c.summary())
    assert sum(len(c.kind("C")) for c in copiers) > committed_before, "no transaction committed after the kill"
    assert copiers[-1].kind("D"), copiers[-1].summary()
    for c in copiers:
        assert not c.kind("X"), f"{c.name}: an aborted transaction moved the committed offsets:\n" + \
            "\n".join(c.kind("X")[:5])
    check_copier_output(server.bootstrap, src, dst, group, given, partitions,
                        aborted_at_least=sum(c.aborted_records("A") for c in copiers), aborted_exactly=None)


# ---------------------------------------------------------------- 7. raw protocol
API_PRODUCE, API_FIND_COORDINATOR, API_INIT_PRODUCER_ID = 0, 10, 22
API_ADD_PARTITIONS_TO_TXN, API_ADD_OFFSETS_TO_TXN, API_END_TXN, API_TXN_OFFSET_COMMIT = 24, 25, 26, 28

NONE, UNKNOWN_TOPIC_OR_PARTITION = 0, 3
COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR = 14, 15, 16
INVALID_PRODUCER_EPOCH, INVALID_TXN_STATE, INVALID_PRODUCER_ID_MAPPING = 47, 48, 49
INVALID_TRANSACTION_TIMEOUT, CONCURRENT_TRANSACTIONS, OPERATION_NOT_ATTEMPTED = 50, 51, 55
PRODUCER_FENCED = 90
# Answers a client retries: the coordinator is loading, moving, or finishing a transition.
RETRY = {COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR, CONCURRENT_TRANSACTIONS}


def cstring(s: str | None) -> bytes:
    """A compact (nullable) string of a flexible version."""
    if s is None:
        return uvarint(0)
    b = s.encode()
    return uvarint(len(b) + 1) + b


def read_uvarint(r: _Reader) -> int:
    shift = value = 0
    while True:
        byte = r.take(1)[0]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        shift += 7


def read_cstring(r: _Reader) -> str | None:
    n = read_uvarint(r)
    return None if n == 0 else r.take(n - 1).decode()


def skip_tags(r: _Reader) -> None:
    for _ in range(read_uvarint(r)):
        read_uvarint(r)
        r.take(read_uvarint(r))


def find_coordinator(host: str, port: int, key: str, key_type: int, timeout: float = 60.0) -> tuple[str, int]:
    """FindCoordinator v1 for a group (key_type 0) or a transactional id (1): its (host, port)."""
    deadline = time.monotonic() + timeout
    with Connection(host, port) as conn:
        while True:
            cid = conn.send_request(API_FIND_COORDINATOR, 1, string(key) + i8(key_type))
            r = _Reader(conn.read_response(cid))
            r.i32()  # throttle_time_ms
            err, msg, _node, chost, cport = r.i16(), r.string(), r.i32(), r.string(), r.i32()
            if err == NONE:
                return chost, cport
            assert err in RETRY and time.monotonic() < deadline, f"FindCoordinator({key_type}, {key}): {err} {msg}"
            time.sleep(0.3)


class TxnWire:
    """Raw transaction-coordinator requests, each sent to the coordinator of its transactional
    id (found with FindCoordinator, and found again after NOT_COORDINATOR)."""

    def __init__(self, host: str, port: int, tid: str):
        self.bootstrap = (host, port)
        self.tid = tid
        self.conns: dict[str, Connection] = {}

    def close(self):
        for c in self.conns.values():
            c.close()
        self.conns.clear()

    def _conn(self, tid: str) -> Connection:
        if tid not in self.conns:
            self.conns[tid] = Connection(*find_coordinator(*self.bootstrap, tid, 1))
        return self.conns[tid]

    def call(self, tid: str, api: int, version: int, body: bytes, parse, retry: bool = True,
             flexible: bool = False, timeout: float = 60.0):
        """Sends until the answer is not a retriable one (with `retry`); returns parse(reader)."""
        deadline = time.monotonic() + timeout
        while True:
            conn = self._conn(tid)
            cid = conn.send_request(api, version, body, header_version=2 if flexible else 1)
            answer = parse(_Reader(conn.read_response(cid, flexible_header=flexible)))
            code = answer[0] if isinstance(answer, tuple) else answer
            if not retry or code not in RETRY or time.monotonic() > deadline:
                return answer
            if code == NOT_COORDINATOR:
                self.conns.pop(tid).close()
            time.sleep(0.2)

    # --- InitProducerId
    def init_producer_id(self, timeout_ms: int, version: int = 1, tid: str | None = None,
                         retry: bool = True) -> tuple[int, int, int]:
        tid = self.tid if tid is None else tid
        flexible = version >= 2
        if flexible:
            body = cstring(tid) + i32(timeout_ms) + (i64(-1) + i16(-1) if version >= 3 else b"") + uvarint(0)
        else:
            body = string(tid) + i32(timeout_ms)

        def parse(r):
            r.i32()
            return r.i16(), r.i64(), r.i16()
        return self.call(tid, API_INIT_PRODUCER_ID, version, body, parse, retry, flexible)

    # --- AddPartitionsToTxn (client versions 0-3)
    def add_partitions(self, pid: int, epoch: int, topic: str, partitions: list[int], version: int,
                       tid: str | None = None) -> dict[tuple[str, int], int]:
        tid = self.tid if tid is None else tid
        flexible = version >= 3
        if flexible:
            body = (cstring(tid) + i64(pid) + i16(epoch) + uvarint(2) + cstring(topic)
                    + uvarint(len(partitions) + 1) + b"".join(i32(p) for p in partitions) + uvarint(0) + uvarint(0))
        else:
            body = (string(tid) + i64(pid) + i16(epoch) + i32(1) + string(topic)
                    + i32(len(partitions)) + b"".join(i32(p) for p in partitions))

        def parse(r):
            r.i32()
            out = {}
            for _ in range(read_uvarint(r) - 1 if flexible else r.i32()):
                name = read_cstring(r) if flexible else r.string()
                for _ in range(read_uvarint(r) - 1 if flexible else r.i32()):
                    index, err = r.i32(), r.i16()
                    if flexible:
                        skip_tags(r)
                    out[(name, index)] = err
                if flexible:
                    skip_tags(r)
            codes = set(out.values())
            # Retry only an answer that is retriable as a whole.
            return (codes.pop() if len(codes) == 1 and codes <= RETRY else NONE), out
        return self.call(tid, API_ADD_PARTITIONS_TO_TXN, version, body, parse, flexible=flexible)[1]

    # --- AddOffsetsToTxn (v0-2)
    def add_offsets(self, pid: int, epoch: int, group: str, version: int = 1) -> int:
        body = string(self.tid) + i64(pid) + i16(epoch) + string(group)

        def parse(r):
            r.i32()
            return r.i16()
        return self.call(self.tid, API_ADD_OFFSETS_TO_TXN, version, body, parse)

    # --- EndTxn
    def end_txn(self, pid: int, epoch: int, commit: bool, version: int, tid: str | None = None,
                retry: bool = True) -> int:
        tid = self.tid if tid is None else tid
        flexible = version >= 3
        body = ((cstring(tid) if flexible else string(tid)) + i64(pid) + i16(epoch) + i8(1 if commit else 0)
                + (uvarint(0) if flexible else b""))

        def parse(r):
            r.i32()
            return r.i16()
        return self.call(tid, API_END_TXN, version, body, parse, retry, flexible)


def txn_offset_commit(server, tid: str, group: str, pid: int, epoch: int, topic: str, partition: int,
                      offset: int, version: int = 2, timeout: float = 60.0) -> int:
    """TxnOffsetCommit (v0-2) of one offset to the group's coordinator, retried while the
    answer is retriable: the partition's error code."""
    deadline = time.monotonic() + timeout
    body = (string(tid) + string(group) + i64(pid) + i16(epoch) + i32(1) + string(topic) + i32(1)
            + i32(partition) + i64(offset) + (i32(-1) if version >= 2 else b"") + string(""))
    while True:
        with Connection(*find_coordinator(server.host, server.port, group, 0)) as conn:
            cid = conn.send_request(API_TXN_OFFSET_COMMIT, version, body)
            r = _Reader(conn.read_response(cid))
        r.i32()  # throttle_time_ms
        codes = []
        for _ in range(r.i32()):
            r.string()
            for _ in range(r.i32()):
                r.i32()
                codes.append(r.i16())
        assert len(codes) == 1, codes
        if codes[0] not in RETRY or time.monotonic() > deadline:
            return codes[0]
        time.sleep(0.2)


def txn_batch(records: list[tuple[bytes | None, bytes | None]], pid: int, epoch: int, base_sequence: int) -> bytes:
    """An uncompressed magic v2 batch with the transactional attribute (0x10)."""
    ts = int(time.time() * 1000)
    recs = b"".join(record(i, k, v) for i, (k, v) in enumerate(records))
    after_crc = (i16(0x10) + i32(len(records) - 1) + i64(ts) + i64(ts)
                 + i64(pid) + i16(epoch) + i32(base_sequence) + i32(len(records)) + recs)
    after_length = i32(0) + i8(2) + u32(crc32c(after_crc)) + after_crc
    return i64(0) + i32(len(after_length)) + after_length


def produce_txn(bootstrap: str, tid: str, topic: str, partition: int, batch: bytes, version: int) -> tuple[int, int]:
    """A transactional Produce (v3-v8, not flexible) to the partition's leader: (error, base offset)."""
    assert 3 <= version <= 8
    host, port = leader_address(bootstrap, topic, partition)
    body = (string(tid) + i16(-1) + i32(10000) + i32(1) + string(topic)
            + i32(1) + i32(partition) + i32(len(batch)) + batch)
    with Connection(host, port) as conn:
        cid = conn.send_request(API_PRODUCE, version, body)
        r = _Reader(conn.read_response(cid))
    answers = []
    for _ in range(r.i32()):
        r.string()
        for _ in range(r.i32()):
            _index, err, base = r.i32(), r.i16(), r.i64()
            r.i64()  # log_append_time_ms
            if version >= 5:
                r.i64()  # log_start_offset
            if version >= 8:
                for _ in range(max(r.i32(), 0)):  # record_errors
                    r.i32()
                    r.string()
                r.string()  # error_message
            answers.append((err, base))
    assert len(answers) == 1, answers
    return answers[0]


def test_transaction_coordinator_errors_in_raw_bytes(server, topic_name):
    create_topic(server.bootstrap, topic_name, 2)
    tid = f"{topic_name}-wire"
    w = TxnWire(server.host, server.port, tid)
    try:
        # EndTxn for a transactional id the coordinator never saw.
        for v in (0, 1, 2, 3):
            assert w.end_txn(4242, 0, True, v, tid=tid + "-unknown") == INVALID_PRODUCER_ID_MAPPING, f"EndTxn v{v}"
        # InitProducerId with a timeout above transaction.max.timeout.ms (900000) or not positive.
        for v, t in ((1, 900_001), (1, 0), (1, -1), (4, 900_001)):
            err, pid, epoch = w.init_producer_id(t, version=v)
            assert (err, pid, epoch) == (INVALID_TRANSACTION_TIMEOUT, -1, -1), f"InitProducerId v{v} timeout {t}: " \
                                                                             f"{(err, pid, epoch)}"
        err, pid, epoch = w.init_producer_id(60_000)
        assert err == NONE and pid >= 0 and epoch >= 0, (err, pid, epoch)
        print(f"producer id {pid} epoch {epoch}")

        # A stale or future epoch: INVALID_PRODUCER_EPOCH before v2, PRODUCER_FENCED from v2.
        for v, want in ((0, INVALID_PRODUCER_EPOCH), (1, INVALID_PRODUCER_EPOCH), (2, PRODUCER_FENCED),
                        (3, PRODUCER_FENCED)):
            got = w.add_partitions(pid, epoch + 1, topic_name, [0], v)
            assert got == {(topic_name, 0): want}, f"AddPartitionsToTxn v{v} with epoch {epoch + 1}: {got}"
        # A producer id that is not the transactional id's, and an unknown transactional id.
        got = w.add_partitions(pid + 1000, epoch, topic_name, [0], 2)
        assert got == {(topic_name, 0): INVALID_PRODUCER_ID_MAPPING}, f"AddPartitionsToTxn, wrong producer id: {got}"
        got = w.add_partitions(pid, epoch, topic_name, [0], 2, tid=tid + "-unknown")
        assert got == {(topic_name, 0): INVALID_PRODUCER_ID_MAPPING}, f"AddPartitionsToTxn, unknown id: {got}"
        for v, want in ((1, INVALID_PRODUCER_EPOCH), (2, PRODUCER_FENCED), (3, PRODUCER_FENCED)):
            assert w.end_txn(pid, epoch + 1, True, v) == want, f"EndTxn v{v} with epoch {epoch + 1}"
        # Nothing was added: there is no transaction to end.
        assert w.end_txn(pid, epoch, True, 1) == INVALID_TXN_STATE, "EndTxn of an empty transaction"

        # A transactional Produce to a partition never added to the transaction.
        for v in (3, 7):
            got = produce_txn(server.bootstrap, tid, topic_name, 1, txn_batch([(b"k", b"never-added")], pid, epoch, 0), v)
            assert got == (INVALID_TXN_STATE, -1), f"Produce v{v} to a partition outside the transaction: {got}"

        # Unknown partitions: the unknown one gets UNKNOWN_TOPIC_OR_PARTITION, the others
        # OPERATION_NOT_ATTEMPTED (and are not added).
        got = w.add_partitions(pid, epoch, topic_name, [0, 99], 2)
        assert got == {(topic_name, 0): OPERATION_NOT_ATTEMPTED, (topic_name, 99): UNKNOWN_TOPIC_OR_PARTITION}, got
        got = w.add_partitions(pid, epoch, topic_name + "-none", [0], 2)
        assert got == {(topic_name + "-none", 0): UNKNOWN_TOPIC_OR_PARTITION}, got
        got = produce_txn(server.bootstrap, tid, topic_name, 0, txn_batch([(b"k", b"not-added")], pid, epoch, 0), 7)
        assert got == (INVALID_TXN_STATE, -1), f"Produce v7 after a refused AddPartitionsToTxn: {got}"

        # Now properly: add partition 0, write to it, and abort.
        assert w.add_partitions(pid, epoch, topic_name, [0], 2) == {(topic_name, 0): NONE}
        got = produce_txn(server.bootstrap, tid, topic_name, 0,
                          txn_batch([(b"k0", b"aborted-0"), (b"k1", b"aborted-1")], pid, epoch, 0), 7)
        assert got == (NONE, 0), f"Produce v7 to the added partition: {got}"
        got = produce_txn(server.bootstrap, tid, topic_name, 1, txn_batch([(b"k", b"still-not-added")], pid, epoch, 0), 7)
        assert got == (INVALID_TXN_STATE, -1), f"Produce v7 to partition 1 (not added) while the transaction is open: {got}"
        assert end_offsets(server.bootstrap, topic_name, [0], "read_committed") == {0: 0}, "LSO with the transaction open"
        assert w.end_txn(pid, epoch, False, 1) == NONE, "EndTxn abort"
        # A retry of the same outcome succeeds (once the markers are written: 51 until then);
        # the other outcome is refused.
        assert w.end_txn(pid, epoch, False, 1) == NONE, "EndTxn abort, retried"
        assert w.end_txn(pid, epoch, True, 1) == INVALID_TXN_STATE, "EndTxn commit after the abort"
    finally:
        w.close()
    assert wait_lso_caught_up(server.bootstrap, topic_name, [0, 1]) == {0: 3, 1: 0}, \
        "end offsets: partition 0 holds two records and the abort marker, partition 1 nothing"
    got, _ = read_to_end(server.bootstrap, topic_name, [0, 1], "read_committed", timeout=30)
    assert got == {0: [], 1: []}, f"read_committed sees aborted records: {got}"
    got, _ = read_to_end(server.bootstrap, topic_name, [0, 1], "read_uncommitted", timeout=30)
    assert [(r.offset, r.value) for r in got[0]] == [(0, b"aborted-0"), (1, b"aborted-1")] and not got[1], got

    # A zombie: a new InitProducerId for the id while its transaction is open aborts that
    # transaction and bumps the epoch; everything the old epoch then sends is refused.
    zombie_topic = f"{topic_name}-zombie"
    create_topic(server.bootstrap, zombie_topic, 2)
    ztid = f"{topic_name}-zombie"
    w = TxnWire(server.host, server.port, ztid)
    try:
        err, pid, epoch = w.init_producer_id(60_000)
        assert err == NONE, err
        assert w.add_partitions(pid, epoch, zombie_topic, [0], 2) == {(zombie_topic, 0): NONE}
        got = produce_txn(server.bootstrap, ztid, zombie_topic, 0, txn_batch([(b"z", b"zombie-0")], pid, epoch, 0), 7)
        assert got == (NONE, 0), f"Produce v7 in the zombie's transaction: {got}"
        err, pid2, epoch2 = w.init_producer_id(60_000)  # (51 while it aborts the open transaction: retried)
        assert err == NONE and (pid2 > pid if pid2 != pid else epoch2 > epoch), (err, pid, epoch, pid2, epoch2)
        print(f"zombie: producer id {pid} epoch {epoch}; new instance: producer id {pid2} epoch {epoch2}")
        for v, want in ((1, INVALID_PRODUCER_EPOCH), (2, PRODUCER_FENCED), (3, PRODUCER_FENCED)):
            got = w.add_partitions(pid, epoch, zombie_topic, [1], v)
            assert got == {(zombie_topic, 1): want}, f"AddPartitionsToTxn v{v} from the fenced epoch: {got}"
            assert w.end_txn(pid, epoch, True, v) == want, f"EndTxn v{v} from the fenced epoch"
        for v in (3, 7):
            for p in (0, 1):
                got = produce_txn(server.bootstrap, ztid, zombie_topic, p,
                                  txn_batch([(b"z", b"zombie-late")], pid, epoch, 1 if p == 0 else 0), v)
                assert got == (INVALID_PRODUCER_EPOCH, -1), f"Produce v{v} to partition {p} from the fenced epoch: {got}"
    finally:
        w.close()
    assert wait_lso_caught_up(server.bootstrap, zombie_topic, [0, 1]) == {0: 2, 1: 0}, \
        "end offsets: partition 0 holds the zombie's record and the abort marker, partition 1 nothing"
    got, _ = read_to_end(server.bootstrap, zombie_topic, [0, 1], "read_committed", timeout=30)
    assert got == {0: [], 1: []}, f"read_committed sees the zombie's aborted record: {got}"


def test_txn_offset_commit_outside_the_transaction_is_refused(server, topic_name):
    """KIP-890 for offsets: a TxnOffsetCommit is verified with the transaction coordinator, so one
    sent before AddOffsetsToTxn, or after the transaction ended (a late retry), is refused and
    leaves no open transaction on __consumer_offsets; the group's committed offset stays stable
    (a read_committed OffsetFetch answers at once) and unset."""
    create_topic(server.bootstrap, topic_name, 1)
    tid, group = f"{topic_name}-offsets", f"{topic_name}-group"
    w = TxnWire(server.host, server.port, tid)
    try:
        err, pid, epoch = w.init_producer_id(60_000)
        assert err == NONE, err
        assert w.add_partitions(pid, epoch, topic_name, [0], 2) == {(topic_name, 0): NONE}
        got = txn_offset_commit(server, tid, group, pid, epoch, topic_name, 0, 5)
        assert got == INVALID_TXN_STATE, f"TxnOffsetCommit before AddOffsetsToTxn: {got}"
        assert w.add_offsets(pid, epoch, group) == NONE, "AddOffsetsToTxn"
        got = txn_offset_commit(server, tid, group, pid, epoch, topic_name, 0, 5)
        assert got == NONE, f"TxnOffsetCommit after AddOffsetsToTxn: {got}"
        assert w.end_txn(pid, epoch, False, 1) == NONE, "EndTxn abort"
        # The retry answers NONE once the abort is complete (its markers written).
        assert w.end_txn(pid, epoch, False, 1) == NONE, "EndTxn abort, retried"
        got = txn_offset_commit(server, tid, group, pid, epoch, topic_name, 0, 7)
        assert got == INVALID_TXN_STATE, f"TxnOffsetCommit after the abort: {got}"
    finally:
        w.close()
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": group, "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    try:
        started = time.monotonic()
        got = c.committed([TopicPartition(topic_name, 0)], timeout=20)[0].offset
        assert got == OFFSET_INVALID, f"committed offset after an aborted and a refused commit: {got}"
        assert time.monotonic() - started < 15, "OffsetFetch waited: an open transaction on __consumer_offsets"
    finally:
        c.close()
