#!/usr/bin/env bash
# Benchmark: the same produce and consume workloads against Oxbow and against
# Apache Kafka 4.1.1 (single-node KRaft, default settings, started from the Maven
# Central jars) on this machine, one system at a time. A benchmark, not a test:
# it asserts nothing about timings. Prints a table of medians over RUNS runs with
# Oxbow's ratio to Kafka and writes it to bench-out/results-<timestamp>.txt.
# Figures (FIGURES selects them):
#   throughput  produce and consume (assign(), and in a group with ConsumerPerformance --group
#               for the classic and the KIP-848 consumer protocol), restart, RSS, metadata size
#   rebalance   time until a group consumes again after a member joins or leaves, with
#               REBALANCE_MEMBERS members, eager / cooperative-sticky / KIP-848
#               (scripts/bench/RebalanceBench.java: every member a thread of one JVM)
#   groupmem    the broker's memory before and after MEM_GROUPS groups are created (one offset
#               commit each, scripts/bench/GroupOffsets.java)
#   txn         transactions (scripts/bench/TxnBench.java): one transactional producer writes
#               TXN_COUNT transactions of TXN_RECORDS records to a 3-partition topic, a commit
#               after every transaction (throughput, commitTransaction latency p50/p99/p99.9),
#               then a read_committed consumer reads the topic from offset 0 (assign())
# rebalance, groupmem and txn run on fresh servers of their own (one each per system and run).
#
#   scripts/bench.sh                 # RUNS=3, full counts (~90 min on a busy 2-core machine)
#   QUICK=1 scripts/bench.sh         # RUNS=1, small counts: checks the script (~15 min)
#
# Knobs (environment):
#   RUNS=3                runs per system; every figure is the median over runs
#   QUICK=1               RUNS=1, counts / 10 (transactions too), 10 members only, 1,000 groups
#                         (unless set explicitly)
#   RECORDS_3P=250000     records produced to the 3-partition topic per run
#   RECORDS_1000P=150000  records produced to the 1000-partition topic per run
#   RECORD_SIZE=1024      bytes per record
#   SYSTEMS="oxbow kafka" which systems to run (in this order within each run)
#   FIGURES="throughput rebalance groupmem txn"  which parts to run (see above)
#   GROUP_PROTOCOLS="classic consumer"  group.protocol values for ConsumerPerformance --group
#   REBALANCE_MEMBERS="10 100" (QUICK: 10)  group sizes; the topic has 2 x members partitions
#   REBALANCE_MODES="eager cooperative consumer"  see RebalanceBench.java
#   REBALANCE_TIMEOUT_S=120  bound per join/leave (formation: twice); beyond it: "timeout"
#   REBALANCE_INTERVAL_MS=100  the feeding producer writes to every partition this often
#   MEM_GROUPS=10000 (QUICK: 1000)  groups created for the memory figure
#   MEM_SETTLE_S=10       seconds of quiet before each memory reading
#   TXN_COUNT=1000 (QUICK: 100)  transactions per run for the txn figure (~25-50 s per run here)
#   TXN_RECORDS=100       records per transaction (of RECORD_SIZE bytes, round-robin over the 3 partitions)
#   OXBOW_BIN             the oxbow binary (default target/release/oxbow)
#   BENCH_NO_BUILD=1      do not run `cargo build --release -p oxbow` first
#   BENCH_KEEP=1          keep the temporary directory (data dirs) at the end
#   OXBOW_TOOLS           tools cache (default ~/.cache/oxbow-tools), as for setup.sh
# Counts are the same for both systems (the same workload). The defaults make a
# produce run take roughly 15-40 s on an idle 2-core machine; on a busy one (load
# average well above the core count) both systems slow down several-fold.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_dir="$root/scripts/bench"
tools="${OXBOW_TOOLS:-$HOME/.cache/oxbow-tools}"
client_libs="$tools/kafka-libs"
server_libs="$tools/bench-kafka-server-libs"
oxbow_bin="${OXBOW_BIN:-$root/target/release/oxbow}"
lib="python3 $bench_dir/benchlib.py"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  RUNS=${RUNS:-1}; RECORDS_3P=${RECORDS_3P:-25000}; RECORDS_1000P=${RECORDS_1000P:-15000}
  REBALANCE_MEMBERS=${REBALANCE_MEMBERS:-10}; MEM_GROUPS=${MEM_GROUPS:-1000}; TXN_COUNT=${TXN_COUNT:-100}
else
  RUNS=${RUNS:-3}; RECORDS_3P=${RECORDS_3P:-250000}; RECORDS_1000P=${RECORDS_1000P:-150000}
  REBALANCE_MEMBERS=${REBALANCE_MEMBERS:-"10 100"}; MEM_GROUPS=${MEM_GROUPS:-10000}; TXN_COUNT=${TXN_COUNT:-1000}
fi
FIGURES=${FIGURES:-"throughput rebalance groupmem txn"}
TXN_RECORDS=${TXN_RECORDS:-100}
GROUP_PROTOCOLS=${GROUP_PROTOCOLS:-"classic consumer"}
REBALANCE_MODES=${REBALANCE_MODES:-"eager cooperative consumer"}
REBALANCE_TIMEOUT_S=${REBALANCE_TIMEOUT_S:-120}
REBALANCE_INTERVAL_MS=${REBALANCE_INTERVAL_MS:-100}
MEM_SETTLE_S=${MEM_SETTLE_S:-10}
RECORD_SIZE=${RECORD_SIZE:-1024}
SYSTEMS=${SYSTEMS:-"oxbow kafka"}
PRODUCER_PROPS=(acks=all linger.ms=5)
CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-900}
CLIENT_JAVA=(java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn)

