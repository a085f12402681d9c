#!/usr/bin/env bash
# Several control planes at scale, simulated (issue 15, part 3): CLIENTS clients shared by
# PLANES control planes (CP_OWNERSHIP=group) on the fake runtime, against one control plane
# with every client (the baseline), measured in the same run on the same embedded broker
# setup. See docs/benchmarks.md, "Several control planes at scale".
#
#   bash scripts/bench-control-planes.sh
#
# Environment:
#   CLIENTS=10000      clients registered (the chart's registration) and heartbeating
#   PLANES=3           control planes sharing them
#   HEARTBEAT_SECS=30  every client's heartbeat interval
#   STEADY_SECS=120    the steady-state window the runtime calls are counted over
#   SESSION_SECS=10    CP_OWNERSHIP_SESSION_TIMEOUT_SECS
#   SKIP_BUILD=1       use the binaries already in target/release
#
# What it reports, per setup (one plane with all clients; PLANES planes sharing them):
#   converge   from the first registration until every client's workers run (the sum
#              over the planes of cp_workers{state="running"} = CLIENTS × 3 roles)
#   memory     VmRSS and VmHWM of each control plane once converged and steady
#   calls      runtime calls (cp_runtime_call_duration_seconds_count, every operation)
#              per client per hour over STEADY_SECS
#   and for PLANES planes, after one is SIGKILLed: the time until the survivors own every
#   registry partition, and until every client's workers run again. The fake runtime lives
#   in each control plane's process, so a killed plane's workers go with it and the new
#   owners create them (on a shared Docker Engine they would adopt them: see
#   tests/tests/control_planes.rs).
#
# The admission rate is raised (CP_MAX_NEW_CLIENTS_PER_MINUTE) so that it does not set the
# converge time: at its default (600 a minute per control plane), 10,000 clients take
# 16.7 minutes to admit whatever the number of control planes, since each one admits every
# client into its table.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLIENTS=${CLIENTS:-10000}
PLANES=${PLANES:-3}
HEARTBEAT_SECS=${HEARTBEAT_SECS:-30}
STEADY_SECS=${STEADY_SECS:-120}
SESSION_SECS=${SESSION_SECS:-10}
ROLES_PER_CLIENT=3
WORKERS=$((CLIENTS * ROLES_PER_CLIENT))

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kg-bench-planes.XXXXXX")
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh

release_binaries control-plane
machine
echo "clients $CLIENTS, $ROLES_PER_CLIENT workers each on the fake runtime, heartbeats every ${HEARTBEAT_SECS}s"

kb() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

PIDS=()
APIS=()
start_plane() { # start_plane <dir> <all|group>
    mkdir -p "$1/data"
    : >"$1/data/no-pipelines.toml"
    CP_RUNTIME=fake CP_OWNERSHIP=$2 CP_OWNERSHIP_SESSION_TIMEOUT_SECS=$SESSION_SECS \
        CP_PIPELINES_FILE="$1/data/no-pipelines.toml" \
        CP_MAX_CLIENTS=$((CLIENTS * 2)) CP_MAX_WAITING_CLIENTS=$((CLIENTS * 2)) \
        CP_MAX_NEW_CLIENTS_PER_MINUTE=1000000 CP_HEALTH_INTERVAL_SECS=0 CP_EVENT_ATTRIBUTOR=false \
        KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" CP_LISTEN=127.0.0.1:0 CP_DATA_DIR="$1/data" \
        "$BIN/control-plane" run >"$1/control-plane.log" 2>&1 &
    local pid=$!
    STARTED+=("$pid:control-plane")
    wait_for_api "$1/data" "$1/control-plane.log"
    PIDS+=("$pid")
    APIS+=("$API")
}

# sum_metric <prefix> <api…>: the sum of every metric line starting with prefix.
sum_metric() {
    local prefix=$1 api total=0 value
    shift
    for api in "$@"; do
        value=$("$BIN/kg-bench" http-get --url "$api/metrics" 2>/dev/null |
            awk -v p="$prefix" 'index($0, p) == 1 {s += $NF} END {print s + 0}') || value=0
        total=$(awk -v a="$total" -v b="$value" 'BEGIN {print a + b}')
    done
    echo "$total"
}
running() { sum_metric 'cp_workers{state="running"}' "$@"; }

