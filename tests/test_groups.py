"""Consumer groups (the classic protocol, and KIP-848's consumer protocol where a test is
parametrised with it) and committed offsets, end to end.

confluent-kafka consumers in one group share a topic's partitions, commit by
hand, survive a member leaving mid-way and a restart, and resume from their
committed offsets; the Java tools (ConsumerPerformance, kafka-consumer-groups)
list, describe (with lag), reset and delete groups; committed offsets survive
kill -9 of the broker. Every wait is bounded; servers are stopped by PID.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from harness import env
from harness import kafka_cli as cli
from harness.clients import Msg, create_topic, produce_confluent

CONSUMER_GROUPS = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
SHARE_RECORDS = env.env_int("OXBOW_TEST_GROUP_RECORDS", 30_000)
KILL_RECORDS = env.env_int("OXBOW_TEST_GROUP_KILL_RECORDS", 300_000)
PERF_RECORDS = env.env_int("OXBOW_TEST_GROUP_PERF_RECORDS", 20_000)


def messages(n: int, partitions: int, tag: str) -> list[Msg]:
    return [Msg(i % partitions, f"k{i}".encode(), f"{tag}-{i}".encode()) for i in range(n)]


def group_consumer(bootstrap: str, group: str, protocol: str = "classic", **extra) -> Consumer:
    """A consumer of `group` with manual commits; protocol "consumer" is KIP-848's
    (the coordinator assigns; session and heartbeat settings are the broker's)."""
    conf = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest"}
    if protocol == "consumer":
        conf["group.protocol"] = "consumer"
    else:
        conf.update({"session.timeout.ms": 10000, "heartbeat.interval.ms": 1000})
    conf.update(extra)
    return Consumer(conf)


def consume_n(c: Consumer, n: int, timeout: float) -> list[tuple[int, int, bytes]]:
    """Consumes n records (committing after each batch); returns (partition, offset, value)."""
    got: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, f"consumed {len(got)} of {n} within {timeout}s"
        batch = c.consume(num_messages=min(500, n - len(got)), timeout=0.5)
        for m in batch:
            if m.error():
                raise KafkaException(m.error())
            got.append((m.partition(), m.offset(), m.value()))
        if batch:
            c.commit(asynchronous=False)
    return got


def consumer_groups(server, *args, **kw) -> cli.ToolResult:
    return cli.run_ok(CONSUMER_GROUPS, "--bootstrap-server", server.bootstrap, *args, **kw)


def describe_rows(output: str, group: str, topic: str) -> dict[int, tuple[str, str, str]]:
    """partition -> (current offset, log end offset, lag) from `--describe` output."""
    rows = {}
    for line in output.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[0] == group and cols[1] == topic and cols[2].isdigit():
            rows[int(cols[2])] = (cols[3], cols[4], cols[5])
    return rows


# ------------------------------------------------------------------ Java tools
def test_consumer_performance_in_a_group_then_list(server, topic_name):
    create_topic(server.bootstrap, topic_name, 3)
    produce_confluent(server.bootstrap, topic_name, messages(PERF_RECORDS, 3, "perf"))
    group = f"perf-{topic_name}"
    r = cli.run_ok(cli.CONSUMER_PERF, "--bootstrap-server", server.bootstrap, "--topic", topic_name,
                   "--group", group, "--messages", str(PERF_RECORDS), "--timeout", "60000",
                   timeout=240)
    rows = [[c.strip() for c in line.split(",")] for line in r.stdout.splitlines()
            if re.match(r"^\d{4}-\d\d-\d\d", line)]
    assert len(rows) == 1 and int(rows[0][4]) == PERF_RECORDS, r.describe()

    r = consumer_groups(server, "--list", timeout=120)
    assert group in r.stdout.split(), r.describe()


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_consumer_groups_cli_describe_lag_reset_and_delete(server, topic_name, protocol):
    create_topic(server.bootstrap, topic_name, 2)
    produce_confluent(server.bootstrap, topic_name, messages(100, 2, "cli"))
    group = f"cli-{topic_name}"
    c = group_consumer(server.bootstrap, group, protocol)
    try:
        c.subscribe([topic_name])
        got = consume_n(c, 60, timeout=60)
        assert len(got) == 60
    finally:
        c.close()
    committed = Counter(p for p, _, _ in got)

    r = consumer_groups(server, "--list", timeout=120)
    assert group in r.stdout.split(), r.describe()

    r = consumer_groups(server, "--describe", "--group", group, timeout=120)
    rows = describe_rows(r.stdout, group, topic_name)
    assert sorted(rows) == [0, 1], r.describe()
    for p in (0, 1):
        current, end, lag = rows[p]
        assert int(end) == 50, r.describe()
        assert int(current) == committed[p], r.describe()
        assert int(lag) == 50 - committed[p], r.describe()

    r = consumer_groups(server, "--reset-offsets", "--to-earliest", "--execute", "--group", group,
                        "--topic", topic_name, timeout=120)
    assert re.search(rf"{re.escape(topic_name)}\s+0\s+0\b", r.stdout), r.describe()

    r = consumer_groups(server, "--describe", "--group", group, timeout=120)
    rows = describe_rows(r.stdout, group, topic_name)
    assert {p: (cur, lag) for p, (cur, _, lag) in rows.items()} == {0: ("0", "50"), 1: ("0", "50")}, \
        r.describe()

    # A consumer of the group now reads everything again from offset 0.
    c = group_consumer(server.bootstrap, group, protocol)
    try:
        c.subscribe([topic_name])
        again = consume_n(c, 100, timeout=60)
    finally:
        c.close()
    assert sorted((p, o) for p, o, _ in again) == sorted((p, o) for p in (0, 1) for o in range(50))

    r = consumer_groups(server, "--delete-offsets", "--group", group, "--topic", topic_name,
                        timeout=120)
    assert re.search(rf"{re.escape(topic_name)}\s+0\s+Successful", r.stdout), r.describe()
    r = consumer_groups(server, "--describe", "--group", group, timeout=120)
    assert describe_rows(r.stdout, group, topic_name) == {}, r.describe()

    r = consumer_groups(server, "--delete", "--group", group, timeout=120)
    assert "successful" in r.stdout.lower(), r.describe()
    r = consumer_groups(server, "--list", timeout=120)
    assert group not in r.stdout.split(), r.describe()


def test_consumer_protocol_group_described_with_members_and_state(server, topic_name):
    """A live KIP-848 group through kafka-consumer-groups: ConsumerGroupDescribe answers
    the members, their partitions, the assignor and the state."""
    create_topic(server.bootstrap, topic_name, 4)
    produce_confluent(server.bootstrap, topic_name, messages(40, 4, "live"))
    group = f"live-{topic_name}"
    c = group_consumer(server.bootstrap, group, "consumer", **{"client.id": "live-member"})
    try:
        c.subscribe([topic_name])
        consume_n(c, 40, timeout=60)
        r = consumer_groups(server, "--describe", "--group", group, "--members", timeout=120)
        rows = [line.split() for line in r.stdout.splitlines() if line.startswith(group + " ")]
        assert len(rows) == 1, r.describe()
        assert "live-member" in rows[0] and rows[0][-1] == "4", r.describe()
        r = consumer_groups(server, "--describe", "--group", group, "--state", timeout=120)
        assert re.search(r"\buniform\s+Stable\s+1\b", r.stdout), r.describe()
    finally:
        c.close()


@pytest.mark.oxbow_only
def test_offsets_of_an_idle_group_expire_after_the_retention(server_factory, tmp_path, topic_name):
    """offsets.retention.minutes ([groups] in the config file): an empty group's committed
    offsets and the group itself go once it has been idle that long; a group that keeps
    committing keeps them."""
    cfg = tmp_path / "oxbow.toml"
    cfg.write_text("[groups]\noffsets_retention_minutes = 1\noffsets_retention_check_interval_ms = 1000\n")
    srv = server_factory(extra_args=["--config", str(cfg)])
    create_topic(srv.bootstrap, topic_name, 1)
    produce_confluent(srv.bootstrap, topic_name, messages(10, 1, "ret"))
    idle, busy = f"idle-{topic_name}", f"busy-{topic_name}"
    started = time.monotonic()
    for group in (idle, busy):
        c = group_consumer(srv.bootstrap, group)
        try:
            c.subscribe([topic_name])
            consume_n(c, 10, timeout=60)
        finally:
            c.close()

    def committed(group: str) -> int:
        c = group_consumer(srv.bootstrap, group)
        try:
            return c.committed([TopicPartition(topic_name, 0)], timeout=30)[0].offset
        finally:
            c.close()

    assert committed(idle) == committed(busy) == 10
    # The busy group commits (standalone, generation -1) every 10 s.
    while committed(idle) == 10:
        assert time.monotonic() - started < 150, "the idle group's offsets did not expire"
        c = Consumer({"bootstrap.servers": srv.bootstrap, "group.id": busy, "enable.auto.commit": False})
        try:
            c.commit(offsets=[TopicPartition(topic_name, 0, 10)], asynchronous=False)
        finally:
            c.close()
        time.sleep(10)
    assert time.monotonic() - started >= 55, "expired before the retention time"
    assert committed(busy) == 10
    r = consumer_groups(srv, "--list", timeout=120)
    assert idle not in r.stdout.split() and busy in r.stdout.split(), r.describe()


def test_consumer_groups_cli_resets_to_latest_datetime_and_by_shift(server, topic_name):
    """kafka-consumer-groups --reset-offsets: --to-latest, --shift-by, --to-offset and
    --to-datetime (ListOffsets by timestamp) each move the committed offsets as Kafka does."""
    from confluent_kafka import Producer

    create_topic(server.bootstrap, topic_name, 1)
    p = Producer({"bootstrap.servers": server.bootstrap, "acks": "all", "linger.ms": 0})
    base = 1_700_000_000_000  # 2023-11-14T22:13:20Z
    for i in range(10):
        p.produce(topic_name, value=f"v{i}".encode(), partition=0, timestamp=base + i * 60_000)
        assert p.flush(30) == 0  # one batch per record
    group = f"reset-{topic_name}"

    def reset(*how: str) -> int:
        consumer_groups(server, "--reset-offsets", *how, "--execute", "--group", group,
                        "--topic", topic_name, timeout=120)
        r = consumer_groups(server, "--describe", "--group", group, timeout=120)
        rows = describe_rows(r.stdout, group, topic_name)
        assert 0 in rows, r.describe()
        return int(rows[0][0])

    assert reset("--to-latest") == 10
    assert reset("--shift-by", "-3") == 7
    assert reset("--to-offset", "2") == 2
    assert reset("--shift-by", "-5") == 0, "shifting below the start stops at the start"
    # 2023-11-14T22:17:20Z is the timestamp of record 4.
    assert reset("--to-datetime", "2023-11-14T22:17:20.000Z") == 4
    assert reset("--to-datetime", "2023-11-14T22:17:30.000Z") == 5


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_regex_subscription_reads_every_matching_topic(server, topic_name, protocol):
    """A subscription by regular expression (with KIP-848 the coordinator resolves it) reads
    every matching topic and nothing else."""
    for suffix, n in (("a", 20), ("b", 30), ("other", 5)):
        t = f"{topic_name}-{suffix}"
        create_topic(server.bootstrap, t, 2)
        produce_confluent(server.bootstrap, t, messages(n, 2, suffix))
    c = group_consumer(server.bootstrap, f"re-{topic_name}", protocol)
    try:
        c.subscribe([f"^{re.escape(topic_name)}-[ab]$"])
        got: Counter = Counter()
        deadline = time.monotonic() + 90
        while sum(got.values()) < 50:
            assert time.monotonic() < deadline, f"read {dict(got)} within 90s"
            for m in c.consume(num_messages=100, timeout=0.5):
                if m.error():
                    raise KafkaException(m.error())
                got[m.topic()] += 1
        extra = c.consume(num_messages=10, timeout=2)
        assert not extra, f"{len(extra)} records beyond the matching topics"
    finally:
        c.close()
    assert got == {f"{topic_name}-a": 20, f"{topic_name}-b": 30}


# -------------------------------------------------------------- confluent-kafka
class Member(threading.Thread):
    """One consumer of the group in its own thread, committing after each batch."""

    def __init__(self, bootstrap: str, group: str, topic: str, name: str, strategy: str,
                 seen: Counter, lock: threading.Lock):
        super().__init__(name=name, daemon=True)
        if strategy == "consumer":  # KIP-848: the coordinator's assignor
            self.consumer = group_consumer(bootstrap, group, "consumer", **{"client.id": name})
        else:
            self.consumer = group_consumer(bootstrap, group, **{
                "client.id": name, "partition.assignment.strategy": strategy})
        self.topic = topic
        self.seen = seen
        self.lock = lock
        self.assigned: set[int] = set()
        self.stop = threading.Event()
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.failed_commits = 0

    def run(self):
        def on_assign(c, parts):
            with self.lock:
                self.assigned |= {p.partition for p in parts}

        def on_revoke(c, parts):
            with self.lock:
                self.assigned -= {p.partition for p in parts}

        try:
            self.consumer.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke,
                                    on_lost=on_revoke)
            while not self.stop.is_set():
                batch = self.consumer.consume(num_messages=500, timeout=0.2)
                recs = []
                for m in batch:
                    if m.error():
                        raise KafkaException(m.error())
                    recs.append((m.partition(), m.offset()))
                if recs:
                    with self.lock:
                        self.seen.update(recs)
                    try:
                        self.consumer.commit(asynchronous=False)
                    except KafkaException:
                        self.failed_commits += len(recs)
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.consumer.close()
            self.stopped.set()