stamp=$(date +%Y%m%d-%H%M%S)
out_dir="$root/bench-out"
mkdir -p "$out_dir"
results="$out_dir/results-$stamp.txt"
raw="$out_dir/raw-$stamp.tsv"
logs="$out_dir/logs-$stamp"
mkdir -p "$logs"
work=$(mktemp -d "${TMPDIR:-/tmp}/oxbow-bench.XXXXXX")
notes="$work/notes"
: > "$notes"
: > "$raw"

log() { echo "bench: $*" >&2; }
note() { echo "$*" >> "$notes"; log "NOTE: $*"; }
calc() { awk "BEGIN { printf \"%.6g\", $1 }"; }
rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$raw"; }

# ---------------------------------------------------------------- processes
PIDS=()
stop_pid() {  # stop_pid PID [grace-seconds]: SIGTERM, wait, then SIGKILL
  local pid=$1 grace=${2:-120} i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "process $pid did not stop within ${grace}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$p" 30; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT
trap 'log terminated; exit 143' TERM

# wait_ready PID LOGFILE FROM_LINE PATTERN TIMEOUT: until PATTERN appears after FROM_LINE
wait_ready() {
  local pid=$1 file=$2 from=$3 pattern=$4 timeout=$5 i
  for ((i = 0; i < timeout * 5; i++)); do
    if tail -n +"$from" "$file" | grep -q "$pattern"; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "server $pid exited before it was ready; last log lines:"; tail -n 20 "$file" >&2; return 1
    fi
    sleep 0.2
  done
  log "server $pid not ready after ${timeout}s; last log lines:"; tail -n 20 "$file" >&2
  return 1
}

peak_rss_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------- preparation
prepare() {
  if [ ! -f "$client_libs/kafka-clients-4.1.1.jar" ] || [ ! -f "$client_libs/kafka-tools-4.1.1.jar" ]; then
    log "Kafka client jars missing in $client_libs; running scripts/setup.sh"
    "$root/scripts/setup.sh"
  fi
  if ! cmp -s "$bench_dir/pom.xml" "$server_libs/.pom" 2>/dev/null; then
    log "fetching the Apache Kafka 4.1.1 broker jars from Maven Central into $server_libs"
    rm -rf "$server_libs"
    mvn -q -B -f "$bench_dir/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$server_libs" -DincludeScope=runtime
    cp "$bench_dir/pom.xml" "$server_libs/.pom"
  fi
  mkdir -p "$work/classes"
  javac -nowarn -d "$work/classes" -cp "$client_libs/*" "$bench_dir/BenchConsumer.java" \
    "$bench_dir/RebalanceBench.java" "$bench_dir/GroupOffsets.java" "$bench_dir/TxnBench.java"
  if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    log "cargo build --release -p oxbow"
    (cd "$root" && cargo build --release -p oxbow)
  fi
  [ -x "$oxbow_bin" ] || { log "$oxbow_bin missing"; return 1; }
}

# ---------------------------------------------------------------- servers
# Globals set by the start functions: SERVER_PID, BOOT (bootstrap address).
oxbow_start() {  # oxbow_start DATA_DIR LOGFILE
  local data=$1 logf=$2 kport mport from
  kport=$($lib free-port); mport=$($lib free-port)
  echo "=== start $(date -Is) kafka=127.0.0.1:$kport metrics=127.0.0.1:$mport" >> "$logf"
  from=$(wc -l < "$logf")
  # Oxbow reads OXBOW_* variables as configuration: start it without any.
  local unset_args=() v
  for v in $(compgen -e | grep '^OXBOW_' || true); do unset_args+=(-u "$v"); done
  env "${unset_args[@]+"${unset_args[@]}"}" RUST_LOG="${BENCH_RUST_LOG:-info}" NO_COLOR=1 \
    "$oxbow_bin" server --data-dir "$data" --kafka-listen "127.0.0.1:$kport" \
    --metrics-listen "127.0.0.1:$mport" --object-store "file://$data/objects" \
    >> "$logf" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  BOOT="127.0.0.1:$kport"
  METRICS="http://127.0.0.1:$mport/metrics"
  wait_ready "$SERVER_PID" "$logf" "$from" "oxbow ready" 120
}

# The JVM options of kafka-server-start.sh / kafka-run-class.sh.
KAFKA_JVM=(java -Xmx1G -Xms1G -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
  -XX:MaxInlineLevel=15 -Djava.awt.headless=true)

kafka_config() {  # kafka_config DIR: (re)writes DIR/server.properties with fresh ports
  local dir=$1 port cport
  port=$($lib free-port); cport=$($lib free-port)
  cat > "$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
EOF
  BOOT="127.0.0.1:$port"
}

kafka_format() {  # kafka_format DIR LOGFILE: formats DIR/data (KRaft, single node)
  local dir=$1 logf=$2
  kafka_config "$dir"
  "${KAFKA_JVM[@]}" -cp "$server_libs/*" kafka.tools.StorageTool format -t "$($lib cluster-id)" \
    -c "$dir/server.properties" >> "$logf" 2>&1
}

# Fresh free ports at every start: on a shared machine another process may take a
# port between a stop and the restart.
kafka_start() {  # kafka_start DIR LOGFILE
  local dir=$1 logf=$2 from
  kafka_config "$dir"
  echo "=== start $(date -Is) kafka=$BOOT" >> "$logf"
  from=$(wc -l < "$logf")
  # Run java itself in the background (not a function or subshell) so that $! is the JVM.
  "${KAFKA_JVM[@]}" -cp "$server_libs/*" kafka.Kafka "$dir/server.properties" >> "$logf" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_ready "$SERVER_PID" "$logf" "$from" "Kafka Server started" 180
}

# start_twice START_FUNCTION ARGS...: one retry (new ports) if a start fails.
start_twice() {
  "$@" && return 0
  [ -n "${SERVER_PID:-}" ] && stop_pid "$SERVER_PID" 30
  log "start failed; retrying once with new ports"
  "$@"
}

# ---------------------------------------------------------------- clients
create_topic() {  # create_topic NAME PARTITIONS; sets TOPIC_READY_S
  timeout 300 "${CLIENT_JAVA[@]}" -cp "$client_libs/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOT" \
    --create --topic "$1" --partitions "$2" --replication-factor 1 > "$work/topic.out" 2>&1 \
    || { log "creating topic $1 failed:"; grep -v ' INFO ' "$work/topic.out" | tail -n 20 >&2; return 1; }
  # Produce only once every partition is open on its leader, so topic creation is not timed.
  timeout 300 "${CLIENT_JAVA[@]}" -cp "$client_libs/*:$work/classes" BenchConsumer --wait-ready "$BOOT" "$1" "$2" 240 \
    > "$work/ready.out" 2>&1 || { log "topic $1 not ready:"; tail -n 20 "$work/ready.out" >&2; return 1; }
  TOPIC_READY_S=$(grep -o 'seconds=[0-9.]*' "$work/ready.out" | cut -d= -f2)
  log "topic $1 ($2 partitions) ready ${TOPIC_READY_S}s after creation"
}

# produce SYSTEM RUN TOPIC COUNT PREFIX: records PREFIX_{mibs,rps,p50,p99,p999}
produce() {
  local sys=$1 run=$2 topic=$3 count=$4 prefix=$5 outf="$logs/producer-$1-r$2-$3.txt" fig
  log "run $run $sys: produce $count x $RECORD_SIZE B to $topic"
  if ! timeout "$CLIENT_TIMEOUT" "${CLIENT_JAVA[@]}" -cp "$client_libs/*" org.apache.kafka.tools.ProducerPerformance \
      --topic "$topic" --num-records "$count" --record-size "$RECORD_SIZE" --throughput -1 \
      --producer-props bootstrap.servers="$BOOT" "${PRODUCER_PROPS[@]}" > "$outf" 2>&1; then
    note "$sys run $run: ProducerPerformance on $topic failed (see $outf)"
    grep -v ' INFO ' "$outf" | tail -n 10 >&2
    return 1
  fi
  grep -Eq "^$count records sent" "$outf" || note "$sys run $run: $topic: producer summary does not report $count records sent"
  if grep -q "Exception\|ERROR" "$outf"; then
    note "$sys run $run: $topic: producer output has errors: $(grep -m1 'Exception\|ERROR' "$outf" | cut -c1-200)"
  fi
  fig=$($lib producer "$outf") || { note "$sys run $run: no summary in $outf"; return 1; }
  read -r mibs rps _avg p50 p99 p999 <<< "$fig"
  log "run $run $sys: $topic: $mibs MiB/s, $rps rec/s, p50 $p50 ms, p99 $p99 ms, p99.9 $p999 ms"
  rec "$sys" "$run" "${prefix}_mibs" "$mibs"; rec "$sys" "$run" "${prefix}_rps" "$rps"
  rec "$sys" "$run" "${prefix}_p50" "$p50"; rec "$sys" "$run" "${prefix}_p99" "$p99"
  rec "$sys" "$run" "${prefix}_p999" "$p999"
}

# consume SYSTEM RUN TOPIC EXPECTED KEY: records KEY (MiB/s); sets CONSUMED_BYTES
consume() {
  local sys=$1 run=$2 topic=$3 expected=$4 key=$5 outf="$logs/consumer-$1-r$2-$3-$5.txt" line
  log "run $run $sys: consume $topic ($key)"
  CONSUMED_BYTES=0
  if ! timeout "$CLIENT_TIMEOUT" "${CLIENT_JAVA[@]}" -cp "$client_libs/*:$work/classes" BenchConsumer "$BOOT" "$topic" \
      "$((CLIENT_TIMEOUT - 30))" > "$outf" 2>&1; then
    note "$sys run $run: consumer on $topic ($key) failed: $(grep -m1 'Exception' "$outf" | cut -c1-200)"
    return 1
  fi
  line=$(grep '^records=' "$outf" | tail -n 1)
  local records bytes mibs end
  records=$(sed -E 's/.*records=([0-9]+) .*/\1/' <<< "$line")
  bytes=$(sed -E 's/.* bytes=([0-9]+) .*/\1/' <<< "$line")
  mibs=$(sed -E 's/.*mib_per_sec=([0-9.]+) .*/\1/' <<< "$line")
  end=$(sed -E 's/.*expected=([0-9]+).*/\1/' <<< "$line")
  if [ "$records" != "$expected" ] || [ "$end" != "$expected" ]; then
    note "$sys run $run: $topic ($key): read $records records up to end offsets summing to $end, but $expected were produced"
  fi
  CONSUMED_BYTES=$bytes
  log "run $run $sys: $topic ($key): $mibs MiB/s ($records records)"
  rec "$sys" "$run" "$key" "$mibs"
}

# group_consume SYSTEM RUN TOPIC EXPECTED PROTOCOL KEY: ConsumerPerformance in a new group
# (group.protocol=PROTOCOL) from offset 0 to EXPECTED records; records KEY_{mibs,rps,join_ms}.
# A failure is noted and does not end the run.
group_consume() {
  local sys=$1 run=$2 topic=$3 expected=$4 proto=$5 key=$6 outf="$logs/group-consumer-$1-r$2-$3-$5.txt" fig
  local props="$work/consumer-$proto.properties" mibs rps records join_ms
  echo "group.protocol=$proto" > "$props"
  log "run $run $sys: consume $topic in a group (ConsumerPerformance, group.protocol=$proto)"
  if ! timeout "$CLIENT_TIMEOUT" "${CLIENT_JAVA[@]}" -cp "$client_libs/*" org.apache.kafka.tools.ConsumerPerformance \
      --bootstrap-server "$BOOT" --topic "$topic" --messages "$expected" --group "perf-$proto-$topic-r$run" \
      --consumer.config "$props" --timeout 60000 > "$outf" 2>&1; then
    note "$sys run $run: ConsumerPerformance ($proto) on $topic failed: $(grep -m1 'Exception' "$outf" | cut -c1-240)"
    return 0
  fi
  fig=$($lib consumer-perf "$outf") || { note "$sys run $run: no ConsumerPerformance summary in $outf"; return 0; }
  read -r mibs rps records join_ms <<< "$fig"
  if [ "$records" != "$expected" ]; then
    note "$sys run $run: ConsumerPerformance ($proto) on $topic read $records records, $expected were produced"
    return 0
  fi
  log "run $run $sys: $topic in a $proto group: $mibs MiB/s, $rps rec/s, group join $join_ms ms"
  rec "$sys" "$run" "${key}_mibs" "$mibs"; rec "$sys" "$run" "${key}_rps" "$rps"
  rec "$sys" "$run" "${key}_join_ms" "$join_ms"
}

# group_consume_all SYSTEM RUN: group consumption of both topics with every GROUP_PROTOCOLS
group_consume_all() {
  local proto
  for proto in $GROUP_PROTOCOLS; do
    group_consume "$1" "$2" bench-p3 "$RECORDS_3P" "$proto" "gc_${proto}_p3"
    group_consume "$1" "$2" bench-p1000 "$RECORDS_1000P" "$proto" "gc_${proto}_p1000"
  done
}

# ---------------------------------------------------------------- groups: rebalance, memory
has_figure() { [[ " $FIGURES " == *" $1 "* ]]; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# Live Java heap (KiB) after the full GC that a class histogram forces.
jvm_live_kib() { timeout 120 jcmd "$1" GC.class_histogram 2>/dev/null | awk '$1 == "Total" { printf "%d", $3 / 1024 }'; }

# rebalance SYSTEM RUN MEMBERS MODE: one RebalanceBench; records rb_MODE_nMEMBERS_{join,leave}_ms
rebalance() {
  local sys=$1 run=$2 n=$3 mode=$4 outf="$logs/rebalance-$1-r$2-n$3-$4" ev line
  log "run $run $sys: rebalance, $n members, $mode"
  timeout $((5 * REBALANCE_TIMEOUT_S + 180)) "${CLIENT_JAVA[@]}" -Xmx1g -cp "$client_libs/*:$work/classes" RebalanceBench \
    "$BOOT" "rebalance-n$n" $((2 * n)) "$n" "$mode" "$REBALANCE_TIMEOUT_S" "$REBALANCE_INTERVAL_MS" \
    > "$outf.out" 2> "$outf.err" || note "$sys run $run: RebalanceBench $mode n=$n exited with $? (see $outf.err)"
  for ev in join leave; do
    line=$(grep -m1 "^$ev " "$outf.out" || echo "$ev missing")
    case "$line" in
      "$ev ms="*)
        rec "$sys" "$run" "rb_${mode}_n${n}_${ev}_ms" "${line#"$ev ms="}"
        log "run $run $sys: $mode, $n members: $ev -> consuming again after ${line#"$ev ms="} ms" ;;
      *)
        rec "$sys" "$run" "rb_${mode}_n${n}_${ev}_ms" "${line#"$ev "}"
        note "$sys run $run: rebalance $mode n=$n $ev: ${line#"$ev "}: $(grep -m1 -E 'giving up|not converged|not stable' "$outf.err" | sed 's/^ *//' | cut -c1-300)" ;;
    esac
  done
}

