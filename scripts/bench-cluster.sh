#!/usr/bin/env bash
# Benchmark of a 3-controller, 3-broker cluster on this machine (127.0.0.1): Oxbow
# (plus s3s-fs as the object store) and Apache Kafka 4.1.1 (KRaft, 3 controllers + 3
# brokers, started from the Maven Central jars as scripts/bench.sh does), one system at
# a time. A benchmark, not a test: it asserts nothing about timings. Prints, as medians
# over RUNS runs with Oxbow's ratio to Kafka where Kafka has the same figure:
#   1. produce throughput and latency with every partition led by 1 broker, and spread
#      over 3 brokers (the same ProducerPerformance load for both systems);
#   2. Oxbow's controller commit latency p50/p99 during those runs;
#   3. time until a new controller leader after kill -9 of the leader;
#   4. reassignment of a SMALL_MIB and a LARGE_MIB partition until the new leader serves
#      produce and fetch (Oxbow moves ownership; Kafka copies the data);
#   5. the leader controller's RSS, data directory and snapshot with META_TOPICS x
#      META_PARTITIONS partitions (a second, fresh cluster).
# The table goes to stdout and bench-out/cluster-<timestamp>.txt; per-run values to
# bench-out/cluster-<timestamp>.tsv; logs to bench-out/cluster-<timestamp>-logs/.
#
#   scripts/bench-cluster.sh              # RUNS=3, full sizes (about 20-30 min on a busy 2-core machine)
#   QUICK=1 scripts/bench-cluster.sh      # RUNS=1, small sizes: checks the script (about 6-9 min)
#
# Knobs (environment):
#   OXBOW_BIN=target/release/oxbow   the binary (never built by this script)
#   RUNS=3 (QUICK: 1)                runs of figures 1-3 and of the SMALL_MIB reassignment
#   LARGE_RUNS=1                     runs of the LARGE_MIB reassignment
#   RECORDS=200000 (QUICK: 20000)    records per produce run; RECORD_SIZE=1024 bytes
#   WARMUP_RECORDS=RECORDS/2         produced once to each produce topic before the runs (not measured)
#   PARTITIONS=12                    partitions of the produce topics
#   SMALL_MIB=10, LARGE_MIB=1024 (QUICK: 100)
#   META_TOPICS=100 (QUICK: 10), META_PARTITIONS=100
#   KAFKA_RF=3                       replication factor of Kafka's produce topics (min.insync.replicas=2)
#   SYSTEMS="oxbow kafka"            which systems, in this order
#   FIGURES="produce reassign metadata"  which parts (elections run between produce runs:
#                                    "produce" includes them; ELECTIONS=0 leaves them out)
#   COMMIT_QUIET_S=66                Oxbow: seconds without commits before each produce run (see note (a))
#   BENCH_TIMEOUT_S                  the whole script stops (cleanly) after this many seconds
#                                    (default 7200, QUICK: 2700)
#   BENCH_KEEP=1                     keep the temporary directory (data dirs) at the end
#   BENCH_RUST_LOG=info,openraft=warn  RUST_LOG of the Oxbow processes
#   OXBOW_TOOLS                      tools cache (default ~/.cache/oxbow-tools), as for setup.sh
# Every process listens on 127.0.0.1 on free ports and is stopped by PID at the end (also on
# failure, Ctrl-C or the time bound); data goes to a temporary directory removed at the end.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_dir="$root/scripts/bench"
tools="${OXBOW_TOOLS:-$HOME/.cache/oxbow-tools}"
client_libs="$tools/kafka-libs"
server_libs="$tools/bench-kafka-server-libs"
oxbow_bin="${OXBOW_BIN:-$root/target/release/oxbow}"
lib="python3 $bench_dir/clusterlib.py"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  RUNS=${RUNS:-1}; RECORDS=${RECORDS:-20000}; LARGE_MIB=${LARGE_MIB:-100}; META_TOPICS=${META_TOPICS:-10}
  BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-2700}
else
  RUNS=${RUNS:-3}; RECORDS=${RECORDS:-200000}; LARGE_MIB=${LARGE_MIB:-1024}; META_TOPICS=${META_TOPICS:-100}
  BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-7200}
fi
LARGE_RUNS=${LARGE_RUNS:-1}
RECORD_SIZE=${RECORD_SIZE:-1024}
PARTITIONS=${PARTITIONS:-12}
WARMUP_RECORDS=${WARMUP_RECORDS:-$((RECORDS / 2))}
SMALL_MIB=${SMALL_MIB:-10}
META_PARTITIONS=${META_PARTITIONS:-100}
KAFKA_RF=${KAFKA_RF:-3}
SYSTEMS=${SYSTEMS:-"oxbow kafka"}
FIGURES=${FIGURES:-"produce reassign metadata"}
ELECTIONS=${ELECTIONS:-1}
COMMIT_QUIET_S=${COMMIT_QUIET_S:-66}
KAFKA_SNAPSHOT_MS=5000
PRODUCER_PROPS=(acks=all linger.ms=5)
FILL_RECORD=10240   # record size used to fill the partitions that are reassigned
CLIENT_JAVA=(java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -Dorg.slf4j.simpleLogger.showDateTime=true
  "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSXXX")
RUST_LOG_OXBOW=${BENCH_RUST_LOG:-info,openraft=warn}

stamp=$(date +%Y%m%d-%H%M%S)
out_dir="$root/bench-out"
mkdir -p "$out_dir"
results="$out_dir/cluster-$stamp.txt"
raw="$out_dir/cluster-$stamp.tsv"
logs="$out_dir/cluster-$stamp-logs"
mkdir -p "$logs"
work=$(mktemp -d "${TMPDIR:-/tmp}/oxbow-bench-cluster.XXXXXX")
notes="$work/notes"
loadlog="$work/load"
: > "$notes"
: > "$raw"

