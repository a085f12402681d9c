#!/usr/bin/env bash
# Worker end-to-end throughput through the embedded broker: one `worker --role
# event-normalizer` (release build), raw.k8s.events → events.normalized, counted by a
# consumer of events.normalized that runs while the load is produced. See
# docs/benchmarks.md for the method and the results.
#
#   bash scripts/bench-worker-throughput.sh              # 3 runs, median
#
# Environment:
#   RUNS=3            runs (each with a fresh broker and worker); the median is reported
#   MODE=concurrent   concurrent: produce while the worker consumes, never more than
#                       WINDOW records ahead of the outputs seen (the embedded broker keeps
#                       at most 5 MiB per partition, so a producer far ahead loses input)
#                     drain: freeze the worker (SIGSTOP), pre-produce ROUND_RECORDS, resume
#                       it (SIGCONT) and time the outputs; ROUNDS rounds per run. Isolates
#                       the worker from the load generator's CPU.
#   RECORDS=300000    records per concurrent run (the run also ends after MAX_SECS)
#   MAX_SECS=40       bound on one concurrent run's producing phase
#   WINDOW=12000      concurrent mode's records in flight (~2.6 MB per partition)
#   ROUNDS=5 ROUND_RECORDS=20000
#   WORKER_ENV=""     extra environment for the worker, e.g.
#                       WORKER_ENV="KAFKA_EXTRA_CONFIG=fetch.queue.backoff.ms=10"
#   SKIP_BUILD=1      use the binaries already in target/release
#   BROKER=embedded   embedded: the embedded broker; noida-db: noida-db (scripts/
#                       install-test-tools.sh installs it), topics by `create-topics`
#   ROLE=event-normalizer  or pipeline: the example traffic pipeline
#                       (examples/pipelines/traffic-flatten.toml: flatten, validate,
#                       enrich), traffic-raw → traffic-events, ~250-byte METR-LA readings;
#                       concurrent mode only
#   CEILING=1         pair every run with a no-op ceiling run on the same broker kind:
#                       the same worker with WORKER_PASSTHROUGH=true (same consumer, producer
#                       and batch loop, records forwarded unprocessed); the two alternate
#                       which goes first, and the ratio of the medians is reported
#
# Bounded in time (about RUNS × (MAX_SECS + 20) s, plus the build); every process it
# starts is stopped on exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-3}
MODE=${MODE:-concurrent}
RECORDS=${RECORDS:-300000}
MAX_SECS=${MAX_SECS:-40}
WINDOW=${WINDOW:-12000}
ROUNDS=${ROUNDS:-5}
ROUND_RECORDS=${ROUND_RECORDS:-20000}
WORKER_ENV=${WORKER_ENV:-}
BROKER=${BROKER:-embedded}
CEILING=${CEILING:-0}
ROLE=${ROLE:-event-normalizer}
case "$ROLE" in
    event-normalizer) WORKLOAD=events ROLE_ARGS=(--role event-normalizer) ;;
    pipeline)
        [ "$MODE" = concurrent ] || { echo "ROLE=pipeline runs in MODE=concurrent only" >&2; exit 2; }
        WORKLOAD=traffic
        ROLE_ARGS=(--role pipeline --pipeline traffic-flatten --pipelines-file "$PWD/examples/pipelines/traffic-flatten.toml")
        ;;
    *) echo "ROLE must be event-normalizer or pipeline" >&2; exit 2 ;;
esac
NOIDA=${KG_NOIDA_DB:-${KG_TOOLS_DIR:-$HOME/.cache/kg-rca-tools}/noida-db}
case "$BROKER" in
    embedded) ;;
    noida-db) [ -x "$NOIDA" ] || { echo "noida-db not found at $NOIDA: run scripts/install-test-tools.sh" >&2; exit 1; } ;;
    *) echo "BROKER must be embedded or noida-db" >&2; exit 2 ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kg-bench-throughput.XXXXXX")
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh

forget() { # forget <pid>: it has been stopped already
    local keep=() entry
    for entry in "${STARTED[@]}"; do
        [ "${entry%%:*}" = "$1" ] || keep+=("$entry")
    done
    STARTED=("${keep[@]+"${keep[@]}"}")
}

