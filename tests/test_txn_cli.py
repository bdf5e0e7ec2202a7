"""`kafka-transactions.sh` (org.apache.kafka.tools.TransactionsCommand, Kafka 4.1.1) as an
operator runs it, against one producer holding a transaction open and another whose
transaction committed. Every assertion checked against Apache Kafka 4.1.1
(OXBOW_TEST_TARGET=kafka).

The scene (`open_scene`): a topic with 2 partitions; producer B (transactional.id ...-b,
transaction.timeout.ms 30000) commits 5 records to partition 0 (offsets 0-4, its marker at 5);
producer A (...-a, transaction.timeout.ms 120000) begins a transaction, writes 3 records to
partition 0 (from offset 6) and 2 to partition 1 (from 0), flushes and does not commit; then a
non-transactional producer writes 2 records to partition 0 (held back by A's open transaction).

- `list`: exactly A (Ongoing) and B (CompleteCommit), each with its producer id and a
  coordinator that is one of the brokers.
- `describe --transactional-id`: A is Ongoing with the producer id and epoch, the timeout
  (120000), a start time taken while it began, and the partitions t-0 and t-1; B is
  CompleteCommit with its timeout (30000) and no partitions; an unknown id fails (exit 1,
  "could not be found").
- `describe-producers --topic --partition` (also with `--broker-id` of the leader): on
  partition 0, B (last sequence 4, no current transaction, a coordinator epoch >= 0 since its
  commit marker) and A (last sequence 2, current transaction start offset 6, coordinator
  epoch -1: no marker yet); on partition 1, A from offset 0; the producer epochs agree with
  `describe`; LastTimestamp is the time the records were produced.
- `find-hanging` by `--broker-id` (the leader), by `--topic` and by `--topic --partition`,
  also with `--max-transaction-timeout 0` (A's open transaction is then a candidate, which
  the tool clears through ListTransactions filtered by producer id and DescribeTransactions):
  the header and no row.
- `abort --topic --partition 0 --start-offset`: with an offset no transaction starts at, exit
  1 ("Could not find any open transactions starting at offset"); with A's start offset taken
  from `describe-producers` (the tool then sends WriteTxnMarkers with A's producer id and
  epoch and coordinator epoch 0 to the leader): the LSO of partition 0 reaches the high
  watermark (one abort marker), read_committed reads B's records and the 2 non-transactional
  ones, none of A's (read_uncommitted still has them), `describe-producers` shows A with no
  current transaction and the same epoch; partition 1 is untouched (A still open there from
  0, LSO 0) and the coordinator still describes A as Ongoing on both partitions. Then
  `abort --partition 1 --producer-id --producer-epoch --coordinator-epoch` (the form for
  brokers before 3.0, the values as describe-producers shows them) releases partition 1
  (LSO at the high watermark, nothing to read_committed). A's own abort_transaction then
  ends it: `list` shows A as CompleteAbort, partition 0 reads the same. Last, the coordinator
  epoch both abort markers carried (0) is A's LatestCoordinatorEpoch on both partitions.

Oxbow only (`test_an_idle_transactional_id_expires`): with `[transactions]
transactional_id_expiration_ms = 4000`, an id whose last commit is 4 s old leaves `list` and
`describe` (also after a restart) while one that commits every half second stays; the
expired id then starts again under a new producer id.

Each tool run (a JVM, about 1 s) is bounded at 60 s, every wait at 30 s; each test takes 12-20 s
plus the server's start (about 45 s for the file against Kafka, 30-40 s against Oxbow).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from harness import env
from harness import kafka_cli as cli
from harness.clients import create_topic

TRANSACTIONS = "org.apache.kafka.tools.TransactionsCommand"
TOOL_TIMEOUT = 60.0
A_TIMEOUT_MS = 120_000
B_TIMEOUT_MS = 30_000
CLOCK_SLACK_MS = 5_000


# ---------------------------------------------------------------- the tool and its tables
def transactions(server, *args: str) -> cli.ToolResult:
    return cli.run(TRANSACTIONS, "--bootstrap-server", server.bootstrap, *args, timeout=TOOL_TIMEOUT)


def transactions_ok(server, *args: str) -> cli.ToolResult:
    r = transactions(server, *args)
    assert r.returncode == 0, f"kafka-transactions {' '.join(args)} failed:\n{r.describe()}"
    return r


def table(result: cli.ToolResult, headers: list[str]) -> list[dict[str, str]]:
    """The rows of the tab-separated table the tool prints (each cell padded, each line ending
    with a tab), as dicts by header; the header line must be `headers`."""
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert lines, f"no table printed:\n{result.describe()}"

    def cells(line: str) -> list[str]:
        parts = line.split("\t")
        if parts and parts[-1] == "":
            parts = parts[:-1]
        return [c.strip() for c in parts]

    assert cells(lines[0]) == headers, f"header {cells(lines[0])}, expected {headers}:\n{result.describe()}"
    rows = []
    for line in lines[1:]:
        c = cells(line)
        assert len(c) == len(headers), f"row {line!r} has {len(c)} cells for {len(headers)} headers:\n" \
                                       f"{result.describe()}"
        rows.append(dict(zip(headers, c)))
    return rows


LIST_HEADERS = ["TransactionalId", "Coordinator", "ProducerId", "TransactionState"]
DESCRIBE_HEADERS = ["CoordinatorId", "TransactionalId", "ProducerId", "ProducerEpoch", "TransactionState",
                    "TransactionTimeoutMs", "CurrentTransactionStartTimeMs", "TransactionDurationMs",
                    "TopicPartitions"]
PRODUCERS_HEADERS = ["ProducerId", "ProducerEpoch", "LatestCoordinatorEpoch", "LastSequence", "LastTimestamp",
                     "CurrentTransactionStartOffset"]
HANGING_HEADERS = ["Topic", "Partition", "ProducerId", "ProducerEpoch", "CoordinatorEpoch", "StartOffset",
                   "LastTimestamp", "Duration(min)"]


def list_txns(server) -> tuple[dict[str, dict[str, str]], cli.ToolResult]:
    r = transactions_ok(server, "list")
    rows = table(r, LIST_HEADERS)
    by_id = {row["TransactionalId"]: row for row in rows}
    assert len(by_id) == len(rows), f"a transactional id listed twice:\n{r.describe()}"
    return by_id, r


def describe_txn(server, tid: str) -> tuple[dict[str, str], cli.ToolResult]:
    r = transactions_ok(server, "describe", "--transactional-id", tid)
    rows = table(r, DESCRIBE_HEADERS)
    assert len(rows) == 1, f"describe printed {len(rows)} rows:\n{r.describe()}"
    return rows[0], r


def describe_producers(server, topic: str, partition: int, *extra: str) -> tuple[dict[str, dict[str, str]],
                                                                                 cli.ToolResult]:
    r = transactions_ok(server, "describe-producers", "--topic", topic, "--partition", str(partition), *extra)
    rows = table(r, PRODUCERS_HEADERS)
    by_pid = {row["ProducerId"]: row for row in rows}
    assert len(by_pid) == len(rows), f"a producer id listed twice:\n{r.describe()}"
    return by_pid, r


def find_hanging(server, *args: str) -> tuple[list[dict[str, str]], cli.ToolResult]:
    r = transactions_ok(server, "find-hanging", *args)
    return table(r, HANGING_HEADERS), r


def partitions_cell(cell: str) -> set[str]:
    return {p for p in cell.split(",") if p}


# ---------------------------------------------------------------- clients
def _consumer(bootstrap: str, isolation: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"txn-cli-{time.time_ns()}",
                     "isolation.level": isolation, "enable.auto.commit": False,
                     "auto.offset.reset": "earliest", "enable.partition.eof": True})


def end_offset(bootstrap: str, topic: str, partition: int, isolation: str, timeout: float = 30.0) -> int:
    """ListOffsets' end offset for `isolation`: the high watermark (read_uncommitted) or the
    last stable offset (read_committed)."""
    c = _consumer(bootstrap, isolation)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
            except KafkaException as e:
                assert time.monotonic() < deadline, f"no {isolation} end offset for {topic}/{partition}: {e}"
                time.sleep(0.2)
    finally:
        c.close()


def wait_lso_at_hw(bootstrap: str, topic: str, partition: int, what: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        lso = end_offset(bootstrap, topic, partition, "read_committed")
        hw = end_offset(bootstrap, topic, partition, "read_uncommitted")
        if lso == hw:
            return hw
        assert time.monotonic() < deadline, (
            f"{topic}/{partition}: read_committed end offset (LSO) {lso} still behind the high watermark {hw} "
            f"{timeout:.0f}s after {what}")
        time.sleep(0.3)


def read_values(bootstrap: str, topic: str, partition: int, isolation: str, end: int,
                timeout: float = 30.0) -> list[tuple[int, bytes]]:
    """(offset, value) of every record `isolation` reads from the start until the consumer
    reports the end of the partition at or beyond `end`."""
    c = _consumer(bootstrap, isolation)
    try:
        c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        got: list[tuple[int, bytes]] = []
        eof = -1
        deadline = time.monotonic() + timeout
        while eof < end:
            assert time.monotonic() < deadline, (
                f"{isolation} read of {topic}/{partition} did not reach offset {end} within {timeout:.0f}s: end of "
                f"partition reported at {eof}, read {got}")
            for m in c.consume(num_messages=100, timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof = m.offset()
                        continue
                    raise KafkaException(m.error())
                got.append((m.offset(), m.value()))
        return got
    finally:
        c.close()


def leader_id(bootstrap: str, topic: str, partition: int) -> tuple[int, set[int]]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic=topic, timeout=10)
    return md.topics[topic].partitions[partition].leader, set(md.brokers)


@dataclass
class Scene:
    topic: str
    a_id: str
    b_id: str
    a: Producer
    b_values: list[bytes]
    a_values: dict[int, list[bytes]]
    plain_values: list[bytes]
    offsets: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    t_before_ms: int = 0  # wall clock before the first record was produced
    t_a_begin_ms: int = 0  # before A's begin_transaction

    def first_offset(self, values: list[bytes]) -> int:
        return self.offsets[values[0]][1]


def open_scene(server, topic: str) -> Scene:
    """B commits 5 records to partition 0, A leaves 3 on partition 0 and 2 on partition 1 in
    an open transaction, then 2 non-transactional records go to partition 0."""
    create_topic(server.bootstrap, topic, 2)
    s = Scene(topic=topic, a_id=f"{topic}-a", b_id=f"{topic}-b", a=None,  # type: ignore[arg-type]
              b_values=[f"b/{i}".encode() for i in range(5)],
              a_values={0: [f"a/p0/{i}".encode() for i in range(3)], 1: [f"a/p1/{i}".encode() for i in range(2)]},
              plain_values=[f"plain/{i}".encode() for i in range(2)])
    errors: list[str] = []

    def cb(err, msg):
        if err is not None:
            errors.append(f"{msg.value()!r}: {err}")
        else:
            s.offsets[msg.value()] = (msg.partition(), msg.offset())

    s.t_before_ms = int(time.time() * 1000)
    b = Producer({"bootstrap.servers": server.bootstrap, "transactional.id": s.b_id, "linger.ms": 5,
                  "transaction.timeout.ms": B_TIMEOUT_MS})
    b.init_transactions(60)
    b.begin_transaction()
    for v in s.b_values:
        b.produce(topic, value=v, partition=0, on_delivery=cb)
    b.commit_transaction(30)
    del b

    s.a = Producer({"bootstrap.servers": server.bootstrap, "transactional.id": s.a_id, "linger.ms": 5,
                    "transaction.timeout.ms": A_TIMEOUT_MS})
    s.a.init_transactions(60)
    s.t_a_begin_ms = int(time.time() * 1000)
    s.a.begin_transaction()
    for p, vals in s.a_values.items():
        for v in vals:
            s.a.produce(topic, value=v, partition=p, on_delivery=cb)
    assert s.a.flush(30) == 0, "A's records not acknowledged within 30s"

    plain = Producer({"bootstrap.servers": server.bootstrap, "linger.ms": 5})
    for v in s.plain_values:
        plain.produce(topic, value=v, partition=0, on_delivery=cb)
    assert plain.flush(30) == 0, "the non-transactional records not acknowledged within 30s"
    del plain
    assert not errors, errors
    want = s.b_values + s.a_values[0] + s.a_values[1] + s.plain_values
    assert set(s.offsets) == set(want), f"delivery reports {s.offsets}"
    # One commit marker after B's records: A's transaction starts 2 past B's last record.
    assert s.first_offset(s.a_values[0]) == s.offsets[s.b_values[-1]][1] + 2, s.offsets
    assert s.first_offset(s.a_values[1]) == 0, s.offsets
    return s


def close_scene(s: Scene) -> None:
    """Ends A's transaction (if still open) so that the server stops with nothing pending."""
    try:
        s.a.abort_transaction(30)
    except KafkaException:
        pass


