#!/usr/bin/env python3
"""Helpers for scripts/bench-cluster.sh (standard library only).

  clusterlib.py free-ports N                   N distinct free TCP ports on 127.0.0.1, one line
  clusterlib.py commit-scrape URL...           per broker: "count sum p50 p99 max" of
                                               oxbow_controller_commit_seconds (a summary)
  clusterlib.py commit-figures BEFORE AFTER    from two scrapes around a run:
                                               "p50_ms p99_ms max_ms mean_ms commits"
  clusterlib.py log-time FILE FROM_LINE REGEX [NOT_BEFORE]
                                               epoch seconds of the first line after FROM_LINE matching
                                               REGEX and stamped at or after NOT_BEFORE (epoch seconds;
                                               Oxbow or Kafka log timestamps)
  clusterlib.py oxbow-leader-wait BIN OLD TIMEOUT ADDR...
                                               polls `BIN metadata-quorum --controllers ADDR describe`
                                               (each ADDR alone) until one says it leads and is
                                               not OLD: "leader=N seen=EPOCH_S polls=K"
  clusterlib.py report RAW OUT HEADER          medians over runs, table to stdout and OUT
"""
import datetime
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

METRIC = "oxbow_controller_commit_seconds"


def free_ports(n: int) -> None:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def commit_scrape(urls) -> None:
    for url in urls:
        try:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError as e:
            print(f"# {url}: {e}", file=sys.stderr)
            print("nan nan nan nan nan")
            continue
        vals = {"count": 0.0, "sum": 0.0, "0.5": float("nan"), "0.99": float("nan"), "1": float("nan")}
        for line in text.splitlines():
            if not line.startswith(METRIC):
                continue
            name, value = line.rsplit(" ", 1)
            if name == f"{METRIC}_count":
                vals["count"] = float(value)
            elif name == f"{METRIC}_sum":
                vals["sum"] = float(value)
            else:
                m = re.search(r'quantile="([^"]+)"', name)
                if m and m.group(1) in vals:
                    vals[m.group(1)] = float(value)
        print(vals["count"], vals["sum"], vals["0.5"], vals["0.99"], vals["1"])


def commit_figures(before: str, after: str) -> None:
    """Per broker the summary's p50/p99 cover the last 40-60 s (the exporter's rolling
    window, see the script); count and sum are cumulative. p50: mean of the brokers' p50
    weighted by their commits in the run; p99: the highest broker p99 (an upper bound of
    the pooled p99); mean: exact, from the sum and count deltas."""
    def rows(path):
        with open(path) as f:
            return [[float(x) for x in line.split()] for line in f if line.strip()]
    b, a = rows(before), rows(after)
    n = total = 0.0
    p50w = 0.0
    p99 = mx = float("nan")
    for (c0, s0, *_), (c1, s1, q50, q99, q100) in zip(b, a):
        dc = c1 - c0
        if dc <= 0 or q50 != q50:
            continue
        n += dc
        total += s1 - s0
        p50w += q50 * dc
        p99 = q99 if p99 != p99 else max(p99, q99)
        mx = q100 if mx != mx else max(mx, q100)
    if n == 0:
        sys.exit("no controller commits during the run")
    print(f"{1000 * p50w / n:.3f} {1000 * p99:.3f} {1000 * mx:.3f} {1000 * total / n:.3f} {n:.0f}")


OXBOW_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)")
KAFKA_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(?:Z|[+-]\d\d:?\d\d))")


def parse_ts(line: str):
    m = OXBOW_TS.match(line) or KAFKA_TS.match(line)
    if not m:
        return None
    ts = m.group(1).replace("Z", "+00:00")
    frac = re.search(r"\.(\d+)", ts)
    if frac and len(frac.group(1)) > 6:  # fromisoformat wants at most microseconds
        ts = ts.replace(frac.group(0), "." + frac.group(1)[:6])
    return datetime.datetime.fromisoformat(ts).timestamp()


def log_time(path: str, from_line: int, regex: str, not_before: float = 0.0) -> None:
    pat = re.compile(regex)
    with open(path, errors="replace") as f:
        for i, line in enumerate(f, 1):
            if i <= from_line or not pat.search(line):
                continue
            t = parse_ts(line)
            if t is not None and t >= not_before:
                print(f"{t:.6f}")
                return
    sys.exit(f"no line matching {regex!r} after line {from_line} of {path}")


def oxbow_leader_wait(binary: str, old: str, timeout: float, addrs) -> None:
    deadline = time.time() + timeout
    polls = 0
    pat = re.compile(r"controller (\d+) leader,")
    while time.time() < deadline:
        for addr in addrs:
            polls += 1
            try:
                out = subprocess.run([binary, "metadata-quorum", "--controllers", addr, "describe"],
                                     capture_output=True, text=True, timeout=10).stdout
            except subprocess.TimeoutExpired:
                continue
            m = pat.search(out)
            if m and m.group(1) != old:
                print(f"leader={m.group(1)} seen={time.time():.6f} polls={polls}")
                return
        time.sleep(0.02)
    sys.exit(f"no controller other than {old} said it leads within {timeout} s")


