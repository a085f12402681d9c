#!/usr/bin/env bash
# Resident memory of an idle worker and of a control plane running 1,000 heartbeating
# clients on the fake runtime, both release builds against the embedded broker. See
# docs/benchmarks.md for the method and the results.
#
#   bash scripts/bench-rss.sh                  # both, 3 runs each, medians
#   bash scripts/bench-rss.sh worker           # idle worker only
#   bash scripts/bench-rss.sh control-plane    # control plane only
#
# Environment:
#   RUNS=3             runs of each measurement; the median is reported
#   IDLE_SECS=30       how long the worker idles before VmRSS/VmHWM are read
#   CLIENTS=1000       clients registered with the control plane
#   HEARTBEAT_SECS=30  heartbeat interval of every client
#   DURATION_SECS=150  how long the clients heartbeat (at least 2 minutes of heartbeats);
#                      the memory is read just before the end
#   ROLES=event-normalizer,log-normalizer
#                      the control plane's CP_ROLES: the figure is defined for 2 workers per
#                      client, while the built-in default set also has graph-builder
#   SKIP_BUILD=1       use the binaries already in target/release
#
# Bounded in time (about RUNS × (IDLE_SECS + 5) + RUNS × (DURATION_SECS + 15) s, plus the
# build); every process it starts is stopped on exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHAT=${1:-all}
case $WHAT in
worker | control-plane | all) ;;
*)
    echo "usage: $0 [worker|control-plane|all]" >&2
    exit 2
    ;;
esac
RUNS=${RUNS:-3}
IDLE_SECS=${IDLE_SECS:-30}
CLIENTS=${CLIENTS:-1000}
HEARTBEAT_SECS=${HEARTBEAT_SECS:-30}
DURATION_SECS=${DURATION_SECS:-150}
ROLES=${ROLES:-event-normalizer,log-normalizer}
WORKERS_PER_CLIENT=$(tr ',' '\n' <<<"$ROLES" | grep -c .)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kg-bench-rss.XXXXXX")
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh

kb() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
anon_kb() { sed -n 's/^Anonymous:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/smaps_rollup" 2>/dev/null || echo '?'; }
# Where the resident memory is: the binary's own pages, shared libraries, the main heap,
# and other anonymous memory (thread arenas and stacks, mmapped allocations).
breakdown() {
    awk '/^[0-9a-f]+-[0-9a-f]+ / {name = $6; next}
        /^Rss:/ {
            if (name ~ /\/(control-plane|worker)( \(deleted\))?$/) bin += $2
            else if (name ~ /\.so/) lib += $2
            else if (name == "[heap]") heap += $2
            else other += $2
        }
        END {printf "binary %.1f, shared libraries %.1f, [heap] %.1f, other %.1f MiB", bin / 1024, lib / 1024, heap / 1024, other / 1024}' "/proc/$1/smaps"
}
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

BIN=$WORK/bin
mkdir -p "$BIN"
if [ -z "${SKIP_BUILD:-}" ]; then
    echo "building (release)…" >&2
    cargo build --release --bins -p control-plane -p worker >&2
    cargo build --release -p kg-tests --bin kg-bench >&2
fi
# Private copies: other people may rebuild target/release while this runs.
cp target/release/control-plane target/release/worker target/release/kg-bench "$BIN/"
machine

BROKER=
BOOTSTRAP=
start_broker() { # start_broker <dir>
    "$BIN/control-plane" embedded-broker </dev/null >"$1/broker.out" 2>"$1/broker.err" &
    BROKER=$!
    STARTED+=("$BROKER:embedded-broker")
    local i
    for ((i = 0; i < 300; i++)); do
        grep -q '^bootstrap=' "$1/broker.out" 2>/dev/null && break
        sleep 0.1
    done
    BOOTSTRAP=$(sed -n 's/^bootstrap=//p' "$1/broker.out" | head -1)
    [ -n "$BOOTSTRAP" ] || { echo "the embedded broker printed no bootstrap line" >&2; exit 1; }
}

worker_rss() {
    echo "== idle worker: $RUNS runs, VmRSS/VmHWM read after ${IDLE_SECS}s with nothing to consume"
    local rss=() hwm=() run dir worker i
    for ((run = 1; run <= RUNS; run++)); do
        dir=$WORK/worker-$run
        mkdir -p "$dir"
        start_broker "$dir"
        CLIENT_ID=bench-idle-$run KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" WORKER_LISTEN=127.0.0.1:0 \
            WORKER_ADDR_FILE="$dir/worker.addr" WORKER_DATA_DIR="$dir/data" \
            "$BIN/worker" --role event-normalizer >"$dir/worker.log" 2>&1 &
        worker=$!
        STARTED+=("$worker:worker")
        for ((i = 0; i < 300; i++)); do
            [ -s "$dir/worker.addr" ] && break
            sleep 0.1
        done
        sleep "$IDLE_SECS"
        alive "$worker" || { echo "the worker exited; log:" >&2; tail "$dir/worker.log" >&2; exit 1; }
        health=$("$BIN/kg-bench" http-get --url "http://$(cat "$dir/worker.addr")/health" 2>&1 || true)
        r=$(kb "$worker" VmRSS)
        h=$(kb "$worker" VmHWM)
        rss+=("$r")
        hwm+=("$h")
        echo "run $run: VmRSS $(mb "$r") MiB, VmHWM $(mb "$h") MiB (anonymous $(mb "$(anon_kb "$worker")") MiB," \
            "threads $(sed -n 's/^Threads:[[:space:]]*//p' "/proc/$worker/status")), load1 $(cut -d' ' -f1 /proc/loadavg), health: $health"
        cleanup
    done
    local m
    m=$(median "${rss[@]}")
    echo "FIGURE idle_worker_rss_mib median=$(mb "$m") runs=$(for v in "${rss[@]}"; do printf '%s ' "$(mb "$v")"; done)hwm_median=$(mb "$(median "${hwm[@]}")") target=30MB met=$([ $((m * 1024)) -le 30000000 ] && echo yes || echo no)"
}

metric() { # metric <api> <series>: the value of one metric line
    "$BIN/kg-bench" http-get --url "$1/metrics" | awk -v s="$2" '$1 == s {print $2}' | head -1
}

control_plane_rss() {
    echo "== control plane, fake runtime: $RUNS runs, $CLIENTS clients heartbeating every ${HEARTBEAT_SECS}s for ${DURATION_SECS}s, roles $ROLES"
    local rss=() hwm=() run dir cp agents api i t_mid r_mid t_end r_end
    for ((run = 1; run <= RUNS; run++)); do
        dir=$WORK/control-plane-$run
        mkdir -p "$dir"
        start_broker "$dir"
        CP_RUNTIME=fake CP_ROLES="$ROLES" KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" CP_LISTEN=127.0.0.1:0 \
            CP_DATA_DIR="$dir/data" "$BIN/control-plane" run >"$dir/control-plane.log" 2>&1 &
        cp=$!
        STARTED+=("$cp:control-plane")
        for ((i = 0; i < 300; i++)); do
            [ -s "$dir/data/api.addr" ] && break
            sleep 0.1
        done
        [ -s "$dir/data/api.addr" ] || { echo "no API address; log:" >&2; tail "$dir/control-plane.log" >&2; exit 1; }
        api=http://$(cat "$dir/data/api.addr")
        for ((i = 0; i < 300; i++)); do
            "$BIN/kg-bench" http-get --url "$api/ready" >/dev/null 2>&1 && break
            sleep 0.2
        done
        base=$(kb "$cp" VmRSS)
        base_parts=$(breakdown "$cp")

        "$BIN/kg-bench" agents --bootstrap "$BOOTSTRAP" --clients "$CLIENTS" --prefix bench- \
            --interval-secs "$HEARTBEAT_SECS" --duration-secs "$DURATION_SECS" \
            >"$dir/agents.result" 2>"$dir/agents.progress" &
        agents=$!
        STARTED+=("$agents:kg-bench agents")
        start=$(date +%s.%N)
        # Reconcile rate over the middle of the run (metrics are small; /clients is not read
        # until the memory has been read, so the API's 0.5 MB answer does not count).
        sleep 30
        t_mid=$(date +%s.%N)
        r_mid=$(metric "$api" cp_reconciles_total)
        sleep "$(awk -v d="$DURATION_SECS" -v s="$start" -v now="$(date +%s.%N)" 'BEGIN {w = d - 5 - (now - s); print (w > 0 ? w : 0)}')"
        t_end=$(date +%s.%N)
        r_end=$(metric "$api" cp_reconciles_total)
        alive "$cp" || { echo "the control plane exited; log:" >&2; tail "$dir/control-plane.log" >&2; exit 1; }
        r=$(kb "$cp" VmRSS)
        h=$(kb "$cp" VmHWM)
        anon=$(anon_kb "$cp")
        parts=$(breakdown "$cp")
        threads=$(sed -n 's/^Threads:[[:space:]]*//p' "/proc/$cp/status")
        clients=$("$BIN/kg-bench" clients --api "$api" --prefix bench- --workers "$WORKERS_PER_CLIENT")
        wait "$agents" || true
        rss+=("$r")
        hwm+=("$h")
        echo "run $run: VmRSS $(mb "$r") MiB, VmHWM $(mb "$h") MiB (anonymous $(mb "$anon") MiB, threads $threads; before registration $(mb "$base") MiB), load1 $(cut -d' ' -f1 /proc/loadavg)"
        echo "  resident: $parts (before registration: $base_parts)"
        awk -v a="$r_mid" -v b="$r_end" -v t0="$t_mid" -v t1="$t_end" \
            'BEGIN {printf "  cp_reconciles_total %d → %d over %.0fs: %.2f/s\n", a, b, t1 - t0, (b - a) / (t1 - t0)}'
        echo "  $clients"
        echo "  $(grep '^RESULT' "$dir/agents.result")"
        grep -q "active_with_${WORKERS_PER_CLIENT}_running=$CLIENTS " <<<"$clients" ||
            echo "  WARNING: not every client is active with $WORKERS_PER_CLIENT running workers"
        cleanup
    done
    local m
    m=$(median "${rss[@]}")
    echo "FIGURE control_plane_rss_mib median=$(mb "$m") runs=$(for v in "${rss[@]}"; do printf '%s ' "$(mb "$v")"; done)hwm_median=$(mb "$(median "${hwm[@]}")") target=25MB met=$([ $((m * 1024)) -le 25000000 ] && echo yes || echo no)"
}

case $WHAT in
worker) worker_rss ;;
control-plane) control_plane_rss ;;
all)
    worker_rss
    control_plane_rss
    ;;
esac