# group_memory SYSTEM RUN PID: RSS (and for Kafka the live heap) before and after MEM_GROUPS groups
group_memory() {
  local sys=$1 run=$2 pid=$3 outf="$logs/groupmem-$1-r$2.txt" rss0 rss1 heap0="" heap1="" line secs
  create_topic bench-groups 1 || { note "$sys run $run: topic for the group memory figure failed"; return 1; }
  timeout 600 "${CLIENT_JAVA[@]}" -cp "$client_libs/*:$work/classes" GroupOffsets warm "$BOOT" bench-groups \
    > "$outf" 2>&1 || { note "$sys run $run: GroupOffsets warm failed (see $outf)"; return 1; }
  sleep "$MEM_SETTLE_S"
  [ "$sys" = kafka ] && heap0=$(jvm_live_kib "$pid")
  [ "$sys" = oxbow ] && snap g0
  rss0=$(rss_kib "$pid")
  log "run $run $sys: creating $MEM_GROUPS groups (RSS before: $rss0 KiB)"
  timeout 1200 "${CLIENT_JAVA[@]}" -cp "$client_libs/*:$work/classes" GroupOffsets create "$BOOT" bench-groups \
    "$MEM_GROUPS" "bench-group-r$run-" 1000 >> "$outf" 2>&1 \
    || { note "$sys run $run: GroupOffsets create failed (see $outf)"; return 1; }
  line=$(grep '^groups=' "$outf" | tail -n 1)
  if [[ "$line" != *" failed=0 listed=$MEM_GROUPS" ]]; then
    note "$sys run $run: group memory: $line (expected $MEM_GROUPS groups, no failures)"
  fi
  sleep "$MEM_SETTLE_S"
  rss1=$(rss_kib "$pid")
  [ "$sys" = oxbow ] && snap g1
  [ "$sys" = kafka ] && heap1=$(jvm_live_kib "$pid")
  secs=$(sed -E 's/.*seconds=([0-9.]+).*/\1/' <<< "$line")
  log "run $run $sys: $MEM_GROUPS groups in ${secs}s; RSS $rss0 -> $rss1 KiB${heap0:+; live heap $heap0 -> $heap1 KiB}"
  rec "$sys" "$run" gm_groups "$MEM_GROUPS"
  rec "$sys" "$run" gm_create_s "$secs"
  rec "$sys" "$run" gm_rss_before_mib "$(calc "$rss0 / 1024")"
  rec "$sys" "$run" gm_rss_after_mib "$(calc "$rss1 / 1024")"
  rec "$sys" "$run" gm_rss_growth_mib "$(calc "($rss1 - $rss0) / 1024")"
  rec "$sys" "$run" gm_rss_per_group_b "$(calc "($rss1 - $rss0) * 1024 / $MEM_GROUPS")"
  if [ "$sys" = kafka ] && [ -n "$heap0" ] && [ -n "$heap1" ]; then
    rec kafka "$run" gm_heap_before_mib "$(calc "$heap0 / 1024")"
    rec kafka "$run" gm_heap_after_mib "$(calc "$heap1 / 1024")"
    rec kafka "$run" gm_heap_per_group_b "$(calc "($heap1 - $heap0) * 1024 / $MEM_GROUPS")"
  fi
  [ "$sys" = oxbow ] && rec oxbow "$run" gm_log_cache_growth_mib "$(calc "$(mdelta g0 g1 oxbow_log_cache_bytes) / 1048576")"
  return 0
}

