#!/usr/bin/env python3
"""Helpers for scripts/soak.sh. Standard library only, except `end-offsets` and
`read-partition` (confluent-kafka, from the venv) and `plot` (matplotlib, skipped
when it is not installed).

  soak.py metric URL NAME...            each metric's value (summed over labels; 0 when absent)
  soak.py store DIR                     "objects bytes sso cso": the files under an s3s-fs bucket
                                        directory (sso/ and cso/ counted anywhere in the key)
  soak.py sample URL BUCKET_DIR PID ELAPSED_S RAW
                                        one soak sample: appends a row to RAW (TSV with a header)
                                        and prints it as a table row (the header before the first)
  soak.py summary RAW REF_S             flat-or-growing figures from REF_S to the end, amplification
  soak.py plot RAW PNG                  per-sample curves (silently nothing without matplotlib)
  soak.py end-offsets BOOT TOPIC        how the records spread over the topic's partitions
  soak.py read-partition BOOT TOPIC PARTITION TIMEOUT_S
                                        reads one partition from its first offset to its end
                                        offset (taken before): "records= bytes= seconds= mib_s= end="
  soak.py cold-report RAW               medians of the cold-read runs (RAW: "phase run key value")
"""
import os
import re
import statistics
import sys
import time
import urllib.request

GIB = 1 << 30
MIB = 1 << 20


