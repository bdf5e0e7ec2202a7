"""The Apache Kafka 4.1.1 command-line tools against a running broker.

kafka-topics (create/list/describe/alter/delete), console producer and consumer,
and the producer/consumer performance tools, run as Java main classes.
"""
from __future__ import annotations

import re
import time

from harness import env
from harness import kafka_cli as cli

PERF_RECORDS = env.env_int("OXBOW_TEST_PERF_RECORDS", 50_000)
PERF_RECORD_SIZE = env.env_int("OXBOW_TEST_PERF_RECORD_SIZE", 1024)
CONSOLE_LINES = env.env_int("OXBOW_TEST_CONSOLE_LINES", 100)


def topics(server, *args, **kw):
    return cli.run_ok(cli.TOPICS, "--bootstrap-server", server.bootstrap, *args, **kw)


def partitions_in_describe(output: str, topic: str) -> list[int]:
    return sorted(int(m.group(1)) for m in re.finditer(
        rf"Topic:\s*{re.escape(topic)}\s+Partition:\s*(\d+)\s", output))


def assert_clean(result: cli.ToolResult) -> None:
    bad = [line for line in result.output.splitlines() if "ERROR" in line or "Exception" in line]
    assert not bad, "error lines in tool output:\n" + "\n".join(bad[:20]) + "\n" + result.describe()


def test_topics_create_list_describe_alter_delete(server, topic_name):
    r = topics(server, "--create", "--topic", topic_name, "--partitions", "3", "--replication-factor", "1")
    assert f"Created topic {topic_name}" in r.stdout, r.describe()

    r = topics(server, "--list")
    assert topic_name in r.stdout.split(), r.describe()

    r = topics(server, "--describe", "--topic", topic_name)
    assert re.search(r"PartitionCount:\s*3\b", r.stdout), r.describe()
    assert partitions_in_describe(r.stdout, topic_name) == [0, 1, 2], r.describe()

    topics(server, "--alter", "--topic", topic_name, "--partitions", "5")
    r = topics(server, "--describe", "--topic", topic_name)
    assert re.search(r"PartitionCount:\s*5\b", r.stdout), r.describe()
    assert partitions_in_describe(r.stdout, topic_name) == [0, 1, 2, 3, 4], r.describe()

    topics(server, "--delete", "--topic", topic_name)
    # Deletion may take a moment to show in metadata; poll the listing briefly.
    deadline = time.monotonic() + 30
    while True:
        r = topics(server, "--list")
        if topic_name not in r.stdout.split():
            break
        assert time.monotonic() < deadline, f"{topic_name} still listed 30s after delete:\n{r.describe()}"
        time.sleep(1)


def test_console_producer_and_consumer_round_trip(server, topic_name):
    topics(server, "--create", "--topic", topic_name, "--partitions", "1", "--replication-factor", "1")
    lines = [f"line {i:04d} {'x' * (i % 37)} ünïcødé" for i in range(CONSOLE_LINES)]
    cli.run_ok(cli.CONSOLE_PRODUCER, "--bootstrap-server", server.bootstrap, "--topic", topic_name,
               "--producer-property", "acks=all", input_text="\n".join(lines) + "\n")
    r = cli.run_ok(cli.CONSOLE_CONSUMER, "--bootstrap-server", server.bootstrap, "--topic", topic_name,
                   "--partition", "0", "--from-beginning", "--max-messages", str(CONSOLE_LINES),
                   "--timeout-ms", "30000")
    got = r.stdout.splitlines()
    assert got == lines, (f"consumed {len(got)} lines, expected {len(lines)}; first difference at "
                          f"{next((i for i, (a, b) in enumerate(zip(got, lines)) if a != b), min(len(got), len(lines)))}"
                          f"\n{r.describe()}")
    assert f"Processed a total of {CONSOLE_LINES} messages" in r.stderr, r.describe()


def test_producer_and_consumer_performance_tools(server, topic_name):
    topics(server, "--create", "--topic", topic_name, "--partitions", "1", "--replication-factor", "1")
    r = cli.run_ok(cli.PRODUCER_PERF, "--topic", topic_name, "--num-records", str(PERF_RECORDS),
                   "--record-size", str(PERF_RECORD_SIZE), "--throughput", "-1",
                   "--producer-props", f"bootstrap.servers={server.bootstrap}", "acks=all",
                   timeout=300)
    assert_clean(r)
    assert re.search(rf"^{PERF_RECORDS} records sent", r.stdout, re.M), r.describe()

    r = cli.run_ok(cli.CONSUMER_PERF, "--bootstrap-server", server.bootstrap, "--topic", topic_name,
                   "--messages", str(PERF_RECORDS), "--timeout", "60000", timeout=300)
    assert_clean(r)
    # Summary: start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, ...
    rows = [[c.strip() for c in line.split(",")] for line in r.stdout.splitlines()
            if re.match(r"^\d{4}-\d\d-\d\d", line)]
    assert len(rows) == 1, r.describe()
    assert int(rows[0][4]) == PERF_RECORDS, f"consumed {rows[0][4]} records, expected {PERF_RECORDS}\n{r.describe()}"