# (key, label, unit, kafka_has_it). Sections are ("section", title).
ROWS = [
    ("section", "1. Produce {records} x {record_size} B, {partitions} partitions, one ProducerPerformance, acks=all"),
    ("p1_mibs", "leaders on 1 broker: throughput", "MiB/s", True),
    ("p1_rps", "leaders on 1 broker: records/s", "rec/s", True),
    ("p1_lat50", "leaders on 1 broker: producer latency p50", "ms", True),
    ("p1_lat99", "leaders on 1 broker: producer latency p99", "ms", True),
    ("p3_mibs", "leaders on 3 brokers: throughput", "MiB/s", True),
    ("p3_rps", "leaders on 3 brokers: records/s", "rec/s", True),
    ("p3_lat50", "leaders on 3 brokers: producer latency p50", "ms", True),
    ("p3_lat99", "leaders on 3 brokers: producer latency p99", "ms", True),
    ("section", "2. Controller commit latency during those runs (Oxbow: oxbow_controller_commit_seconds) (a)"),
    ("c1_p50", "1 broker: commit p50", "ms", False),
    ("c1_p99", "1 broker: commit p99", "ms", False),
    ("c1_max", "1 broker: commit max", "ms", False),
    ("c1_mean", "1 broker: commit mean", "ms", False),
    ("c1_n", "1 broker: commits in the run", "count", False),
    ("c3_p50", "3 brokers: commit p50 (weighted mean of brokers)", "ms", False),
    ("c3_p99", "3 brokers: commit p99 (highest broker)", "ms", False),
    ("c3_max", "3 brokers: commit max", "ms", False),
    ("c3_mean", "3 brokers: commit mean", "ms", False),
    ("c3_n", "3 brokers: commits in the run", "count", False),
    ("section", "3. New controller leader after kill -9 of the leader (3 voters) (b)"),
    ("el_log", "until the new leader logs that it leads", "s", True),
    ("el_seen", "until a quorum describe shows it", "s", True),
    ("section", "4. Reassign one partition to another broker: request -> ... (c)"),
    ("rs_meta", "{small} MiB: Metadata shows the new leader", "s", True),
    ("rs_prod", "{small} MiB: + produce acked by it", "s", True),
    ("rs_fetch", "{small} MiB: + fetch of that record", "s", True),
    ("rl_meta", "{large} MiB: Metadata shows the new leader", "s", True),
    ("rl_prod", "{large} MiB: + produce acked by it", "s", True),
    ("rl_fetch", "{large} MiB: + fetch of that record", "s", True),
    ("section", "5. Metadata: {meta} partitions ({meta_topics} topics), fresh cluster, leader controller (d)"),
    ("m_create", "create them until all have leaders", "s", True),
    ("m_rss0", "leader controller RSS before the topics", "MiB", True),
    ("m_rss", "leader controller RSS with them", "MiB", True),
    ("m_dir", "leader controller data dir with them (du)", "KiB", True),
    ("m_snap", "snapshot holding them", "KiB", True),
    ("m_rss_snap", "leader controller RSS after the snapshot", "MiB", True),
    ("m_dir_snap", "leader controller data dir after the snapshot (du)", "KiB", True),
    ("m_heap", "Kafka: controller heap used after a full GC", "MiB", True),
    ("m_pad", "Oxbow: no-op Raft entries written to reach a snapshot", "count", False),
]