def assert_recent_ms(what: str, value: str, since_ms: int, result: cli.ToolResult) -> None:
    assert re.fullmatch(r"-?\d+", value), f"{what} is {value!r}, not a number:\n{result.describe()}"
    now_ms = int(time.time() * 1000)
    assert since_ms - CLOCK_SLACK_MS <= int(value) <= now_ms + CLOCK_SLACK_MS, (
        f"{what} is {value}, not a time while the scene ran ({since_ms}..{now_ms} ms since the epoch, "
        f"{CLOCK_SLACK_MS} ms slack):\n{result.describe()}")


# ---------------------------------------------------------------- 1. list, describe, describe-producers, find-hanging
def test_list_describe_and_find_hanging(server, topic_name):
    s = open_scene(server, topic_name)
    try:
        leader, brokers = leader_id(server.bootstrap, s.topic, 0)
        a_start = s.first_offset(s.a_values[0])

        # list: both transactional ids, nothing else, with their states.
        listed, r = list_txns(server)
        assert set(listed) == {s.a_id, s.b_id}, f"list shows {sorted(listed)}, expected {[s.a_id, s.b_id]}:\n" \
                                                f"{r.describe()}"
        assert listed[s.a_id]["TransactionState"] == "Ongoing", r.describe()
        assert listed[s.b_id]["TransactionState"] == "CompleteCommit", r.describe()
        for tid in (s.a_id, s.b_id):
            assert int(listed[tid]["Coordinator"]) in brokers, f"{tid}'s coordinator not one of {brokers}:\n" \
                                                               f"{r.describe()}"
            assert re.fullmatch(r"\d+", listed[tid]["ProducerId"]), r.describe()
        pid_a, pid_b = listed[s.a_id]["ProducerId"], listed[s.b_id]["ProducerId"]
        assert pid_a != pid_b, f"A and B listed with one producer id:\n{r.describe()}"

        # describe A: the open transaction.
        da, r = describe_txn(server, s.a_id)
        assert da["TransactionalId"] == s.a_id, r.describe()
        assert da["CoordinatorId"] == listed[s.a_id]["Coordinator"], f"describe and list disagree on A's " \
                                                                     f"coordinator:\n{r.describe()}"
        assert da["ProducerId"] == pid_a, f"describe: A's producer id, list said {pid_a}:\n{r.describe()}"
        assert re.fullmatch(r"\d+", da["ProducerEpoch"]), r.describe()
        assert da["TransactionState"] == "Ongoing", r.describe()
        assert da["TransactionTimeoutMs"] == str(A_TIMEOUT_MS), r.describe()
        assert_recent_ms("A's CurrentTransactionStartTimeMs", da["CurrentTransactionStartTimeMs"], s.t_a_begin_ms, r)
        assert re.fullmatch(r"\d+", da["TransactionDurationMs"]), r.describe()
        assert partitions_cell(da["TopicPartitions"]) == {f"{s.topic}-0", f"{s.topic}-1"}, r.describe()

        # describe B: committed, nothing pending.
        db, r = describe_txn(server, s.b_id)
        assert (db["ProducerId"], db["TransactionState"], db["TransactionTimeoutMs"]) == (
            pid_b, "CompleteCommit", str(B_TIMEOUT_MS)), r.describe()
        assert partitions_cell(db["TopicPartitions"]) == set(), r.describe()

        r = transactions(server, "describe", "--transactional-id", f"{s.topic}-nobody")
        assert r.returncode == 1, r.describe()
        assert "could not be found" in r.stderr, r.describe()

        # describe-producers: B done, A open from its first offset on each partition.
        p0, r0 = describe_producers(server, s.topic, 0)
        assert set(p0) == {pid_a, pid_b}, f"producers on partition 0 {sorted(p0)}, expected A {pid_a} and " \
                                          f"B {pid_b}:\n{r0.describe()}"
        assert p0[pid_a]["CurrentTransactionStartOffset"] == str(a_start), r0.describe()
        assert p0[pid_b]["CurrentTransactionStartOffset"] == "None", r0.describe()
        assert p0[pid_a]["ProducerEpoch"] == da["ProducerEpoch"], f"epoch differs from describe's " \
                                                                  f"{da['ProducerEpoch']}:\n{r0.describe()}"
        assert p0[pid_b]["ProducerEpoch"] == db["ProducerEpoch"], f"epoch differs from describe's " \
                                                                  f"{db['ProducerEpoch']}:\n{r0.describe()}"
        assert p0[pid_a]["LastSequence"] == str(len(s.a_values[0]) - 1), r0.describe()
        assert p0[pid_b]["LastSequence"] == str(len(s.b_values) - 1), r0.describe()
        leader1 = leader_id(server.bootstrap, s.topic, 1)[0]
        p1, r1 = describe_producers(server, s.topic, 1, "--broker-id", str(leader1))
        assert set(p1) == {pid_a}, f"producers on partition 1 {sorted(p1)}, expected A {pid_a}:\n{r1.describe()}"
        assert p1[pid_a]["CurrentTransactionStartOffset"] == "0", r1.describe()
        assert p1[pid_a]["LastSequence"] == str(len(s.a_values[1]) - 1), r1.describe()
        assert p1[pid_a]["ProducerEpoch"] == da["ProducerEpoch"], r1.describe()

        # find-hanging: none, also when A's open transaction is old enough to be a candidate
        # (max timeout 0) and has to be cleared with the coordinator.
        for args in (["--broker-id", str(leader)],
                     ["--broker-id", str(leader), "--max-transaction-timeout", "0"],
                     ["--topic", s.topic, "--max-transaction-timeout", "0"],
                     ["--topic", s.topic, "--partition", "0", "--max-transaction-timeout", "0"]):
            rows, r = find_hanging(server, *args)
            assert rows == [], f"find-hanging {' '.join(args)} reports hanging transactions:\n{r.describe()}"

        # The remaining columns of describe-producers: when the records were produced, and the
        # coordinator epoch of the last marker (-1: none yet). All checked, then reported together.
        now_ms = int(time.time() * 1000)
        problems = []
        for part, rows, pid, since in ((0, p0, pid_a, s.t_a_begin_ms), (0, p0, pid_b, s.t_before_ms),
                                       (1, p1, pid_a, s.t_a_begin_ms)):
            ts = rows[pid]["LastTimestamp"]
            if not (re.fullmatch(r"-?\d+", ts) and since - CLOCK_SLACK_MS <= int(ts) <= now_ms + CLOCK_SLACK_MS):
                problems.append(f"partition {part}, producer {pid}: LastTimestamp {ts}, expected the time its "
                                f"records were produced ({since}..{now_ms} ms since the epoch, "
                                f"{CLOCK_SLACK_MS} ms slack)")
        for part, rows in ((0, p0), (1, p1)):
            if rows[pid_a]["LatestCoordinatorEpoch"] != "-1":
                problems.append(f"partition {part}, producer {pid_a} (A): LatestCoordinatorEpoch "
                                f"{rows[pid_a]['LatestCoordinatorEpoch']}, expected -1 (no marker yet)")
        if int(p0[pid_b]["LatestCoordinatorEpoch"]) < 0:
            problems.append(f"partition 0, producer {pid_b} (B): LatestCoordinatorEpoch "
                            f"{p0[pid_b]['LatestCoordinatorEpoch']}, expected >= 0 (the coordinator epoch its "
                            f"commit marker carried)")
        assert not problems, "describe-producers:\n" + "\n".join(problems) + "\n" + r0.describe() + \
                             "\n" + r1.describe()
    finally:
        close_scene(s)


