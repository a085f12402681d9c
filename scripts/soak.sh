#!/usr/bin/env bash
# Soak: the control plane for DURATION_SECS (an hour by default) with CLIENTS clients under
# steady load, sampling its resident memory, open file descriptors and threads every
# SAMPLE_SECS; then whether each stayed flat (the last quarter's mean within 10 % of the
# second quarter's, so start-up and warm-up are not counted as growth). Release build,
# embedded broker, fake runtime (the control plane alone: workers would measure the machine).
# See docs/benchmarks.md, "Soak".
#
#   bash scripts/soak.sh
#
# The load, all of it steady: every client heartbeats every HEARTBEAT_SECS, both agent
# streams (plain and zstd keyed `<id>::<id>`); every CHURN_SECS one client deregisters and
# registers again (reaping and respawning its fake workers); a garbage heartbeat every
# second (rejected and dead-lettered); and GET /clients, /metrics and one client's
# /events, polled every sample.
#
# Environment:
#   DURATION_SECS=3600  CLIENTS=200  SAMPLE_SECS=60  HEARTBEAT_SECS=10  CHURN_SECS=30
#   SKIP_BUILD=1        use the binaries already in target/release
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION_SECS=${DURATION_SECS:-3600}
CLIENTS=${CLIENTS:-200}
SAMPLE_SECS=${SAMPLE_SECS:-60}
HEARTBEAT_SECS=${HEARTBEAT_SECS:-10}
CHURN_SECS=${CHURN_SECS:-30}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kg-soak.XXXXXX")
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh

BIN=$WORK/bin
mkdir -p "$BIN"
if [ -z "${SKIP_BUILD:-}" ]; then
    echo "building (release)…" >&2
    cargo build --release --bins -p control-plane >&2
    cargo build --release -p kg-tests --bin kg-bench >&2
fi
cp target/release/control-plane target/release/kg-bench "$BIN/"
machine
echo "soak: ${DURATION_SECS}s, $CLIENTS clients, heartbeats every ${HEARTBEAT_SECS}s, churn every ${CHURN_SECS}s, samples every ${SAMPLE_SECS}s"

"$BIN/control-plane" embedded-broker </dev/null >"$WORK/broker.out" 2>"$WORK/broker.err" &
STARTED+=("$!:embedded-broker")
for ((i = 0; i < 300; i++)); do
    grep -q '^bootstrap=' "$WORK/broker.out" 2>/dev/null && break
    sleep 0.1
done
BOOTSTRAP=$(sed -n 's/^bootstrap=//p' "$WORK/broker.out" | head -1)

CP_RUNTIME=fake KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" CP_LISTEN=127.0.0.1:0 CP_DATA_DIR="$WORK/data" \
    CP_HEARTBEAT_TIMEOUT_SECS=60 CP_MAX_NEW_CLIENTS_PER_MINUTE=5000 \
    "$BIN/control-plane" run >"$WORK/control-plane.log" 2>&1 &
CP=$!
STARTED+=("$CP:control-plane")
for ((i = 0; i < 300; i++)); do
    [ -s "$WORK/data/api.addr" ] && break
    sleep 0.1
done
API=http://$(cat "$WORK/data/api.addr")
for ((i = 0; i < 300; i++)); do
    "$BIN/kg-bench" http-get --url "$API/ready" >/dev/null 2>&1 && break
    sleep 0.2
done

"$BIN/kg-bench" agents --bootstrap "$BOOTSTRAP" --clients "$CLIENTS" --prefix soak- \
    --interval-secs "$HEARTBEAT_SECS" --duration-secs "$DURATION_SECS" >"$WORK/agents.log" 2>&1 &
STARTED+=("$!:agents")
"$BIN/kg-bench" churn --bootstrap "$BOOTSTRAP" --clients "$CLIENTS" --prefix soak- \
    --every-secs "$CHURN_SECS" --duration-secs "$DURATION_SECS" >"$WORK/churn.log" 2>&1 &
STARTED+=("$!:churn")

kb() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
samples=$WORK/samples.tsv
printf 'minute\trss_kb\tfds\tthreads\tclients\twaiting\n' >"$samples"
started=$(date +%s)
minute=0
while (($(date +%s) - started < DURATION_SECS)); do
    sleep "$SAMPLE_SECS"
    minute=$((minute + 1))
    alive "$CP" || { echo "the control plane exited; log:" >&2; tail -20 "$WORK/control-plane.log" >&2; exit 1; }
    "$BIN/kg-bench" http-get --url "$API/clients?limit=1000" >"$WORK/clients.json" 2>/dev/null || true
    "$BIN/kg-bench" http-get --url "$API/clients/soak-0001/events" >/dev/null 2>&1 || true
    metrics=$("$BIN/kg-bench" http-get --url "$API/metrics" 2>/dev/null || true)
    clients=$("$BIN/kg-bench" clients --api "$API" --prefix soak- --workers 3 2>/dev/null |
        sed -n 's/.*registered=\([0-9]*\).*/\1/p')
    waiting=$(awk '$1 == "cp_admission_waiting" {print $2}' <<<"$metrics")
    row=$(printf '%d\t%s\t%d\t%s\t%d\t%s' "$minute" "$(kb "$CP" VmRSS)" \
        "$(find "/proc/$CP/fd" -mindepth 1 -maxdepth 1 | wc -l)" \
        "$(sed -n 's/^Threads:[[:space:]]*//p' "/proc/$CP/status")" "${clients:-0}" "${waiting:-?}")
    echo "$row" >>"$samples"
    echo "  $row" >&2
done
echo "heartbeats accepted: $(awk '$1 == "cp_heartbeats_total" {print $2}' <<<"$metrics"), rejected: $(awk '/^cp_heartbeats_rejected_total/ {s += $2} END {print s + 0}' <<<"$metrics"), lifecycle events: $(awk '/^cp_lifecycle_events_total/ {s += $2} END {print s + 0}' <<<"$metrics")"
cat "$samples"
# Flat: the last quarter's mean against the second quarter's (after warm-up).
flat() { # flat <column> <name>
    awk -v c="$1" -v name="$2" 'NR > 1 {v[NR - 1] = $c; n = NR - 1}
        END {
            q = int(n / 4); if (q < 1) q = 1
            for (i = q + 1; i <= 2 * q; i++) {a += v[i]; na++}
            for (i = n - q + 1; i <= n; i++) {b += v[i]; nb++}
            a /= na; b /= nb
            change = (b - a) / a * 100
            printf "FIGURE soak_%s second_quarter_mean=%.1f last_quarter_mean=%.1f change_pct=%.1f flat_within_10pct=%s\n", name, a, b, change, (change <= 10 && change >= -10) ? "yes" : "no"
        }' "$samples"
}
flat 2 rss_kb
flat 3 fds
flat 4 threads
