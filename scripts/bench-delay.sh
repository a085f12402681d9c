#!/usr/bin/env bash
# The pipeline delay stage with many held sessions (issue 14): memory, time to resume
# after a SIGKILL, and how late each session is emitted. See docs/benchmarks.md, "Delay
# stage", for the method and the results.
#
#   bash scripts/bench-delay.sh                 # 100,000 sessions, noida-db
#
# Environment:
#   SESSIONS=100000  sessions held at once (one poweroff each, one state record each)
#   HOLD=120s CHECK=30s  the delay's hold and check interval; HOLD must outlast the
#                    intake and the restart, so that every session is due after both
#   SKIP_BUILD=1     use the binaries already in target/release
#
# The broker is noida-db (scripts/install-test-tools.sh installs it): the embedded broker
# keeps 5 MiB per partition and would drop part of the 100,000 outputs this counts.
#
# Phases, one worker (`worker --role pipeline`, release build) of a template with a delay
# stage (key server_id, check against bench.power, hold_while "off") and an enrich stage:
#   1. baseline: bench.power holds SESSIONS "off" states, nothing is held; the worker
#      starts and reads them (time to "state_caught_up", RSS);
#   2. intake: SESSIONS poweroffs are produced; time until all are held (rate), RSS, the
#      store's size on disk;
#   3. SIGKILL, restart on the same volume: time until the new worker has every session
#      again and its checks may run (state_caught_up), against phase 1's start;
#   4. emission: every session comes due HOLD after it was held; the worker's own
#      lateness histogram (due time → output acknowledged) and, independently, Kafka's
#      timestamps (output − (input + HOLD), an upper bound that includes the intake lag);
#      the outputs are counted by key with kcat: none missing, duplicates reported.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SESSIONS=${SESSIONS:-100000}
HOLD=${HOLD:-120s}
CHECK=${CHECK:-30s}
hold_secs=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+)(s|m)', '$HOLD'); print(int(m[1]) * (60 if m[2]=='m' else 1))")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kg-bench-delay.XXXXXX")
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh
release_binaries control-plane worker

start_noida "$WORK"

cat >"$WORK/pipelines.toml" <<TOML
[[pipeline]]
name = "cooling-bench"
input = ["bench.poweroff"]
output = "bench.demise"

[[pipeline.stage]]
kind = "delay"
key = "server_id"
hold = "$HOLD"
check_every = "$CHECK"
check = { topic = "bench.power", field = "power", hold_while = ["off"] }

[[pipeline.stage]]
kind = "enrich"
processor_id = "demise-{client}"
TOML
python3 - "$SESSIONS" "$WORK" <<'PY'
import sys
n, work = int(sys.argv[1]), sys.argv[2]
with open(f"{work}/power.txt", "w") as power, open(f"{work}/poweroff.txt", "w") as poweroff:
    for i in range(n):
        power.write(f'bench::srv-{i}\t{{"server_id": "srv-{i}", "power": "off"}}\n')
        poweroff.write(f'bench::srv-{i}\t{{"server_id": "srv-{i}", "powered_off_at": "2025-11-02T16:17:27Z", "rack": "r{i % 40}"}}\n')
PY
printf 'nobody::init\t{}\n' | kcat -b "$B" -P -t bench.poweroff -K '\t'
printf 'nobody::init\t{}\n' | kcat -b "$B" -P -t bench.demise -K '\t'
kcat -b "$B" -P -t bench.power -K '\t' -l "$WORK/power.txt"