# ---------------------------------------------------------------- 2. abort
def test_abort_open_transaction(server, topic_name):
    s = open_scene(server, topic_name)
    try:
        a_start = s.first_offset(s.a_values[0])
        hw0 = a_start + len(s.a_values[0]) + len(s.plain_values)
        assert end_offset(server.bootstrap, s.topic, 0, "read_uncommitted") == hw0
        lso = end_offset(server.bootstrap, s.topic, 0, "read_committed")
        assert lso == a_start, f"LSO {lso} of partition 0 with A's transaction open from {a_start}"

        # The operator finds the open transaction's start offset with describe-producers.
        p0, r = describe_producers(server, s.topic, 0)
        open_rows = [row for row in p0.values() if row["CurrentTransactionStartOffset"] != "None"]
        assert len(open_rows) == 1, f"one open transaction expected on partition 0:\n{r.describe()}"
        pid_a, epoch_a = open_rows[0]["ProducerId"], open_rows[0]["ProducerEpoch"]
        assert open_rows[0]["CurrentTransactionStartOffset"] == str(a_start), r.describe()

        wrong = s.offsets[s.b_values[0]][1]
        r = transactions(server, "abort", "--topic", s.topic, "--partition", "0", "--start-offset", str(wrong))
        assert r.returncode == 1, r.describe()
        assert (f"Could not find any open transactions starting at offset {wrong} on partition {s.topic}-0"
                in r.stderr), r.describe()

        r = transactions_ok(server, "abort", "--topic", s.topic, "--partition", "0", "--start-offset", str(a_start))

        # Partition 0: the LSO moves to the end; read_committed sees B's and the plain records only.
        assert wait_lso_at_hw(server.bootstrap, s.topic, 0, "the abort") == hw0 + 1, "one abort marker expected"
        committed = read_values(server.bootstrap, s.topic, 0, "read_committed", hw0 + 1)
        assert [v for _, v in committed] == s.b_values + s.plain_values, (
            f"read_committed after the abort: {committed}")
        uncommitted = read_values(server.bootstrap, s.topic, 0, "read_uncommitted", hw0 + 1)
        assert [v for _, v in uncommitted] == s.b_values + s.a_values[0] + s.plain_values, uncommitted

        after, r = describe_producers(server, s.topic, 0)
        assert pid_a in after, f"A {pid_a} gone from partition 0's producers:\n{r.describe()}"
        assert after[pid_a]["CurrentTransactionStartOffset"] == "None", (
            f"A still has a transaction open on partition 0 after the abort:\n{r.describe()}")
        assert after[pid_a]["ProducerEpoch"] == epoch_a, r.describe()

        # Partition 1 untouched; the coordinator still has A's transaction open on both.
        p1, r1 = describe_producers(server, s.topic, 1)
        assert p1[pid_a]["CurrentTransactionStartOffset"] == "0", r1.describe()
        assert end_offset(server.bootstrap, s.topic, 1, "read_committed") == 0
        da, rd = describe_txn(server, s.a_id)
        assert (da["ProducerId"], da["TransactionState"]) == (pid_a, "Ongoing"), rd.describe()
        assert partitions_cell(da["TopicPartitions"]) == {f"{s.topic}-0", f"{s.topic}-1"}, rd.describe()

        # Partition 1 the way an operator of brokers before 3.0 does it: producer id, epoch and
        # coordinator epoch as describe-producers shows them (the tool sends 0 for -1).
        transactions_ok(server, "abort", "--topic", s.topic, "--partition", "1", "--producer-id", pid_a,
                        "--producer-epoch", p1[pid_a]["ProducerEpoch"],
                        "--coordinator-epoch", p1[pid_a]["LatestCoordinatorEpoch"])
        hw1 = len(s.a_values[1]) + 1
        assert wait_lso_at_hw(server.bootstrap, s.topic, 1, "the abort by producer id") == hw1
        assert read_values(server.bootstrap, s.topic, 1, "read_committed", hw1) == []
        after1, r1 = describe_producers(server, s.topic, 1)
        assert after1[pid_a]["CurrentTransactionStartOffset"] == "None", (
            f"A still has a transaction open on partition 1 after the abort:\n{r1.describe()}")

        # A ends its own transaction (the coordinator has it open still): aborted, and the reads
        # of partition 0 are unchanged.
        s.a.abort_transaction(30)
        wait_lso_at_hw(server.bootstrap, s.topic, 0, "A's abort_transaction")
        listed, rl = list_txns(server)
        assert listed[s.a_id]["TransactionState"] == "CompleteAbort", rl.describe()
        committed = read_values(server.bootstrap, s.topic, 0, "read_committed",
                                end_offset(server.bootstrap, s.topic, 0, "read_uncommitted"))
        assert [v for _, v in committed] == s.b_values + s.plain_values, committed

        # Both abort markers carried coordinator epoch 0 (A had none before).
        assert after[pid_a]["LatestCoordinatorEpoch"] == "0", (
            f"A's LatestCoordinatorEpoch on partition 0 after the abort marker (coordinator epoch 0):\n{r.describe()}")
        assert after1[pid_a]["LatestCoordinatorEpoch"] == "0", (
            f"A's LatestCoordinatorEpoch on partition 1 after the abort marker (coordinator epoch 0):\n{r1.describe()}")
    finally:
        close_scene(s)


