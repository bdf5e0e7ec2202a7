#!/usr/bin/env bash
# Soak benchmark: one `oxbow server` on s3s-fs under a steady produce load with short
# retention, sampled every SAMPLE_S seconds, to see whether what should stay flat does
# (metadata image and snapshot, objects, slices, the store, RSS) and what compaction and
# the object requests cost per byte produced. Then a cold single-partition read figure:
# the same partition read from uncompacted stream-set objects and, after compaction,
# from compacted objects, each time right after a restart (empty caches).
# A benchmark, not a test: it asserts nothing about timings, and stops by itself.
#
#   1. s3s-fs on 127.0.0.1 (a temporary directory) and `oxbow server` with its objects in
#      bucket oxbow-soak and a [storage] config (retention every 5 s, delete grace 10 s,
#      compaction every COMPACTION_INTERVAL_MS, orphan scan every 60 s for objects > 120 s old);
#   2. topic `soak`: PARTITIONS partitions, retention.ms=RETENTION_MS (TopicCommand);
#   3. ProducerPerformance for MINUTES minutes: RATE records/s of RECORD_SIZE bytes, acks=all,
#      null keys (the default partitioner spreads them over every partition; checked after);
#   4. a row every SAMPLE_S seconds: metadata image / snapshot size, objects, slices, objects
#      and bytes in the bucket directory, bytes produced, compaction bytes written per byte
#      produced, PUT / GET / DELETE per GiB produced (cumulative), the server's RSS;
#   5. a summary: each size at minute 10 (MINUTES < 15: at a third of the run) vs the end,
#      flat (within +-10% throughout) or not, write amplification, requests per GiB;
#   6. cold read: a fresh server (bucket oxbow-cold, compaction off), topic cold-sso with
#      COLD_PARTITIONS partitions, COLD_MB/4 MiB per partition produced at full speed; then
#      COLD_RUNS x (restart, read partition 0 from its start to its end); then compaction on
#      until it has nothing left to do (bounded by COLD_COMPACT_TIMEOUT_S); then COLD_RUNS x
#      (restart, read partition 0 again). Medians, MiB/s, speedup, GETs per read.
# Everything printed also goes to bench-out/soak-<timestamp>.txt; the samples to
# bench-out/soak-<timestamp>.tsv; logs to bench-out/soak-<timestamp>-logs/; with matplotlib in
# the venv, the curves to bench-out/soak-<timestamp>.png.
#
#   scripts/soak.sh                  # 30 minutes of load, then the cold read (~1.5 h in all)
#   QUICK=1 scripts/soak.sh          # checks the script: 3 minutes, 100 partitions (~10 min)
#   MINUTES=12 scripts/soak.sh
#
# Knobs (environment):
#   MINUTES=30 (QUICK: 3)            minutes of produce load
#   PARTITIONS=1000 (QUICK: 100)     partitions of the soak topic
#   RATE=5000                        records per second (ProducerPerformance --throughput)
#   RECORD_SIZE=1024                 bytes per record
#   RETENTION_MS=120000 (QUICK: 60000)  retention.ms of the soak topic
#   LINGER_MS=100                    [storage] linger_ms of the soak server: how long the writer
#                                    gathers data into one object (DESIGN: 50-250 ms on cloud S3,
#                                    where a PUT costs; Oxbow's default of 5 ms suits a local store)
#   SEAL_WHEN_IDLE=false             [storage] seal_when_idle of the soak server (Oxbow's default,
#                                    true, seals after 1 ms whenever the upload pipeline is idle)
#   SNAPSHOT_EVERY_ENTRIES=2000      snapshot_every_entries of the soak server (Oxbow's default,
#                                    20,000, may take no snapshot in a short soak once objects are
#                                    large: the snapshot column would stay 0)
#   COMPACTION_INTERVAL_MS=10000     [storage] compaction_interval_ms of the soak server (the
#                                    lifecycle task runs every 5 s, so less than 5000 acts as 5000)
#   SAMPLE_S=60 (QUICK: 20)          seconds between rows
#   COLD_MB=64 (QUICK: 8)            the cold read: COLD_MB/4 MiB produced per partition
#   COLD_PARTITIONS=100              partitions of the cold-read topic
#   COLD_RUNS=3 (QUICK: 2)           timed reads per layout (medians); 0 skips the cold read
#   COLD_COMPACT_TIMEOUT_S=1800 (QUICK: 600)  bound on waiting for compaction to finish
#   COLD_BLOCK_CACHE_BYTES           [storage] block_cache_bytes of the cold-read server (default:
#                                    Oxbow's). A start-up reads every partition's last slices to
#                                    rebuild producer state; once compacted, that is the whole
#                                    partition, which can leave it in the block cache: a small
#                                    cache keeps the read cold (the report shows the GETs it made)
#   OXBOW_BIN=target/release/oxbow   the binary (never built by this script)
#   SOAK_KEEP=1                      keep the temporary directory (store, data dirs) at the end
#   SOAK_RUST_LOG=info,openraft=warn RUST_LOG of the Oxbow server
#   SOAK_TIMEOUT_S                   the whole script stops (cleanly) after this many seconds
#                                    (default: MINUTES * 60 + 5400)
#   OXBOW_TOOLS                      tools cache (default ~/.cache/oxbow-tools), as for setup.sh
# Every process listens on 127.0.0.1 on free ports and is stopped by PID at the end (also on
# failure, Ctrl-C or the time bound); data goes to a temporary directory removed at the end.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_dir="$root/scripts/bench"
tools="${OXBOW_TOOLS:-$HOME/.cache/oxbow-tools}"
client_libs="$tools/kafka-libs"
oxbow_bin="${OXBOW_BIN:-$root/target/release/oxbow}"
py="$root/.venv/bin/python"
soak="$py $bench_dir/soak.py"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  MINUTES=${MINUTES:-3}; PARTITIONS=${PARTITIONS:-100}; SAMPLE_S=${SAMPLE_S:-20}
  RETENTION_MS=${RETENTION_MS:-60000}; COLD_MB=${COLD_MB:-8}; COLD_RUNS=${COLD_RUNS:-2}
  COLD_COMPACT_TIMEOUT_S=${COLD_COMPACT_TIMEOUT_S:-600}
