#!/usr/bin/env bash
# Starts the compose stack (compose/docker-compose.yml): Kafka, topic setup, the control
# plane with the Docker runtime. Builds the images first if they are missing, then waits
# (bounded) until the control plane answers 200 on /ready.
#
# usage: scripts/start-server.sh [--profile ui] [--profile graph]
#
# Environment: READY_TIMEOUT_SECS (120) bounds the wait for /ready after `up`;
# UP_TIMEOUT_SECS (600) bounds `docker-compose up` itself (it waits for Kafka's healthcheck
# and the topics job); DOCKER_SOCKET (/var/run/docker.sock) and DOCKER_GID (the socket's
# group, found with stat); KG_PUBLISH_ADDR (127.0.0.1) where the ports are published;
# KG_KEEP_ON_FAILURE=1 leaves a stack that did not get ready running, for debugging
# (otherwise it is taken down again). Everything else in compose/docker-compose.yml's
# header (CP_API_TOKEN, KAFKA_HOST_PORT, ...) is passed through, and COMPOSE_FILE
# (compose/docker-compose.yml:my-override.yml) adds override files.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

profiles=()
while (($#)); do
  case "$1" in
    --profile)
      [ $# -ge 2 ] || { echo "start-server: --profile needs a name (ui, graph)" >&2; exit 2; }
      profiles+=(--profile "$2"); shift 2 ;;
    --profile=*) profiles+=(--profile "${1#--profile=}"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "start-server: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

READY_TIMEOUT_SECS=${READY_TIMEOUT_SECS:-120}
UP_TIMEOUT_SECS=${UP_TIMEOUT_SECS:-600}
# COMPOSE_FILE (docker-compose's own variable, files separated by ':') adds override files;
# it must start with compose/docker-compose.yml.
export COMPOSE_FILE=${COMPOSE_FILE:-compose/docker-compose.yml}
CONTAINER=kg-control-plane

if command -v docker-compose >/dev/null; then
  compose_cmd=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  echo "start-server: neither docker-compose nor the docker compose plugin is installed" >&2
  exit 1
fi
compose() { "${compose_cmd[@]}" -p kg ${profiles[@]+"${profiles[@]}"} "$@"; }

# The control plane runs as uid 10001 and gets the socket's group (see compose/README.md).
export DOCKER_SOCKET=${DOCKER_SOCKET:-/var/run/docker.sock}
if [ -z "${DOCKER_GID:-}" ]; then
  if [ -S "$DOCKER_SOCKET" ] && DOCKER_GID=$(stat -c %g "$DOCKER_SOCKET" 2>/dev/null); then
    :
  else
    DOCKER_GID=0 # Docker Desktop and remote engines: the VM's socket is root's
  fi
fi
export DOCKER_GID

scripts/build-images.sh --if-missing

publish=${KG_PUBLISH_ADDR:-127.0.0.1}
case "$publish" in 0.0.0.0 | "" | "::") host=127.0.0.1 ;; *) host=$publish ;; esac
url="http://$host:8080/ready"

started=0
ready=0
on_exit() {
  local rc=$?
  if ((started)) && ! ((ready)); then
    echo "start-server: the control plane did not get ready; its logs:" >&2
    docker logs --tail 200 "$CONTAINER" >&2 2>&1 || true
    compose ps >&2 || true
    if [ "${KG_KEEP_ON_FAILURE:-0}" = 1 ]; then
      echo "start-server: KG_KEEP_ON_FAILURE=1: leaving the stack up (scripts/stop-server.sh stops it)" >&2
    else
      echo "start-server: taking the stack down again (KG_KEEP_ON_FAILURE=1 keeps it)" >&2
      scripts/stop-server.sh >&2 || true
    fi
    ((rc)) || rc=1
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# HTTP status of GET /ready, or 000 when nothing answers.
ready_status() {
  if command -v curl >/dev/null; then
    curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$url" || true
  else
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 10 bash -c '
      exec 3<>"/dev/tcp/$1/8080" || exit 1
      printf "GET /ready HTTP/1.0\r\nHost: %s\r\n\r\n" "$1" >&3
      IFS=" " read -r _ code _ <&3 && printf "%s" "$code"' _ "$host" 2>/dev/null || printf 000
  fi
}

started=1
echo "start-server: docker-compose up (DOCKER_GID=$DOCKER_GID)"
if ! timeout "$UP_TIMEOUT_SECS" "${compose_cmd[@]}" -p kg ${profiles[@]+"${profiles[@]}"} up -d; then
  echo "start-server: docker-compose up failed" >&2
  compose logs --tail 50 >&2 || true
  exit 1
fi

echo "start-server: waiting up to ${READY_TIMEOUT_SECS}s for $url"
deadline=$((SECONDS + READY_TIMEOUT_SECS))
status=000
while ((SECONDS < deadline)); do
  status=$(ready_status)
  if [ "$status" = 200 ]; then
    ready=1
    break
  fi
  sleep 2
done
if ! ((ready)); then
  echo "start-server: $url answered $status for ${READY_TIMEOUT_SECS}s" >&2
  exit 1
fi

echo "start-server: ready"
echo "  API:    http://$host:8080 (/clients, /metrics; DELETE needs CP_API_TOKEN)"
echo "  Kafka:  ${KAFKA_EXTERNAL_HOST:-localhost}:${KAFKA_HOST_PORT:-9092} from the host, kafka:9092 on the kg-net network"
echo "  logs:   docker logs -f $CONTAINER; workers: docker ps --filter label=kg.managed-by=kg-control-plane"
echo "  stop:   scripts/stop-server.sh"