@pytest.mark.oxbow_only
def test_an_idle_transactional_id_expires(server_factory, tmp_path, topic_name):
    """transactional.id.expiration.ms (`[transactions] transactional_id_expiration_ms`): an id
    whose last transaction ended that long ago is forgotten (a tombstone in
    __transaction_state: gone from `list`, `describe` cannot find it, also after a restart)
    while an id that keeps committing stays; the expired id starts afresh under a new producer
    id and commits again."""
    expiration_s = 4
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text(f"[transactions]\ntransactional_id_expiration_ms = {expiration_s * 1000}\n")
    srv = server_factory(extra_args=["--config", str(cfg)])
    create_topic(srv.bootstrap, topic_name, 1)
    idle_id, busy_id = f"{topic_name}-idle", f"{topic_name}-busy"

    def producer(tid: str) -> Producer:
        p = Producer({"bootstrap.servers": srv.bootstrap, "transactional.id": tid, "linger.ms": 5})
        p.init_transactions(60)
        return p

    def commit_one(p: Producer, value: bytes) -> None:
        p.begin_transaction()
        p.produce(topic_name, value=value, partition=0)
        p.commit_transaction(30)

    idle = producer(idle_id)
    commit_one(idle, b"idle/0")
    first_pid = describe_txn(srv, idle_id)[0]["ProducerId"]
    del idle
    committed_at = time.monotonic()
    busy = producer(busy_id)
    listed, r = list_txns(srv)
    assert listed[idle_id]["TransactionState"] == "CompleteCommit", r.describe()
    n = 0
    while idle_id in listed:
        assert time.monotonic() - committed_at < 60, f"{idle_id} did not expire:\n{r.describe()}"
        commit_one(busy, f"busy/{n}".encode())
        n += 1
        time.sleep(0.5)
        listed, r = list_txns(srv)
    assert time.monotonic() - committed_at >= expiration_s - 1, "expired before its expiration time"
    assert busy_id in listed, f"an id that keeps committing expired:\n{r.describe()}"
    gone = transactions(srv, "describe", "--transactional-id", idle_id)
    assert gone.returncode == 1 and "could not be found" in gone.stdout + gone.stderr, gone.describe()
    del busy

    if env.TARGET == "oxbow":
        assert srv.stop() == 0, "oxbow did not stop cleanly"
        srv.restart()
        listed, r = list_txns(srv)
        assert idle_id not in listed and busy_id in listed, r.describe()

    again = producer(idle_id)
    commit_one(again, b"idle/1")
    row, r = describe_txn(srv, idle_id)
    assert row["TransactionState"] == "CompleteCommit" and row["ProducerId"] != first_pid, r.describe()
    del again
