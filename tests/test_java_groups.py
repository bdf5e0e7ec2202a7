"""Consumer groups with the Java client (kafka-clients 4.1.1), with the classic protocol
(cooperative-sticky) and KIP-848's consumer protocol, each member its own process
(`java/group/GroupMember.java`), so that one can be killed with SIGKILL.

- Three members share a 12-partition topic and commit by hand; one is killed mid-way;
  the other two take its partitions (after its session expires) and everything is read.
  Nothing is lost, and duplicates are only records whose commit had not happened: those
  the killed member read after its last successful commit, and those of failed commits.
- In the 3-broker cluster, the broker coordinating the group is killed with SIGKILL while
  two members consume: they find the new coordinator (the new owner of the group's
  `__consumer_offsets` partition) and carry on from their committed offsets.

Every wait is bounded; member processes are killed at teardown.
"""
from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from harness import env
from harness.clients import Msg, create_topic, produce_confluent

RECORDS = env.env_int("OXBOW_TEST_JAVA_GROUP_RECORDS", 300_000)
CLUSTER_RECORDS = env.env_int("OXBOW_TEST_JAVA_GROUP_CLUSTER_RECORDS", 60_000)
PARTITIONS = 12
SOURCE = Path(__file__).parent / "java" / "group" / "GroupMember.java"