# Busy CPU ticks of the whole machine (all cores), from /proc/stat.
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
proc_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0; }

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
echo "mode=$MODE runs=$RUNS role=$ROLE worker_env=\"$WORKER_ENV\""
if [ "$MODE" = concurrent ]; then
    echo "records=$RECORDS max_secs=$MAX_SECS window=$WINDOW"
else
    echo "rounds=$ROUNDS round_records=$ROUND_RECORDS"
fi
echo "record: $("$BIN/kg-bench" event --client bench-tp --workload "$WORKLOAD" | tail -1)"

HZ=$(getconf CLK_TCK)

# start_broker <dir>: starts a broker of kind $BROKER, sets $broker (pid) and $bootstrap.
start_broker() {
    local dir=$1 i
    if [ "$BROKER" = embedded ]; then
        "$BIN/control-plane" embedded-broker </dev/null >"$dir/broker.out" 2>"$dir/broker.err" &
        broker=$!
        STARTED+=("$broker:embedded-broker")
        for ((i = 0; i < 300; i++)); do
            grep -q '^bootstrap=' "$dir/broker.out" 2>/dev/null && break
            sleep 0.1
        done
        bootstrap=$(sed -n 's/^bootstrap=//p' "$dir/broker.out" | head -1)
        [ -n "$bootstrap" ] || { echo "the embedded broker printed no bootstrap line" >&2; exit 1; }
    else
        local port
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        "$NOIDA" start --only kafka --kafka-port "$port" --host 127.0.0.1 --data-dir "$dir/noida" \
            </dev/null >"$dir/broker.out" 2>"$dir/broker.err" &
        broker=$!
        STARTED+=("$broker:noida-db")
        bootstrap=127.0.0.1:$port
        for ((i = 0; i < 300; i++)); do
            kcat -L -b "$bootstrap" -m 2 >/dev/null 2>&1 && break
            sleep 0.1
        done
        KAFKA_BOOTSTRAP_SERVERS=$bootstrap KAFKA_WAIT_SECS=30 RUST_LOG=warn \
            "$BIN/control-plane" create-topics >"$dir/topics.out" 2>&1 \
            || { echo "create-topics failed:" >&2; cat "$dir/topics.out" >&2; exit 1; }
    fi
}

