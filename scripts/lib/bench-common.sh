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