log() { echo "bench-cluster $(date +%H:%M:%S): $*" >&2; }
note() { echo "$*" >> "$notes"; log "NOTE: $*"; }
calc() { awk "BEGIN { printf \"%.6g\", $1 }"; }
now() { date +%s.%N; }
rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$raw"; }
has() { [[ " $2 " == *" $1 "* ]]; }
load_now() { cut -d' ' -f1-3 /proc/loadavg; }

# ---------------------------------------------------------------- processes
# Every server started is in PIDS (stopped in reverse order: brokers before controllers
# before the object store); CLIENT_PID is the client command being waited for.
PIDS=()
CLIENT_PID=
WATCHDOG_PID=
LOAD_PID=
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
stop_all() {  # every server: brokers, then controllers (a broker's clean stop commits through them), then the rest
  local i p
  for p in "${BROKER_PIDS[@]}"; do has "$p" "${PIDS[*]-}" && stop_pid "$p" "${1:-30}"; done
  for p in "${CTRL_PIDS[@]}"; do has "$p" "${PIDS[*]-}" && stop_pid "$p" "${1:-30}"; done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}" "${1:-30}"; done
  BROKER_PIDS=(); CTRL_PIDS=()
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
  local rc=$?
  trap - EXIT INT TERM
  [ -n "$CLIENT_PID" ] && { kill -TERM "$CLIENT_PID" 2>/dev/null || true; wait "$CLIENT_PID" 2>/dev/null || true; }
  stop_all 20
  stop_helper "$WATCHDOG_PID"
  stop_helper "$LOAD_PID"
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT
trap 'log "terminated (time bound of ${BENCH_TIMEOUT_S}s, or SIGTERM)"; exit 143' TERM

# bounded SECONDS OUTFILE CMD...: runs CMD with a time bound, in the background so that a
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

lines_of() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo 0; }
du_kib() { du -sk "$1" | cut -f1; }

# ---------------------------------------------------------------- preparation
prepare() {
  [ -x "$oxbow_bin" ] || { log "no oxbow binary at $oxbow_bin (cargo build --release -p oxbow, or set OXBOW_BIN)"; return 1; }
  [ -x "$tools/bin/s3s-fs" ] && [ -f "$client_libs/kafka-clients-4.1.1.jar" ] || {
    log "s3s-fs or the Kafka client jars missing in $tools; running scripts/setup.sh"
    "$root/scripts/setup.sh"
  }
  if ! cmp -s "$bench_dir/pom.xml" "$server_libs/.pom" 2>/dev/null; then
    log "fetching the Apache Kafka 4.1.1 broker jars from Maven Central into $server_libs"
    rm -rf "$server_libs"
    mvn -q -B -f "$bench_dir/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$server_libs" -DincludeScope=runtime
    cp "$bench_dir/pom.xml" "$server_libs/.pom"
  fi
  mkdir -p "$work/classes"
  javac -nowarn -d "$work/classes" -cp "$client_libs/*" "$bench_dir/BenchConsumer.java" "$bench_dir/BenchCluster.java"
  if "$oxbow_bin" metadata-quorum --help > /dev/null 2>&1; then HAS_QUORUM_TOOL=1; else
    HAS_QUORUM_TOOL=0
    note "$oxbow_bin has no 'metadata-quorum' command: Oxbow's 'describe' election figure is missing"
  fi
}

# ---------------------------------------------------------------- Oxbow cluster
# Globals of the running cluster: BOOT (Kafka bootstrap), CTRL_PIDS[1..3], CTRL_LOG[i],
# CTRL_ADDR[i], CTRL_DIR[i], BROKER_PIDS[1..3], METRICS_URLS (oxbow), KCTRL_* (kafka).
declare -A CTRL_PIDS CTRL_LOG CTRL_ADDR CTRL_DIR CTRL_START BROKER_PIDS KILLS
S3_KEY=oxbowbench
S3_SECRET=oxbowbenchsecret0123456789
S3_BUCKET=oxbow-bench

oxbow_env() {  # the environment of an Oxbow process: no OXBOW_* configuration, the store's credentials
  local unset_args=() v
  for v in $(compgen -e | grep '^OXBOW_' || true); do unset_args+=(-u "$v"); done
  OXBOW_ENV=(env "${unset_args[@]+"${unset_args[@]}"}" RUST_LOG="$RUST_LOG_OXBOW" NO_COLOR=1
    AWS_ACCESS_KEY_ID="$S3_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET" AWS_REGION=us-east-1
    AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true)
}

oxbow_controller_start() {  # oxbow_controller_start ID: (re)starts controller ID on its address
  local i=$1 logf="${CTRL_LOG[$1]}"
  echo "=== start $(date -Is)" >> "$logf"
  CTRL_START[$i]=$(lines_of "$logf")
  "${OXBOW_ENV[@]}" "$oxbow_bin" controller --node-id "$i" --listen "${CTRL_ADDR[$i]}" \
    --voters "$VOTERS" --data-dir "${CTRL_DIR[$i]}" >> "$logf" 2>&1 &
  CTRL_PIDS[$i]=$!
  PIDS+=("$!")
}