# groups_phase SYSTEM RUN: the groupmem and rebalance figures, each on a fresh server
groups_phase() {
  local sys=$1 run=$2 dir="$work/$1-groups-r$2" logf="$logs/$1-groups-r$2.log" n mode
  if has_figure groupmem; then
    rm -rf "$dir"; mkdir -p "$dir"
    if server_fresh_start "$sys" "$dir" "$logf"; then
      group_memory "$sys" "$run" "$SERVER_PID" || true
      stop_pid "$SERVER_PID"
    fi
  fi
  if has_figure rebalance; then
    rm -rf "$dir"; mkdir -p "$dir"
    if server_fresh_start "$sys" "$dir" "$logf"; then
      for n in $REBALANCE_MEMBERS; do
        create_topic "rebalance-n$n" $((2 * n)) || { note "$sys run $run: topic rebalance-n$n failed"; continue; }
        for mode in $REBALANCE_MODES; do rebalance "$sys" "$run" "$n" "$mode"; done
      done
      stop_pid "$SERVER_PID"
    fi
  fi
  rm -rf "$dir"
}

# server_fresh_start SYSTEM DIR LOGFILE [WHAT]: a new server with an empty data directory
server_fresh_start() {
  local sys=$1 dir=$2 logf=$3 what=${4:-the group figures}
  if [ "$sys" = oxbow ]; then
    start_twice oxbow_start "$dir" "$logf" && return 0
  else
    kafka_format "$dir" "$logf" && start_twice kafka_start "$dir" "$logf" && return 0
  fi
  note "$sys: fresh server for $what did not start (see $logf)"
  return 1
}

