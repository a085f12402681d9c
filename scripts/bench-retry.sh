#!/usr/bin/env bash
# The pipeline retry ladder with many pending retries (issue 14's target: re-delivery
# time error p99 ≤ 1 s at 100,000 pending). See docs/benchmarks.md, "Retry ladder", for
# the method and the results.
#
#   bash scripts/bench-retry.sh                 # 100,000 retries, noida-db
#
# Environment:
#   RETRIES=100000   records sent up the ladder at once
#   RUNG=60s         the ladder's first rung; it must outlast the intake and the restart,
#                    so that every retry comes due after both
#   SKIP_BUILD=1     use the binaries already in target/release
#   BENCH_LOG=warn   the workers' RUST_LOG (…retry_scheduler=debug logs each pass's phases)
#
# The broker is noida-db (scripts/install-test-tools.sh installs it): the embedded broker
# keeps 5 MiB per partition and would drop part of the 100,000 outputs this counts.
#
# One worker (`worker --role pipeline`, release build) of a template whose graph stage
# retries (`on_unavailable = "retry"`, ladder [RUNG, 1h]), for client `bench`:
#   1. intake, with no graph: RETRIES records are produced; each fails its graph stage and
#      goes up the ladder; time until /health shows all pending, RSS, the store on disk;
#   2. SIGKILL and restart on the same volume: time until /health shows them all pending
#      again; then the graph builder starts on the same volume and writes the graph;
#   3. re-delivery: every retry comes due RUNG after its first attempt, all within the
#      intake's second or so, and goes out; the time error is measured twice: by the
#      worker's histogram (due → output acknowledged; bucket bounds), and independently by
#      Kafka's timestamp of each output against the due time the store held for its input
#      record (read from the SQLite file before any came due); outputs counted by key;
#   4. baseline, in the same run: RETRIES more records with the graph there go straight
#      through (no ladder); time from the first produced to the last out, against phase
#      3's time from the first due to the last out.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RETRIES=${RETRIES:-100000}
RUNG=${RUNG:-60s}
rung_secs=$(python3 -c "import re; m=re.fullmatch(r'(\d+)(s|m)', '$RUNG'); print(int(m[1]) * (60 if m[2]=='m' else 1))")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kg-bench-retry.XXXXXX")
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh
release_binaries control-plane worker

start_noida "$WORK"

cat >"$WORK/pipelines.toml" <<TOML
[[pipeline]]
name = "retry-bench"
input = ["bench.alerts"]
output = "bench.enriched"
retry = { delays = ["$RUNG", "1h"] }

[[pipeline.stage]]
kind = "graph"
namespace = "namespace"
resources = { pod = "Pod" }
on_unavailable = "retry"
TOML
python3 - "$RETRIES" "$WORK" <<'PY'
import sys
n, work = int(sys.argv[1]), sys.argv[2]
for name, prefix in (("retried", "r"), ("direct", "d")):
    with open(f"{work}/{name}.txt", "w") as out:
        for i in range(n):
            out.write(f'bench::{prefix}-{i}\t{{"pod": "{prefix}-{i}", "namespace": "shop", "alertname": "KubePodNotReady"}}\n')
PY
printf 'nobody::init\t{}\n' | kcat -b "$B" -P -t bench.alerts -K '\t'
printf 'nobody::init\t{}\n' | kcat -b "$B" -P -t bench.enriched -K '\t'

