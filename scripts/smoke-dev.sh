#!/usr/bin/env bash
# Runs the README's first command in its scripted form (`dev --demo --exit-after-demo`)
# and checks what a newcomer should see: the demo client's workers come up, its events
# and logs come out normalized, and its workers are reaped once it stops heartbeating.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bins -p control-plane -p worker
data=$(mktemp -d)
out="$data/dev.out"
trap 'rm -rf "$data"' EXIT
CP_HEARTBEAT_TIMEOUT_SECS=6 CP_DATA_DIR="$data/state" CP_LISTEN=127.0.0.1:0 \
  timeout 180 target/debug/control-plane dev --demo --demo-heartbeat-secs 6 --exit-after-demo \
  >"$out" 2>"$data/dev.err" || { echo "dev --demo failed"; tail -40 "$data/dev.err"; exit 1; }
cat "$out"
fail=0
check() {
  if grep -qE "$2" "$out"; then echo "ok: $1"; else echo "FAILED: $1"; fail=1; fi
}
check "the embedded broker announces its address" '^bootstrap=127\.0\.0\.1:[0-9]+$'
check "all three workers run" 'workers running: kg-event-normalizer-demo-001 \(running\), kg-graph-builder-demo-001 \(running\), kg-log-normalizer-demo-001 \(running\)'
check "an OOMKilled event is normalized" 'events.normalized MEMORY_OOM +WARNING'
check "a crash loop is normalized" 'events.normalized POD_CRASH_LOOP'
check "an error log line is normalized" 'logs.normalized +CONNECTION_REFUSED +ERROR'
check "the RCA endpoint names OOMKilled as the crash loop's root cause" 'likely root cause of CrashLoopBackOff is OOMKilled'
check "the workers are reaped" 'client demo-001 is stale and its workers are gone'
# The demo client's worker records must be gone; the shared event attributor
# (kg-event-attributor-shared) belongs to no client and stays until the control plane stops.
left=$(ls -A "$data/state/workers" 2>/dev/null | grep -v -- '-shared$' || true)
if [ -n "$left" ]; then echo "FAILED: worker records left behind: $left"; fail=1; fi
if ((fail)); then tail -40 "$data/dev.err"; exit 1; fi
echo "smoke: all checks passed"