oxbow_cluster_start() {  # oxbow_cluster_start NAME: s3s-fs, 3 controllers, 3 brokers
  local name=$1 dir="$work/$1" ports i p=0 logf from
  mkdir -p "$dir/s3/$S3_BUCKET"
  read -r -a ports <<< "$($lib free-ports 10)"
  S3_PORT=${ports[0]}
  "$tools/bin/s3s-fs" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY" \
    --secret-key "$S3_SECRET" "$dir/s3" > "$logs/$name-s3s-fs.log" 2>&1 &
  PIDS+=("$!")
  oxbow_env
  VOTERS=""; CONTROLLERS=""
  for i in 1 2 3; do
    CTRL_ADDR[$i]="127.0.0.1:${ports[$i]}"
    VOTERS+="${VOTERS:+,}$i=${CTRL_ADDR[$i]}"; CONTROLLERS+="${CONTROLLERS:+,}${CTRL_ADDR[$i]}"
  done
  for i in 1 2 3; do
    CTRL_LOG[$i]="$logs/$name-controller-$i.log"; CTRL_DIR[$i]="$dir/controller-$i"
    oxbow_controller_start "$i"
  done
  for i in 1 2 3; do
    wait_log "${CTRL_PIDS[$i]}" "${CTRL_LOG[$i]}" "${CTRL_START[$i]}" "oxbow controller ready" 90 || return 1
  done
  BOOT=""; METRICS_URLS=()
  for i in 1 2 3; do
    local kport=${ports[$((3 + 2 * i - 1))]} mport=${ports[$((3 + 2 * i))]}
    logf="$logs/$name-broker-$i.log"
    echo "=== start $(date -Is)" >> "$logf"
    "${OXBOW_ENV[@]}" "$oxbow_bin" broker --node-id "$i" --controllers "$CONTROLLERS" \
      --data-dir "$dir/broker-$i" --kafka-listen "127.0.0.1:$kport" --advertised-listener "127.0.0.1:$kport" \
      --metrics-listen "127.0.0.1:$mport" --object-store "s3://$S3_BUCKET/cluster" >> "$logf" 2>&1 &
    BROKER_PIDS[$i]=$!
    PIDS+=("$!")
    BOOT+="${BOOT:+,}127.0.0.1:$kport"
    METRICS_URLS+=("http://127.0.0.1:$mport/metrics")
  done
  for i in 1 2 3; do
    wait_log "${BROKER_PIDS[$i]}" "$logs/$name-broker-$i.log" 0 "oxbow ready" 120 || return 1
  done
  log "oxbow cluster $name up: brokers $BOOT, controllers $CONTROLLERS"
}

oxbow_leader() {  # sets LEADER: the running controller that most recently logged that it leads
  local i when="" t
  LEADER=""
  for i in 1 2 3; do
    kill -0 "${CTRL_PIDS[$i]}" 2>/dev/null || continue
    t=$(grep 'controller::duties: leading' "${CTRL_LOG[$i]}" | tail -n 1 | cut -d' ' -f1)
    if [ -n "$t" ] && [[ "$t" > "$when" ]]; then LEADER=$i; when=$t; fi
  done
  [ -n "$LEADER" ] || { log "no running Oxbow controller says it leads"; return 1; }
}

# ---------------------------------------------------------------- Kafka cluster
KAFKA_JVM=(java -Xmx1G -Xms1G -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20
  -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
  -XX:MaxInlineLevel=15 -Djava.awt.headless=true
  -Dorg.slf4j.simpleLogger.showDateTime=true "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSXXX")

kafka_node_start() {  # kafka_node_start NODE_DIR LOGFILE: sets NODE_PID
  local dir=$1 logf=$2
  echo "=== start $(date -Is)" >> "$logf"
  NODE_FROM=$(lines_of "$logf")
  # java itself in the background (not a subshell) so that $! is the JVM.
  "${KAFKA_JVM[@]}" -cp "$server_libs/*" kafka.Kafka "$dir/server.properties" >> "$logf" 2>&1 &
  NODE_PID=$!
  PIDS+=("$!")
}

kafka_cluster_start() {  # kafka_cluster_start NAME [extra controller property lines]
  local name=$1 extra=${2:-} dir="$work/$1" ports i cid voters="" logf
  read -r -a ports <<< "$($lib free-ports 6)"
  cid=$(python3 "$bench_dir/benchlib.py" cluster-id)
  for i in 1 2 3; do
    CTRL_ADDR[$i]="127.0.0.1:${ports[$((i - 1))]}"
    voters+="${voters:+,}$((1000 + i))@${CTRL_ADDR[$i]}"
  done
  KCTRL_BOOT=""
  for i in 1 2 3; do KCTRL_BOOT+="${KCTRL_BOOT:+,}${CTRL_ADDR[$i]}"; done
  BOOT=""
  for i in 1 2 3; do
    local cdir="$dir/controller-$i" bdir="$dir/broker-$i" bport=${ports[$((2 + i))]}
    mkdir -p "$cdir" "$bdir"
    cat > "$cdir/server.properties" <<EOF
process.roles=controller
node.id=$((1000 + i))
controller.quorum.voters=$voters
listeners=CONTROLLER://${CTRL_ADDR[$i]}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT
log.dirs=$cdir/data
$extra
EOF
    cat > "$bdir/server.properties" <<EOF
process.roles=broker
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$bport
advertised.listeners=PLAINTEXT://127.0.0.1:$bport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$bdir/data
group.initial.rebalance.delay.ms=0
EOF
    BOOT+="${BOOT:+,}127.0.0.1:$bport"
    CTRL_DIR[$i]="$cdir"
  done
  local d fmt_pids=() fp
  for d in "$dir"/controller-? "$dir"/broker-?; do
    timeout 120 "${KAFKA_JVM[@]}" -cp "$server_libs/*" kafka.tools.StorageTool format -t "$cid" \
      -c "$d/server.properties" >> "$logs/$name-format-$(basename "$d").log" 2>&1 &
    fmt_pids+=("$!")
  done
  for fp in "${fmt_pids[@]}"; do wait "$fp" || { log "kafka storage format failed (see $logs/$name-format-*.log)"; return 1; }; done
  for i in 1 2 3; do
    CTRL_LOG[$i]="$logs/$name-controller-$i.log"
    kafka_node_start "$dir/controller-$i" "${CTRL_LOG[$i]}"
    CTRL_PIDS[$i]=$NODE_PID; CTRL_START[$i]=$NODE_FROM
  done
  for i in 1 2 3; do
    logf="$logs/$name-broker-$i.log"
    kafka_node_start "$dir/broker-$i" "$logf"
    BROKER_PIDS[$i]=$NODE_PID
  done
  for i in 1 2 3; do
    wait_log "${CTRL_PIDS[$i]}" "${CTRL_LOG[$i]}" "${CTRL_START[$i]}" "Kafka Server started" 180 || return 1
  done
  for i in 1 2 3; do
    wait_log "${BROKER_PIDS[$i]}" "$logs/$name-broker-$i.log" 0 "Kafka Server started" 180 || return 1
  done
  log "kafka cluster $name up: brokers $BOOT, controllers $KCTRL_BOOT"
}

