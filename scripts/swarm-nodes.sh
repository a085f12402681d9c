#!/usr/bin/env bash
# A real multi-node Docker Swarm on one machine, for the tests of the swarm runtime across
# nodes: each node is its own dockerd in its own network namespace, joined by veth pairs
# to one bridge on the host, so a node can be drained, or cut off the network, like a
# machine. Needs root (network namespaces, a bridge, iptables) and dockerd.
#
#   bash scripts/swarm-nodes.sh up 3        nodes 1..3; node 1 is the manager
#   bash scripts/swarm-nodes.sh cut 2       node 2 off the network (its link down)
#   bash scripts/swarm-nodes.sh heal 2      node 2 back
#   bash scripts/swarm-nodes.sh down        everything removed, whatever state it is in
#
# What `up` prints, for the caller (one `key=value` per line):
#   host=10.231.0.1              the host's address on the nodes' bridge (run brokers here)
#   node1=unix:///run/kg-swarm/n1/docker.sock 10.231.0.11    each node's API and address
#
# Facts this script works around (found on these machines): `ip netns exec` fails here
# (it remounts /sys), so daemons start under `nsenter --net=`; each daemon needs its own
# data root, exec root, socket, pid file and configuration file; Docker's FORWARD policy
# is DROP, so traffic between the nodes is let through on the bridge explicitly; and no
# registry exists, so the worker image is copied to each node with `docker save | load`.
set -euo pipefail

BRIDGE=kgsw0
SUBNET=10.231.0
RUN=/run/kg-swarm
DATA=${KG_SWARM_DATA:-/var/tmp/kg-swarm}
IMAGES=${KG_SWARM_IMAGES:-kg-worker:latest}

node_ns() { echo "kgsw-n$1"; }
node_ip() { echo "$SUBNET.$((10 + $1))"; }
node_sock() { echo "unix://$RUN/n$1/docker.sock"; }
on_node() { local n=$1; shift; DOCKER_HOST=$(node_sock "$n") docker "$@"; }

up() {
  local count=$1
  [ "$count" -ge 1 ] || { echo "up: at least one node" >&2; exit 2; }
  down >/dev/null 2>&1 || true
  ip link add "$BRIDGE" type bridge
  ip addr add "$SUBNET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  iptables -I FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  local config
  config=$(python3 -c 'import json,sys
try: c = json.load(open("/etc/docker/daemon.json"))
except Exception: c = {}
out = {k: c[k] for k in ("storage-driver", "mtu") if k in c}
out["bridge"] = "none"; out["iptables"] = True
print(json.dumps(out))')
  for n in $(seq "$count"); do
    local ns veth_host veth_node
    ns=$(node_ns "$n"); veth_host="kgsw-v${n}h"; veth_node="kgsw-v${n}n"
    mkdir -p "$RUN/n$n" "$DATA/n$n"
    ip netns add "$ns"
    ip link add "$veth_host" type veth peer name "$veth_node"
    ip link set "$veth_node" netns "$ns"
    ip link set "$veth_host" master "$BRIDGE"
    ip link set "$veth_host" up
    nsenter --net="/run/netns/$ns" sh -c "
      ip addr add $(node_ip "$n")/24 dev $veth_node && ip link set $veth_node up &&
      ip link set lo up && ip route add default via $SUBNET.1"
    echo "$config" >"$DATA/n$n/daemon.json"
    nsenter --net="/run/netns/$ns" setsid dockerd \
      --data-root "$DATA/n$n/root" --exec-root "$RUN/n$n/exec" \
      -H "$(node_sock "$n")" --pidfile "$RUN/n$n/docker.pid" \
      --config-file "$DATA/n$n/daemon.json" >"$DATA/n$n/dockerd.log" 2>&1 </dev/null &
  done
  for n in $(seq "$count"); do
    local deadline=$(( $(date +%s) + 60 ))
    until on_node "$n" version >/dev/null 2>&1; do
      [ "$(date +%s)" -lt "$deadline" ] || { tail -20 "$DATA/n$n/dockerd.log" >&2; echo "node $n's dockerd did not answer" >&2; exit 1; }
      sleep 0.5
    done
  done
  on_node 1 swarm init --advertise-addr "$(node_ip 1)" >/dev/null
  local token
  token=$(on_node 1 swarm join-token -q worker)
  for n in $(seq 2 "$count"); do
    on_node "$n" swarm join --advertise-addr "$(node_ip "$n")" --token "$token" "$(node_ip 1):2377" >/dev/null
  done
  local deadline=$(( $(date +%s) + 60 ))
  until [ "$(on_node 1 node ls --format '{{.Status}}' | grep -c Ready)" -eq "$count" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { on_node 1 node ls >&2; echo "the nodes did not all join" >&2; exit 1; }
    sleep 0.5
  done
  # Each node labelled with its number, for placement and for tests to tell them apart
  # (they share the machine's hostname).
  for n in $(seq "$count"); do
    local id
    id=$(on_node "$n" info --format '{{.Swarm.NodeID}}')
    on_node 1 node update --label-add "kg-node=n$n" "$id" >/dev/null
  done
  for image in $IMAGES; do
    docker image inspect "$image" >/dev/null 2>&1 || continue
    for n in $(seq "$count"); do docker save "$image" | on_node "$n" load -q >/dev/null; done
  done
  echo "host=$SUBNET.1"
  for n in $(seq "$count"); do echo "node$n=$(node_sock "$n") $(node_ip "$n")"; done
}

down() {
  for pidfile in "$RUN"/n*/docker.pid; do
    [ -f "$pidfile" ] || continue
    local pid n
    pid=$(cat "$pidfile"); n=$(basename "$(dirname "$pidfile")"); n=${n#n}
    # Leaving first stops the node's tasks with the swarm, not under a dead daemon.
    on_node "$n" swarm leave --force >/dev/null 2>&1 || true
    on_node "$n" rm -f $(on_node "$n" ps -aq 2>/dev/null) >/dev/null 2>&1 || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  for ns in $(ip netns list 2>/dev/null | awk '/^kgsw-n[0-9]+/{print $1}'); do ip netns del "$ns"; done
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '/kgsw-v[0-9]+h/{print $2}' | cut -d@ -f1); do
    ip link del "$link" 2>/dev/null || true
  done
  while iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; do :; done
  ip link del "$BRIDGE" 2>/dev/null || true
  # Mounts a killed daemon left (its containers' and volumes' file systems).
  grep -E " ($DATA|$RUN)/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$RUN" "$DATA"
}

case "${1:-}" in
  up) up "${2:-3}" ;;
  down) down ;;
  cut) ip link set "kgsw-v${2:?node}h" down ;;
  heal) ip link set "kgsw-v${2:?node}h" up ;;
  *) echo "usage: $0 up N | cut N | heal N | down" >&2; exit 2 ;;
esac
