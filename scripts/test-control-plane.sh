#!/usr/bin/env bash
# The end-to-end check the original system promised, against a real Docker Engine and a
# Kafka-protocol broker: the embedded one by default, or KAFKA_BOOTSTRAP_SERVERS (reachable
# from the host network) to use another. Prints one line per check and a summary; on the
# first failure it prints the evidence and exits non-zero. Everything it starts is removed
# on exit, whatever happens.
#
#   bash scripts/test-control-plane.sh
#   TEST_RUNTIME=swarm bash scripts/test-control-plane.sh
#
# Settings (environment): KAFKA_BOOTSTRAP_SERVERS, TEST_CP_PORT (18080),
# TEST_HEARTBEAT_TIMEOUT_SECS (10), TEST_CLIENT (test-client-001), TEST_RUNTIME (docker, or
# swarm: the same checks with CP_RUNTIME=swarm, each worker a swarm service; the engine is
# made a one-node swarm for the run when it is in none, and leaves it afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENT=${TEST_CLIENT:-test-client-001}
RUNTIME=${TEST_RUNTIME:-docker}
case "$RUNTIME" in docker|swarm) ;; *) echo "TEST_RUNTIME must be docker or swarm, not $RUNTIME" >&2; exit 2 ;; esac
made_swarm=""
PORT=${TEST_CP_PORT:-18080}
TIMEOUT=${TEST_HEARTBEAT_TIMEOUT_SECS:-10}
TOKEN=test-control-plane-token
API="http://127.0.0.1:${PORT}"
CP=kg-control-plane
work=$(mktemp -d)
# Clients registered together to kill the control plane in the middle of spawning.
BURST=("${CLIENT}-b1" "${CLIENT}-b2" "${CLIENT}-b3" "${CLIENT}-b4" "${CLIENT}-b5")
broker_pid=""
heartbeat_pid=""
passed=0
started=$(date +%s)

# Removes swarm services, each once no task of it waits for swarm's task reaper: Engine
# 20.10's manager crashes the daemon when a service is deleted while a task of it is
# being reaped.
service_rm() {
  for service in "$@"; do
    for _ in $(seq 60); do
      docker service ps --format '{{.DesiredState}}' "$service" 2>/dev/null | grep -q '^Remove$' || break
      sleep 0.25
    done
    docker service rm "$service" >/dev/null 2>&1 || true
  done
}