kafka_leader() {  # sets LEADER (1..3), the active controller per DescribeMetadataQuorum, and KAFKA_HW
  local out="$work/quorum-leader.out" id
  LEADER=""
  bounded 60 "$out" "${CLIENT_JAVA[@]}" -cp "$client_libs/*:$work/classes" BenchCluster quorum-leader "$KCTRL_BOOT" \
    || { log "DescribeMetadataQuorum failed:"; tail -n 5 "$out" >&2; return 1; }
  id=$(grep -o 'leader=[0-9]*' "$out" | cut -d= -f2)
  KAFKA_HW=$(grep -o 'high_watermark=[0-9-]*' "$out" | cut -d= -f2 || true)
  LEADER=$((id - 1000))
}

# start_cluster SYSTEM NAME [extra]: one retry (new ports) if a start fails.
start_cluster() {
  local sys=$1
  shift
  "${sys}_cluster_start" "$@" && return 0
  log "$sys cluster $1 did not start; retrying once with new ports"
  stop_all 20
  rm -rf "${work:?}/$1"
  "${sys}_cluster_start" "$@"
}

# ---------------------------------------------------------------- clients
java_client() {  # java_client SECONDS OUTFILE CLASS ARGS...
  local secs=$1 outf=$2
  shift 2
  bounded "$secs" "$outf" "${CLIENT_JAVA[@]}" -cp "$client_libs/*:$work/classes" "$@"
}

wait_ready() {  # wait_ready TOPIC PARTITIONS: every partition answers ListOffsets on its leader
  java_client 300 "$work/ready.out" BenchConsumer --wait-ready "$BOOT" "$1" "$2" 240 \
    || { log "topic $1 not ready:"; tail -n 5 "$work/ready.out" >&2; return 1; }
}

# create_produce_topic SYSTEM TOPIC LAYOUT: LAYOUT 1 = every leader on broker 1, 3 = round robin
create_produce_topic() {
  local sys=$1 topic=$2 layout=$3 assign="" p r out="$work/create.out"
  if [ "$sys" = oxbow ]; then
    java_client 300 "$out" BenchCluster create-topics "$BOOT" "$topic" 1 "$PARTITIONS" 1 240 \
      || { log "creating $topic failed:"; tail -n 5 "$out" >&2; return 1; }
    # Oxbow ignores replica assignments at creation: move the partitions.
    local target=1
    [ "$layout" = 3 ] && target=rr
    java_client 300 "$out" BenchCluster move-all "$BOOT" "${topic}0" "$target" 240 \
      || { log "moving $topic failed:"; tail -n 5 "$out" >&2; return 1; }
  else
    for ((p = 0; p < PARTITIONS; p++)); do
      local first=1
      [ "$layout" = 3 ] && first=$((p % 3 + 1))
      local reps=""
      for ((r = 0; r < KAFKA_RF; r++)); do reps+="${reps:+:}$(((first - 1 + r) % 3 + 1))"; done
      assign+="${assign:+,}$reps"
    done
    local misr=$((KAFKA_RF < 2 ? 1 : 2))
    java_client 300 "$out" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOT" --create \
      --topic "${topic}0" --replica-assignment "$assign" --config "min.insync.replicas=$misr" \
      || { log "creating $topic failed:"; grep -v ' INFO ' "$out" | tail -n 5 >&2; return 1; }
  fi
  wait_ready "${topic}0" "$PARTITIONS"
}