start_worker() { # start_worker <role> <log> [args…]: sets PID
    local role=$1 log=$2
    shift 2
    rm -f "$WORK/addr.$role"
    CLIENT_ID=bench KAFKA_BOOTSTRAP_SERVERS=$B WORKER_LISTEN=127.0.0.1:0 \
        WORKER_ADDR_FILE=$WORK/addr.$role WORKER_DATA_DIR=$WORK/volume RUST_LOG=${BENCH_LOG:-warn} \
        "$BIN/worker" --role "$role" "$@" </dev/null >"$log" 2>&1 &
    PID=$!
    STARTED+=("$PID:$role")
}
start_pipeline() {
    start_worker pipeline "$1" --pipeline retry-bench --pipelines-file "$WORK/pipelines.toml"
    WORKER=$PID
}
health() { curl -sf "http://$(cat "$WORK/addr.pipeline" 2>/dev/null)/health" 2>/dev/null || true; }
metric() { curl -sf "http://$(cat "$WORK/addr.pipeline")/metrics" | awk -v m="$1" '$1 ~ "^"m"[{]" || $1 == m {print $2}'; }
wait_out() { # wait_out <start ms> <deadline s> <records_out>: prints ms waited until the
    # pipeline's records_out counter reaches the count
    local started=$1 deadline=$2 want=$3 have
    while :; do
        have=$(metric worker_records_out_total)
        if [ -n "$have" ] && python3 -c "import sys; sys.exit(0 if float('$have') >= $want else 1)"; then
            echo $(($(now_ms) - started))
            return
        fi
        (($(now_ms) - started < deadline * 1000)) || { echo "timed out waiting for $want records out (have ${have:-none})" >&2; exit 1; }
        sleep 0.05
    done
}

t0=$(now_ms)
start_pipeline "$WORK/pipeline-1.log"
wait_health "$t0" 60 '"status":"healthy"' '"pending":0,' >/dev/null
idle_rss=$(rss_kib "$WORKER")

# 1. Intake with no graph: every record up the ladder.
t1=$(now_ms)
kcat -b "$B" -P -t bench.alerts -K '\t' -l "$WORK/retried.txt"
intake_ms=$(wait_health "$t1" 600 "\"pending\":$RETRIES,")
pending_rss=$(rss_kib "$WORKER")
store_kib=$(du -k "$WORK/volume/pipeline-retry-bench.retries.sqlite"* | awk '{s += $1} END {print s}')

# 2. SIGKILL, restart, and the graph builder writes the graph.
kill -KILL "$WORKER"
wait "$WORKER" 2>/dev/null || true
t2=$(now_ms)
start_pipeline "$WORK/pipeline-2.log"
resume_ms=$(wait_health "$t2" 120 "\"pending\":$RETRIES,")
start_worker graph-builder "$WORK/graph-builder.log"
for ((i = 0; i < 300; i++)); do
    [ -e "$WORK/volume/graph-bench.sqlite" ] && break
    sleep 0.1
done
[ -e "$WORK/volume/graph-bench.sqlite" ] || { echo "the graph builder wrote no graph" >&2; exit 1; }
# Each retry's due time as the store holds it, by input partition and offset.
python3 - "$WORK/volume/pipeline-retry-bench.retries.sqlite" >"$WORK/dues.tsv" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
for source_partition, source_offset, due_ms in db.execute(
        "SELECT source_partition, source_offset, due_ms FROM retries"):
    print(f"{source_partition}\t{source_offset}\t{due_ms}")
PY
elapsed_s=$(( ($(now_ms) - t1) / 1000 ))
((elapsed_s < rung_secs)) || echo "  note: intake, restart and graph took ${elapsed_s}s, not less than the rung ($RUNG): some retries were due before" >&2

