#!/usr/bin/env bash
# Benchmarks the Docker runtime against the real engine and the embedded broker:
#   1. registration → all of the client's containers running → first normalized record
#      out, over N sequential registrations (p50, p99);
#   2. N simultaneous registrations: time until every container runs, failed starts;
#   3. teardown: tombstone → containers removed, over the N clients (p50, p99).
# Prints a Markdown block for docs/benchmarks.md. Everything it starts is removed on exit.
#
#   bash scripts/bench-docker-latency.sh [N]      (N defaults to 20)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
PORT=${BENCH_CP_PORT:-18090}
API="http://127.0.0.1:$PORT"
CONCURRENCY=${CP_MAX_CONCURRENT_ACTIONS:-8}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ids=$(docker ps -aq --filter label=kg.managed-by=kg-control-plane | xargs -r docker inspect --format '{{.Id}} {{index .Config.Labels "kg.client-id"}}' | awk '$2 ~ /^bench-/ {print $1}')
  [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1 || true
  docker volume ls -q | grep '^kg-data-bench-' | xargs -r docker volume rm -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

bash scripts/build-images.sh >"$work/build.log" 2>&1 || { tail -20 "$work/build.log"; exit 1; }
cargo build --quiet --release --bins -p control-plane
target/release/control-plane embedded-broker >"$work/broker.out" 2>/dev/null & pids+=($!)
for _ in $(seq 100); do grep -q '^bootstrap=' "$work/broker.out" && break; sleep 0.1; done
B=$(sed -n 's/^bootstrap=//p' "$work/broker.out")

KAFKA_BOOTSTRAP_SERVERS=$B CP_RUNTIME=docker CP_DOCKER_NETWORK=host CP_LISTEN=127.0.0.1:$PORT \
  CP_DATA_DIR="$work/cp" CP_RECONCILE_INTERVAL_MS=1000 CP_HEARTBEAT_TIMEOUT_SECS=600 \
  CP_MAX_CONCURRENT_ACTIONS=$CONCURRENCY CP_STOP_GRACE_SECS=5 \
  target/release/control-plane run >"$work/cp.log" 2>&1 & pids+=($!)
for _ in $(seq 300); do curl -fsS "$API/ready" >/dev/null 2>&1 && break; sleep 0.1; done

kcat -C -b "$B" -t events.normalized -o end -u -q -f '%k\n' >"$work/keys" 2>/dev/null & pids+=($!)
sleep 1

now_ms() { date +%s%3N; }
produce() { printf '%s\x1f%s\n' "$2" "$3" | kcat -P -b "$B" -t "$1" -K $'\x1f' ${4:+-Z}; }
register() { produce cluster.registry "$1" "{\"client_id\":\"$1\",\"cluster_name\":\"bench\",\"chart_version\":\"2.1.2\"}"; }
all_running() { # client count
  curl -fsS "$API/clients/$1" 2>/dev/null | python3 -c "import json,sys; w=json.load(sys.stdin)['workers']; sys.exit(0 if len(w)>=$2 and all(x['state']=='running' for x in w) else 1)" 2>/dev/null
}
none_left() { [ -z "$(docker ps -aq --filter label=kg.managed-by=kg-control-plane --filter "label=kg.client-id=$1")" ]; }
wait_until() { local deadline=$(( $(now_ms) + $1 )); shift; until "$@"; do [ "$(now_ms)" -ge "$deadline" ] && return 1; sleep 0.02; done; }
percentile() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((NR*p+99)/100); if(i<1)i=1; print a[i]}'; }
export CP_ROLES=${CP_ROLES:-event-normalizer,log-normalizer,graph-builder}
# The control plane's role set decides how many containers a client gets.
workers_per_client=$(echo "${CP_ROLES:-event-normalizer,log-normalizer,graph-builder}" | tr ',' '\n' | grep -c .)

event() { echo "{\"event_id\":\"evt-$1\",\"reason\":\"OOMKilled\",\"message\":\"bench\",\"type\":\"Warning\",\"metadata\":{\"uid\":\"$1\",\"creationTimestamp\":\"2025-10-28T08:31:00Z\"},\"involvedObject\":{\"kind\":\"Pod\",\"name\":\"p\",\"namespace\":\"default\",\"uid\":\"u-$1\"},\"source\":{\"host\":\"n1\"}}"; }

echo "sequential registrations: $N" >&2
: >"$work/running.ms"; : >"$work/first.ms"
for i in $(seq -w 1 "$N"); do
  c="bench-seq-$i"
  t0=$(now_ms)
  register "$c"
  produce raw.k8s.events "$c::event::e$i" "$(event "e$i")"
  wait_until 60000 all_running "$c" "$workers_per_client" || { echo "timeout waiting for $c" >&2; tail -20 "$work/cp.log" >&2; exit 1; }
  t1=$(now_ms)
  wait_until 60000 grep -q "^$c::" "$work/keys" || { echo "timeout waiting for $c's first record" >&2; exit 1; }
  t2=$(now_ms)
  echo $((t1 - t0)) >>"$work/running.ms"; echo $((t2 - t0)) >>"$work/first.ms"
done

echo "simultaneous registrations: $N" >&2
errors_before=$(curl -fsS "$API/metrics" | awk '/^cp_runtime_errors_total/ {s+=$2} END {print s+0}')
t0=$(now_ms)
producers=()
for i in $(seq -w 1 "$N"); do register "bench-par-$i" & producers+=($!); done
wait "${producers[@]}"
for i in $(seq -w 1 "$N"); do wait_until 180000 all_running "bench-par-$i" "$workers_per_client" || { echo "timeout: bench-par-$i" >&2; exit 1; }; done
parallel_ms=$(( $(now_ms) - t0 ))
errors_after=$(curl -fsS "$API/metrics" | awk '/^cp_runtime_errors_total/ {s+=$2} END {print s+0}')

echo "teardown: $N" >&2
: >"$work/teardown.ms"
for i in $(seq -w 1 "$N"); do
  c="bench-seq-$i"
  t0=$(now_ms)
  produce cluster.registry "$c" "" z
  wait_until 60000 none_left "$c" || { echo "timeout removing $c" >&2; exit 1; }
  echo $(( $(now_ms) - t0 )) >>"$work/teardown.ms"
done

cat <<EOF
| figure | p50 | p99 | max | target |
| --- | --- | --- | --- | --- |
| registration → all $workers_per_client containers running (ms, n=$N) | $(percentile 50 <"$work/running.ms") | $(percentile 99 <"$work/running.ms") | $(sort -n "$work/running.ms" | tail -1) | |
| registration → first normalized record out (ms, n=$N) | $(percentile 50 <"$work/first.ms") | $(percentile 99 <"$work/first.ms") | $(sort -n "$work/first.ms" | tail -1) | p99 ≤ 3000 |
| tombstone → containers removed (ms, n=$N) | $(percentile 50 <"$work/teardown.ms") | $(percentile 99 <"$work/teardown.ms") | $(sort -n "$work/teardown.ms" | tail -1) | p99 ≤ 2000 |

$N simultaneous registrations: all $((N * workers_per_client)) containers running after ${parallel_ms} ms,
$((errors_after - errors_before)) failed runtime calls, concurrency cap CP_MAX_CONCURRENT_ACTIONS=$CONCURRENCY.
EOF