LAST_COMMITS=0
# produce_run SYSTEM RUN TOPIC KEY: figures KEY_{mibs,rps,lat50,lat99}; Oxbow also commit figures
produce_run() {
  local sys=$1 run=$2 topic=$3 key=$4 outf="$logs/producer-$1-r$2-$4.txt" fig wait_s
  if [ "$sys" = oxbow ]; then
    wait_s=$(calc "$COMMIT_QUIET_S - ($(now) - $LAST_COMMITS)")
    if awk "BEGIN { exit !($wait_s > 0) }"; then
      log "waiting ${wait_s%.*}s so that the commit summary holds only the next run"
      sleep "$wait_s" & CLIENT_PID=$!; wait "$CLIENT_PID"; CLIENT_PID=
    fi
    java_client 120 "$work/prime.out" BenchCluster prime "$BOOT" "$topic" || note "$sys run $run: priming $topic failed"
    $lib commit-scrape "${METRICS_URLS[@]}" > "$work/commit-before"
  fi
  log "run $run $sys: produce $RECORDS x $RECORD_SIZE B to $topic ($key)"
  if ! bounded 900 "$outf" "${CLIENT_JAVA[@]}" -cp "$client_libs/*" org.apache.kafka.tools.ProducerPerformance \
      --topic "$topic" --num-records "$RECORDS" --record-size "$RECORD_SIZE" --throughput -1 \
      --producer-props bootstrap.servers="$BOOT" "${PRODUCER_PROPS[@]}"; then
    note "$sys run $run: ProducerPerformance on $topic failed (see ${outf#"$root"/})"
    LAST_COMMITS=$(now)
    return 1
  fi
  if [ "$sys" = oxbow ]; then
    $lib commit-scrape "${METRICS_URLS[@]}" > "$work/commit-after"
    LAST_COMMITS=$(now)
    local c u
    for u in "${METRICS_URLS[@]}"; do
      { echo "# $u"; curl -s --max-time 10 "$u" | grep '^oxbow_controller_commit_seconds' || true; } >> "$logs/commit-metrics-r$run-$key.txt"
    done
    if c=$($lib commit-figures "$work/commit-before" "$work/commit-after"); then
      read -r c50 c99 cmax cmean cn <<< "$c"
      local ck=c${key#p}
      rec "$sys" "$run" "${ck}_p50" "$c50"; rec "$sys" "$run" "${ck}_p99" "$c99"; rec "$sys" "$run" "${ck}_max" "$cmax"
      rec "$sys" "$run" "${ck}_mean" "$cmean"; rec "$sys" "$run" "${ck}_n" "$cn"
      log "run $run $sys: controller commit p50 ${c50} ms, p99 ${c99} ms, max ${cmax} ms, mean ${cmean} ms, $cn commits"
    else
      note "$sys run $run: no controller commit figures for $topic"
    fi
  fi
  grep -Eq "^$RECORDS records sent" "$outf" || note "$sys run $run: $topic: producer summary does not report $RECORDS records sent"
  if grep -q "Exception\|ERROR" "$outf"; then
    note "$sys run $run: $topic: producer output has errors: $(grep -m1 'Exception\|ERROR' "$outf" | cut -c1-200)"
  fi
  fig=$(python3 "$bench_dir/benchlib.py" producer "$outf") || { note "$sys run $run: no summary in $outf"; return 1; }
  read -r mibs rps _avg p50 p99 _p999 <<< "$fig"
  log "run $run $sys: $key: $mibs MiB/s, $rps rec/s, latency p50 $p50 ms, p99 $p99 ms"
  rec "$sys" "$run" "${key}_mibs" "$mibs"; rec "$sys" "$run" "${key}_rps" "$rps"
  rec "$sys" "$run" "${key}_lat50" "$p50"; rec "$sys" "$run" "${key}_lat99" "$p99"
}

# ---------------------------------------------------------------- elections
election_run() {  # election_run SYSTEM RUN
  local sys=$1 run=$2 old addrs=() i t_kill seen="" logt="" pattern poll_pid="" pollf="$logs/election-$1-r$2.txt"
  if [ "$sys" = oxbow ]; then
    pattern='controller::duties: leading'
    oxbow_leader || return 1
    old=$LEADER
  else
    pattern='Becoming the active controller'
    # The poller connects and learns the leader first; that leader is killed.
    : > "$pollf"
    timeout 150 "${CLIENT_JAVA[@]}" -cp "$client_libs/*:$work/classes" BenchCluster quorum-wait \
      "$KCTRL_BOOT" 120 > "$pollf" 2>&1 &
    poll_pid=$!
    CLIENT_PID=$poll_pid
    for ((i = 0; i < 600; i++)); do
      grep -q '^polling leader=' "$pollf" && break
      kill -0 "$poll_pid" 2>/dev/null || break
      sleep 0.1
    done
    old=$(grep -o '^polling leader=[0-9]*' "$pollf" | cut -d= -f2)
    if [ -z "$old" ]; then
      kill -TERM "$poll_pid" 2>/dev/null || true; wait "$poll_pid" 2>/dev/null || true; CLIENT_PID=
      note "$sys run $run: DescribeMetadataQuorum named no leader; no election run"
      return 0
    fi
    old=$((old - 1000))
  fi
  local froms=()
  for i in 1 2 3; do froms[$i]=$(lines_of "${CTRL_LOG[$i]}"); done
  log "run $run $sys: kill -9 of controller leader $old (pid ${CTRL_PIDS[$old]})"
  t_kill=$(now)
  kill -KILL "${CTRL_PIDS[$old]}"
  KILLS[$sys]=$((${KILLS[$sys]:-0} + 1))
  wait "${CTRL_PIDS[$old]}" 2>/dev/null || true
  stop_pid "${CTRL_PIDS[$old]}" 1
  if [ "$sys" = oxbow ]; then
    if [ "$HAS_QUORUM_TOOL" = 1 ]; then
      for i in 1 2 3; do [ "$i" = "$old" ] || addrs+=("${CTRL_ADDR[$i]}"); done
      if bounded 90 "$pollf" $lib oxbow-leader-wait "$oxbow_bin" "$old" 60 "${addrs[@]}"; then
        seen=$(grep -o 'seen=[0-9.]*' "$pollf" | cut -d= -f2)
      else
        note "$sys run $run: metadata-quorum describe showed no new leader: $(tail -n 1 "$pollf")"
      fi
    fi
  else
    wait "$poll_pid" && seen=$(awk -F'seen_ms=' '/seen_ms=/ { split($2, a, " "); printf "%.3f", a[1] / 1000 }' "$pollf") \
      || note "$sys run $run: DescribeMetadataQuorum showed no new leader: $(tail -n 1 "$pollf")"
    CLIENT_PID=
  fi
  # The new leader's own log line (wait for it: it may come after describe saw the leader).
  local j tries=0
  while [ -z "$logt" ] && [ "$tries" -lt 150 ]; do
    for j in 1 2 3; do
      [ "$j" = "$old" ] && continue
      if logt=$($lib log-time "${CTRL_LOG[$j]}" "${froms[$j]}" "$pattern" "$t_kill" 2>/dev/null); then break; fi
      logt=""
    done
    [ -n "$logt" ] || sleep 0.2
    tries=$((tries + 1))
  done
  if [ -n "$logt" ]; then rec "$sys" "$run" el_log "$(calc "$logt - $t_kill")"; else
    note "$sys run $run: no surviving controller logged '$pattern' within 30 s of the kill"
  fi
  [ -n "$seen" ] && rec "$sys" "$run" el_seen "$(calc "$seen - $t_kill")"
  log "run $run $sys: new leader logged after $( [ -n "$logt" ] && calc "$logt - $t_kill" || echo '?')s, seen after $( [ -n "$seen" ] && calc "$seen - $t_kill" || echo '?')s"
  # Bring the killed controller back and wait until it has rejoined.
  if [ "$sys" = oxbow ]; then
    oxbow_controller_start "$old"
    wait_log "${CTRL_PIDS[$old]}" "${CTRL_LOG[$old]}" "${CTRL_START[$old]}" "oxbow controller ready" 90 \
      || { note "$sys run $run: controller $old did not rejoin"; return 1; }
  else
    kafka_node_start "${CTRL_DIR[$old]}" "${CTRL_LOG[$old]}"
    CTRL_PIDS[$old]=$NODE_PID; CTRL_START[$old]=$NODE_FROM
    wait_log "$NODE_PID" "${CTRL_LOG[$old]}" "$NODE_FROM" "Kafka Server started" 180 \
      || { note "$sys run $run: controller $old did not restart"; return 1; }
  fi
}

# ---------------------------------------------------------------- reassignment
reassign_run() {  # reassign_run SYSTEM RUN MIB KEY
  local sys=$1 run=$2 mib=$3 key=$4 topic="move-$4-r$2-" out="$logs/reassign-$1-r$2-$4.txt" count fill="$logs/fill-$1-r$2-$4.txt"
  count=$((mib * 1048576 / FILL_RECORD))
  if [ "$sys" = oxbow ]; then
    java_client 300 "$work/create.out" BenchCluster create-topics "$BOOT" "$topic" 1 1 1 240 \
      || { log "creating ${topic}0 failed:"; tail -n 5 "$work/create.out" >&2; return 1; }
  else
    java_client 300 "$work/create.out" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOT" --create \
      --topic "${topic}0" --replica-assignment 1 \
      || { log "creating ${topic}0 failed:"; grep -v ' INFO ' "$work/create.out" | tail -n 5 >&2; return 1; }
  fi
  wait_ready "${topic}0" 1 || return 1
  log "run $run $sys: filling ${topic}0 with $mib MiB"
  bounded 1800 "$fill" "${CLIENT_JAVA[@]}" -cp "$client_libs/*" org.apache.kafka.tools.ProducerPerformance \
    --topic "${topic}0" --num-records "$count" --record-size "$FILL_RECORD" --throughput -1 \
    --producer-props bootstrap.servers="$BOOT" acks=all linger.ms=20 batch.size=524288 \
    || { note "$sys run $run: filling ${topic}0 failed (see ${fill#"$root"/})"; LAST_COMMITS=$(now); return 1; }
  LAST_COMMITS=$(now)
  log "run $run $sys: filled: $(tail -n 1 "$fill" | cut -d, -f1-3)"
  log "run $run $sys: reassigning ${topic}0 ($mib MiB)"
  if ! java_client 1800 "$out" BenchCluster reassign "$BOOT" "${topic}0" 1500; then
    note "$sys run $run: reassigning the $mib MiB partition failed: $(grep -v ' WARN \| INFO ' "$out" | grep -m1 'Exception\|timed out' | cut -c1-300)"
    return 1
  fi
  LAST_COMMITS=$(now)
  local line
  line=$(grep '^from=' "$out")
  log "run $run $sys: $line"
  local end
  end=$(sed -E 's/.* end_offset=([0-9]+) .*/\1/' <<< "$line")
  [ "$end" = "$count" ] || note "$sys run $run: ${topic}0 had end offset $end before the move, $count records were sent"
  rec "$sys" "$run" "${key}_meta" "$(sed -E 's/.* metadata_s=([0-9.]+).*/\1/' <<< "$line")"
  rec "$sys" "$run" "${key}_prod" "$(sed -E 's/.* produce_s=([0-9.]+).*/\1/' <<< "$line")"
  rec "$sys" "$run" "${key}_fetch" "$(sed -E 's/.* fetch_s=([0-9.]+).*/\1/' <<< "$line")"
}

# ---------------------------------------------------------------- metadata scale
metadata_run() {  # metadata_run SYSTEM: on a fresh cluster
  local sys=$1 leader out="$work/meta.out" total=$((META_TOPICS * META_PARTITIONS)) pid dir t
  if [ "$sys" = oxbow ]; then
    start_cluster oxbow oxbow-meta || { note "oxbow: metadata cluster did not start"; return 1; }
    oxbow_leader || return 1
    leader=$LEADER
    dir=${CTRL_DIR[$leader]}
  else
    start_cluster kafka kafka-meta "metadata.log.max.snapshot.interval.ms=$KAFKA_SNAPSHOT_MS" \
      || { note "kafka: metadata cluster did not start"; return 1; }
    kafka_leader || return 1
    leader=$LEADER
    dir="${CTRL_DIR[$leader]}/data"
  fi
  pid=${CTRL_PIDS[$leader]}
  sleep 5  # let start-up settle before the baseline
  rec "$sys" 1 m_rss0 "$(rss_mib "$pid")"
  log "$sys: creating $META_TOPICS topics x $META_PARTITIONS partitions (leader controller $leader, pid $pid)"
  java_client 1800 "$out" BenchCluster create-topics "$BOOT" meta- "$META_TOPICS" "$META_PARTITIONS" 1 1500 \
    || { note "$sys: creating $total partitions failed: $(grep -m1 'Exception' "$out" | cut -c1-300)"; return 1; }
  t=$(grep -o 'seconds=[0-9.]*' "$out" | cut -d= -f2)
  rec "$sys" 1 m_create "$t"
  log "$sys: $total partitions have leaders after ${t}s"
  "${sys}_leader" && [ "$LEADER" = "$leader" ] \
    || note "$sys: the controller leader changed during topic creation; figures are of controller $leader"
  sleep 5
  rec "$sys" 1 m_rss "$(rss_mib "$pid")"
  rec "$sys" 1 m_dir "$(du_kib "$dir")"
  log "$sys: leader controller RSS $(rss_mib "$pid") MiB, data dir $(du_kib "$dir") KiB ($(du -sk --apparent-size "$dir" | cut -f1) KiB apparent)"
  if [ "$sys" = oxbow ]; then
    local from stop="$work/pad.stop" pad_out="$work/pad.out" pad_pid line bytes i
    from=$(lines_of "${CTRL_LOG[$leader]}")
    rm -f "$stop"
    log "oxbow: writing no-op reassignments until the leader builds a snapshot (every 20,000 entries)"
    timeout 1800 "${CLIENT_JAVA[@]}" -cp "$client_libs/*:$work/classes" BenchCluster noop-moves "$BOOT" meta- \
      "$META_TOPICS" 8 30000 1500 "$stop" > "$pad_out" 2>&1 &
    pad_pid=$!
    CLIENT_PID=$pad_pid
    line=""
    while kill -0 "$pad_pid" 2>/dev/null; do
      line=$(tail -n +"$((from + 1))" "${CTRL_LOG[$leader]}" | grep -m1 'built metadata snapshot' || true)
      [ -n "$line" ] && break
      sleep 0.5
    done
    touch "$stop"
    wait "$pad_pid" || note "oxbow: the no-op reassignments failed: $(grep -m1 'Exception' "$pad_out" | cut -c1-300)"
    CLIENT_PID=
    [ -n "$line" ] || line=$(tail -n +"$((from + 1))" "${CTRL_LOG[$leader]}" | grep -m1 'built metadata snapshot' || true)
    if [ -n "$line" ]; then
      bytes=$(grep -o 'bytes=[0-9]*' <<< "$line" | cut -d= -f2)
      rec oxbow 1 m_snap "$(calc "$bytes / 1024")"
      rec oxbow 1 m_pad "$(grep -o 'moves=[0-9]*' "$pad_out" | cut -d= -f2 || echo 0)"
      log "oxbow: $line"
      [ "$HAS_QUORUM_TOOL" = 1 ] && "$oxbow_bin" metadata-quorum --controllers "$CONTROLLERS" describe 2>&1 | sed 's/^/  /' >&2
    else
      note "oxbow: the leader built no snapshot ($(tail -n 1 "$pad_out"))"
    fi
  else
    # The newest checkpoint at or after the metadata offset reached by the topic creation.
    local hw=${KAFKA_HW:-0} snapf="" i
    for ((i = 0; i < 120; i++)); do
      snapf=$(find "$dir/__cluster_metadata-0" -name '*.checkpoint' 2>/dev/null | sort | tail -n 1)
      if [ -n "$snapf" ] && [ "$((10#$(basename "$snapf" | cut -d- -f1)))" -ge "$hw" ]; then break; fi
      snapf=""
      sleep 0.5
    done
    if [ -n "$snapf" ]; then
      rec kafka 1 m_snap "$(calc "$(stat -c %s "$snapf") / 1024")"
      log "kafka: snapshot $(basename "$snapf"): $(stat -c %s "$snapf") bytes (metadata high watermark $hw)"
    else
      note "kafka: no snapshot at or after metadata offset $hw within 60 s"
    fi
  fi
  sleep 2
  rec "$sys" 1 m_rss_snap "$(rss_mib "$pid")"
  rec "$sys" 1 m_dir_snap "$(du_kib "$dir")"
  if [ "$sys" = kafka ]; then
    if timeout 60 jcmd "$pid" GC.run > /dev/null 2>&1 && timeout 60 jcmd "$pid" GC.heap_info > "$work/heap.out" 2>&1; then
      rec kafka 1 m_heap "$(awk '/garbage-first heap/ { for (i = 1; i <= NF; i++) if ($i == "used") { v = $(i + 1); sub("K,?", "", v); printf "%.1f", v / 1024 } }' "$work/heap.out")"
    else
      note "kafka: jcmd could not read the controller's heap"
    fi
  fi
  stop_all
}

# ---------------------------------------------------------------- one system
run_system() {
  local sys=$1 run t
  if has produce "$FIGURES" || has reassign "$FIGURES"; then
    log "=== $sys: produce, elections, reassignment"
    start_cluster "$sys" "$sys-work" || { note "$sys: cluster did not start"; return 1; }
    if has produce "$FIGURES"; then
      create_produce_topic "$sys" bench-1b 1 || { note "$sys: produce topic (1 broker) not created"; return 1; }
      create_produce_topic "$sys" bench-3b 3 || { note "$sys: produce topic (3 brokers) not created"; return 1; }
      if [ "$WARMUP_RECORDS" -gt 0 ]; then
        log "$sys: warm-up, $WARMUP_RECORDS records to each produce topic (not measured)"
        for t in bench-1b0 bench-3b0; do
          bounded 900 "$logs/warmup-$sys-$t.txt" "${CLIENT_JAVA[@]}" -cp "$client_libs/*" org.apache.kafka.tools.ProducerPerformance \
            --topic "$t" --num-records "$WARMUP_RECORDS" --record-size "$RECORD_SIZE" --throughput -1 \
            --producer-props bootstrap.servers="$BOOT" "${PRODUCER_PROPS[@]}" || note "$sys: warm-up on $t failed"
        done
        LAST_COMMITS=$(now)
      fi
      for ((run = 1; run <= RUNS; run++)); do
        produce_run "$sys" "$run" bench-1b0 p1 || true
        if [ "$ELECTIONS" = 1 ]; then
          election_run "$sys" "$run" || { note "$sys run $run: election run did not complete"; return 1; }
        fi
        produce_run "$sys" "$run" bench-3b0 p3 || true
      done
    fi
    if has reassign "$FIGURES"; then
      for ((run = 1; run <= RUNS; run++)); do reassign_run "$sys" "$run" "$SMALL_MIB" rs || true; done
      for ((run = 1; run <= LARGE_RUNS; run++)); do reassign_run "$sys" "$run" "$LARGE_MIB" rl || true; done
    fi
    log "$sys: stopping the cluster"
    stop_all
    log "$sys: removing its data ($(du -sh "$work/$sys-work" 2>/dev/null | cut -f1))"
    rm -rf "${work:?}/$sys-work"
  fi
  if has metadata "$FIGURES"; then
    log "=== $sys: metadata with $((META_TOPICS * META_PARTITIONS)) partitions"
    metadata_run "$sys" || true
    stop_all
    rm -rf "${work:?}/$sys-meta"
  fi
}

# ---------------------------------------------------------------- main
prepare
# The time bound: SIGTERM to this script, whose trap stops everything.
( sleep "$BENCH_TIMEOUT_S"; kill -TERM $$ ) &
WATCHDOG_PID=$!
# Load average every 30 s, for the report.
( while sleep 30; do echo "$(date +%H:%M:%S) $(cut -d' ' -f1-3 /proc/loadavg)"; done >> "$loadlog" ) &
LOAD_PID=$!
load_start=$(load_now)
t_start=$(date +%s)
for sys in $SYSTEMS; do
  run_system "$sys" || { note "$sys did not complete; its remaining figures are missing (logs in ${logs#"$root"/})"; stop_all; }
done
elapsed=$(( $(date +%s) - t_start ))
stop_helper "$WATCHDOG_PID"; WATCHDOG_PID=

oxbow_problems=$(cat "$logs"/*-controller-*.log "$logs"/*-broker-*.log 2>/dev/null | grep -E '^[0-9-]+T[0-9:.]+Z +(WARN|ERROR) |panicked' \
  | sed -E 's/^[^ ]+ +//' | sed -E 's/[0-9]+/N/g' | cut -c1-220 | sort | uniq -c | sort -rn | head -n 15 || true)
# Leader changes in the workload clusters' controller logs beyond the first leader and the kills.
leader_changes=""
for sys in $SYSTEMS; do
  pat='controller::duties: leading'; [ "$sys" = kafka ] && pat='Becoming the active controller'
  ls "$logs/$sys-work-controller-"*.log > /dev/null 2>&1 || continue
  n=$(cat "$logs/$sys-work-controller-"*.log | grep -c "$pat" || true)
  leader_changes+="${leader_changes:+; }$sys: $((n - 1)) leader changes, ${KILLS[$sys]:-0} of them after a kill -9 by this script"
done
load_max=$(awk '{ if ($2 + 0 > m) m = $2 + 0 } END { print m + 0 }' "$loadlog" 2>/dev/null || echo "?")

header="$work/header"
{
  echo "Oxbow vs Apache Kafka 4.1.1, 3 controllers + 3 brokers on 127.0.0.1 - scripts/bench-cluster.sh, $(date -Is)"
  echo "oxbow binary: $oxbow_bin ($(stat -c '%y' "$oxbow_bin" | cut -d. -f1)); $(nproc) cores," \
       "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, $(java -version 2>&1 | head -n 1)"
  echo "runs: $RUNS (LARGE_MIB reassignment: $LARGE_RUNS, metadata: 1); QUICK=$QUICK; took ${elapsed}s"
  echo "load average (1/5/15 min) at start: $load_start, at end: $(load_now); highest 1-min sample: $load_max" \
       "(other work on this machine skews the figures)"
  [ -n "$leader_changes" ] && echo "controller leader changes in the produce/election/reassignment clusters: $leader_changes"
  if [ -s "$notes" ]; then echo; echo "Problems during the run:"; sed 's/^/  - /' "$notes"; fi
  if [ -n "$oxbow_problems" ]; then echo; echo "Oxbow log WARN/ERROR lines (count, digits as N):"; echo "$oxbow_problems"; fi
} > "$header"
echo >&2
$lib report "$raw" "$results" "$header" records="$RECORDS" record_size="$RECORD_SIZE" partitions="$PARTITIONS" \
  small="$SMALL_MIB" large="$LARGE_MIB" large_runs="$LARGE_RUNS" meta="$((META_TOPICS * META_PARTITIONS))" \
  meta_topics="$META_TOPICS" quiet="$COMMIT_QUIET_S" kafka_snap_ms="$KAFKA_SNAPSHOT_MS"
cp "$loadlog" "$logs/loadavg.txt" 2>/dev/null || true
# Kafka's INFO logs of thousands of partitions are large.
find "$logs" -type f -size +2M -exec gzip -f {} + 2>/dev/null || true
echo "written to ${results#"$root"/} (per-run values: ${raw#"$root"/}, logs: ${logs#"$root"/}/)"