# ---------------------------------------------------------------- transactions
# kv LINE NAME: the value of NAME=value in a "k=v k=v" line (empty if absent)
kv() { tr ' ' '\n' <<< "$1" | sed -n "s/^$2=//p" | head -n 1; }

# txn_phase SYSTEM RUN: the txn figure on a fresh server: TxnBench produce (TXN_COUNT transactions
# of TXN_RECORDS records, a commit each) and a read_committed read of the topic; records
# txn_{rps,mibs,tps,commit_p50,commit_p99,commit_p999,rc_mibs,rc_rps} (+ txn_puts_per_txn for Oxbow)
TXN_VERSIONS=""
txn_phase() {
  local sys=$1 run=$2 dir="$work/$1-txn-r$2" logf="$logs/$1-txn-r$2.log" topic=bench-txn
  local outf="$logs/txn-producer-$1-r$2.txt" coutf="$logs/txn-consumer-$1-r$2.txt"
  local expected=$((TXN_COUNT * TXN_RECORDS)) line v records end
  rm -rf "$dir"; mkdir -p "$dir"
  server_fresh_start "$sys" "$dir" "$logf" "the txn figure" || { rm -rf "$dir"; return 0; }
  if ! create_topic "$topic" 3; then
    note "$sys run $run: topic for the txn figure failed"
    stop_pid "$SERVER_PID"; rm -rf "$dir"; return 0
  fi
  [ "$sys" = oxbow ] && snap t0
  log "run $run $sys: $TXN_COUNT transactions of $TXN_RECORDS x $RECORD_SIZE B to $topic, a commit each"
  if timeout "$CLIENT_TIMEOUT" "${CLIENT_JAVA[@]}" -cp "$client_libs/*:$work/classes" TxnBench produce "$BOOT" \
      "$topic" "$TXN_COUNT" "$TXN_RECORDS" "$RECORD_SIZE" "oxbow-bench-txn-$sys-r$run-$stamp" \
      "$((CLIENT_TIMEOUT - 30))" > "$outf" 2>&1 \
      && line=$(grep '^txns=' "$outf" | tail -n 1) && [ -n "$line" ]; then
    [ "$sys" = oxbow ] && snap t1
    log "run $run $sys: $(kv "$line" records_per_sec) rec/s, $(kv "$line" mib_per_sec) MiB/s," \
      "$(kv "$line" txns_per_sec) txn/s; commit p50 $(kv "$line" commit_p50_ms) ms, p99 $(kv "$line" commit_p99_ms) ms," \
      "p99.9 $(kv "$line" commit_p999_ms) ms, max $(kv "$line" commit_max_ms) ms; initTransactions $(kv "$line" init_ms) ms"
    rec "$sys" "$run" txn_count "$TXN_COUNT"; rec "$sys" "$run" txn_records "$TXN_RECORDS"
    rec "$sys" "$run" txn_rps "$(kv "$line" records_per_sec)"
    rec "$sys" "$run" txn_mibs "$(kv "$line" mib_per_sec)"
    rec "$sys" "$run" txn_tps "$(kv "$line" txns_per_sec)"
    for v in p50 p99 p999 mean; do rec "$sys" "$run" "txn_commit_$v" "$(kv "$line" "commit_${v}_ms")"; done
    v=$(kv "$line" transaction_version)
    [[ " $TXN_VERSIONS " == *" $sys=$v "* ]] || TXN_VERSIONS="${TXN_VERSIONS:+$TXN_VERSIONS }$sys=$v"
    if [ "$sys" = oxbow ]; then
      rec oxbow "$run" txn_puts_per_txn "$(calc "$(mdelta t0 t1 oxbow_object_puts_total) / $TXN_COUNT")"
      local ccount; ccount=$(mdelta t0 t1 oxbow_controller_commit_seconds_count)
      [ "$ccount" != 0 ] && rec oxbow "$run" txn_ctrl_commit_ms \
        "$(calc "1000 * $(mdelta t0 t1 oxbow_controller_commit_seconds_sum) / $ccount")"
    fi
    if grep -q "Exception\|ERROR" "$outf"; then
      note "$sys run $run: TxnBench produce output has errors: $(grep -m1 'Exception\|ERROR' "$outf" | cut -c1-200)"
    fi
    log "run $run $sys: read_committed read of $topic"
    if timeout "$CLIENT_TIMEOUT" "${CLIENT_JAVA[@]}" -cp "$client_libs/*:$work/classes" TxnBench consume "$BOOT" \
        "$topic" "$expected" "$((CLIENT_TIMEOUT - 60))" > "$coutf" 2>&1 \
        && line=$(grep '^records=' "$coutf" | tail -n 1) && [ -n "$line" ]; then
      records=$(kv "$line" records); end=$(kv "$line" end)
      log "run $run $sys: read_committed: $(kv "$line" mib_per_sec) MiB/s, $(kv "$line" records_per_sec) rec/s" \
        "($records records; end offsets sum to $end)"
      [ "$records" = "$expected" ] || note "$sys run $run: read_committed read $records records (end offsets" \
        "summing to $end), but $expected were committed (see $coutf)"
      rec "$sys" "$run" txn_rc_mibs "$(kv "$line" mib_per_sec)"
      rec "$sys" "$run" txn_rc_rps "$(kv "$line" records_per_sec)"
    else
      note "$sys run $run: TxnBench consume failed: $(grep -m1 'Exception' "$coutf" | cut -c1-240) (see $coutf)"
    fi
  else
    note "$sys run $run: TxnBench produce failed: $(grep -m1 'Exception' "$outf" | cut -c1-240) (see $outf)"
  fi
  stop_pid "$SERVER_PID"
  rm -rf "$dir"
}