@pytest.fixture(scope="module")
def member_classes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("java-group")
    r = subprocess.run(["javac", "-nowarn", "-d", str(out), "-cp", f"{env.KAFKA_CLI_LIBS}/*", str(SOURCE)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"javac {SOURCE.name} failed:\n{r.stdout}\n{r.stderr}"
    return out


class JavaMember:
    def __init__(self, classes: Path, workdir: Path, name: str, bootstrap: str, group: str,
                 topic: str, protocol: str, pause_ms: int):
        self.name = name
        self.out_path = workdir / f"{name}.out"
        self.stop_path = workdir / f"{name}.stop"
        with open(self.out_path, "w") as out:
            self.proc = subprocess.Popen(
                ["java", "-Xmx256m", "-XX:+UseSerialGC", "-cp", f"{env.KAFKA_CLI_LIBS}/*:{classes}",
                 "GroupMember", bootstrap, group, topic, protocol, str(self.stop_path), str(pause_ms)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def lines(self) -> list[str]:
        return self.out_path.read_text().splitlines()

    def records(self) -> list[tuple[int, int]]:
        return [(int(p), int(o)) for kind, p, o in
                (line.split() for line in self.lines() if line.startswith("R ") and len(line.split()) == 3)
                if kind == "R"]

    def uncommitted(self) -> int:
        lines = self.lines()
        last = max((i for i, line in enumerate(lines) if line == "K"), default=-1)
        return sum(1 for line in lines[last + 1:] if line.startswith("R "))

    def failed(self) -> int:
        return sum(int(line.split()[1]) for line in self.lines() if line.startswith("F "))

    def errors(self) -> list[str]:
        return [line for line in self.lines() if line.startswith("E ")]

    def owns(self) -> bool:
        assigned = [line for line in self.lines() if line.startswith("A ")]
        return bool(assigned) and assigned[-1] != "A []"

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int | None:
        self.stop_path.touch()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None


def kill_all(members: list[JavaMember]) -> None:
    """Teardown: SIGKILL every member process still running."""
    for m in members:
        if m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(10)


def distinct_records(members: list[JavaMember]) -> int:
    return len({r for m in members for r in m.records()})


def wait_until(what: str, cond, timeout: float):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


def produce(bootstrap: str, topic: str, n: int) -> None:
    msgs = [Msg(i % PARTITIONS, f"k{i}".encode(), f"v{i}".encode()) for i in range(n)]
    produce_confluent(bootstrap, topic, msgs, timeout=300)


def check(members: list[JavaMember], killed: list[JavaMember], n: int, what: str) -> None:
    seen = Counter(r for m in members for r in m.records())
    expected = {(p, o) for p in range(PARTITIONS) for o in range(n // PARTITIONS)}
    assert set(seen) == expected, \
        f"{what}: missing {len(expected - set(seen))}, unexpected {len(set(seen) - expected)}"
    duplicates = sum(c - 1 for c in seen.values())
    uncommitted = sum(m.uncommitted() for m in killed)
    failed = sum(m.failed() for m in members)
    print(f"{what}: {n} records, {duplicates} duplicates, {uncommitted} uncommitted at the kill, "
          f"{failed} in failed commits")
    assert duplicates <= uncommitted + failed, (duplicates, uncommitted, failed)
    for m in members:
        if m not in killed:
            assert not m.errors(), f"{m.name}: {m.errors()[:5]}"


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_java_members_share_a_topic_through_a_kill9(server, topic_name, tmp_path, member_classes,
                                                    protocol):
    create_topic(server.bootstrap, topic_name, PARTITIONS)
    produce(server.bootstrap, topic_name, RECORDS)
    group = f"java-{protocol}-{topic_name}"
    # Paced (500 records per poll, then a pause) so that the kill lands mid-way.
    members = [JavaMember(member_classes, tmp_path, f"m{i}", server.bootstrap, group, topic_name,
                          protocol, pause_ms=40) for i in range(3)]
    try:
        wait_until("all three members to own partitions", lambda: all(m.owns() for m in members), 120)
        wait_until("a third of the records", lambda: sum(len(m.records()) for m in members) >= RECORDS // 3,
                   300)
        doomed = members[2]
        doomed.kill9()
        wait_until("every record", lambda: distinct_records(members) >= RECORDS, 400)
        for m in members[:2]:
            assert m.stop() == 0, f"{m.name} did not stop cleanly: {m.lines()[-5:]}"
    finally:
        kill_all(members)
    check(members, [doomed], RECORDS, f"java {protocol}, kill -9 of a member")


def java_string_hash(s: str) -> int:
    h = 0
    for unit in s.encode("utf-16-be").hex(" ", 2).split():
        h = (h * 31 + int(unit, 16)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def coordinator_of(bootstrap: str, group: str) -> int:
    """The broker owning the group's `__consumer_offsets` partition (Kafka's placement)."""
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics("__consumer_offsets", timeout=30)
    parts = md.topics["__consumer_offsets"].partitions
    h = java_string_hash(group)
    index = 0 if h == -(1 << 31) else abs(h) % len(parts)
    return parts[index].leader


@pytest.mark.oxbow_only
@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_kill9_of_the_coordinator_broker(cluster, topic_name, tmp_path, member_classes, protocol):
    bootstrap = cluster.bootstrap()
    create_topic(bootstrap, topic_name, PARTITIONS)
    produce(bootstrap, topic_name, CLUSTER_RECORDS)
    group = f"coord-{protocol}-{topic_name}"
    members = [JavaMember(member_classes, tmp_path, f"c{i}", bootstrap, group, topic_name, protocol,
                          pause_ms=100) for i in range(2)]
    try:
        wait_until("both members to own partitions", lambda: all(m.owns() for m in members), 120)
        wait_until("a quarter of the records",
                   lambda: sum(len(m.records()) for m in members) >= CLUSTER_RECORDS // 4, 300)
        coordinator = coordinator_of(bootstrap, group)
        victim = next(b for b in cluster.brokers if b.node_id == coordinator)
        committed_before = sum(m.lines().count("K") for m in members)
        victim.kill9()
        wait_until("every record after the coordinator died",
                   lambda: distinct_records(members) >= CLUSTER_RECORDS, 400)
        assert sum(m.lines().count("K") for m in members) > committed_before, \
            "no commit succeeded after the coordinator was killed"
        new_coordinator = coordinator_of(cluster.bootstrap(without=(victim,)), group)
        assert new_coordinator != coordinator, "the group's coordinator did not move"
        for m in members:
            assert m.stop() == 0, f"{m.name} did not stop cleanly: {m.lines()[-5:]}"
    finally:
        kill_all(members)
    check(members, [], CLUSTER_RECORDS, f"java {protocol}, kill -9 of the coordinator broker {coordinator}")