def wait_until(what: str, cond, timeout: float):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky", "consumer"])
def test_three_consumers_share_partitions_exactly_once_through_a_leave(server, topic_name, strategy):
    partitions = 12
    create_topic(server.bootstrap, topic_name, partitions)
    produce_confluent(server.bootstrap, topic_name, messages(SHARE_RECORDS, partitions, "share"))
    group = f"share-{topic_name}"
    seen: Counter = Counter()
    lock = threading.Lock()
    members = [Member(server.bootstrap, group, topic_name, f"m{i}", strategy, seen, lock)
               for i in range(3)]
    try:
        for m in members:
            m.start()

        def shared():
            with lock:
                sets = [m.assigned for m in members]
                return all(sets) and set().union(*sets) == set(range(partitions)) \
                    and sum(len(s) for s in sets) == partitions
        wait_until("three members to share the 12 partitions", shared, 60)

        wait_until("half of the records", lambda: sum(seen.values()) >= SHARE_RECORDS // 2, 120)
        leaving = members[2]
        leaving.stop.set()
        assert leaving.stopped.wait(30), "consumer did not close"

        def rebalanced():
            with lock:
                sets = [members[0].assigned, members[1].assigned]
                return all(sets) and set().union(*sets) == set(range(partitions))
        wait_until("the two remaining members to take all partitions", rebalanced, 60)
        wait_until("every record", lambda: len(seen) >= SHARE_RECORDS, 180)
        time.sleep(1)  # let late duplicates, if any, arrive
    finally:
        for m in members:
            m.stop.set()
        for m in members:
            m.stopped.wait(30)
    for m in members:
        assert m.error is None, f"{m.name}: {m.error!r}"
    expected = {(p, o) for p in range(partitions) for o in range(SHARE_RECORDS // partitions)}
    assert set(seen) == expected, f"missing {len(expected - set(seen))}, unexpected {len(set(seen) - expected)}"
    duplicates = sum(n - 1 for n in seen.values())
    failed = sum(m.failed_commits for m in members)
    print(f"{strategy}: {SHARE_RECORDS} records, {duplicates} duplicates, {failed} records with a failed commit")
    assert duplicates <= failed, f"{duplicates} duplicates but only {failed} records lacked a commit"


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_restarted_consumer_resumes_from_committed_offsets(server, topic_name, protocol):
    create_topic(server.bootstrap, topic_name, 3)
    produce_confluent(server.bootstrap, topic_name, messages(900, 3, "resume"))
    group = f"resume-{topic_name}"
    c = group_consumer(server.bootstrap, group, protocol)
    try:
        c.subscribe([topic_name])
        first = consume_n(c, 400, timeout=60)
        positions = {p: max(o for q, o, _ in first if q == p) + 1 for p in {p for p, _, _ in first}}
        committed = c.committed([TopicPartition(topic_name, p) for p in range(3)], timeout=30)
        assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == positions
    finally:
        c.close()
    c = group_consumer(server.bootstrap, group, protocol)
    try:
        c.subscribe([topic_name])
        rest = consume_n(c, 500, timeout=60)
        extra = c.consume(num_messages=10, timeout=2)
        assert not extra, f"{len(extra)} records beyond the 900 produced"
    finally:
        c.close()
    keys = [(p, o) for p, o, _ in first + rest]
    assert len(keys) == len(set(keys)) == 900
    for p in range(3):
        resumed = [o for q, o, _ in rest if q == p]
        if resumed:
            assert min(resumed) == positions.get(p, 0), f"partition {p} resumed at {min(resumed)}"


def test_committed_offsets_survive_kill9(server, topic_name):
    create_topic(server.bootstrap, topic_name, 4)
    produce_confluent(server.bootstrap, topic_name, messages(400, 4, "kill"))
    group = f"kill-{topic_name}"
    c = group_consumer(server.bootstrap, group)
    try:
        c.subscribe([topic_name])
        first = consume_n(c, 200, timeout=60)
    finally:
        c.close()
    positions = {p: max(o for q, o, _ in first if q == p) + 1 for p in {p for p, _, _ in first}}

    server.kill9()
    server.restart()

    c = group_consumer(server.bootstrap, group)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                committed = c.committed([TopicPartition(topic_name, p) for p in range(4)], timeout=10)
                break
            except KafkaException:
                assert time.monotonic() < deadline, "no committed offsets within 60s of the restart"
                time.sleep(0.5)
        assert {tp.partition: tp.offset for tp in committed if tp.offset >= 0} == positions
        c.subscribe([topic_name])
        rest = consume_n(c, 200, timeout=90)
    finally:
        c.close()
    keys = [(p, o) for p, o, _ in first + rest]
    assert len(keys) == len(set(keys)) == 400


def test_kafka_python_group_commits_are_seen_by_confluent(server, topic_name):
    from kafka import KafkaConsumer

    create_topic(server.bootstrap, topic_name, 3)
    produce_confluent(server.bootstrap, topic_name, messages(300, 3, "kp"))
    group = f"kp-{topic_name}"
    kc = KafkaConsumer(topic_name, bootstrap_servers=server.bootstrap, group_id=group,
                       enable_auto_commit=False, auto_offset_reset="earliest",
                       session_timeout_ms=10000, heartbeat_interval_ms=1000)
    try:
        got = 0
        deadline = time.monotonic() + 60
        while got < 300:
            assert time.monotonic() < deadline, f"kafka-python consumed {got} of 300 within 60s"
            for recs in kc.poll(timeout_ms=500).values():
                got += len(recs)
        assert got == 300
        kc.commit()
    finally:
        kc.close()
    c = group_consumer(server.bootstrap, group)
    try:
        committed = c.committed([TopicPartition(topic_name, p) for p in range(3)], timeout=30)
        assert {tp.partition: tp.offset for tp in committed} == {0: 100, 1: 100, 2: 100}
    finally:
        c.close()


def test_aiokafka_members_share_a_topic_and_commit(server, topic_name):
    """Two aiokafka members (asyncio, the classic protocol) in one group share a 6-partition
    topic; together they read everything once and commit; confluent-kafka sees the commits."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    create_topic(server.bootstrap, topic_name, 6)
    produce_confluent(server.bootstrap, topic_name, messages(600, 6, "aio"))
    group = f"aio-{topic_name}"

    async def run() -> Counter:
        seen: Counter = Counter()
        consumers = [AIOKafkaConsumer(topic_name, bootstrap_servers=server.bootstrap, group_id=group,
                                      enable_auto_commit=False, auto_offset_reset="earliest",
                                      session_timeout_ms=10000, heartbeat_interval_ms=1000)
                     for _ in range(2)]
        for c in consumers:
            await c.start()
        try:
            deadline = time.monotonic() + 90
            while sum(seen.values()) < 600 or not all(c.assignment() for c in consumers):
                assert time.monotonic() < deadline, f"aiokafka read {sum(seen.values())} of 600"
                for c in consumers:
                    batch = await c.getmany(timeout_ms=200)
                    for tp, recs in batch.items():
                        seen.update((tp.partition, r.offset) for r in recs)
                    if batch:
                        await c.commit()
            assert {p for c in consumers for p in (tp.partition for tp in c.assignment())} == set(range(6))
            assert all(c.assignment() for c in consumers), "both members hold partitions"
        finally:
            for c in consumers:
                await c.stop()
        return seen

    seen = asyncio.run(run())
    assert set(seen) == {(p, o) for p in range(6) for o in range(100)}
    c = group_consumer(server.bootstrap, group)
    try:
        committed = c.committed([TopicPartition(topic_name, p) for p in range(6)], timeout=30)
        assert {tp.partition: tp.offset for tp in committed} == {p: 100 for p in range(6)}
    finally:
        c.close()


# A group member in its own process, so that it can be killed -9. It prints
# "R partition offset" for every record it processes and "K" after each
# successful commit.
_KILLED_MEMBER = r"""
import sys
import time
from confluent_kafka import Consumer
bootstrap, group, topic, protocol = sys.argv[1:5]
conf = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "client.id": "doomed"}
if protocol == "consumer":
    conf["group.protocol"] = "consumer"
else:
    conf.update({"session.timeout.ms": 10000, "heartbeat.interval.ms": 1000})
c = Consumer(conf)
c.subscribe([topic])
while True:
    batch = c.consume(num_messages=200, timeout=0.2)
    for m in batch:
        if m.error():
            continue
        print("R", m.partition(), m.offset(), flush=True)
    if batch:
        try:
            c.commit(asynchronous=False)
            print("K", flush=True)
        except Exception as e:
            print("E", e, flush=True)
    time.sleep(0.05)  # slow, so that it still holds partitions when killed
"""


@pytest.mark.parametrize("protocol", ["range", "consumer"])
def test_killed_member_is_expired_and_the_group_finishes(server, topic_name, tmp_path, protocol):
    """Three members (one in its own process) share 12 partitions of KILL_RECORDS records;
    that one is killed with SIGKILL mid-way. Its session expires (10 s classic, the
    coordinator's 45 s with KIP-848) and the others read the rest."""
    partitions = 12
    create_topic(server.bootstrap, topic_name, partitions)
    produce_confluent(server.bootstrap, topic_name, messages(KILL_RECORDS, partitions, "kill"), timeout=300)
    group = f"crash-{topic_name}"
    seen: Counter = Counter()
    lock = threading.Lock()
    out_path = tmp_path / "doomed.out"
    with open(out_path, "w") as out:
        doomed = subprocess.Popen([sys.executable, "-c", _KILLED_MEMBER, server.bootstrap, group, topic_name,
                                   "consumer" if protocol == "consumer" else "classic"],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    members = [Member(server.bootstrap, group, topic_name, f"m{i}", protocol, seen, lock) for i in range(2)]
    try:
        def doomed_records() -> int:
            return sum(1 for line in out_path.read_text().splitlines() if line.startswith("R "))
        wait_until("the doomed member to consume", lambda: doomed_records() > 0, 90)
        for m in members:
            m.start()

        def three_members():
            with lock:
                sets = [m.assigned for m in members]
                return all(sets) and len(set().union(*sets)) < partitions
        wait_until("the others to join while the doomed member holds partitions", three_members, 90)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        # The session timeout expires the member; the others take over.
        wait_until("every record", lambda: len(set(seen) | doomed_set(out_path)) >= KILL_RECORDS, 240)
        time.sleep(1)
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(10)
        for m in members:
            m.stop.set()
        for m in members:
            m.stopped.wait(30)
    for m in members:
        assert m.error is None, f"{m.name}: {m.error!r}"
    lines = out_path.read_text().splitlines()
    last_commit = max((i for i, line in enumerate(lines) if line == "K"), default=-1)
    uncommitted = sum(1 for line in lines[last_commit + 1:] if line.startswith("R "))
    doomed_seen = Counter(doomed_list(out_path))
    total = seen + doomed_seen
    expected = {(p, o) for p in range(partitions) for o in range(KILL_RECORDS // partitions)}
    assert set(total) == expected, f"missing {len(expected - set(total))}"
    duplicates = sum(n - 1 for n in total.values())
    failed = sum(m.failed_commits for m in members)
    print(f"{protocol}: kill -9 of a member, {KILL_RECORDS} records: {duplicates} duplicates, {uncommitted} records uncommitted at the kill")
    assert duplicates <= uncommitted + failed, (duplicates, uncommitted, failed)


def doomed_list(path) -> list[tuple[int, int]]:
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "R":
            out.append((int(parts[1]), int(parts[2])))
    return out


def doomed_set(path) -> set[tuple[int, int]]:
    return set(doomed_list(path))


def test_static_member_restart_keeps_assignment_without_rebalance(server, topic_name):
    create_topic(server.bootstrap, topic_name, 4)
    produce_confluent(server.bootstrap, topic_name, messages(40, 4, "static"))
    group = f"static-{topic_name}"
    events: list[tuple[str, str, tuple[int, ...]]] = []

    def static_consumer(instance: str) -> Consumer:
        c = group_consumer(server.bootstrap, group, **{"group.instance.id": instance,
                                                      "partition.assignment.strategy": "range",
                                                      "session.timeout.ms": 30000})

        def on_assign(_, parts):
            events.append((instance, "assign", tuple(sorted(p.partition for p in parts))))

        def on_revoke(_, parts):
            events.append((instance, "revoke", tuple(sorted(p.partition for p in parts))))
        c.subscribe([topic_name], on_assign=on_assign, on_revoke=on_revoke)
        return c

    def poll_until(consumers, cond, timeout):
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"timed out; events {events}"
            for c in consumers:
                c.poll(0.1)

    a, b = static_consumer("a"), static_consumer("b")
    a2 = None
    try:
        def both_assigned():
            last = {}
            for inst, kind, parts in events:
                last[inst] = parts if kind == "assign" else ()
            return len(last) == 2 and all(last.values()) and \
                sorted(last["a"] + last["b"]) == [0, 1, 2, 3]
        poll_until([a, b], both_assigned, 60)
        a_parts = [p for inst, kind, p in events if inst == "a" and kind == "assign"][-1]
        b_events = len([e for e in events if e[0] == "b"])
        a.close()  # a static member leaves no LeaveGroup behind
        a = None
        start = len(events)
        a2 = static_consumer("a")
        poll_until([a2, b], lambda: ("a", "assign", a_parts) in events[start:], 60)
        for _ in range(30):  # give a rebalance, if any, time to show
            b.poll(0.1)
            a2.poll(0.1)
        assert events[-1] == ("a", "assign", a_parts), events
        assert len([e for e in events if e[0] == "b"]) == b_events, f"b was rebalanced: {events}"
    finally:
        for c in (a, a2, b):
            if c is not None:
                c.close()
