#!/usr/bin/env bash
# Heartbeat ingest of the control plane through Kafka, against its in-process ceiling, both
# release builds, on the embedded broker and the fake runtime (no workers: ingest alone).
# See docs/benchmarks.md, "Heartbeat ingest", for the method and the results.
#
#   bash scripts/bench-heartbeat-ingest.sh
#
# Per run: a fresh broker and control plane; `kg-bench heartbeat-ingest` registers CLIENTS
# clients, stops the control plane with SIGSTOP, preloads HEARTBEATS heartbeats, resumes it
# and times until its counter has them all. The same for HEARTBEATS non-JSON heartbeats
# (rejected and dead-lettered), and `kg-bench heartbeat-ceiling` (decode and map update on
# one thread, no Kafka) in the same run.
#
# Environment:
#   RUNS=3              runs of each measurement; the median is reported
#   CLIENTS=100         clients the heartbeats are spread over
#   HEARTBEATS=100000   heartbeats per burst (the embedded broker keeps 5 MiB per
#                       partition: 100,000 heartbeats over 6 partitions fit)
#   SKIP_BUILD=1        use the binaries already in target/release
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-100}
HEARTBEATS=${HEARTBEATS:-100000}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kg-bench-ingest.XXXXXX")
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
result() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" | tail -1; }

release_binaries control-plane
machine

start_control_plane() { # start_control_plane <dir>: sets CP and API
    CP_RUNTIME=fake KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" CP_LISTEN=127.0.0.1:0 \
        CP_DATA_DIR="$1/data" CP_MAX_NEW_CLIENTS_PER_MINUTE=100000 \
        "$BIN/control-plane" run >"$1/control-plane.log" 2>&1 &
    CP=$!
    STARTED+=("$CP:control-plane")
    wait_for_api "$1/data" "$1/control-plane.log"
}

burst() { # burst <valid|garbage> <run>: prints the rate
    local dir=$WORK/$1-$2 out
    mkdir -p "$dir"
    start_embedded_broker "$dir"
    start_control_plane "$dir"
    out=$("$BIN/kg-bench" heartbeat-ingest --bootstrap "$BOOTSTRAP" --api "$API" --pid "$CP" \
        --clients "$CLIENTS" --heartbeats "$HEARTBEATS" --kind "$1")
    echo "  $1 run $2: $out (rss $(awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$CP/status"))" >&2
    cleanup
    result per_sec <<<"$out"
}

valid=() garbage=() ceiling=()
for ((run = 1; run <= RUNS; run++)); do
    valid+=("$(burst valid "$run")")
    garbage+=("$(burst garbage "$run")")
    out=$("$BIN/kg-bench" heartbeat-ceiling --clients "$CLIENTS" --heartbeats 1000000)
    echo "  ceiling run $run: $out" >&2
    ceiling+=("$(result per_sec <<<"$out")")
done
v=$(median "${valid[@]}")
g=$(median "${garbage[@]}")
c=$(median "${ceiling[@]}")
echo "FIGURE heartbeat_ingest_per_sec median=$v runs=${valid[*]} target=100000 met=$([ "$v" -ge 100000 ] && echo yes || echo no)"
echo "FIGURE garbage_heartbeat_rejections_per_sec median=$g runs=${garbage[*]} ratio_to_valid=$(awk -v g="$g" -v v="$v" 'BEGIN {printf "%.2f", g / v}')"
echo "FIGURE heartbeat_ceiling_in_process_per_sec median=$c runs=${ceiling[*]} ingest_share_of_ceiling=$(awk -v c="$c" -v v="$v" 'BEGIN {printf "%.3f", v / c}')"
