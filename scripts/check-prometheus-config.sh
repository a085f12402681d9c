#!/usr/bin/env bash
# Checks the compose stack's Prometheus setup without starting anything:
#   1. promtool check config compose/prometheus.yml  (YAML, fields, relabel rules, regexes)
#   2. docker-compose -f compose/docker-compose.yml config -q  (the service that runs it)
# Exits non-zero on the first failure.
#
# usage: scripts/check-prometheus-config.sh
#
# Needs promtool (Debian's `prometheus` package; scripts/install-test-tools.sh installs it)
# and docker-compose, or `docker compose`. DOCKER_GID defaults to 0 here, as in the compose
# file; COMPOSE_FILE is ignored (this checks the repository's file alone).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "check-prometheus-config: promtool not found; run scripts/install-test-tools.sh" >&2
  exit 1
fi
if command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  echo "check-prometheus-config: neither docker-compose nor \`docker compose\` found" >&2
  exit 1
fi

echo "== $(promtool --version 2>&1 | head -n 1)"
echo "== promtool check config compose/prometheus.yml"
promtool check config compose/prometheus.yml

echo "== ${compose_cmd[*]} -f compose/docker-compose.yml config -q"
env -u COMPOSE_FILE DOCKER_GID="${DOCKER_GID:-0}" \
  "${compose_cmd[@]}" -f compose/docker-compose.yml config -q
echo "ok"