cleanup() {
  [ -n "$heartbeat_pid" ] && kill "$heartbeat_pid" 2>/dev/null || true
  docker rm -f "$CP" >/dev/null 2>&1 || true
  if [ "$RUNTIME" = swarm ]; then
    for client in "$CLIENT" "${BURST[@]}" shared; do
      ids=$(docker service ls -q --filter "label=kg.managed-by=kg-control-plane" --filter "label=kg.client-id=${client}" 2>/dev/null)
      [ -n "$ids" ] && service_rm $ids
    done
    # Swarm removes a service's containers in the background; the volumes go after them.
    for _ in $(seq 60); do
      [ -z "$(docker ps -aq --filter label=com.docker.swarm.service.name)" ] && break
      sleep 0.5
    done
  fi
  # Every worker container (and data volume) of this run's clients, found by label.
  # The shared event attributor (pseudo-client "shared") is left running by a stopped
  # control plane like every worker; this run made it, so it goes too.
  for client in "$CLIENT" "${BURST[@]}" shared; do
    ids=$(docker ps -aq --filter "label=kg.managed-by=kg-control-plane" --filter "label=kg.client-id=${client}")
    [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1 || true
    docker volume rm -f "kg-data-${client}" >/dev/null 2>&1 || true
  done
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null || true
  if [ -n "$made_swarm" ]; then
    docker swarm leave --force >/dev/null 2>&1 || true
    # `docker swarm leave` leaves this network behind.
    docker network rm docker_gwbridge >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL  $1"
  # The whole log goes to a file (CI keeps only part of what is printed); the lines about
  # the test client come first because they usually say what went wrong.
  local full=${TEST_CP_EVIDENCE_DIR:-$work}/control-plane.log
  mkdir -p "$(dirname "$full")"
  docker logs "$CP" >"$full" 2>&1 || true
  echo "----- evidence: control-plane log about ${CLIENT} (last 25; whole log: $full) -----"
  grep -a -E "client_id=${CLIENT}( |$)|\"client_id\":\"${CLIENT}\"|ingest|starting|stopped" "$full" | tail -25 || true
  echo "----- evidence: control-plane log (tail) -----"
  tail -20 "$full"
  echo "----- evidence: docker ps -a (ours) -----"
  docker ps -a --filter "label=kg.managed-by=kg-control-plane" --format '{{.Names}} {{.ID}} {{.Status}}' || true
  if [ "$RUNTIME" = swarm ]; then
    echo "----- evidence: docker service ls (ours) -----"
    docker service ls --filter "label=kg.managed-by=kg-control-plane" || true
  fi
  echo "----- $passed passed, 1 failed -----"
  exit 1
}
ok() { passed=$((passed + 1)); echo "ok    $1"; }

# poll SECONDS COMMAND...: retries the command every 0.5 s until it succeeds.
poll() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

get() { curl -fsS "$API$1"; }
client_json() { get "/clients/${CLIENT}"; }

# The runtime's objects, one set of functions for both: a worker is a container (docker)
# or a one-replica service (swarm) whose name is the worker's with '.' as '_'.
svc() { if [ "$RUNTIME" = swarm ]; then echo "${1//./_}"; else echo "$1"; fi; }
# A client's workers, "name id state" lines, sorted; state running, created or starting.
workers_of() {
  if [ "$RUNTIME" = swarm ]; then
    docker service ls --filter "label=kg.managed-by=kg-control-plane" --filter "label=kg.client-id=$1" \
      --format '{{.Name}} {{.ID}} {{.Replicas}}' \
      | awk '{print $1, $2, ($3 == "1/1" ? "running" : ($3 == "0/0" ? "created" : "starting"))}' | sort
  else
    docker ps -a --filter "label=kg.managed-by=kg-control-plane" --filter "label=kg.client-id=$1" \
      --format '{{.Names}} {{.ID}} {{.State}}' | sort
  fi
}
count_workers() { workers_of "$1" | wc -l; }
count_running() { workers_of "$1" | grep -c ' running$' || true; }
# "managed-by client role spec-hash" labels, then the user, of worker NAME.
worker_labels() {
  local format='{{index .Config.Labels "kg.managed-by"}} {{index .Config.Labels "kg.client-id"}} {{index .Config.Labels "kg.role"}} {{index .Config.Labels "kg.spec-hash"}}'
  [ "$RUNTIME" = swarm ] && format=${format//.Config.Labels/.Spec.Labels}
  if [ "$RUNTIME" = swarm ]; then docker service inspect "$(svc "$1")" --format "$format"; else docker inspect "$1" --format "$format"; fi
}
worker_user() {
  if [ "$RUNTIME" = swarm ]; then docker service inspect "$(svc "$1")" --format '{{.Spec.TaskTemplate.ContainerSpec.User}}'
  else docker inspect "$1" --format '{{.Config.User}}'; fi
}
worker_logs() { # what an operator types: docker logs, or docker service logs
  if [ "$RUNTIME" = swarm ]; then docker service logs --raw "$(svc "$1")"; else docker logs "$1"; fi
}
worker_id() { workers_of "$2" | awk -v n="$(svc "$1")" '$1 == n {print $2}'; }
worker_running() { workers_of "$2" | grep -q "^$(svc "$1") .* running$"; }
kill_worker() { # the worker's process dies (its task's container, on swarm)
  if [ "$RUNTIME" = swarm ]; then
    docker kill "$(docker ps -q --filter "label=com.docker.swarm.service.name=$(svc "$1")")"
  else docker kill "$1"; fi
}

# Our workers of CLIENT, "name id state" lines, sorted.
containers() { workers_of "$CLIENT"; }
running_count() { containers | grep -c ' running$' || true; }
expect_running() { [ "$(running_count)" -eq "$1" ] && [ "$(containers | wc -l)" -eq "$1" ]; }
expect_none() { [ -z "$(containers)" ]; }

produce() { # topic key value [kcat options...]
  local topic=$1 key=$2 value=$3; shift 3
  printf '%s\x1f%s\n' "$key" "$value" | kcat -P -b "$BOOTSTRAP" -t "$topic" -K $'\x1f' "$@"
}

# ---- 1. images, broker, topics, control plane -------------------------------------------
command -v kcat >/dev/null || fail "kcat is installed (apt-get install kcat)"
if [ "$RUNTIME" = swarm ]; then
  case "$(docker info --format '{{.Swarm.LocalNodeState}}')" in
    active) ;;
    inactive) docker swarm init --advertise-addr 127.0.0.1 >/dev/null || fail "docker swarm init"; made_swarm=1 ;;
    *) fail "the engine is neither in a swarm nor out of one" ;;
  esac
  [ "$(docker info --format '{{.Swarm.ControlAvailable}}')" = true ] || fail "this engine is a swarm manager"