NOTES = """\
n = runs that produced the figure (oxbow/kafka). Ratio = Oxbow median / Kafka median; '-' where
Kafka has no such figure. Throughputs: higher is better; times, latencies and sizes: lower is better.
All processes run on this one machine on 127.0.0.1, so '3 brokers' shares the same cores as
'1 broker': the figures show per-broker limits and overheads, not scale-out.
Kafka: 3 KRaft controllers + 3 brokers (separate JVMs, -Xmx1G -Xms1G each, as kafka-server-start.sh),
default settings (no fsync before acks). Oxbow: 3 controllers + 3 brokers + s3s-fs (an S3 server
over a local directory) as the object store; a produce is acked once its object is PUT and the
commit is in the controllers' Raft log (fsync on each controller).
(a) Kafka has no counterpart: its produce path never goes through the KRaft quorum. The
    exporter renders the histogram as a summary whose quantiles cover the last 40-60 s; the
    script waits {quiet} s without commits before each produce run and scrapes right after it,
    so they cover that run (its last 40-60 s if it is longer). Just before the run it sends one
    record to each partition (one commit per broker, inside the window): without it the
    exporter drops every sample older than the newest 64 of the first batch it drains after an
    idle period (it drains newest block first and a new summary bucket starts at the first
    sample it sees), so the quantiles would describe only the end of the run. With 3 brokers
    each has its own summary: p50 is their commit-weighted mean, p99 and max the highest (p99:
    an upper bound of the pooled p99). Mean and count are exact (sum/count deltas); the
    summary's quantiles are estimates (a sketch), so with few commits p99 can sit well below
    the max.
(b) 'logs': timestamp of the new leader's line (Oxbow: 'leading: broker sessions start now',
    written after a read barrier, checked every 250 ms; Kafka: 'Becoming the active
    controller') minus the time of kill -9. 'describe': Oxbow polls `oxbow metadata-quorum
    describe` (a process per poll) on the survivors; Kafka polls Admin.describeMetadataQuorum
    (one JVM, a fresh admin client per poll, every 20 ms). Oxbow: election timeout 300-600 ms; Kafka: controller.quorum.fetch.
    timeout.ms 2000, election timeout 1000 ms (defaults).
(c) From alterPartitionReassignments to: Metadata (DescribeTopicPartitions) naming the target
    broker as leader; then a record sent (acks=all, producer warmed up before) is acknowledged;
    then a consumer (warmed up) fetches that record. Cumulative times. Oxbow moves ownership
    (no data copied); Kafka (replication factor 1 here, so a move is 1 -> 1 replica) copies the
    whole partition to the new broker before it leads. {large_runs} run(s) for {large} MiB.
(d) A second, fresh cluster per system. RSS = VmRSS of the leader controller process (Kafka:
    a JVM with a 1 GiB heap; see the heap row). Data dir = `du` (allocated blocks) of its data
    directory (Oxbow: the redb file with Raft log, vote and snapshot; Kafka: meta.properties and
    __cluster_metadata-0). Oxbow snapshot: 'built metadata snapshot bytes=' in the leader's log;
    Oxbow builds one every 20,000 Raft entries (snapshot_every_entries), so the script writes
    no-op reassignments (a partition to its own leader: one entry each, no change to the image)
    until the leader builds it; the image then holds the topics, brokers and no data objects.
    Its data dir 'after the snapshot' also holds the pages those entries used (purged from the
    log, but redb does not shrink its file).
    Kafka snapshot: the newest __cluster_metadata-0/*.checkpoint of the leader, with
    metadata.log.max.snapshot.interval.ms={kafka_snap_ms} on this cluster to make one now.
    Kafka topics here have replication factor 1, like Oxbow's single owner.
"""


def fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "count":
        return f"{v:,.0f}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}" if a < 1 else f"{v:.2f}"


def report(raw: str, out: str, header: str, params: dict) -> None:
    vals: dict = {}
    with open(raw) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue
            system, _run, key, value = parts
            try:
                vals.setdefault((system, key), []).append(float(value))
            except ValueError:
                continue

    def med(system, key):
        xs = vals.get((system, key))
        return statistics.median(xs) if xs else None

    lines = [open(header).read().rstrip("\n"), ""]
    w = 56
    lines.append(f"{'figure (median of runs)':<{w}} {'unit':<6} {'Oxbow':>10} {'Kafka':>10} {'Oxbow/Kafka':>11}  {'n':>5}")
    lines.append("-" * (w + 49))
    for row in ROWS:
        if row[0] == "section":
            lines.append(row[1].format(**params))
            continue
        key, label, unit, kafka = row
        o, k = med("oxbow", key), med("kafka", key) if kafka else None
        if o is None and k is None:
            continue
        ratio = f"{o / k:.2f}x" if (o is not None and k not in (None, 0)) else "-"
        n = f"{len(vals.get(('oxbow', key), []))}/{len(vals.get(('kafka', key), [])) if kafka else '-'}"
        lines.append(f"  {label.format(**params):<{w - 2}} {unit:<6} {fmt(o, unit):>10} {fmt(k, unit):>10} {ratio:>11}  {n:>5}")
    lines.append("")
    lines.append(NOTES.format(**params).rstrip("\n"))
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "free-ports":
        free_ports(int(args[0]))
    elif cmd == "commit-scrape":
        commit_scrape(args)
    elif cmd == "commit-figures":
        commit_figures(args[0], args[1])
    elif cmd == "log-time":
        log_time(args[0], int(args[1]), args[2], float(args[3]) if len(args) > 3 else 0.0)
    elif cmd == "oxbow-leader-wait":
        oxbow_leader_wait(args[0], args[1], float(args[2]), args[3:])
    elif cmd == "report":
        report(args[0], args[1], args[2], dict(a.split("=", 1) for a in args[3:]))
    else:
        sys.exit(__doc__)
