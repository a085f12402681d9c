# Sourced by the benchmark scripts: the processes they start (recorded in STARTED as
# "<pid>:<name>", stopped newest first on exit) and the machine line of every report.
# The sourcing script sets `set -euo pipefail` and may append to STARTED.

STARTED=()

alive() {
    [ -r "/proc/$1/stat" ] || return 1
    local state
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$state" ] && [ "$state" != Z ]
}

# stop <pid> <name> <grace seconds>: SIGTERM, then SIGKILL after the grace period. A
# process paused with SIGSTOP is continued first, or it could not act on the SIGTERM.
stop() {
    local pid=$1 name=$2 grace=$3
    kill -CONT "$pid" 2>/dev/null || true
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < grace * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            echo "  note: $name (pid $pid) still running ${grace}s after SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local i entry
    # Newest first: the broker's clients before the broker.
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        entry=${STARTED[i]}
        stop "${entry%%:*}" "${entry#*:}" 15
    done
    STARTED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

machine() {
    echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores," \
        "$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
    if git rev-parse --git-dir >/dev/null 2>&1; then
        echo "git: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (working tree modified)')"
    else
        echo "git: not a git checkout"
    fi
}

# release_binaries <package…>: builds the release binaries of the packages and kg-bench
# (unless SKIP_BUILD is set) and copies the binaries named in BINARIES into $BIN.
release_binaries() {
    BIN=$WORK/bin
    mkdir -p "$BIN"
    if [ -z "${SKIP_BUILD:-}" ]; then
        echo "building (release)…" >&2
        local package args=()
        for package in "$@"; do args+=(-p "$package"); done
        cargo build --release --bins "${args[@]}" >&2
        cargo build --release -p kg-tests --bin kg-bench >&2
    fi
    local binary
    for binary in "$@" kg-bench; do
        cp "target/release/$binary" "$BIN/"
    done
}

# start_embedded_broker <dir>: the embedded broker, stopped on exit; sets BOOTSTRAP.
start_embedded_broker() {
    "$BIN/control-plane" embedded-broker </dev/null >"$1/broker.out" 2>"$1/broker.err" &
    STARTED+=("$!:embedded-broker")
    local i
    for ((i = 0; i < 300; i++)); do
        grep -q '^bootstrap=' "$1/broker.out" 2>/dev/null && break
        sleep 0.1
    done
    BOOTSTRAP=$(sed -n 's/^bootstrap=//p' "$1/broker.out" | head -1)
    [ -n "$BOOTSTRAP" ] || { echo "the embedded broker printed no bootstrap line" >&2; exit 1; }
}

# wait_for_api <data dir> <log>: waits for the control plane's API address and for /ready
# to answer 200; sets API. Shows the log's end and exits if it never does.
wait_for_api() {
    local i
    for ((i = 0; i < 300; i++)); do
        [ -s "$1/api.addr" ] && break
        sleep 0.1
    done
    [ -s "$1/api.addr" ] || { echo "no API address; log:" >&2; tail "$2" >&2; exit 1; }
    API=http://$(cat "$1/api.addr")
    for ((i = 0; i < 300; i++)); do
        "$BIN/kg-bench" http-get --url "$API/ready" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "the control plane never became ready; log:" >&2
    tail "$2" >&2
    exit 1
}

now_ms() { date +%s%3N; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# start_noida <dir>: noida-db (scripts/install-test-tools.sh installs it) with its data in
# <dir>, stopped on exit; sets B to its bootstrap address once kcat can list it.
start_noida() {
    local noida=${KG_NOIDA_DB:-${KG_TOOLS_DIR:-$HOME/.cache/kg-rca-tools}/noida-db} port i
    [ -x "$noida" ] || { echo "noida-db not found at $noida: run scripts/install-test-tools.sh" >&2; exit 1; }
    command -v kcat >/dev/null || { echo "kcat not found: run scripts/install-test-tools.sh" >&2; exit 1; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$noida" start --only kafka --kafka-port "$port" --host 127.0.0.1 --data-dir "$1/noida" \
        </dev/null >"$1/broker.out" 2>"$1/broker.err" &
    STARTED+=("$!:noida-db")
    B=127.0.0.1:$port
    for ((i = 0; i < 300; i++)); do
        kcat -L -b "$B" -m 2 >/dev/null 2>&1 && break
        sleep 0.1
    done
}

# wait_health <start ms> <deadline s> <substring…>: prints the ms waited until the
# caller's `health` function prints a body holding every substring (curl and grep only:
# a poller must not load the CPU it measures); exits at the deadline.
wait_health() {
    local started=$1 deadline=$2 body wanted ok
    shift 2
    while :; do
        body=$(health)
        ok=1
        for wanted in "$@"; do
            [[ $body == *"$wanted"* ]] || { ok=0; break; }
        done
        if ((ok)); then
            echo $(($(now_ms) - started))
            return
        fi
        (($(now_ms) - started < deadline * 1000)) || { echo "timed out waiting for /health to show: $*" >&2; exit 1; }
        sleep 0.05
    done
}