fi
command -v curl >/dev/null || fail "curl is installed"
# Always rebuilt from this tree (cargo and docker both cache, so an unchanged tree is quick):
# an image left by an earlier checkout would test old binaries.
bash scripts/build-images.sh >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; fail "images build"; }
ok "images kg-worker:latest and kg-control-plane:latest built from this tree"

if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  BOOTSTRAP=$KAFKA_BOOTSTRAP_SERVERS
  docker run --rm --network host -e KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" kg-control-plane:latest create-topics \
    >"$work/topics.log" 2>&1 || { cat "$work/topics.log"; fail "topics created on $BOOTSTRAP"; }
else
  cargo build --quiet --release --bins -p control-plane
  target/release/control-plane embedded-broker >"$work/broker.out" 2>"$work/broker.err" &
  broker_pid=$!
  poll 30 grep -q '^bootstrap=' "$work/broker.out" || fail "the embedded broker starts"
  BOOTSTRAP=$(sed -n 's/^bootstrap=//p' "$work/broker.out" | head -1)
fi
topics=$(kcat -L -b "$BOOTSTRAP" -J 2>/dev/null | python3 -c 'import json,sys; print(len([t for t in json.load(sys.stdin)["topics"] if not t["topic"].startswith("__")]))')
[ "$topics" -ge 13 ] || fail "the 13 topics exist (found $topics)"
ok "broker $BOOTSTRAP has the 13 topics"

# Leftovers of an aborted earlier run would make every check below meaningless.
docker rm -f "$CP" >/dev/null 2>&1 || true
ids=$(docker ps -aq --filter "label=kg.managed-by=kg-control-plane" --filter "label=kg.client-id=${CLIENT}")
[ -n "$ids" ] && docker rm -f $ids >/dev/null
if [ "$RUNTIME" = swarm ]; then
  ids=$(docker service ls -q --filter "label=kg.managed-by=kg-control-plane" --filter "label=kg.client-id=${CLIENT}")
  [ -n "$ids" ] && service_rm $ids