# ---------------------------------------------------------------- oxbow metrics
snap() { $lib metrics "$METRICS" > "$work/snap-$1" || { note "could not read $METRICS"; : > "$work/snap-$1"; }; }
mval() { awk -v k="$2" '$1 == k { print $2; f = 1 } END { if (!f) print 0 }' "$work/snap-$1"; }
mdelta() { calc "$(mval "$2" "$3") - $(mval "$1" "$3")"; }
gib() { calc "$1 / 1073741824"; }

# ---------------------------------------------------------------- one run per system
run_oxbow() {
  local run=$1 data="$work/oxbow-r$1" logf="$logs/oxbow-r$1.log" g3 g1000 t0 rss1 rss2
  mkdir -p "$data"
  start_twice oxbow_start "$data" "$logf" || { note "oxbow run $run: server did not start"; return 1; }
  create_topic bench-p3 3 || { note "oxbow run $run: topic creation failed"; return 1; }
  create_topic bench-p1000 1000 || { note "oxbow run $run: topic creation failed"; return 1; }
  rec oxbow "$run" topic_ready_s "$TOPIC_READY_S"
  g3=$(gib "$RECORDS_3P * $RECORD_SIZE"); g1000=$(gib "$RECORDS_1000P * $RECORD_SIZE")

  snap p0
  produce oxbow "$run" bench-p3 "$RECORDS_3P" p3 || return 1
  snap p1
  consume oxbow "$run" bench-p3 "$RECORDS_3P" c_hot_p3_mibs || return 1
  snap p2
  [ "$CONSUMED_BYTES" -gt 0 ] && rec oxbow "$run" gets_per_gib_hot_p3 "$(calc "$(mdelta p1 p2 oxbow_object_gets_total) / $(gib "$CONSUMED_BYTES")")"
  produce oxbow "$run" bench-p1000 "$RECORDS_1000P" p1000 || return 1
  snap p3
  consume oxbow "$run" bench-p1000 "$RECORDS_1000P" c_hot_p1000_mibs || return 1
  snap p4
  [ "$CONSUMED_BYTES" -gt 0 ] && rec oxbow "$run" gets_per_gib_hot_p1000 "$(calc "$(mdelta p3 p4 oxbow_object_gets_total) / $(gib "$CONSUMED_BYTES")")"

  local puts3 puts1000
  puts3=$(mdelta p0 p1 oxbow_object_puts_total); puts1000=$(mdelta p2 p3 oxbow_object_puts_total)
  rec oxbow "$run" puts_per_gib_p3 "$(calc "$puts3 / $g3")"
  rec oxbow "$run" puts_per_gib_p1000 "$(calc "$puts1000 / $g1000")"
  [ "$puts3" != 0 ] && rec oxbow "$run" obj_kib_p3 "$(calc "$(mdelta p0 p1 oxbow_object_put_bytes_total) / $puts3 / 1024")"
  [ "$puts1000" != 0 ] && rec oxbow "$run" obj_kib_p1000 "$(calc "$(mdelta p2 p3 oxbow_object_put_bytes_total) / $puts1000 / 1024")"
  local putb inb csum ccount
  putb=$(mdelta p0 p3 oxbow_object_put_bytes_total); inb=$(mdelta p0 p3 oxbow_bytes_in_total)
  [ "$inb" != 0 ] && rec oxbow "$run" put_amp "$(calc "$putb / $inb")"
  csum=$(mdelta p0 p3 oxbow_controller_commit_seconds_sum); ccount=$(mdelta p0 p3 oxbow_controller_commit_seconds_count)
  [ "$ccount" != 0 ] && rec oxbow "$run" commit_ms "$(calc "1000 * $csum / $ccount")"
  log "run $run oxbow: PUTs $puts3 (3p) / $puts1000 (1000p); object bytes $putb for $inb produce bytes"
  group_consume_all oxbow "$run"

  rss1=$(peak_rss_kib "$SERVER_PID")
  log "run $run oxbow: restarting (cold reads come from objects only)"
  stop_pid "$SERVER_PID"
  t0=$(date +%s.%N)
  start_twice oxbow_start "$data" "$logf" || { note "oxbow run $run: server did not restart"; return 1; }
  rec oxbow "$run" restart_s "$(calc "$(date +%s.%N) - $t0")"
  snap c0
  consume oxbow "$run" bench-p3 "$RECORDS_3P" c_cold_p3_mibs || return 1
  snap c1
  [ "$CONSUMED_BYTES" -gt 0 ] && rec oxbow "$run" gets_per_gib_cold_p3 "$(calc "$(mdelta c0 c1 oxbow_object_gets_total) / $(gib "$CONSUMED_BYTES")")"
  consume oxbow "$run" bench-p1000 "$RECORDS_1000P" c_cold_p1000_mibs || return 1
  snap c2
  [ "$CONSUMED_BYTES" -gt 0 ] && rec oxbow "$run" gets_per_gib_cold_p1000 "$(calc "$(mdelta c1 c2 oxbow_object_gets_total) / $(gib "$CONSUMED_BYTES")")"
  rss2=$(peak_rss_kib "$SERVER_PID")
  stop_pid "$SERVER_PID"
  rec oxbow "$run" peak_rss_mib "$(calc "($rss1 > $rss2 ? $rss1 : $rss2) / 1024")"
  rec oxbow "$run" meta_kib "$(calc "$(du -sb "$data/controller" | cut -f1) / 1024")"
  log "run $run oxbow: peak RSS ${rss1} KiB before restart, ${rss2} KiB after; controller dir $(du -sh "$data/controller" | cut -f1)"
  rm -rf "$data"
}

