#!/usr/bin/env bash
# Stops the compose stack and removes the worker containers the control plane created.
#
# usage: scripts/stop-server.sh [--volumes]
#
# Order matters: the control plane is stopped first (or it would start the workers again),
# then every container labelled kg.managed-by=kg-control-plane is stopped and removed (also
# those of a control plane run outside compose against this engine), then
# `docker-compose down` removes the stack and the kg-net network (which must have no
# workers attached any more).
#
#   --volumes  also delete the data: Kafka's log, the control plane's state, and every
#              client's graph volume (kg-data-<client id>). Without it they are kept.
#
# Environment: STOP_TIMEOUT_SECS (30), each container's time to drain after SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

volumes=0
for arg in "$@"; do
  case "$arg" in
    --volumes | -v) volumes=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "stop-server: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

STOP_TIMEOUT_SECS=${STOP_TIMEOUT_SECS:-30}
LABEL=kg.managed-by=kg-control-plane

if command -v docker-compose >/dev/null; then
  compose_cmd=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  echo "stop-server: neither docker-compose nor the docker compose plugin is installed" >&2
  exit 1
fi
# COMPOSE_FILE as for start-server.sh. Every profile, so that `down` also takes Kafka UI and
# Neo4j if they were started.
export COMPOSE_FILE=${COMPOSE_FILE:-compose/docker-compose.yml}
compose() {
  timeout $((STOP_TIMEOUT_SECS * 4 + 60)) \
    "${compose_cmd[@]}" -p kg --profile ui --profile graph "$@"
}

fail=0

# 1. The control plane, so it does not replace the workers removed next.
if docker container inspect kg-control-plane >/dev/null 2>&1; then
  echo "stop-server: stopping the control plane"
  timeout $((STOP_TIMEOUT_SECS + 30)) docker stop -t "$STOP_TIMEOUT_SECS" kg-control-plane >/dev/null || fail=1
fi

# 2. The workers.
mapfile -t workers < <(docker ps -aq --filter "label=$LABEL")
if ((${#workers[@]})); then
  echo "stop-server: stopping and removing ${#workers[@]} worker container(s)"
  timeout $((STOP_TIMEOUT_SECS + 30)) docker stop -t "$STOP_TIMEOUT_SECS" "${workers[@]}" >/dev/null || true
  timeout 60 docker rm -f "${workers[@]}" >/dev/null || fail=1
fi

# 3. The stack.
down_args=(down --remove-orphans --timeout "$STOP_TIMEOUT_SECS")
((volumes)) && down_args+=(--volumes)
echo "stop-server: docker-compose ${down_args[*]}"
compose "${down_args[@]}" || fail=1

# 4. The clients' data, only when asked.
if ((volumes)); then
  mapfile -t data < <(docker volume ls -q --filter name=kg-data- | grep '^kg-data-' || true)
  if ((${#data[@]})); then
    echo "stop-server: removing ${#data[@]} client data volume(s)"
    timeout 60 docker volume rm "${data[@]}" >/dev/null || fail=1
  fi
fi

left=$(docker ps -aq --filter "label=$LABEL")
if [ -n "$left" ]; then
  echo "stop-server: worker containers are still there: $left" >&2
  fail=1
fi
if ((fail)); then
  echo "stop-server: not everything could be stopped or removed (see above)" >&2
  exit 1
fi
echo "stop-server: stopped"