fi
start_control_plane() {
  docker run -d --name "$CP" --network host --user 0:0 \
    -v /var/run/docker.sock:/var/run/docker.sock \
    -e KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" -e CP_RUNTIME="$RUNTIME" -e CP_DOCKER_NETWORK=host \
    -e CP_SWARM_NETWORK=host -e CP_SWARM_WORKER_BIND=127.0.0.1 \
    -e CP_LISTEN="127.0.0.1:${PORT}" -e CP_HEARTBEAT_TIMEOUT_SECS="$TIMEOUT" \
    -e CP_RECONCILE_INTERVAL_MS=500 -e CP_STOP_GRACE_SECS=5 -e CP_API_TOKEN="$TOKEN" \
    -e CP_DATA_DIR=/tmp/cp -e CP_WORKER_IMAGE=kg-worker:latest -e LOG_FORMAT=json \
    kg-control-plane:latest run >/dev/null
}
start_control_plane
poll 60 get /ready || fail "the control plane becomes ready"
ok "control plane $CP is ready with the $RUNTIME runtime"
roles=$(docker inspect "$CP" --format '{{range .Config.Env}}{{println .}}{{end}}' | sed -n 's/^CP_ROLES=//p')
expected=3  # the default role set: event-normalizer, log-normalizer, graph-builder
[ -n "$roles" ] && expected=$(echo "$roles" | tr ',' '\n' | grep -c .)
# … and the built-in pipeline (no CP_PIPELINES_FILE): alert enrichment, for every client.
expected=$((expected + 1))