# 3. Re-delivery: from the first due time to the last record out.
first_due_ms=$(curl -sf "http://$(cat "$WORK/addr.pipeline")/health" | python3 -c '
import datetime, json, sys
due = json.load(sys.stdin)["retries"]["next_due"]
print(int(datetime.datetime.fromisoformat(due.replace("Z", "+00:00")).timestamp() * 1000))')
wait_health "$t2" $((rung_secs + 600)) '"pending":0,' >/dev/null
drain_ms=$(($(now_ms) - first_due_ms))
drain_rss=$(rss_kib "$WORKER")
curl -sf "http://$(cat "$WORK/addr.pipeline")/metrics" >"$WORK/metrics.txt"

# 4. Baseline: as many records straight through, the graph there.
out_before=$(metric worker_records_out_total)
t4=$(now_ms)
kcat -b "$B" -P -t bench.alerts -K '\t' -l "$WORK/direct.txt"
direct_ms=$(wait_out "$t4" 600 "$(python3 -c "print(int(float('${out_before:-0}')) + $RETRIES)")")

kcat -b "$B" -C -t bench.alerts -o beginning -e -q -f '%k\t%T\t%p\t%o\n' >"$WORK/in.tsv"
kcat -b "$B" -C -t bench.enriched -o beginning -e -q -f '%k\t%T\n' >"$WORK/out.tsv"

python3 - "$WORK" "$RETRIES" "$rung_secs" "$intake_ms" "$resume_ms" "$drain_ms" "$direct_ms" \
    "$idle_rss" "$pending_rss" "$drain_rss" "$store_kib" <<'PY'
import collections, re, sys
work, n, rung = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
intake_ms, resume_ms, drain_ms, direct_ms = map(int, sys.argv[4:8])
idle_rss, pending_rss, drain_rss, store_kib = map(int, sys.argv[8:12])

def rows(path):
    for line in open(path):
        key, ts = line.rstrip("\n").split("\t")[:2]
        if key.startswith("bench::"):
            yield key, int(ts)

inputs = dict(rows(f"{work}/in.tsv"))
where = {}
for line in open(f"{work}/in.tsv"):
    key, _, partition, offset = line.rstrip("\n").split("\t")
    where[(partition, offset)] = key
due = {}
for line in open(f"{work}/dues.tsv"):
    partition, offset, due_ms = line.split()
    due[where[(partition, offset)]] = int(due_ms)
outs = collections.defaultdict(list)
for key, ts in rows(f"{work}/out.tsv"):
    outs[key].append(ts)
retried = [k for k in inputs if k.startswith("bench::r-")]
direct = [k for k in inputs if k.startswith("bench::d-")]
missing = [k for k in inputs if k not in outs]
duplicates = sum(len(v) - 1 for v in outs.values())
late = sorted(min(outs[k]) - (inputs[k] + rung * 1000) for k in retried if k in outs)
error = sorted(min(outs[k]) - due[k] for k in retried if k in outs and k in due)
def pct(values, p):
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")

buckets = []
for line in open(f"{work}/metrics.txt"):
    if line.startswith("worker_retry_lateness_seconds_bucket"):
        le = re.search(r'[{,]le="([^"]+)"', line)[1]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
total = buckets[-1][1] if buckets else 0
def hist_pct(p):
    for le, count in buckets:
        if total and count >= p * total:
            return le
    return float("nan")

print(f"retries: {n}, first rung {rung} s; outputs: {len(outs)} keys of {len(inputs)} inputs "
      f"({len(retried)} retried, {len(direct)} direct), {len(missing)} missing, {duplicates} duplicates")
print(f"intake (no graph): {n} pending in {intake_ms} ms ({n / (intake_ms / 1000):,.0f} retries/s); RSS "
      f"{idle_rss / 1024:.1f} → {pending_rss / 1024:.1f} MiB ({(pending_rss - idle_rss) * 1024 / n:.0f} B/retry); "
      f"store {store_kib / 1024:.1f} MiB on disk")
print(f"resume after SIGKILL: {resume_ms} ms to all {n} pending again")
print(f"re-delivery: first due → all out in {drain_ms} ms ({n / (drain_ms / 1000):,.0f}/s); "
      f"baseline, {n} straight through with the graph there: {direct_ms} ms ({n / (direct_ms / 1000):,.0f}/s); "
      f"ratio re-delivery / baseline time {drain_ms / direct_ms:.2f}; RSS after {drain_rss / 1024:.1f} MiB")
print(f"re-delivery time error, worker histogram (due → output acknowledged): p50 ≤ {hist_pct(0.5)} s, "
      f"p99 ≤ {hist_pct(0.99)} s, of {total:.0f}")
print(f"re-delivery time error, Kafka timestamps (output − the due time the store held; {len(error)} of {len(retried)} matched): "
      f"p50 {pct(error, 0.5) / 1000:.3f} s, p99 {pct(error, 0.99) / 1000:.3f} s, max {error[-1] / 1000 if error else float('nan'):.3f} s, "
      f"min {error[0] / 1000 if error else float('nan'):.3f} s")
print(f"  (upper bound from the input's own timestamp, output − (input + rung), includes the intake lag: "
      f"p50 {pct(late, 0.5) / 1000:.2f} s, p99 {pct(late, 0.99) / 1000:.2f} s)")
sys.exit(1 if missing or len(error) != len(retried) else 0)
PY
machine