run_kafka() {
  local run=$1 dir="$work/kafka-r$1" logf="$logs/kafka-r$1.log" t0 rss1 rss2
  mkdir -p "$dir"
  kafka_format "$dir" "$logf" || { note "kafka run $run: storage format failed"; return 1; }
  start_twice kafka_start "$dir" "$logf" || { note "kafka run $run: server did not start"; return 1; }
  create_topic bench-p3 3 || { note "kafka run $run: topic creation failed"; return 1; }
  create_topic bench-p1000 1000 || { note "kafka run $run: topic creation failed"; return 1; }
  rec kafka "$run" topic_ready_s "$TOPIC_READY_S"
  produce kafka "$run" bench-p3 "$RECORDS_3P" p3 || return 1
  consume kafka "$run" bench-p3 "$RECORDS_3P" c_hot_p3_mibs || return 1
  produce kafka "$run" bench-p1000 "$RECORDS_1000P" p1000 || return 1
  consume kafka "$run" bench-p1000 "$RECORDS_1000P" c_hot_p1000_mibs || return 1
  group_consume_all kafka "$run"
  rss1=$(peak_rss_kib "$SERVER_PID")
  log "run $run kafka: restarting (page cache not dropped: reads may still be warm)"
  stop_pid "$SERVER_PID"
  t0=$(date +%s.%N)
  start_twice kafka_start "$dir" "$logf" || { note "kafka run $run: server did not restart"; return 1; }
  rec kafka "$run" restart_s "$(calc "$(date +%s.%N) - $t0")"
  consume kafka "$run" bench-p3 "$RECORDS_3P" c_cold_p3_mibs || return 1
  consume kafka "$run" bench-p1000 "$RECORDS_1000P" c_cold_p1000_mibs || return 1
  rss2=$(peak_rss_kib "$SERVER_PID")
  stop_pid "$SERVER_PID"
  rec kafka "$run" peak_rss_mib "$(calc "($rss1 > $rss2 ? $rss1 : $rss2) / 1024")"
  rec kafka "$run" meta_kib "$(calc "$(du -sb "$dir/data/__cluster_metadata-0" | cut -f1) / 1024")"
  rm -rf "$dir"
}