def scrape(url: str) -> dict:
    """Every series of the endpoint summed over its labels; summaries' quantiles left out."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    sums: dict = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "quantile=" in line:
            continue
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        try:
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except ValueError:
            continue
    return sums


def metric(url: str, names) -> None:
    try:
        m = scrape(url)
    except OSError as e:
        print(f"soak: could not read {url}: {e}", file=sys.stderr)
        print(" ".join("?" for _ in names))
        return
    print(" ".join(f"{m.get(n, 0.0):.0f}" for n in names))


def store_stats(root: str) -> tuple:
    """Files under an s3s-fs bucket directory: one file per object."""
    objects = size = sso = cso = 0
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root).split(os.sep)
        for f in files:
            try:
                size += os.stat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:  # deleted while walking
                continue
            objects += 1
            if "sso" in rel:
                sso += 1
            elif "cso" in rel:
                cso += 1
    return objects, size, sso, cso


def rss_kib(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# Columns of the raw file, in order: (column, metric or None).
COLUMNS = [
    ("t_s", None),
    ("image_bytes", "oxbow_metadata_image_bytes"),
    ("snapshot_bytes", "oxbow_controller_snapshot_bytes"),
    ("objects", "oxbow_metadata_objects"),
    ("objects_marked", "oxbow_metadata_objects_marked"),
    ("slices", "oxbow_metadata_slices"),
    ("store_objects", None),
    ("store_bytes", None),
    ("store_sso", None),
    ("store_cso", None),
    ("bytes_in", "oxbow_bytes_in_total"),
    ("compaction_written", "oxbow_compaction_bytes_written_total"),
    ("compaction_read", "oxbow_compaction_bytes_read_total"),
    ("compaction_objects", "oxbow_compaction_objects_total"),
    ("puts", "oxbow_object_puts_total"),
    ("gets", "oxbow_object_gets_total"),
    ("deletes", "oxbow_object_deletes_total"),
    ("trims", "oxbow_stream_trims_total"),
    ("log_cache_bytes", "oxbow_log_cache_bytes"),
    ("rss_kib", None),
]

# Printed table: (title, width, function of (row, previous row) -> text)
def _per_gib(key):
    return lambda r, p: f"{r[key] / (r['bytes_in'] / GIB):.0f}" if r["bytes_in"] > 0 else "-"


TABLE = [
    ("min", 6, lambda r, p: f"{r['t_s'] / 60:.1f}"),
    ("image KiB", 10, lambda r, p: f"{r['image_bytes'] / 1024:.0f}"),
    ("snap KiB", 9, lambda r, p: f"{r['snapshot_bytes'] / 1024:.0f}"),
    ("objects", 8, lambda r, p: f"{r['objects']:.0f}"),
    ("slices", 8, lambda r, p: f"{r['slices']:.0f}"),
    ("store obj", 10, lambda r, p: f"{r['store_objects']:.0f}"),
    ("(sso)", 7, lambda r, p: f"{r['store_sso']:.0f}"),
    ("store MiB", 10, lambda r, p: f"{r['store_bytes'] / MIB:.0f}"),
    ("in GiB", 7, lambda r, p: f"{r['bytes_in'] / GIB:.2f}"),
    ("in MiB/s", 9, lambda r, p: (f"{(r['bytes_in'] - p['bytes_in']) / MIB / (r['t_s'] - p['t_s']):.2f}"
                                  if p and r["t_s"] > p["t_s"] else "-")),
    ("comp w/in", 10, lambda r, p: f"{r['compaction_written'] / r['bytes_in']:.2f}" if r["bytes_in"] else "-"),
    ("PUT/GiB", 8, _per_gib("puts")),
    ("GET/GiB", 8, _per_gib("gets")),
    ("DEL/GiB", 8, _per_gib("deletes")),
    ("RSS MiB", 8, lambda r, p: f"{r['rss_kib'] / 1024:.0f}"),
]


def read_raw(path: str) -> list:
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        header = f.readline().split()
        for line in f:
            parts = line.split()
            if len(parts) == len(header):
                rows.append({k: float(v) for k, v in zip(header, parts)})
    return rows


def table_header() -> str:
    return " ".join(f"{t:>{w}}" for t, w, _ in TABLE)


def table_row(r: dict, p) -> str:
    return " ".join(f"{fn(r, p):>{w}}" for _, w, fn in TABLE)


def sample(url: str, bucket_dir: str, pid: str, elapsed: float, raw: str) -> None:
    try:
        m = scrape(url)
    except OSError as e:
        print(f"soak: could not read {url}: {e}", file=sys.stderr)
        m = {}
    objects, size, sso, cso = store_stats(bucket_dir)
    row = {}
    for col, name in COLUMNS:
        row[col] = m.get(name, 0.0) if name else 0.0
    row.update(t_s=elapsed, store_objects=objects, store_bytes=size, store_sso=sso, store_cso=cso,
               rss_kib=rss_kib(pid))
    rows = read_raw(raw)
    if not rows:
        with open(raw, "w") as f:
            f.write("\t".join(c for c, _ in COLUMNS) + "\n")
        print(table_header())
    with open(raw, "a") as f:
        f.write("\t".join(f"{row[c]:.6g}" if c == "t_s" else f"{row[c]:.0f}" for c, _ in COLUMNS) + "\n")
    print(table_row(row, rows[-1] if rows else None))


def trend(rows, key) -> float:
    """Least-squares slope of key over time, in percent of its mean per minute."""
    xs = [r["t_s"] / 60 for r in rows]
    ys = [r[key] for r in rows]
    if len(xs) < 2 or max(ys) == 0:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0 or my == 0:
        return 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
    return 100 * slope / my


def verdict(rows, key) -> str:
    ref, end = rows[0][key], rows[-1][key]
    vals = [r[key] for r in rows]
    if ref == 0:
        return "flat (0)" if max(vals) == 0 else "grew from 0"
    hi, lo = max(vals) / ref - 1, min(vals) / ref - 1
    if hi <= 0.10 and lo >= -0.10:
        return f"flat ({100 * lo:+.0f}%..{100 * hi:+.0f}%)"
    change = end / ref - 1
    if abs(change) <= 0.10:
        return f"varied ({100 * lo:+.0f}%..{100 * hi:+.0f}%), back within 10%"
    return f"{'grew' if change > 0 else 'shrank'} {100 * abs(change):.0f}%"


def summary(raw: str, ref_s: float) -> None:
    rows = read_raw(raw)
    if len(rows) < 2:
        print("summary: fewer than 2 samples")
        return
    later = [r for r in rows if r["t_s"] >= ref_s - 1] or rows[-1:]
    ref, end = later[0], rows[-1]
    figures = [("metadata image", "image_bytes", lambda v: f"{v / 1024:,.0f} KiB"),
               ("controller snapshot", "snapshot_bytes", lambda v: f"{v / 1024:,.0f} KiB"),
               ("metadata objects", "objects", lambda v: f"{v:,.0f}"),
               ("metadata slices", "slices", lambda v: f"{v:,.0f}"),
               ("store objects", "store_objects", lambda v: f"{v:,.0f}"),
               ("store bytes", "store_bytes", lambda v: f"{v / MIB:,.0f} MiB")]
    print(f"From minute {ref['t_s'] / 60:.1f} to the end (minute {end['t_s'] / 60:.1f}); 'flat' = every "
          "sample within +-10% of the first; trend = least-squares slope, % of the mean per minute:")
    print(f"  {'figure':<22} {'at ' + format(ref['t_s'] / 60, '.1f') + ' min':>14} {'at end':>14}"
          f" {'trend':>10}  verdict")
    for label, key, f in figures:
        print(f"  {label:<22} {f(ref[key]):>14} {f(end[key]):>14} {trend(later, key):>+9.1f}%  "
              f"{verdict(later, key)}")
    gib_in = end["bytes_in"] / GIB
    print()
    if end["bytes_in"] > 0:
        amp = end["compaction_written"] / end["bytes_in"]
        judged = "met" if amp <= 2 else "NOT met"
        if end["compaction_read"] < 0.5 * end["bytes_in"]:
            judged = "not judged: compaction read under half of what was produced"
        print(f"  produced {gib_in:.2f} GiB ({end['bytes_in'] / MIB / max(end['t_s'], 1):.2f} MiB/s on average)")
        print(f"  compaction: written {end['compaction_written'] / GIB:.2f} GiB, read "
              f"{end['compaction_read'] / GIB:.2f} GiB, {end['compaction_objects']:.0f} objects; "
              f"write amplification {amp:.2f} (written / produced; target <= 2: {judged})")
        print(f"  compaction read {100 * end['compaction_read'] / end['bytes_in']:.0f}% of the bytes produced (low:"
              " compaction fell behind or retention removed the data first, not that compaction is cheap)")
        span = end["t_s"] - ref["t_s"]
        if span > 0 and end["bytes_in"] > ref["bytes_in"]:
            late = (end["compaction_written"] - ref["compaction_written"]) / (end["bytes_in"] - ref["bytes_in"])
            print(f"  compaction written / produced from minute {ref['t_s'] / 60:.1f} on: {late:.2f}")
        print(f"  requests per GiB produced: PUT {end['puts'] / gib_in:,.0f}, GET {end['gets'] / gib_in:,.0f},"
              f" DELETE {end['deletes'] / gib_in:,.0f}")
    print(f"  server RSS: {ref['rss_kib'] / 1024:.0f} MiB at minute {ref['t_s'] / 60:.1f}, "
          f"{end['rss_kib'] / 1024:.0f} MiB at the end (max {max(r['rss_kib'] for r in rows) / 1024:.0f} MiB); "
          f"{verdict(later, 'rss_kib')}")
    print(f"  objects marked for deletion at the end: {end['objects_marked']:.0f}; store objects not in the "
          f"metadata (store - live - marked; stale gauges inflate it): "
          f"{end['store_objects'] - end['objects'] - end['objects_marked']:.0f}")
    # The metadata gauges are published by the broker's lifecycle task (retention, compaction,
    # deletions, one after the other): unchanged while data comes in means that task was busy.
    stale, longest, since = 0, (0, 0.0), 0.0
    for p, r in zip(rows, rows[1:]):
        same = all(r[k] == p[k] for k in ("image_bytes", "objects", "slices"))
        if same and r["bytes_in"] > p["bytes_in"]:
            if stale == 0:
                since = p["t_s"]
            stale += 1
            if r["t_s"] - since > longest[0]:
                longest = (r["t_s"] - since, since)
        else:
            stale = 0
    if longest[0] > 0:
        print(f"  metadata gauges (image, objects, slices) did not change for {longest[0]:.0f}s from minute "
              f"{longest[1] / 60:.1f} while data came in: the lifecycle task that publishes them (and runs "
              "retention, compaction and deletions one after the other) was busy that long")


def plot(raw: str, png: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = read_raw(raw)
    if len(rows) < 2:
        return
    t = [r["t_s"] / 60 for r in rows]
    panels = [("metadata image (KiB)", "image_bytes", 1024), ("controller snapshot (KiB)", "snapshot_bytes", 1024),
              ("metadata objects", "objects", 1), ("metadata slices", "slices", 1),
              ("store objects", "store_objects", 1), ("store (MiB)", "store_bytes", MIB),
              ("produced (GiB)", "bytes_in", GIB), ("compaction written (GiB)", "compaction_written", GIB),
              ("RSS (MiB)", "rss_kib", 1024)]
    fig, axes = plt.subplots(3, 3, figsize=(14, 10))
    for ax, (title, key, div) in zip(axes.flat, panels):
        ax.plot(t, [r[key] / div for r in rows], marker=".")
        ax.set_title(title)
        ax.set_xlabel("minute")
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(png, dpi=80)


def end_offsets(boot: str, topic: str) -> None:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient({"bootstrap.servers": boot})
    md = admin.list_topics(topic, timeout=30)
    parts = sorted(md.topics[topic].partitions)
    req = {TopicPartition(topic, p): OffsetSpec.latest() for p in parts}
    ends = sorted(f.result().offset for f in admin.list_offsets(req, request_timeout=60).values())
    with_data = sum(1 for e in ends if e > 0)
    print(f"records spread: {with_data}/{len(parts)} partitions have records; end offsets min "
          f"{ends[0]}, median {statistics.median(ends):.0f}, max {ends[-1]}, total {sum(ends)}")


def read_partition(boot: str, topic: str, partition: int, timeout_s: float) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": boot, "group.id": "oxbow-soak-cold", "enable.auto.commit": False,
                  "enable.partition.eof": True, "client.id": "oxbow-soak-cold"})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=60)
        if high <= low:
            sys.exit(f"partition {partition} of {topic} is empty ({low}..{high})")
        c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        records = size = 0
        first = None
        last = -1
        start = time.monotonic()
        deadline = start + timeout_s
        while last < high - 1:
            if time.monotonic() > deadline:
                sys.exit(f"timed out after {timeout_s}s at offset {last} of {high}")
            # poll() returns as soon as a record is there (consume(n, timeout) waits for n or
            # the timeout, which would add up to a second per call to the figure).
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == -191:  # _PARTITION_EOF
                    continue
                sys.exit(f"consumer error: {msg.error()}")
            if first is None:
                first = msg.offset()
            records += 1
            size += len(msg.value() or b"") + len(msg.key() or b"")
            last = msg.offset()
        secs = time.monotonic() - start
        print(f"records={records} bytes={size} seconds={secs:.3f} mib_s={size / MIB / secs:.2f} "
              f"first={first} end={high}")
    finally:
        c.close()


def cold_report(raw: str) -> None:
    vals: dict = {}
    with open(raw) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4:
                vals.setdefault((parts[0], parts[2]), []).append(float(parts[3]))

    def med(phase, key):
        xs = vals.get((phase, key))
        return statistics.median(xs) if xs else None

    def cell(v, spec):
        return "-" if v is None else format(v, spec)

    print(f"  {'partition 0 read from':<34} {'runs':>4} {'MiB':>6} {'seconds':>8} {'MiB/s':>8} {'GETs':>6} "
          f"{'slices':>7} {'start s':>8} {'start GETs':>10} {'start MiB':>9}")
    for phase, label in (("sso", "uncompacted (stream-set objects)"), ("cso", "compacted objects")):
        n = len(vals.get((phase, "seconds"), []))
        mib = med(phase, "bytes")
        smib = med(phase, "startup_get_bytes")
        print(f"  {label:<34} {n:>4} {cell(mib and mib / MIB, '.1f'):>6} {cell(med(phase, 'seconds'), '.2f'):>8} "
              f"{cell(med(phase, 'mib_s'), '.2f'):>8} {cell(med(phase, 'gets'), '.0f'):>6} "
              f"{cell(med(phase, 'slices'), '.0f'):>7} {cell(med(phase, 'startup_s'), '.1f'):>8} "
              f"{cell(med(phase, 'startup_gets'), '.0f'):>10} {cell(smib and smib / MIB, '.0f'):>9}")
    a, b = med("sso", "seconds"), med("cso", "seconds")
    if a and b:
        print(f"  speedup (uncompacted time / compacted time, medians): {a / b:.2f}x")
    print("  (medians over runs; every run restarts the server first and waits until it makes no GETs")
    print("   for 2 s; GETs = oxbow_object_gets_total during the read; slices = oxbow_metadata_slices,")
    print("   all partitions; start = restart until settled, with the GETs / MiB the start-up read)")
    if any(v == 0 for v in vals.get(("cso", "gets"), []) + vals.get(("sso", "gets"), [])):
        print("  NOTE: a read made no GET: it was served from the block cache that the start-up filled")
        print("   (each partition's producer-state rebuild reads its last slices; for a compacted")
        print("   partition that is its whole compacted slice), so that figure is not a cold read;")
        print("   COLD_BLOCK_CACHE_BYTES (small) or more data (COLD_MB) keeps it cold.")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    a = sys.argv[2:]
    if cmd == "metric":
        metric(a[0], a[1:])
    elif cmd == "store":
        print(*store_stats(a[0]))
    elif cmd == "sample":
        sample(a[0], a[1], a[2], float(a[3]), a[4])
    elif cmd == "summary":
        summary(a[0], float(a[1]))
    elif cmd == "plot":
        plot(a[0], a[1])
    elif cmd == "end-offsets":
        end_offsets(a[0], a[1])
    elif cmd == "read-partition":
        read_partition(a[0], a[1], int(a[2]), float(a[3]))
    elif cmd == "cold-report":
        cold_report(a[0])
    else:
        sys.exit(__doc__)