start_worker() { # start_worker <log>: sets WORKER and WORKER_ADDR
    rm -f "$WORK/addr"
    CLIENT_ID=bench KAFKA_BOOTSTRAP_SERVERS=$B WORKER_LISTEN=127.0.0.1:0 \
        WORKER_ADDR_FILE=$WORK/addr WORKER_DATA_DIR=$WORK/volume RUST_LOG=warn \
        "$BIN/worker" --role pipeline --pipeline cooling-bench \
        --pipelines-file "$WORK/pipelines.toml" </dev/null >"$1" 2>&1 &
    WORKER=$!
    STARTED+=("$WORKER:worker")
}
health() { curl -sf "http://$(cat "$WORK/addr" 2>/dev/null)/health" 2>/dev/null || true; }
metric() { curl -sf "http://$(cat "$WORK/addr")/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# 1. Baseline: nothing held; the state topic read to its end.
t0=$(now_ms)
start_worker "$WORK/worker-1.log"
baseline_ms=$(wait_health "$t0" 120 '"state_caught_up":true' '"pending_sessions":0,')
baseline_rss=$(rss_kib "$WORKER")

# 2. Intake.
t1=$(now_ms)
kcat -b "$B" -P -t bench.poweroff -K '\t' -l "$WORK/poweroff.txt"
intake_ms=$(wait_health "$t1" 600 "\"pending_sessions\":$SESSIONS,")
held_rss=$(rss_kib "$WORKER")
store_kib=$(du -k "$WORK/volume/pipeline-cooling-bench.pending.sqlite"* | awk '{s += $1} END {print s}')

# 3. SIGKILL and resume.
kill -KILL "$WORKER"
wait "$WORKER" 2>/dev/null || true
t2=$(now_ms)
start_worker "$WORK/worker-2.log"
resume_ms=$(wait_health "$t2" 120 '"state_caught_up":true' "\"pending_sessions\":$SESSIONS,")
resumed_rss=$(rss_kib "$WORKER")
elapsed_s=$(( ($(now_ms) - t1) / 1000 ))
((elapsed_s < hold_secs)) || echo "  note: intake and restart took ${elapsed_s}s, not less than the hold ($HOLD): some sessions were due before the restart" >&2

# 4. Emission: every session released.
t3=$(now_ms)
wait_health "$t3" $((hold_secs + 600)) '"pending_sessions":0,' >/dev/null
curl -sf "http://$(cat "$WORK/addr")/metrics" >"$WORK/metrics.txt"
kcat -b "$B" -C -t bench.poweroff -o beginning -e -q -f '%k\t%T\n' >"$WORK/in.tsv"
kcat -b "$B" -C -t bench.demise -o beginning -e -q -f '%k\t%T\n' >"$WORK/out.tsv"

python3 - "$WORK" "$SESSIONS" "$hold_secs" "$baseline_ms" "$intake_ms" "$resume_ms" \
    "$baseline_rss" "$held_rss" "$resumed_rss" "$store_kib" <<'PY'
import collections, re, sys
work, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
baseline_ms, intake_ms, resume_ms = map(int, sys.argv[4:7])
baseline_rss, held_rss, resumed_rss, store_kib = map(int, sys.argv[7:11])

def rows(path):
    for line in open(path):
        key, _, ts = line.rstrip("\n").partition("\t")
        if key.startswith("bench::"):
            yield key, int(ts)

inputs = dict(rows(f"{work}/in.tsv"))
outs = collections.defaultdict(list)
for key, ts in rows(f"{work}/out.tsv"):
    outs[key].append(ts)
missing = [k for k in inputs if k not in outs]
duplicates = sum(len(v) - 1 for v in outs.values())
late = sorted(min(outs[k]) - (inputs[k] + hold * 1000) for k in inputs if k in outs)
def pct(values, p):
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")

# The worker's own histogram: cumulative buckets of worker_delay_emit_lateness_seconds.
buckets = []
for line in open(f"{work}/metrics.txt"):
    if line.startswith("worker_delay_emit_lateness_seconds_bucket"):
        le = re.search(r'[{,]le="([^"]+)"', line)[1]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
total = buckets[-1][1] if buckets else 0
def hist_pct(p):
    for le, count in buckets:
        if total and count >= p * total:
            return le
    return float("nan")

print(f"sessions: {n}, hold {hold} s; outputs: {len(outs)} keys, {len(missing)} missing, {duplicates} duplicates")
print(f"baseline start (nothing held, {n} states read): {baseline_ms} ms, RSS {baseline_rss / 1024:.1f} MiB")
print(f"intake: {n} held in {intake_ms} ms ({n / (intake_ms / 1000):,.0f} sessions/s), RSS {held_rss / 1024:.1f} MiB "
      f"(+{(held_rss - baseline_rss) / 1024:.1f} MiB, {(held_rss - baseline_rss) * 1024 / n:.0f} B/session), store {store_kib / 1024:.1f} MiB on disk")
print(f"resume after SIGKILL: {resume_ms} ms to every session held and checks running "
      f"(ratio to the baseline start: {resume_ms / baseline_ms:.2f}), RSS {resumed_rss / 1024:.1f} MiB")
print(f"lateness, worker histogram (due → output acknowledged): p50 ≤ {hist_pct(0.5)} s, p99 ≤ {hist_pct(0.99)} s, of {total:.0f}")
print(f"lateness, Kafka timestamps (output − (input + hold), includes intake lag): "
      f"p50 {pct(late, 0.5) / 1000:.2f} s, p99 {pct(late, 0.99) / 1000:.2f} s, max {late[-1] / 1000 if late else float('nan'):.2f} s")
sys.exit(1 if missing else 0)
PY
machine
