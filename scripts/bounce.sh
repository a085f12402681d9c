#!/usr/bin/env bash
# Bounce test (Kafka Connect's shape): under a steady load of events for CLIENTS clients,
# SIGKILL the control plane and random workers again and again for DURATION_SECS, then
# audit: every event normalized (0 lost; repeats counted), exactly one process per worker
# and no stray worker process, every client running all its workers; then scan every log
# for errors no test expects (Strimzi's post-test scan). Release builds, process runtime.
# See docs/benchmarks.md, "Bounce".
#
#   bash scripts/bounce.sh [embedded|noida-db]
#
# Environment:
#   DURATION_SECS=600   CLIENTS=20   RATE=20 (events/s in all)
#   KILL_EVERY_SECS=20  every so often: SIGKILL 1–3 random workers, and every other time
#                       the control plane too (restarted at once on the same data dir)
#   SKIP_BUILD=1        use the binaries already in target/release
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BROKER_KIND=${1:-embedded}
DURATION_SECS=${DURATION_SECS:-600}
CLIENTS=${CLIENTS:-20}
RATE=${RATE:-20}
KILL_EVERY_SECS=${KILL_EVERY_SECS:-20}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kg-bounce.XXXXXX")
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh

BIN=$WORK/bin
mkdir -p "$BIN"
if [ -z "${SKIP_BUILD:-}" ]; then
    echo "building (release)…" >&2
    cargo build --release --bins -p control-plane -p worker >&2
    cargo build --release -p kg-tests --bin kg-bench >&2
fi
cp target/release/control-plane target/release/worker target/release/kg-bench "$BIN/"
machine
echo "bounce: broker $BROKER_KIND, ${DURATION_SECS}s, $CLIENTS clients, $RATE events/s, a kill round every ${KILL_EVERY_SECS}s"

case $BROKER_KIND in
embedded)
    "$BIN/control-plane" embedded-broker </dev/null >"$WORK/broker.out" 2>"$WORK/broker.err" &
    STARTED+=("$!:embedded-broker")
    for ((i = 0; i < 300; i++)); do
        grep -q '^bootstrap=' "$WORK/broker.out" 2>/dev/null && break
        sleep 0.1
    done
    BOOTSTRAP=$(sed -n 's/^bootstrap=//p' "$WORK/broker.out" | head -1)
    ;;
noida-db)
    NOIDA=${NOIDA_DB:-$HOME/.cache/kg-rca-tools/noida-db}
    [ -x "$NOIDA" ] || NOIDA=$(command -v noida-db) || { echo "noida-db not installed: bash scripts/install-test-tools.sh" >&2; exit 1; }
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$NOIDA" start --only kafka --kafka-port "$PORT" --host 127.0.0.1 --data-dir "$WORK/noida" \
        >"$WORK/broker.out" 2>&1 &
    STARTED+=("$!:noida-db")
    BOOTSTRAP=127.0.0.1:$PORT
    for ((i = 0; i < 300; i++)); do
        KAFKA_BOOTSTRAP_SERVERS=$BOOTSTRAP "$BIN/control-plane" create-topics >"$WORK/topics.out" 2>&1 && break
        sleep 0.5
    done
    ;;
*)
    echo "usage: $0 [embedded|noida-db]" >&2
    exit 2
    ;;
esac

CP=
start_cp() {
    CP_RUNTIME=process CP_WORKER_BIN="$BIN/worker" KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" \
        CP_LISTEN=127.0.0.1:0 CP_DATA_DIR="$WORK/data" CP_RESTART_BACKOFF_BASE_MS=500 \
        CP_MAX_NEW_CLIENTS_PER_MINUTE=5000 CP_HEARTBEAT_TIMEOUT_SECS=60 \
        "$BIN/control-plane" run >>"$WORK/control-plane.log" 2>&1 &
    CP=$!
    STARTED+=("$CP:control-plane")
}
api() { cat "$WORK/data/api.addr" 2>/dev/null; }
wait_ready() {
    local i
    for ((i = 0; i < 600; i++)); do
        [ -n "$(api)" ] && "$BIN/kg-bench" http-get --url "http://$(api)/ready" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "the control plane never became ready" >&2
    return 1
}
start_cp
wait_ready

"$BIN/kg-bench" agents --bootstrap "$BOOTSTRAP" --clients "$CLIENTS" --prefix bounce- \
    --interval-secs 5 --duration-secs $((DURATION_SECS + 900)) >"$WORK/agents.log" 2>&1 &
STARTED+=("$!:agents")
sleep 10
"$BIN/kg-bench" event-load --bootstrap "$BOOTSTRAP" --clients "$CLIENTS" --prefix bounce- \
    --rate "$RATE" --duration-secs "$DURATION_SECS" >"$WORK/load.out" 2>"$WORK/load.err" &