else
  MINUTES=${MINUTES:-30}; PARTITIONS=${PARTITIONS:-1000}; SAMPLE_S=${SAMPLE_S:-60}
  RETENTION_MS=${RETENTION_MS:-120000}; COLD_MB=${COLD_MB:-64}; COLD_RUNS=${COLD_RUNS:-3}
  COLD_COMPACT_TIMEOUT_S=${COLD_COMPACT_TIMEOUT_S:-1800}
fi
RATE=${RATE:-5000}
RECORD_SIZE=${RECORD_SIZE:-1024}
COMPACTION_INTERVAL_MS=${COMPACTION_INTERVAL_MS:-10000}
LINGER_MS=${LINGER_MS:-100}
SEAL_WHEN_IDLE=${SEAL_WHEN_IDLE:-false}
SNAPSHOT_EVERY_ENTRIES=${SNAPSHOT_EVERY_ENTRIES:-2000}
COLD_PARTITIONS=${COLD_PARTITIONS:-100}
SOAK_TIMEOUT_S=${SOAK_TIMEOUT_S:-$((MINUTES * 60 + 5400))}
RUST_LOG_OXBOW=${SOAK_RUST_LOG:-info,openraft=warn}
PRODUCER_PROPS=(acks=all linger.ms=5)
CLIENT_JAVA=(java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn)
COMPACTION_OFF_MS=86400000
S3_KEY=oxbowsoak
S3_SECRET=oxbowsoaksecret0123456789