# ---------------------------------------------------------------- main
prepare
cpu_psi() { awk '/^some/ { sub("avg300=", "", $4); print $4 "%" }' /proc/pressure/cpu 2>/dev/null || echo "?"; }
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
psi_start=$(cpu_psi)
t_start=$(date +%s)
for ((run = 1; run <= RUNS; run++)); do
  for sys in $SYSTEMS; do
    if has_figure throughput; then
      log "=== run $run/$RUNS: $sys"
      if ! "run_$sys" "$run"; then
        note "$sys run $run did not complete; its remaining figures are missing (logs in $logs)"
        [ -n "${SERVER_PID:-}" ] && stop_pid "$SERVER_PID"
        rm -rf "$work/$sys-r$run"
      fi
    fi
    if has_figure rebalance || has_figure groupmem; then
      log "=== run $run/$RUNS: $sys, groups"
      groups_phase "$sys" "$run"
    fi
    if has_figure txn; then
      log "=== run $run/$RUNS: $sys, transactions"
      txn_phase "$sys" "$run"
    fi
  done
done
elapsed=$(( $(date +%s) - t_start ))

# Oxbow's warnings and errors, for the report.
oxbow_problems=$(cat "$logs"/oxbow-*.log 2>/dev/null | sed -E 's/\x1b\[[0-9;]*m//g' \
  | grep -E ' (WARN|ERROR) |panicked' | sed -E 's/^[^ ]+ +//' \
  | sed -E 's/[0-9]+/N/g' | sort | uniq -c | sort -rn | head -n 15 || true)

header="$work/header"
{
  echo "Oxbow vs Apache Kafka 4.1.1 - scripts/bench.sh, $(date -Is)"
  echo "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet HEAD -- 2>/dev/null || echo ' (+ uncommitted changes)')," \
       "$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM," \
       "$(java -version 2>&1 | head -n 1)"
  echo "runs: $RUNS per system; per run: $RECORDS_3P records to 3 partitions, $RECORDS_1000P records to 1000" \
       "partitions, $RECORD_SIZE B each, producer props: ${PRODUCER_PROPS[*]}; took ${elapsed}s"
  echo "figures: $FIGURES; group protocols: $GROUP_PROTOCOLS; rebalance: $REBALANCE_MEMBERS members," \
       "$REBALANCE_MODES, bound ${REBALANCE_TIMEOUT_S}s, a record per partition every ${REBALANCE_INTERVAL_MS} ms;" \
       "memory: $MEM_GROUPS groups"
  if has_figure txn; then
    echo "transactions: $TXN_COUNT per run of $TXN_RECORDS records ($RECORD_SIZE B, 3 partitions), acks=all," \
         "linger.ms=5, a commit each; finalized transaction.version: ${TXN_VERSIONS:-?}"
  fi
  echo "load average at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg);" \
       "CPU pressure (PSI some avg300) at start: $psi_start, at end: $(cpu_psi) (other work on this machine skews figures)"
  if [ -s "$notes" ]; then echo; echo "Problems during the run:"; sed 's/^/  - /' "$notes"; fi
  if [ -n "$oxbow_problems" ]; then echo; echo "Oxbow log WARN/ERROR lines (count, digits as N):"; echo "$oxbow_problems"; fi
} > "$header"
echo >&2
$lib report "$raw" "$results" "$header"
echo "written to ${results#"$root"/} (per-run values: ${raw#"$root"/}, logs: ${logs#"$root"/}/)"