LOAD=$!

# The worker processes of this run, by the marks the process runtime gives them.
worker_pids() {
    local root
    root=$(readlink -f "$WORK/data/workers")
    # One grep over every environment (NUL-separated lines), not a process per pid.
    grep -lzxF "KG_PROCESS_RUNTIME_ROOT=$root" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 || true
}

# Workers outlive the control plane by design: stop this run's when the script ends.
stop_workers() {
    local pid
    for pid in $(worker_pids); do kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'cleanup; stop_workers' EXIT

rounds=0 cp_kills=0 worker_kills=0
started=$(date +%s)
while alive "$LOAD"; do
    sleep "$KILL_EVERY_SECS"
    alive "$LOAD" || break
    rounds=$((rounds + 1))
    mapfile -t pids < <(worker_pids | shuf | head -n $((RANDOM % 3 + 1)))
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null && worker_kills=$((worker_kills + 1))
    done
    if ((rounds % 2 == 0)); then
        kill -KILL "$CP" 2>/dev/null || true
        wait "$CP" 2>/dev/null || true
        cp_kills=$((cp_kills + 1))
        rm -f "$WORK/data/api.addr"
        start_cp
        wait_ready || true
    fi
    echo "  t=$(($(date +%s) - started))s round $rounds: killed ${#pids[@]} workers$( ((rounds % 2 == 0)) && echo " and the control plane")" >&2
done
wait "$LOAD" || true
produced=$(sed -n 's/.*produced=\([0-9]*\).*/\1/p' "$WORK/load.out")
echo "load: $(cat "$WORK/load.out")"
echo "chaos: $rounds rounds, $cp_kills control-plane SIGKILLs, $worker_kills worker SIGKILLs"

wait_ready
echo "== audit"
audit=$("$BIN/kg-bench" audit --bootstrap "$BOOTSTRAP" --clients "$CLIENTS" --prefix bounce- \
    --produced "$produced" --idle-secs 60 --max-secs 900)
echo "$audit"
lost=$(sed -n 's/.* lost=\([0-9]*\).*/\1/p' <<<"$audit")
duplicates=$(sed -n 's/.* duplicates=\([0-9]*\).*/\1/p' <<<"$audit")

# Workers: every client's three running, one process per worker, no process without one.
sleep 5
summary=$("$BIN/kg-bench" clients --api "http://$(api)" --prefix bounce- --workers 3)
echo "$summary"
full=$(sed -n 's/.*active_with_3_running=\([0-9]*\).*/\1/p' <<<"$summary")
root=$(readlink -f "$WORK/data/workers")
declare -A per_worker=()
for pid in $(worker_pids); do
    name=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | sed -n 's/^KG_WORKER_NAME=//p')
    per_worker[$name]=$((${per_worker[$name]:-0} + 1))
done
duplicate_workers=0 strays=0
for name in "${!per_worker[@]}"; do
    ((per_worker[$name] > 1)) && duplicate_workers=$((duplicate_workers + 1))
    [ -d "$root/$name" ] || strays=$((strays + 1))
done
echo "worker processes: ${#per_worker[@]} workers, $duplicate_workers with more than one process, $strays without a record"

# Post-test log scan: ERROR lines and panics, by message, less the ones the chaos causes.
echo "== log scan"
expected='Broker: Unknown member|Local: Broker transport failure|Connection refused|Disconnected|FENCED_INSTANCE_ID|REBALANCE_IN_PROGRESS|rebalance'
unexpected=$(cat "$WORK/control-plane.log" "$WORK"/data/workers/*/worker.log 2>/dev/null |
    grep -E '\bERROR\b|panicked' | grep -Ev "$expected" |
    sed -E 's/^[0-9TZ:.-]+ +//; s/[0-9]{2,}/N/g' | sort | uniq -c | sort -rn || true)
if [ -n "$unexpected" ]; then
    echo "$unexpected" | head -20
fi
unexpected_count=$(grep -c . <<<"$unexpected" || true)
echo "FIGURE bounce broker=$BROKER_KIND duration_s=$DURATION_SECS clients=$CLIENTS produced=$produced lost=$lost duplicates=$duplicates cp_kills=$cp_kills worker_kills=$worker_kills clients_fully_running=$full/$CLIENTS duplicate_workers=$duplicate_workers stray_workers=$strays unexpected_error_kinds=$unexpected_count"
[ "$lost" = 0 ] && [ "$full" = "$CLIENTS" ] && [ "$duplicate_workers" = 0 ] && [ "$strays" = 0 ]