# owned_partitions <api…>: every registry partition the planes say they own, sorted.
owned_partitions() {
    local api
    for api in "$@"; do
        "$BIN/kg-bench" http-get --url "$api/ready" 2>/dev/null |
            python3 -c 'import json,sys; [print(p) for p in json.load(sys.stdin).get("ownership", {}).get("owned", [])]' || true
    done | sort -n | tr '\n' ' '
}

# wait_running <deadline secs> <api…>: until the planes run every client's workers.
wait_running() {
    local deadline=$1 start
    shift
    start=$(now)
    while [ "$(running "$@")" != "$WORKERS" ]; do
        if awk -v s="$start" -v n="$(now)" -v d="$deadline" 'BEGIN {exit !(n - s > d)}'; then
            echo "  not converged after ${deadline}s: running $(running "$@") of $WORKERS" >&2
            return 1
        fi
        sleep 0.5
    done
}

setup() { # setup <name> <planes> <ownership>
    local name=$1 planes=$2 ownership=$3 dir=$WORK/$1 i
    mkdir -p "$dir"
    echo "== $name: $planes control plane(s), CP_OWNERSHIP=$ownership"
    PIDS=()
    APIS=()
    start_embedded_broker "$dir"
    for ((i = 1; i <= planes; i++)); do
        start_plane "$dir/plane-$i" "$ownership"
    done
    local base=()
    for pid in "${PIDS[@]}"; do base+=("$(mb "$(kb "$pid" VmRSS)")"); done
    local t0
    t0=$(now)
    "$BIN/kg-bench" agents --bootstrap "$BOOTSTRAP" --clients "$CLIENTS" --prefix bench- \
        --interval-secs "$HEARTBEAT_SECS" --duration-secs 3600 \
        >"$dir/agents.result" 2>"$dir/agents.progress" &
    STARTED+=("$!:kg-bench agents")
    wait_running 900 "${APIS[@]}"
    echo "FIGURE ${name}_converge_secs $(since "$t0")"
    [ "$planes" -eq 1 ] || echo "  partitions owned: $(owned_partitions "${APIS[@]}")"
    # Steady state: a heartbeat round or more after converging.
    sleep "$HEARTBEAT_SECS"
    local c1 t1 c2
    c1=$(sum_metric cp_runtime_call_duration_seconds_count "${APIS[@]}")
    t1=$(now)
    sleep "$STEADY_SECS"
    c2=$(sum_metric cp_runtime_call_duration_seconds_count "${APIS[@]}")
    awk -v a="$c1" -v b="$c2" -v s="$t1" -v e="$(now)" -v n="$CLIENTS" \
        'BEGIN {printf "FIGURE '"$name"'_runtime_calls_per_client_hour %.2f (%d calls in %.0fs)\n", (b - a) / n * 3600 / (e - s), b - a, e - s}'
    for i in "${!PIDS[@]}"; do
        echo "FIGURE ${name}_plane_$((i + 1))_rss_mib $(mb "$(kb "${PIDS[i]}" VmRSS)") hwm $(mb "$(kb "${PIDS[i]}" VmHWM)") (before registration ${base[i]}) owned_clients $(sum_metric cp_owned_clients "${APIS[i]}")"
    done
    if [ "$planes" -gt 1 ]; then
        local victim=${PIDS[0]} tk
        kill -KILL "$victim"
        tk=$(now)
        local survivors=("${APIS[@]:1}")
        local want
        want=$(seq 0 2 | tr '\n' ' ')
        until [ "$(owned_partitions "${survivors[@]}")" = "$want" ]; do
            if awk -v s="$tk" -v n="$(now)" 'BEGIN {exit !(n - s > 120)}'; then
                echo "  the victim's partition was not owned again within 120 s" >&2
                break
            fi
            sleep 0.2
        done
        echo "FIGURE ${name}_handover_after_kill_secs $(since "$tk") (session timeout ${SESSION_SECS}s)"
        wait_running 900 "${survivors[@]}"
        echo "FIGURE ${name}_all_running_again_after_kill_secs $(since "$tk")"
        for i in 1 2; do
            echo "  survivor $i: VmRSS $(mb "$(kb "${PIDS[i]}" VmRSS)") MiB, owned clients $(sum_metric cp_owned_clients "${APIS[i]}")"
        done
    fi
    echo "  load1 $(cut -d' ' -f1 /proc/loadavg)"
    cleanup
}

setup one_plane 1 all
setup "${PLANES}_planes" "$PLANES" group
