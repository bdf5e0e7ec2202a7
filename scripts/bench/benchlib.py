#!/usr/bin/env python3
"""Helpers for scripts/bench.sh (standard library only).

  benchlib.py free-port                      print a free TCP port on 127.0.0.1
  benchlib.py cluster-id                     print a random Kafka cluster id
  benchlib.py producer FILE                  parse ProducerPerformance's summary line:
                                             "mib_s rec_s avg_ms p50_ms p99_ms p999_ms"
  benchlib.py consumer-perf FILE             parse ConsumerPerformance's summary line:
                                             "mib_s rec_s records rebalance_ms"
  benchlib.py metrics URL                    print "name value" for oxbow's counters (summed over labels)
  benchlib.py report RAW OUT HEADER_FILE     medians over runs, table to stdout and OUT
"""
import re
import socket
import statistics
import sys
import urllib.request
import uuid
import base64


def free_port() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def cluster_id() -> None:
    cid = "-"
    while cid.startswith("-"):  # would be read as an option by StorageTool
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    print(cid)


SUMMARY = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
    r"([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99\.9th")


def producer(path: str) -> None:
    m = None
    with open(path, errors="replace") as f:
        for line in f:
            m = SUMMARY.search(line) or m
    if not m:
        sys.exit(f"no ProducerPerformance summary line in {path}")
    _n, rps, mibs, avg, _mx, p50, _p95, p99, p999 = m.groups()
    print(mibs, rps, avg, p50, p99, p999)


# start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
# rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec (the tool's MB is 2^20 bytes;
# MB.sec and nMsg.sec are over the whole run, group join included).
CONSUMER_SUMMARY = re.compile(
    r"^[\d-]+ [\d:]+, [\d-]+ [\d:]+, ([\d.]+), ([\d.]+), (\d+), ([\d.]+), (\d+), (\d+), ([\d.]+|NaN|Infinity), ")


def consumer_perf(path: str) -> None:
    m = None
    with open(path, errors="replace") as f:
        for line in f:
            m = CONSUMER_SUMMARY.search(line) or m
    if not m:
        sys.exit(f"no ConsumerPerformance summary line in {path}")
    _mb, mibs, n, rps, rebalance_ms = m.groups()[:5]
    print(mibs, rps, n, rebalance_ms)


WANTED = ("oxbow_object_puts_total", "oxbow_object_gets_total", "oxbow_object_put_bytes_total",
          "oxbow_bytes_in_total", "oxbow_controller_commit_seconds_sum",
          "oxbow_controller_commit_seconds_count", "oxbow_log_cache_bytes")


