#!/usr/bin/env bash
# The control plane's memory and log under a flood of distinct client ids that admission
# holds back: CLIENTS registrations against CP_MAX_CLIENTS=10 (release build, embedded
# broker, fake runtime), then DRAIN of them deregistered so the waiting line drains and
# the registry is read again for the ones past it. See docs/benchmarks.md, "Admission
# flood".
#
#   bash scripts/bench-admission-flood.sh
#
# Environment:
#   CLIENTS=100000   distinct ids registered (the chart's registration, ~150 bytes each)
#   DRAIN=6000       ids deregistered in phase two (more than half the waiting line)
#   SKIP_BUILD=1     use the binaries already in target/release
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLIENTS=${CLIENTS:-100000}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kg-bench-admission.XXXXXX")
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh

release_binaries control-plane
machine

start_embedded_broker "$WORK"
CP_RUNTIME=fake KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" CP_LISTEN=127.0.0.1:0 CP_DATA_DIR="$WORK/data" \
    CP_MAX_CLIENTS=10 "$BIN/control-plane" run >"$WORK/control-plane.log" 2>&1 &
CP=$!
STARTED+=("$CP:control-plane")
wait_for_api "$WORK/data" "$WORK/control-plane.log"
kb() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
deferred() {
    "$BIN/kg-bench" http-get --url "$API/metrics" |
        awk '/^cp_admission_deferred_total/ {s += $2} END {print s + 0}'
}
before_rss=$(kb "$CP" VmRSS)
before_log=$(stat -c %s "$WORK/control-plane.log")
echo "before: VmRSS $(mib "$before_rss") MiB, log $before_log bytes"

started=$(date +%s)
"$BIN/kg-bench" agents --bootstrap "$BOOTSTRAP" --clients "$CLIENTS" --prefix flood- \
    --interval-secs 3600 --duration-secs 1 >"$WORK/agents.out" 2>&1
for ((i = 0; i < 1200; i++)); do
    [ "$(deferred)" -ge "$CLIENTS" ] && break
    sleep 0.5
done
echo "registered and counted in $(($(date +%s) - started)) s: deferred=$(deferred)"
sleep 5
rss=$(kb "$CP" VmRSS)
hwm=$(kb "$CP" VmHWM)
log=$(stat -c %s "$WORK/control-plane.log")
metrics=$("$BIN/kg-bench" http-get --url "$API/metrics")
echo "$metrics" | grep -E '^cp_admission_(deferred_total|waiting)|^cp_registrations_total' || true
echo "after: VmRSS $(mib "$rss") MiB, VmHWM $(mib "$hwm") MiB, log grew $((log - before_log)) bytes"
echo "FIGURE admission_flood clients=$CLIENTS rss_mib=$(mib "$rss") hwm_mib=$(mib "$hwm") \
log_bytes=$((log - before_log)) target_mb=40 met=$([ $((hwm * 1024)) -le 40000000 ] && echo yes || echo no)"

# Phase two: the line drains and the registry is read again. Deregister the first
# DRAIN ids (the line holds the earliest arrivals), so the line falls below half and the
# control plane re-reads the registry from where it dropped registrations, back to a full
# line; the peak includes that re-read.
DRAIN=${DRAIN:-6000}
command -v kcat >/dev/null || { echo "kcat is needed (bash scripts/install-test-tools.sh)" >&2; exit 1; }
metric() { "$BIN/kg-bench" http-get --url "$API/metrics" | awk -v m="$1" '$1 == m {print $2 + 0; f = 1} END {if (!f) print 0}'; }
refilled() { "$BIN/kg-bench" http-get --url "$API/metrics" | awk '/^cp_admission_deferred_total\{reason="refilled"\}/ {print $2 + 0; f = 1} END {if (!f) print 0}'; }
for ((n = 1; n <= DRAIN; n++)); do printf 'flood-%04d\x1f\n' "$n"; done |
    kcat -P -b "$BOOTSTRAP" -t cluster.registry -K $'\x1f' -Z
started=$(date +%s)
for ((i = 0; i < 1200; i++)); do
    [ "$(metric cp_admission_refills_total)" -ge 1 ] && [ "$(metric cp_admission_waiting)" -ge 10000 ] && break
    sleep 0.5
done
echo "drained $DRAIN and refilled in $(($(date +%s) - started)) s: refills=$(metric cp_admission_refills_total) refilled=$(refilled) waiting=$(metric cp_admission_waiting) displaced=$(metric cp_admission_displaced_total)"
sleep 5
rss=$(kb "$CP" VmRSS)
hwm=$(kb "$CP" VmHWM)
echo "after the re-read: VmRSS $(mib "$rss") MiB, VmHWM $(mib "$hwm") MiB"
echo "FIGURE admission_refill clients=$CLIENTS drained=$DRAIN refills=$(metric cp_admission_refills_total) \
waiting=$(metric cp_admission_waiting) rss_mib=$(mib "$rss") hwm_mib=$(mib "$hwm") target_mb=40 \
met=$([ $((hwm * 1024)) -le 40000000 ] && [ "$(metric cp_admission_waiting)" -ge 10000 ] && echo yes || echo no)"