# one_run <run> <variant: worker|ceiling>: one measured run on a fresh broker; appends the
# rate to RATES_<variant>.
one_run() {
    local run=$1 variant=$2 dir worker extra=""
    dir=$WORK/run-$run-$variant
    mkdir -p "$dir"
    start_broker "$dir"
    [ "$variant" = ceiling ] && extra="WORKER_PASSTHROUGH=true"

    client=bench-tp-$run
    if [ "$WORKLOAD" = traffic ]; then
        # The pipeline's topics are not in the catalog: a first record (another tenant's,
        # skipped by the worker) makes the broker create each before the worker and the
        # counter look them up.
        for topic in traffic-raw traffic-events; do
            echo '{}' | kcat -P -b "$bootstrap" -t "$topic" -k "bench-setup::0" 2>/dev/null \
                || { echo "kcat could not create $topic (scripts/install-test-tools.sh installs kcat)" >&2; exit 1; }
        done
    fi
    # shellcheck disable=SC2086 # WORKER_ENV is a list of assignments
    env $WORKER_ENV $extra CLIENT_ID=$client KAFKA_BOOTSTRAP_SERVERS="$bootstrap" \
        WORKER_LISTEN=127.0.0.1:0 WORKER_ADDR_FILE="$dir/worker.addr" WORKER_DATA_DIR="$dir/data" \
        "$BIN/worker" "${ROLE_ARGS[@]}" >"$dir/worker.log" 2>&1 &
    worker=$!
    STARTED+=("$worker:worker")
    for ((i = 0; i < 300; i++)); do
        [ -s "$dir/worker.addr" ] && break
        sleep 0.1
    done
    [ -s "$dir/worker.addr" ] || { echo "the worker wrote no address; log:" >&2; tail "$dir/worker.log" >&2; exit 1; }
    metrics=http://$(cat "$dir/worker.addr")/metrics

    load_before=$(cut -d' ' -f1 /proc/loadavg)
    busy_before=$(machine_busy)
    ours_before=$(($(proc_ticks "$worker") + $(proc_ticks "$broker")))
    worker_before=$(proc_ticks "$worker")
    t0=$(date +%s.%N)
    if [ "$MODE" = concurrent ]; then
        timeout $((MAX_SECS + 120)) "$BIN/kg-bench" throughput --bootstrap "$bootstrap" --client "$client" \
            --records "$RECORDS" --window "$WINDOW" --max-secs "$MAX_SECS" --metrics-url "$metrics" \
            --workload "$WORKLOAD" \
            >"$dir/result" 2>"$dir/progress"
    else
        sleep 3 # the worker joins its group first, so a round starts with it assigned
        timeout $((ROUNDS * 60 + 60)) "$BIN/kg-bench" drain --bootstrap "$bootstrap" --client "$client" \
            --worker-pid "$worker" --rounds "$ROUNDS" --round-records "$ROUND_RECORDS" \
            --metrics-url "$metrics" >"$dir/result" 2>"$dir/progress"
    fi
    t1=$(date +%s.%N)
    busy=$(($(machine_busy) - busy_before))
    ours=$(($(proc_ticks "$worker") + $(proc_ticks "$broker") - ours_before))
    worker_ticks=$(($(proc_ticks "$worker") - worker_before))
    load_after=$(cut -d' ' -f1 /proc/loadavg)
    result=$(grep '^RESULT' "$dir/result" | tail -1)
    rate=$(tr ' ' '\n' <<<"$result" | sed -n 's/^rate=//p')
    if [ "$variant" = ceiling ]; then RATES_ceiling+=("$rate"); else RATES_worker+=("$rate"); fi
    records_in=$(tr ' ' '\n' <<<"$result" | sed -n 's/^worker_in=//p')
    awk -v busy="$busy" -v ours="$ours" -v hz="$HZ" -v t0="$t0" -v t1="$t1" -v run="$run" \
        -v l0="$load_before" -v l1="$load_after" -v variant="$variant" -v wt="$worker_ticks" \
        -v n="${records_in:-0}" 'BEGIN {
            secs = t1 - t0
            printf "run %d (%s): load1 %s→%s; during the run the machine was busy %.2f cores, worker+broker %.2f cores; worker CPU %.2f µs/record\n",
                run, variant, l0, l1, busy / hz / secs, ours / hz / secs, (n > 0 ? wt / hz / n * 1e6 : 0)
        }'
    [ "$MODE" = drain ] && sed 's/^/  /' "$dir/progress"
    echo "  $result"

    stop "$worker" worker 15
    forget "$worker"
    if grep -v ' INFO \|CONFWARN\|benchmark pass-through' "$dir/worker.log" | grep -q .; then
        echo "  worker warnings:" && grep -v ' INFO \|CONFWARN\|benchmark pass-through' "$dir/worker.log" | head -5 | sed 's/^/    /'
    fi
    stop "$broker" "$BROKER" 5
    forget "$broker"
}

RATES_worker=()
RATES_ceiling=()
echo "broker=$BROKER ceiling=$CEILING"
for ((run = 1; run <= RUNS; run++)); do
    if [ "$CEILING" = 1 ] && ((run % 2 == 1)); then
        one_run "$run" ceiling
        one_run "$run" worker
    elif [ "$CEILING" = 1 ]; then
        one_run "$run" worker
        one_run "$run" ceiling
    else
        one_run "$run" worker
    fi
done

median_of() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
median=$(median_of "${RATES_worker[@]}")
echo "rates (records/s): ${RATES_worker[*]}"
if [ "$ROLE" = pipeline ]; then target=100000; else target=50000; fi
echo "FIGURE worker_throughput_records_per_sec role=$ROLE broker=$BROKER median=$median runs=${RATES_worker[*]} mode=$MODE target=$target met=$([ "${median:-0}" -ge "$target" ] && echo yes || echo no)"
if [ "$CEILING" = 1 ]; then
    ceiling=$(median_of "${RATES_ceiling[@]}")
    echo "ceiling rates (records/s): ${RATES_ceiling[*]}"
    awk -v w="$median" -v c="$ceiling" -v b="$BROKER" -v m="$MODE" -v r="$ROLE" 'BEGIN {
        printf "FIGURE passthrough_ratio role=%s broker=%s worker_median=%d ceiling_median=%d ratio=%.3f mode=%s target=0.90 met=%s\n",
            r, b, w, c, w / c, m, (w / c >= 0.9) ? "yes" : "no"
    }'
fi