def metrics(url: str) -> None:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    sums = {k: 0.0 for k in WANTED}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = re.split(r"[{ ]", line, 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    for k, v in sums.items():
        print(k, repr(v))


# (key, label, unit, higher_is_better or None, oxbow_only)
ROWS = [
    ("section", "Produce, 3 partitions (ProducerPerformance, 1 KiB, acks=all, linger.ms=5)"),
    ("p3_mibs", "throughput", "MiB/s"),
    ("p3_rps", "records/s", "rec/s"),
    ("p3_p50", "latency p50", "ms"),
    ("p3_p99", "latency p99", "ms"),
    ("p3_p999", "latency p99.9", "ms"),
    ("section", "Produce, 1000 partitions"),
    ("p1000_mibs", "throughput", "MiB/s"),
    ("p1000_rps", "records/s", "rec/s"),
    ("p1000_p50", "latency p50", "ms"),
    ("p1000_p99", "latency p99", "ms"),
    ("p1000_p999", "latency p99.9", "ms"),
    ("section", "Consume, assign() all partitions, offset 0 to end"),
    ("c_hot_p3_mibs", "hot, 3 partitions", "MiB/s"),
    ("c_hot_p1000_mibs", "hot, 1000 partitions", "MiB/s"),
    ("c_cold_p3_mibs", "after restart, 3 partitions (*)", "MiB/s"),
    ("c_cold_p1000_mibs", "after restart, 1000 partitions (*)", "MiB/s"),
    ("section", "Consume in a group (ConsumerPerformance --group, offset 0 to end, hot; join included)"),
    ("gc_classic_p3_mibs", "classic, 3 partitions", "MiB/s"),
    ("gc_classic_p3_rps", "classic, 3 partitions", "rec/s"),
    ("gc_classic_p3_join_ms", "classic, 3 partitions: group join (+)", "ms"),
    ("gc_consumer_p3_mibs", "KIP-848, 3 partitions", "MiB/s"),
    ("gc_consumer_p3_rps", "KIP-848, 3 partitions", "rec/s"),
    ("gc_consumer_p3_join_ms", "KIP-848, 3 partitions: group join (+)", "ms"),
    ("gc_classic_p1000_mibs", "classic, 1000 partitions", "MiB/s"),
    ("gc_classic_p1000_rps", "classic, 1000 partitions", "rec/s"),
    ("gc_classic_p1000_join_ms", "classic, 1000 partitions: group join (+)", "ms"),
    ("gc_consumer_p1000_mibs", "KIP-848, 1000 partitions", "MiB/s"),
    ("gc_consumer_p1000_rps", "KIP-848, 1000 partitions", "rec/s"),
    ("gc_consumer_p1000_join_ms", "KIP-848, 1000 partitions: group join (+)", "ms"),
    ("txn",),
    ("rebalance",),
    ("groupmem",),
    ("section", "Resources"),
    ("topic_ready_s", "create 1000-partition topic until all open", "s"),
    ("restart_s", "restart to ready (with data)", "s"),
    ("peak_rss_mib", "peak RSS of the server", "MiB"),
    ("meta_kib", "metadata on disk after run (**)", "KiB"),
    ("section", "Oxbow only (object store requests, /metrics deltas)"),
    ("puts_per_gib_p3", "PUTs per GiB written, 3 partitions", "PUT/GiB"),
    ("puts_per_gib_p1000", "PUTs per GiB written, 1000 partitions", "PUT/GiB"),
    ("obj_kib_p3", "mean object size, 3 partitions", "KiB"),
    ("obj_kib_p1000", "mean object size, 1000 partitions", "KiB"),
    ("put_amp", "object bytes PUT / produce bytes in", "x"),
    ("commit_ms", "controller commit, mean during produce", "ms"),
    ("gets_per_gib_hot_p3", "GETs per GiB read hot, 3 partitions", "GET/GiB"),
    ("gets_per_gib_hot_p1000", "GETs per GiB read hot, 1000 partitions", "GET/GiB"),
    ("gets_per_gib_cold_p3", "GETs per GiB read after restart, 3 p.", "GET/GiB"),
    ("gets_per_gib_cold_p1000", "GETs per GiB read after restart, 1000 p.", "GET/GiB"),
]


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


MODES = {"eager": "eager (classic, range)", "cooperative": "cooperative-sticky (classic)",
         "consumer": "KIP-848 (group.protocol=consumer)"}


def rebalance_rows(keys) -> list:
    """Rows for the rb_<mode>_n<members>_<event>_ms keys present, by members, mode, event."""
    found = set()
    for k in keys:
        m = re.fullmatch(r"rb_(\w+?)_n(\d+)_(join|leave)_ms", k)
        if m:
            found.add((int(m.group(2)), m.group(1)))
    order = list(MODES)
    rows = []
    for n in sorted({n for n, _ in found}):
        rows.append(("section", f"Rebalance, {n} members (RebalanceBench; ms until every member consumes again (++))"))
        for mode in sorted({mo for nn, mo in found if nn == n}, key=lambda x: (order.index(x) if x in order else 9, x)):
            rows.append((f"rb_{mode}_n{n}_join_ms", f"{MODES.get(mode, mode)}: join", "ms"))
            rows.append((f"rb_{mode}_n{n}_leave_ms", f"{MODES.get(mode, mode)}: leave", "ms"))
    return rows


def groupmem_rows(groups) -> list:
    g = f"{groups:,.0f}" if groups else "N"
    return [
        ("section", f"Coordinator memory: {g} groups, one offset commit each (GroupOffsets; +++)"),
        ("gm_create_s", f"time to create the {g} groups", "s"),
        ("gm_rss_before_mib", "server RSS before", "MiB"),
        ("gm_rss_after_mib", "server RSS after", "MiB"),
        ("gm_rss_growth_mib", "RSS growth", "MiB"),
        ("gm_rss_per_group_b", "RSS growth per group", "B"),
        ("gm_heap_before_mib", "Kafka: live heap before (after full GC)", "MiB"),
        ("gm_heap_after_mib", "Kafka: live heap after (after full GC)", "MiB"),
        ("gm_heap_per_group_b", "Kafka: live heap growth per group", "B"),
        ("gm_log_cache_growth_mib", "Oxbow: log cache growth (part of RSS)", "MiB"),
    ]


def txn_rows(count, records) -> list:
    c = f"{count:,.0f}" if count else "N"
    r = f"{records:,.0f}" if records else "M"
    return [
        ("section", f"Transactions, 3 partitions (TxnBench: {c} transactions of {r} records, a commit each; ++++)"),
        ("txn_mibs", "transactional produce throughput", "MiB/s"),
        ("txn_rps", "transactional produce records/s", "rec/s"),
        ("txn_tps", "transactions committed/s", "txn/s"),
        ("txn_commit_p50", "commitTransaction latency p50", "ms"),
        ("txn_commit_p99", "commitTransaction latency p99", "ms"),
        ("txn_commit_p999", "commitTransaction latency p99.9", "ms"),
        ("txn_commit_mean", "commitTransaction latency mean", "ms"),
        ("txn_rc_mibs", "read_committed consume, offset 0 to end", "MiB/s"),
        ("txn_rc_rps", "read_committed consume, offset 0 to end", "rec/s"),
        ("txn_puts_per_txn", "Oxbow: object PUTs per transaction", "PUT"),
        ("txn_ctrl_commit_ms", "Oxbow: controller commit, mean during txns", "ms"),
    ]


def report(raw: str, out: str, header: str) -> None:
    vals: dict = {}
    words: dict = {}  # non-numeric values ("timeout", "failed") by (system, key)
    runs: dict = {}
    with open(raw) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue
            system, run, key, value = parts
            try:
                vals.setdefault((system, key), []).append(float(value))
            except ValueError:
                words.setdefault((system, key), []).append(value)
                continue
            runs.setdefault(system, set()).add(run)

    def med(system, key):
        xs = vals.get((system, key))
        return statistics.median(xs) if xs else None

    def cell(system, key):
        v = med(system, key)
        if v is None and (system, key) in words:
            return "/".join(sorted(set(words[(system, key)])))[:10]
        return fmt(v)

    keys = {k for _, k in list(vals) + list(words)}
    groups = med("oxbow", "gm_groups") or med("kafka", "gm_groups")
    has_txn = any(k.startswith("txn_") for k in keys)
    rows = []
    for row in ROWS:
        if row[0] == "rebalance":
            rows += rebalance_rows(keys)
        elif row[0] == "groupmem":
            rows += groupmem_rows(groups) if any(k.startswith("gm_") for k in keys) else []
        elif row[0] == "txn":
            if has_txn:
                rows += txn_rows(med("oxbow", "txn_count") or med("kafka", "txn_count"),
                                 med("oxbow", "txn_records") or med("kafka", "txn_records"))
        else:
            rows.append(row)
    # Leave out sections without a single figure (parts that FIGURES did not select).
    kept, section = [], None
    for row in rows:
        if row[0] == "section":
            section = row
        elif row[0] in keys:
            if section is not None:
                kept.append(section)
                section = None
            kept.append(row)
    rows = kept

    lines = [open(header).read().rstrip("\n"), ""]
    w = 44
    lines.append(f"{'figure (median of runs)':<{w}} {'unit':<8} {'Oxbow':>10} {'Kafka':>10} {'Oxbow/Kafka':>11}  {'n':>3}")
    lines.append("-" * (w + 49))
    for row in rows:
        if row[0] == "section":
            lines.append(f"[{row[1]}]")
            continue
        key, label, unit = row
        o, k = med("oxbow", key), med("kafka", key)
        ratio = f"{o / k:.2f}x" if (o is not None and k not in (None, 0)) else "-"
        n = f"{len(vals.get(('oxbow', key), []))}/{len(vals.get(('kafka', key), []))}"
        lines.append(f"  {label:<{w - 2}} {unit:<8} {cell('oxbow', key):>10} {cell('kafka', key):>10} {ratio:>11}  {n:>3}")
    lines.append("")
    lines.append("n = runs that produced the figure (oxbow/kafka). Ratio = Oxbow median / Kafka median;")
    lines.append("for latencies, times and sizes lower is better, for throughputs higher is better.")
    lines.append("(*) Oxbow restarted: every byte is read from objects. Kafka restarted too, but its log")
    lines.append("    segments may still be in the OS page cache (caches were not dropped), so Kafka's")
    lines.append("    'after restart' figure is likely a warm read.")
    lines.append("(**) Oxbow: DATA_DIR/controller (redb raft log + snapshots). Kafka: __cluster_metadata-0.")
    lines.append("     Both include the 50-partition __consumer_offsets topic created by the group reads.")
    lines.append("(+) ConsumerPerformance's rebalance.time.ms: subscribe until the first assignment; for")
    lines.append("    classic it includes group.initial.rebalance.delay.ms (3 s, Kafka's default, on both).")
    lines.append("(++) A member joins (an (N+1)th consumer subscribes) or leaves (one member's close()) a")
    lines.append("    stable group of N; a producer writes a record to every partition (2N of them) every")
    lines.append("    REBALANCE_INTERVAL_MS. 'Consumes again': every partition owned by exactly one live")
    lines.append("    member and every live member has polled a record after the event and after its own")
    lines.append("    latest assignment callback; the figure is the time from the event to the last such")
    lines.append("    record. Client defaults otherwise (classic: heartbeat 3 s, session 45 s; KIP-848:")
    lines.append("    the broker's 5 s heartbeat interval). 'timeout': no convergence within")
    lines.append("    REBALANCE_TIMEOUT_S; 'failed': a member's consumer threw (see Problems).")
    lines.append("(+++) Each group created by one OffsetCommit (Admin.alterConsumerGroupOffsets), on a")
    lines.append("    fresh server after one group per __consumer_offsets partition; RSS read from /proc")
    lines.append("    MEM_SETTLE_S after the commits. Kafka's RSS mostly tracks heap pages touched by")
    lines.append("    garbage (-Xms1G), so its live heap after a full GC (jcmd GC.class_histogram) is")
    lines.append("    shown too; Oxbow's RSS includes its log cache of the __consumer_offsets records.")
    if has_txn:
        lines.append("(++++) One transactional producer (acks=all, linger.ms=5, idempotent), record i to")
        lines.append("    partition i mod 3; throughput over the whole run (initTransactions excluded).")
        lines.append("    commitTransaction latency: the whole call, i.e. flushing the transaction's records")
        lines.append("    still lingering, their acks, then EndTxn (the coordinator writes the markers).")
        lines.append("    read_committed: assign() all partitions, offset 0 up to the last stable offset,")
        lines.append("    on the same server right after the produce (hot).")
    lines.append("Kafka runs with its default settings: no fsync before acks (page cache); Oxbow fsyncs")
    lines.append("every object to the local object directory and commits it through Raft before acks.")
    lines.append("Per-run values: see raw.tsv next to this file.")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "free-port":
        free_port()
    elif cmd == "cluster-id":
        cluster_id()
    elif cmd == "producer":
        producer(sys.argv[2])
    elif cmd == "consumer-perf":
        consumer_perf(sys.argv[2])
    elif cmd == "metrics":
        metrics(sys.argv[2])
    elif cmd == "report":
        report(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