stamp=$(date +%Y%m%d-%H%M%S)
out_dir="$root/bench-out"
mkdir -p "$out_dir"
results="$out_dir/soak-$stamp.txt"
raw="$out_dir/soak-$stamp.tsv"
plot="$out_dir/soak-$stamp.png"
logs="$out_dir/soak-$stamp-logs"
mkdir -p "$logs"
work=$(mktemp -d "${TMPDIR:-/tmp}/oxbow-soak.XXXXXX")
notes="$work/notes"
cold_raw="$logs/cold.tsv"
: > "$notes"
: > "$results"

# Everything printed goes to the results file too.
log() { echo "soak $(date +%H:%M:%S): $*" | tee -a "$results" >&2; }
say() { echo "$*" | tee -a "$results"; }
note() { echo "$*" >> "$notes"; log "NOTE: $*"; }
calc() { awk "BEGIN { printf \"%.6g\", $1 }"; }
now() { date +%s.%N; }
lines_of() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }

# ---------------------------------------------------------------- processes
# PIDS: servers, stopped in reverse order (oxbow before s3s-fs); CLIENT_PID: the client
# command running in the background (the producer, or one run through `bounded`).
PIDS=()
CLIENT_PID=
WATCHDOG_PID=
SERVER_PID=
stop_pid() {  # stop_pid PID [grace-seconds]: SIGTERM, wait, then SIGKILL
  local pid=$1 grace=${2:-30} i
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 5; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "process $pid did not stop within ${grace}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}
stop_helper() {  # a helper subshell of ours, then its children (its sleep)
  local pid=$1 c children
  [ -n "$pid" ] || return 0
  children=$(pgrep -P "$pid" 2>/dev/null || true)
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for c in $children; do kill -TERM "$c" 2>/dev/null || true; done
}
cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  # `timeout` passes the TERM on to the client it runs.
  [ -n "$CLIENT_PID" ] && { kill -TERM "$CLIENT_PID" 2>/dev/null || true; wait "$CLIENT_PID" 2>/dev/null || true; }
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}" 20; done
  stop_helper "$WATCHDOG_PID"
  if [ "${SOAK_KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT
trap 'log "terminated (time bound of ${SOAK_TIMEOUT_S}s, or SIGTERM)"; exit 143' TERM

# bounded SECONDS OUTFILE CMD...: CMD with a time bound, in the background so that a
# signal to this script is handled at once; returns CMD's exit code.
bounded() {
  local secs=$1 outf=$2 rc=0
  shift 2
  timeout "$secs" "$@" > "$outf" 2>&1 &
  CLIENT_PID=$!
  wait "$CLIENT_PID" || rc=$?
  CLIENT_PID=
  return "$rc"
}

# wait_log PID FILE FROM_LINE PATTERN TIMEOUT: until PATTERN appears after FROM_LINE
wait_log() {
  local pid=$1 file=$2 from=$3 pattern=$4 timeout=$5 i
  for ((i = 0; i < timeout * 5; i++)); do
    if tail -n +"$((from + 1))" "$file" | grep -q "$pattern"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "process $pid exited before '$pattern'; last lines of $file:"; tail -n 15 "$file" >&2; return 1
    fi
    sleep 0.2
  done
  log "no '$pattern' from process $pid after ${timeout}s; last lines of $file:"; tail -n 15 "$file" >&2
  return 1
}

# ---------------------------------------------------------------- preparation
prepare() {
  [ -x "$oxbow_bin" ] || { log "no oxbow binary at $oxbow_bin (cargo build --release -p oxbow, or set OXBOW_BIN)"; return 1; }
  if [ ! -x "$tools/bin/s3s-fs" ] || [ ! -f "$client_libs/kafka-tools-4.1.1.jar" ] || [ ! -x "$py" ]; then
    log "s3s-fs, the Kafka client jars or the venv missing; running scripts/setup.sh"
    "$root/scripts/setup.sh"
  fi
  mkdir -p "$work/classes"
  javac -nowarn -d "$work/classes" -cp "$client_libs/*" "$bench_dir/BenchConsumer.java"
}

# ---------------------------------------------------------------- servers
s3_start() {  # s3s-fs over $work/s3 (one directory per bucket)
  mkdir -p "$work/s3/oxbow-soak" "$work/s3/oxbow-cold"
  S3_PORT=$(python3 "$bench_dir/clusterlib.py" free-ports 1)
  "$tools/bin/s3s-fs" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY" \
    --secret-key "$S3_SECRET" "$work/s3" > "$logs/s3s-fs.log" 2>&1 &
  PIDS+=("$!")
  local i
  for ((i = 0; i < 50; i++)); do
    (echo > "/dev/tcp/127.0.0.1/$S3_PORT") 2>/dev/null && return 0
    sleep 0.2
  done
  log "s3s-fs did not listen on port $S3_PORT; see $logs/s3s-fs.log"
  return 1
}

write_config() {  # write_config FILE COMPACTION_INTERVAL_MS [EXTRA_STORAGE_LINE]
  cat > "$1" <<EOF
snapshot_every_entries = $SNAPSHOT_EVERY_ENTRIES
[storage]
retention_check_ms = 5000
object_delete_grace_ms = 10000
compaction_interval_ms = $2
orphan_scan_interval_ms = 60000
orphan_min_age_ms = 120000
linger_ms = $LINGER_MS
seal_when_idle = $SEAL_WHEN_IDLE
${3:-}
EOF
}

# oxbow_start DATA_DIR STORE_URL CONFIG LOGFILE: sets SERVER_PID, BOOT, METRICS (fresh ports)
oxbow_start() {
  local data=$1 store=$2 config=$3 logf=$4 ports from unset_args=() v
  read -r -a ports <<< "$(python3 "$bench_dir/clusterlib.py" free-ports 2)"
  BOOT="127.0.0.1:${ports[0]}"
  METRICS="http://127.0.0.1:${ports[1]}/metrics"
  echo "=== start $(date -Is) kafka=$BOOT metrics=$METRICS config=$(basename "$config")" >> "$logf"
  from=$(lines_of "$logf")
  # Oxbow reads OXBOW_* variables as configuration: start it without any.
  for v in $(compgen -e | grep '^OXBOW_' || true); do unset_args+=(-u "$v"); done
  env "${unset_args[@]+"${unset_args[@]}"}" RUST_LOG="$RUST_LOG_OXBOW" NO_COLOR=1 \
    AWS_ACCESS_KEY_ID="$S3_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET" AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true \
    "$oxbow_bin" server --data-dir "$data" --kafka-listen "$BOOT" --metrics-listen "127.0.0.1:${ports[1]}" \
    --object-store "$store" --config "$config" >> "$logf" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_log "$SERVER_PID" "$logf" "$from" "oxbow ready" 120
}

# start_twice ARGS...: oxbow_start, once more with new ports if the first start fails
start_twice() {
  oxbow_start "$@" && return 0
  [ -n "$SERVER_PID" ] && stop_pid "$SERVER_PID"
  log "start failed; retrying once with new ports"
  oxbow_start "$@"
}

# ---------------------------------------------------------------- clients
create_topic() {  # create_topic NAME PARTITIONS RETENTION_MS
  local out="$logs/topic-$1.txt"
  bounded 300 "$out" "${CLIENT_JAVA[@]}" -cp "$client_libs/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$BOOT" --create --topic "$1" --partitions "$2" --replication-factor 1 \
    --config "retention.ms=$3" \
    || { log "creating topic $1 failed:"; grep -v ' INFO ' "$out" | tail -n 10 >&2; return 1; }
  # Produce only once every partition is open on its leader.
  bounded 300 "$work/ready.out" "${CLIENT_JAVA[@]}" -cp "$client_libs/*:$work/classes" BenchConsumer \
    --wait-ready "$BOOT" "$1" "$2" 240 \
    || { log "topic $1 not ready:"; tail -n 10 "$work/ready.out" >&2; return 1; }
  log "topic $1 ($2 partitions, retention.ms=$3) ready $(grep -o 'seconds=[0-9.]*' "$work/ready.out" | cut -d= -f2)s after creation"
}

producer_cmd() {  # producer_cmd TOPIC RECORDS THROUGHPUT: sets PRODUCER
  PRODUCER=("${CLIENT_JAVA[@]}" -cp "$client_libs/*" org.apache.kafka.tools.ProducerPerformance
    --topic "$1" --num-records "$2" --record-size "$RECORD_SIZE" --throughput "$3"
    --producer-props bootstrap.servers="$BOOT" "${PRODUCER_PROPS[@]}")
}

producer_summary() {  # producer_summary FILE: one line from ProducerPerformance's final line
  local fig mibs rps avg p50 p99 p999
  fig=$(python3 "$bench_dir/benchlib.py" producer "$1" 2>/dev/null) || { echo "no summary line"; return 0; }
  read -r mibs rps avg p50 p99 p999 <<< "$fig"
  echo "$(grep -Eo '^[0-9]+ records sent' "$1" | tail -n 1), $rps records/s ($mibs MiB/s), latency avg $avg ms, p50 $p50 ms, p99 $p99 ms, p99.9 $p999 ms"
}

metric() { $soak metric "$METRICS" "$@" 2>/dev/null || echo "?"; }

# ---------------------------------------------------------------- the soak
soak_phase() {
  local data="$work/soak-data" logf="$logs/oxbow-soak.log" config="$work/soak.toml"
  local records=$((RATE * MINUTES * 60)) prodf="$logs/producer-soak.txt" t0 n i target wait_s
  write_config "$config" "$COMPACTION_INTERVAL_MS"
  start_twice "$data" "s3://oxbow-soak/soak" "$config" "$logf" || { note "the soak server did not start"; return 1; }
  SOAK_PID=$SERVER_PID
  log "oxbow server $SERVER_PID up: kafka $BOOT, metrics $METRICS, store s3://oxbow-soak/soak on s3s-fs port $S3_PORT"
  create_topic soak "$PARTITIONS" "$RETENTION_MS" || { note "the soak topic was not created"; return 1; }

  say ""
  say "[Soak: $PARTITIONS partitions, $RATE records/s x $RECORD_SIZE B, retention.ms=$RETENTION_MS," \
      "compaction_interval_ms=$COMPACTION_INTERVAL_MS, $MINUTES min, a row every ${SAMPLE_S}s]"
  say "(image/snap: oxbow_metadata_image_bytes / oxbow_controller_snapshot_bytes; objects, slices: in the"
  say " metadata; store obj (sso) / MiB: files under the bucket directory; in: oxbow_bytes_in_total;"
  say " comp w/in: compaction bytes written / bytes in; PUT/GET/DEL per GiB in, cumulative)"
  $soak sample "$METRICS" "$work/s3/oxbow-soak" "$SOAK_PID" 0 "$raw" | tee -a "$results"

  producer_cmd soak "$records" "$RATE"
  log "producing $records records ($RATE/s for $MINUTES min) with ProducerPerformance"
  t0=$(now)
  # The producer runs while we sample; its time bound leaves it 2 minutes to catch up.
  timeout $((MINUTES * 60 + 120)) "${PRODUCER[@]}" > "$prodf" 2>&1 &
  CLIENT_PID=$!
  n=$(( (MINUTES * 60 + SAMPLE_S - 1) / SAMPLE_S ))
  for ((i = 1; i <= n; i++)); do
    target=$((i * SAMPLE_S))
    [ "$target" -gt $((MINUTES * 60)) ] && target=$((MINUTES * 60))
    wait_s=$(calc "$t0 + $target - $(now)")
    awk "BEGIN { exit !($wait_s > 0) }" && sleep "$wait_s"
    if ! kill -0 "$SOAK_PID" 2>/dev/null; then
      note "the soak server exited during the load (see ${logf#"$root"/})"
      return 1
    fi
    $soak sample "$METRICS" "$work/s3/oxbow-soak" "$SOAK_PID" "$(calc "$(now) - $t0")" "$raw" \
      | tail -n 1 | tee -a "$results"
  done
  if kill -0 "$CLIENT_PID" 2>/dev/null; then
    log "the producer has not finished after $MINUTES min; giving it up to 30 s more"
    for ((i = 0; i < 150; i++)); do kill -0 "$CLIENT_PID" 2>/dev/null || break; sleep 0.2; done
  fi
  if kill -0 "$CLIENT_PID" 2>/dev/null; then
    kill -TERM "$CLIENT_PID" 2>/dev/null || true
    note "the producer had not sent its $records records $((MINUTES * 60 + 30))s after it started: the load" \
         "was not sustained (stopped; last progress: $(grep 'records sent' "$prodf" | tail -n 1 | cut -d, -f1-3))"
  fi
  wait "$CLIENT_PID" 2>/dev/null || true
  CLIENT_PID=
  grep -q "Exception\|ERROR" "$prodf" \
    && note "producer output has errors: $(grep -m1 'Exception\|ERROR' "$prodf" | cut -c1-200)"
  say ""
  say "producer: $(producer_summary "$prodf")"
  say "$($py "$bench_dir/soak.py" end-offsets "$BOOT" soak 2>&1 | tail -n 1)"
  say ""
  say "[Summary]"
  local ref_s=600
  [ "$MINUTES" -lt 15 ] && ref_s=$((MINUTES * 20))
  $soak summary "$raw" "$ref_s" | tee -a "$results"
  stop_pid "$SOAK_PID" 60
}

# ---------------------------------------------------------------- the cold read
cold_settle() {  # until the cold topic's partitions are open and no GETs happen for 2 s
  local i hosted gets prev="" still=0
  for ((i = 0; i < 1200; i++)); do
    read -r hosted gets <<< "$(metric oxbow_partitions_hosted oxbow_object_gets_total)"
    if [ "${hosted:-0}" != "?" ] && [ "${hosted:-0}" -ge "$COLD_PARTITIONS" ] && [ "$gets" = "$prev" ]; then
      still=$((still + 1))
      [ "$still" -ge 4 ] && return 0
    else
      still=0
    fi
    prev=$gets
    sleep 0.5
  done
  note "cold read: the server did not settle within 600 s after a start (partitions hosted: $hosted)"
}

cold_read() {  # cold_read PHASE RUN: restart (compaction off), read partition 0, record
  local phase=$1 run=$2 out="$logs/cold-read-$1-r$2.txt" g0 g1 slices line t0 startup gb0
  stop_pid "$SERVER_PID" 60
  t0=$(now)
  start_twice "$COLD_DATA" "s3://oxbow-cold/cold" "$COLD_OFF" "$COLD_LOG" || { note "cold read: restart failed"; return 1; }
  cold_settle
  startup=$(calc "$(now) - $t0")
  # What the start-up itself read (each partition's producer-state rebuild reads its tail).
  read -r g0 gb0 slices <<< "$(metric oxbow_object_gets_total oxbow_object_get_bytes_total oxbow_metadata_slices)"
  if ! bounded 900 "$out" $py "$bench_dir/soak.py" read-partition "$BOOT" cold-sso 0 840; then
    note "cold read $phase run $run failed: $(tail -n 1 "$out")"
    return 1
  fi
  g1=$(metric oxbow_object_gets_total)
  line=$(grep '^records=' "$out")
  log "cold read, $phase, run $run: $line, GETs $((g1 - g0)), slices in the metadata $slices;" \
      "start-up until no GETs for 2 s: ${startup}s, $g0 GETs, $(calc "$gb0 / 1048576") MiB"
  {
    echo "$phase $run seconds $(sed -E 's/.*seconds=([0-9.]+).*/\1/' <<< "$line")"
    echo "$phase $run bytes $(sed -E 's/.* bytes=([0-9]+).*/\1/' <<< "$line")"
    echo "$phase $run mib_s $(sed -E 's/.*mib_s=([0-9.]+).*/\1/' <<< "$line")"
    echo "$phase $run gets $((g1 - g0))"
    echo "$phase $run slices $slices"
    echo "$phase $run startup_s $startup"
    echo "$phase $run startup_gets $g0"
    echo "$phase $run startup_get_bytes $gb0"
  } >> "$cold_raw"
}

cold_compact() {  # restart with compaction on; wait until it has nothing left to do
  local t0 i objs marked stats sso cso prev="" still=0 written last_log=0 elapsed
  stop_pid "$SERVER_PID" 60
  start_twice "$COLD_DATA" "s3://oxbow-cold/cold" "$COLD_ON" "$COLD_LOG" || { note "cold read: restart failed"; return 1; }
  read -r _ _ sso _ <<< "$($soak store "$work/s3/oxbow-cold")"
  log "compaction on (compaction_interval_ms=1000); $sso stream-set objects in the store"
  t0=$(now)
  while :; do
    sleep 5
    elapsed=$(calc "$(now) - $t0")
    read -r objs marked written <<< "$(metric oxbow_compaction_objects_total oxbow_metadata_objects_marked \
      oxbow_compaction_bytes_written_total)"
    read -r _ _ sso cso <<< "$($soak store "$work/s3/oxbow-cold")"
    # Done: no compacted object for 4 polls (>= 3 lifecycle passes), nothing marked for
    # deletion, and at most one stream-set object per partition left (their last slices).
    if [ "$objs" = "$prev" ] && [ "$marked" = 0 ] && [ "$sso" -le "$COLD_PARTITIONS" ]; then
      still=$((still + 1))
      [ "$still" -ge 4 ] && break
    else
      still=0
    fi
    prev=$objs
    if awk "BEGIN { exit !($elapsed - $last_log >= 30) }"; then
      log "compacting: ${elapsed%.*}s, $objs compacted objects committed ($(calc "$written / 1048576") MiB)," \
          "store: $sso sso + $cso cso objects, $marked marked for deletion"
      last_log=$elapsed
    fi
    if awk "BEGIN { exit !($elapsed > $COLD_COMPACT_TIMEOUT_S) }"; then
      note "cold read: compaction not finished after ${COLD_COMPACT_TIMEOUT_S}s ($sso stream-set objects left," \
           "$marked marked); the 'compacted' read below is of partly compacted data"
      break
    fi
  done
  COMPACT_LINE="compaction: $(calc "$written / 1048576") MiB written into $objs objects in"
  COMPACT_LINE+=" $(calc "$(now) - $t0 - 20")s (the last 20 s of waiting not counted); store after: $sso sso + $cso cso objects"
  log "$COMPACT_LINE"
}

cold_phase() {
  local per_part=$((COLD_MB * 1048576 / 4)) records prodf="$logs/producer-cold.txt" r
  COLD_DATA="$work/cold-data"; COLD_LOG="$logs/oxbow-cold.log"
  COLD_OFF="$work/cold-off.toml"; COLD_ON="$work/cold-on.toml"
  local cache=""
  [ -n "${COLD_BLOCK_CACHE_BYTES:-}" ] && cache="block_cache_bytes = $COLD_BLOCK_CACHE_BYTES"
  write_config "$COLD_OFF" "$COMPACTION_OFF_MS" "$cache"
  write_config "$COLD_ON" 1000 "$cache"
  records=$((COLD_PARTITIONS * per_part / RECORD_SIZE))
  : > "$cold_raw"
  start_twice "$COLD_DATA" "s3://oxbow-cold/cold" "$COLD_OFF" "$COLD_LOG" || { note "the cold-read server did not start"; return 1; }
  create_topic cold-sso "$COLD_PARTITIONS" -1 || { note "the cold-read topic was not created"; return 1; }
  producer_cmd cold-sso "$records" -1
  log "cold read: producing $records x $RECORD_SIZE B ($(calc "$COLD_PARTITIONS * $per_part / 1048576") MiB) to" \
      "$COLD_PARTITIONS partitions at full speed, compaction off"
  bounded 3600 "$prodf" "${PRODUCER[@]}" || { note "cold read: the producer failed (see ${prodf#"$root"/})"; return 1; }
  log "cold read: $(producer_summary "$prodf")"
  COLD_SPREAD=$($py "$bench_dir/soak.py" end-offsets "$BOOT" cold-sso 2>&1 | tail -n 1)
  for ((r = 1; r <= COLD_RUNS; r++)); do cold_read sso "$r" || return 1; done
  cold_compact || return 1
  for ((r = 1; r <= COLD_RUNS; r++)); do cold_read cso "$r" || return 1; done
  stop_pid "$SERVER_PID" 60
  say ""
  say "[Cold read of partition 0 of cold-sso ($COLD_PARTITIONS partitions, ~$((COLD_MB / 4)) MiB each, $RECORD_SIZE B" \
      "records) from offset 0 to its end, confluent-kafka assign(), right after a restart]"
  say "$COLD_SPREAD"
  say "$COMPACT_LINE"
  $soak cold-report "$cold_raw" | tee -a "$results"
}

# ---------------------------------------------------------------- main
prepare
( sleep "$SOAK_TIMEOUT_S"; kill -TERM $$ ) &
WATCHDOG_PID=$!
{
  echo "Oxbow soak - scripts/soak.sh, $(date -Is)"
  echo "oxbow binary: $oxbow_bin ($(stat -c '%y' "$oxbow_bin" | cut -d. -f1)); $(nproc) cores," \
       "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, $(java -version 2>&1 | head -n 1)"
  echo "QUICK=$QUICK MINUTES=$MINUTES PARTITIONS=$PARTITIONS RATE=$RATE RECORD_SIZE=$RECORD_SIZE" \
       "RETENTION_MS=$RETENTION_MS LINGER_MS=$LINGER_MS SEAL_WHEN_IDLE=$SEAL_WHEN_IDLE SNAPSHOT_EVERY_ENTRIES=$SNAPSHOT_EVERY_ENTRIES COMPACTION_INTERVAL_MS=$COMPACTION_INTERVAL_MS SAMPLE_S=$SAMPLE_S" \
       "COLD_MB=$COLD_MB COLD_PARTITIONS=$COLD_PARTITIONS COLD_RUNS=$COLD_RUNS; producer props: ${PRODUCER_PROPS[*]}"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee -a "$results"
t_start=$(date +%s)
s3_start
soak_phase || note "the soak did not complete"
if [ "$COLD_RUNS" -gt 0 ]; then
  cold_phase || note "the cold read did not complete"
  [ -n "$SERVER_PID" ] && stop_pid "$SERVER_PID" 60
fi

say ""
say "took $(( $(date +%s) - t_start ))s; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -s "$notes" ]; then say ""; say "Problems during the run:"; sed 's/^/  - /' "$notes" | tee -a "$results"; fi
problems=$(cat "$logs"/oxbow-*.log 2>/dev/null | grep -E ' (WARN|ERROR) |panicked' | sed -E 's/^[^ ]+ +//' \
  | sed -E 's/[0-9]+/N/g' | cut -c1-220 | sort | uniq -c | sort -rn | head -n 15 || true)
if [ -n "$problems" ]; then say ""; say "Oxbow log WARN/ERROR lines (count, digits as N):"; say "$problems"; fi
$soak plot "$raw" "$plot" 2>/dev/null || true
[ -f "$plot" ] && say "plot: ${plot#"$root"/}"
say "written to ${results#"$root"/} (samples: ${raw#"$root"/}, logs: ${logs#"$root"/}/)"