# ---- 2. registration → containers with names and labels ---------------------------------
heartbeat_loop() {
  while true; do
    produce cluster.heartbeat "$CLIENT" "{\"client_id\":\"$CLIENT\",\"timestamp\":\"$(date -u +%FT%TZ)\"}" || true
    sleep 2
  done
}
produce cluster.registry "$CLIENT" "{\"client_id\":\"$CLIENT\",\"cluster_name\":\"test-cluster\",\"k8s_version\":\"1.28\"}"
heartbeat_loop & heartbeat_pid=$!
poll 60 expect_running "$expected" || fail "$expected worker containers run for $CLIENT"
for named in event-normalizer:kg-event-normalizer-${CLIENT} log-normalizer:kg-log-normalizer-${CLIENT} \
             graph-builder:kg-graph-builder-${CLIENT} pipeline:kg-pipeline-alert-enrichment.${CLIENT}; do
  role=${named%%:*} name=${named#*:}
  labels=$(worker_labels "$name") || fail "worker $(svc "$name") exists"
  read -r managed client_label role_label hash <<<"$labels"
  [ "$managed" = kg-control-plane ] && [ "$client_label" = "$CLIENT" ] && [ "$role_label" = "$role" ] && [ -n "$hash" ] \
    || fail "$name carries the labels (got: $labels)"
  user=$(worker_user "$name")
  [ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "$user" != root ] || fail "$name runs as a non-root user (got '$user')"
done
ok "registration → $expected workers running ($RUNTIME; alert enrichment's among them), named kg-<role>-$CLIENT, labelled, non-root"
# (Output is captured before matching: with pipefail, `… | grep -q` fails when grep exits
# early and the writer gets SIGPIPE.)
[[ "$(client_json)" == *'"state":"running"'* ]] || fail "the API shows running workers"
ok "GET /clients/$CLIENT shows the workers running"

# ---- 3. the original test event comes out normalized -----------------------------------
event='{"event_id":"evt-test-123","reason":"OOMKilled","message":"Container killed: out of memory","type":"Warning","metadata":{"uid":"test-123","creationTimestamp":"2025-10-28T08:31:00Z"},"involvedObject":{"kind":"Pod","name":"test-pod","namespace":"default","uid":"pod-test-123"},"source":{"host":"node-1"},"lastTimestamp":"2025-10-28T08:31:00Z","count":1}'
produce raw.k8s.events "${CLIENT}::event::test-123" "$event"
find_normalized() {
  kcat -C -b "$BOOTSTRAP" -t events.normalized -o beginning -e -q -f '%k\x1f%s\n' \
    | grep -a "^${CLIENT}::" | grep -a '"raw_event_id":"evt-test-123"' | grep -a '"pod_name":"test-pod"' \
    | grep -a '"event_type_abstract":"MEMORY_OOM"' | head -1 >"$work/normalized"
  [ -s "$work/normalized" ]
}
poll 60 find_normalized || fail "the OOMKilled test event is normalized under ${CLIENT}::<event_id>"
ok "test event normalized: $(cut -d$'\x1f' -f1 "$work/normalized")"

# ---- 4. consumer groups and docker logs --------------------------------------------------
# The embedded broker does not answer group listings, so a group's existence is shown by
# the offsets it committed on its input topic (each worker commits after its first batch).
log='{"message":"connection refused: db:5432","timestamp":"2025-10-28T08:31:00Z","stream":"stderr","kubernetes":{"pod_name":"test-pod","pod_namespace":"default","pod_uid":"pod-test-123","container_name":"app","pod_node_name":"node-1"}}'
produce raw.k8s.logs "${CLIENT}::pod-test-123" "$log"
group_committed() { # group topic
  docker run --rm --network host kg-control-plane:latest group-offsets \
    --kafka-bootstrap-servers "$BOOTSTRAP" --group "$1" --topic "$2" >>"$work/groups" 2>&1
}
: >"$work/groups"
for pair in "event-normalizer raw.k8s.events" "log-normalizer raw.k8s.logs" "graph-builder events.normalized"; do
  read -r role topic <<<"$pair"
  poll 60 group_committed "${role}-${CLIENT}" "$topic" \
    || fail "consumer group ${role}-${CLIENT} exists with offsets on $topic ($(tail -3 "$work/groups"))"
done
ok "consumer groups event-normalizer-$CLIENT, log-normalizer-$CLIENT, graph-builder-$CLIENT exist"
# LOG_FORMAT=json on the control plane reaches every worker it starts: every line of every
# container's log (the control plane's too) is a JSON object, and each worker's first says
# which client and role it serves.
json_lines() { # worker, or "$CP": fails unless every line of its log is a JSON object
  { if [ "$1" = "$CP" ]; then docker logs "$CP"; else worker_logs "$1"; fi; } 2>&1 | python3 -c '
import json, sys
for line in sys.stdin:
    if line.strip() and not isinstance(json.loads(line), dict):  # a line that is no JSON raises: exit 1
        sys.exit(1)'
}
for role in event-normalizer log-normalizer graph-builder; do
  logs=$(worker_logs "kg-${role}-${CLIENT}" 2>&1)
  python3 -c '
import json, sys
lines = [json.loads(line) for line in sys.argv[1].splitlines() if line.strip()]
started = [l for l in lines if l.get("fields", {}).get("message") == "worker started"]
ok = started and started[0]["fields"].get("client_id") == sys.argv[2] and started[0]["fields"].get("role") == sys.argv[3]
sys.exit(0 if ok else 1)' "$logs" "$CLIENT" "$role" 2>/dev/null \
    || fail "docker logs kg-${role}-${CLIENT} shows that client's worker, in JSON"
  json_lines "kg-${role}-${CLIENT}" || fail "every line of kg-${role}-${CLIENT}'s log is JSON (LOG_FORMAT=json)"
done
json_lines "$CP" || fail "every line of the control plane's log is JSON (LOG_FORMAT=json)"
attributor_running() { worker_running kg-event-attributor-shared shared; }
poll 30 attributor_running || fail "the shared event attributor kg-event-attributor-shared runs"
json_lines kg-event-attributor-shared || fail "every line of the event attributor's log is JSON"
ok "$( [ "$RUNTIME" = swarm ] && echo 'docker service logs' || echo 'docker logs') of each worker shows $CLIENT's worker; the shared event attributor runs; every line of every log is JSON"

# ---- 5. heartbeats stop → removed; re-registration → back -------------------------------
kill "$heartbeat_pid"; wait "$heartbeat_pid" 2>/dev/null || true; heartbeat_pid=""
silent_since=$(date +%s)
poll $((TIMEOUT + 30)) expect_none || fail "containers removed after the heartbeat timeout"
took=$(( $(date +%s) - silent_since ))
[ "$took" -le $((TIMEOUT + 10)) ] || fail "containers removed within timeout + 10 s (took ${took}s)"
ok "heartbeats stopped → containers removed after ${took}s (timeout ${TIMEOUT}s)"
produce cluster.registry "$CLIENT" "{\"client_id\":\"$CLIENT\",\"cluster_name\":\"test-cluster\",\"k8s_version\":\"1.28\"}"
heartbeat_loop & heartbeat_pid=$!
poll 60 expect_running "$expected" || fail "containers come back after re-registration"
ok "re-registration → $expected containers running again"

# ---- 6. SIGKILL the control plane, restart it, same containers adopted -------------------
before=$(containers)
docker kill --signal KILL "$CP" >/dev/null
docker start "$CP" >/dev/null
poll 60 get /ready || fail "the restarted control plane becomes ready"
adopted() { client_json | python3 -c 'import json,sys; w=json.load(sys.stdin)["workers"]; sys.exit(0 if len(w)>='"$expected"' and all(x["state"]=="running" for x in w) else 1)'; }
poll 30 adopted || fail "the restarted control plane lists the workers"
sleep_passes() { # three reconcile passes, so anything wrong it would do has been done
  local target=$(( $(get /metrics | sed -n 's/^cp_reconciles_total //p') + 3 ))
  poll 30 bash -c "[ \$(curl -fsS $API/metrics | sed -n 's/^cp_reconciles_total //p') -ge $target ]"
}
sleep_passes || fail "the restarted control plane reconciles"
after=$(containers)
[ "$before" = "$after" ] || fail "the same containers are adopted (before: $before; after: $after)"
ok "SIGKILL + restart → the same $expected containers adopted (same ids, no duplicates)"

# ---- 6b. SIGKILL in the middle of spawning → exactly one set per client ----------------
for c in "${BURST[@]}"; do
  produce cluster.registry "$c" "{\"client_id\":\"$c\",\"cluster_name\":\"burst\"}"
done
some_spawning() { [ -n "$(workers_of "${BURST[0]}")" ]; }
poll 60 some_spawning || fail "the burst of registrations starts spawning"
docker kill --signal KILL "$CP" >/dev/null
spawned_before=$(for c in "${BURST[@]}"; do workers_of "$c"; done | wc -l)
docker start "$CP" >/dev/null
poll 60 get /ready || fail "the control plane restarted mid-spawn becomes ready"
one_set_each() { # clients...
  for c in "$@"; do
    [ "$(count_running "$c")" -eq "$expected" ] || return 1
    [ "$(count_workers "$c")" -eq "$expected" ] || return 1
  done
}
poll 90 one_set_each "${BURST[@]}" || fail "after a SIGKILL mid-spawn every client has exactly one running set ($(for c in "${BURST[@]}"; do workers_of "$c"; done | tr '\n' ' '))"
ok "SIGKILL mid-spawn ($spawned_before of $(( ${#BURST[@]} * expected )) containers made) + restart → exactly one running set per client"
for c in "${BURST[@]}"; do printf '%s\x1f\n' "$c" | kcat -P -b "$BOOTSTRAP" -t cluster.registry -K $'\x1f' -Z; done
# The burst's workers go first: their stops (each up to the grace) hold the control plane's
# action slots, and 6c measures a restart's delay, not a queue behind twenty removals.
burst_gone() { for c in "${BURST[@]}"; do [ -z "$(workers_of "$c")" ] || return 1; done; }
poll 90 burst_gone || fail "the burst's clients, deregistered, lose their workers"

# ---- 6c. docker kill a healthy worker → back within the policy's first delay -------------
# A role's worker, then the built-in pipeline's: the control plane supervises both alike.
back_running() {
  worker_running "$victim" "$CLIENT" && [ "$(worker_id "$victim" "$CLIENT")" != "$old_id" ]
}
for victim in "kg-event-normalizer-${CLIENT}" "kg-pipeline-alert-enrichment.${CLIENT}"; do
  old_id=$(worker_id "$victim" "$CLIENT")
  [ -n "$old_id" ] || fail "$(svc "$victim") exists before it is killed"
  killed_at=$(date +%s%3N)
  kill_worker "$victim" >/dev/null
  poll 30 back_running || fail "a killed worker ($victim) comes back"
  back_ms=$(( $(date +%s%3N) - killed_at ))
  # The first delay is CP_RESTART_BACKOFF_BASE_MS (1 s); allow a reconcile pass and Docker's own time.
  [ "$back_ms" -le 6000 ] || fail "a killed worker ($victim) comes back within the first delay (took ${back_ms} ms)"
  ok "$( [ "$RUNTIME" = swarm ] && echo "docker kill of $victim's task" || echo "docker kill $victim") → recreated and running after ${back_ms} ms (policy always, first delay 1 s)"
done

# ---- 6d. SIGTERM to the control plane mid-spawn → no half-created container --------------
LATE=("${CLIENT}-t1" "${CLIENT}-t2" "${CLIENT}-t3")
BURST+=("${LATE[@]}")
for c in "${LATE[@]}"; do
  produce cluster.registry "$c" "{\"client_id\":\"$c\",\"cluster_name\":\"late\"}"
done
late_spawning() { [ -n "$(workers_of "${LATE[0]}")" ]; }
poll 60 late_spawning || fail "the late registrations start spawning"
# CLIENT registered longer ago than the timeout; only its heartbeats keep it live, so a
# restart that did not replay them first would reap and recreate its containers.
registered_long_ago() {
  client_json | python3 -c 'import json,sys,datetime as d; r=d.datetime.fromisoformat(json.load(sys.stdin)["registered_at"].replace("Z","+00:00")); sys.exit(0 if (d.datetime.now(d.timezone.utc)-r).total_seconds() > '"$TIMEOUT"' + 1 else 1)'
}
poll $((TIMEOUT + 30)) registered_long_ago || fail "$CLIENT's registration ages past the timeout"
client_before=$(containers)
docker stop --time 30 "$CP" >/dev/null
half=$(for c in "${LATE[@]}"; do workers_of "$c" | grep ' created$' || true; done | wc -l)
[ "$half" -eq 0 ] || fail "SIGTERM leaves no half-created container ($half in state created)"
docker start "$CP" >/dev/null
poll 60 get /ready || fail "the control plane restarted after SIGTERM becomes ready"
poll 90 one_set_each "${LATE[@]}" || fail "after SIGTERM every client converges to one running set"
sleep_passes || fail "the control plane restarted after SIGTERM reconciles"
[ "$(containers)" = "$client_before" ] \
  || fail "$CLIENT, live but registered longer ago than the timeout, keeps its containers across the restart (before: $client_before; after: $(containers))"
ok "SIGTERM mid-spawn → no half-created container; after restart exactly one running set per client, and $CLIENT's containers kept"
for c in "${LATE[@]}"; do printf '%s\x1f\n' "$c" | kcat -P -b "$BOOTSTRAP" -t cluster.registry -K $'\x1f' -Z; done

# ---- 7. tombstone → removed --------------------------------------------------------------
kill "$heartbeat_pid"; wait "$heartbeat_pid" 2>/dev/null || true; heartbeat_pid=""
printf '%s\x1f\n' "$CLIENT" | kcat -P -b "$BOOTSTRAP" -t cluster.registry -K $'\x1f' -Z
poll 30 expect_none || fail "a tombstone removes the containers"
after_tombstone=$(curl -s -w ' HTTP %{http_code}' "$API/clients/$CLIENT" || true)
[[ "$after_tombstone" == *" HTTP 404" ]] || fail "the client is gone from the API (GET /clients/$CLIENT: $after_tombstone)"
ok "tombstone → containers removed, client deregistered"

echo "----- $passed passed, 0 failed in $(( $(date +%s) - started ))s -----"
