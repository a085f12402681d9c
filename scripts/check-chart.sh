#!/usr/bin/env bash
# Checks the agent's Helm chart (charts/kg-rca-agent) without a cluster:
#   1. helm lint --strict, with each values file of charts/kg-rca-agent/ci/;
#   2. helm template with each of them (namespace observability);
#   3. kubernetes-validate --strict against Kubernetes $KG_CHART_K8S_VERSION (1.30.0) on
#      every rendered manifest;
#   4. the rendered contract (scripts/lib/check_chart_render.py): the agent's environment,
#      the secrets by reference only, requests and limits everywhere, least-privilege RBAC,
#      2.1.x's Vector DaemonSet name and selector, Vector's config parses as TOML;
#   5. checkov --skip-download --framework kubernetes on every rendered manifest: every
#      failed check fails this script. Exceptions are inline `checkov.io/skipN` annotations
#      on the resources, or lines of charts/kg-rca-agent/checkov-skips.txt, each with its
#      reason (docs/onboarding.md, "Security");
#   6. the chart refuses to render with a bad client.id (Bad_ID), an empty one, or no
#      brokers, with a message that says so.
# Prints checkov's passed/failed/skipped counts per values file last.
#
# usage: scripts/check-chart.sh
#
# Tools come from ${KG_TOOLS_DIR:-$HOME/.cache/kg-rca-tools}/bin, installed by
# scripts/install-chart-tools.sh (run here when one is missing). checkov always runs with
# --skip-download: it must not reach an outside service.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi

chart=charts/kg-rca-agent
k8s_version=${KG_CHART_K8S_VERSION:-1.30.0}
namespace=observability
release=kg-rca-agent
tools_dir=${KG_TOOLS_DIR:-$HOME/.cache/kg-rca-tools}
bin="$tools_dir/bin"

for tool in helm kubernetes-validate checkov; do
  if ! [ -x "$bin/$tool" ]; then
    echo "== $tool missing from $bin: scripts/install-chart-tools.sh"
    bash scripts/install-chart-tools.sh
    break
  fi
done
helm="$bin/helm"
python="$tools_dir/kubernetes-validate/bin/python" # has PyYAML (kubernetes-validate's)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

values_files=("$chart"/ci/*.yaml)
((${#values_files[@]})) || { echo "check-chart: no values files in $chart/ci" >&2; exit 1; }

echo "== $("$helm" version --short), kubernetes-validate $("$bin/kubernetes-validate" --version 2>&1 | tail -n 1), checkov $("$bin/checkov" --version 2>&1 | tail -n 1)"

echo "== helm lint --strict"
for f in "${values_files[@]}"; do
  echo "-- $f"
  "$helm" lint --strict "$chart" --namespace "$namespace" -f "$f"
done

echo "== helm template"
for f in "${values_files[@]}"; do
  name=$(basename "$f" .yaml)
  "$helm" template "$release" "$chart" --namespace "$namespace" -f "$f" >"$work/$name.yaml"
  echo "$f: $(grep -c '^kind: ' "$work/$name.yaml") objects"
done

echo "== kubernetes-validate --strict (Kubernetes $k8s_version)"
for f in "${values_files[@]}"; do
  name=$(basename "$f" .yaml)
  "$bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$work/$name.yaml"
  echo "$name: valid"
done

echo "== the rendered contract"
for f in "${values_files[@]}"; do
  name=$(basename "$f" .yaml)
  "$python" scripts/lib/check_chart_render.py "$work/$name.yaml" "$f" "$release" "$namespace"
done

echo "== checkov --skip-download --framework kubernetes"
summary=()
checkov_failed=0
for f in "${values_files[@]}"; do
  name=$(basename "$f" .yaml)
  rendered="$work/$name.yaml"
  skips=()
  while read -r id when _reason; do
    case "$id" in '' | '#'*) continue ;; esac
    case "$when" in
      always) skips+=("$id") ;;
      no-networkpolicy) grep -q '^kind: NetworkPolicy' "$rendered" || skips+=("$id") ;;
      *) echo "check-chart: $chart/checkov-skips.txt: unknown condition '$when' for $id" >&2; exit 1 ;;
    esac
  done <"$chart/checkov-skips.txt"
  args=(--skip-download --framework kubernetes --compact --quiet -f "$rendered")
  if ((${#skips[@]})); then
    args+=(--skip-check "$(IFS=,; echo "${skips[*]}")")
  fi
  set +e
  "$bin/checkov" "${args[@]}" >"$work/$name.checkov" 2>&1
  rc=$?
  set -e
  counts=$(grep -m 1 -E '^Passed checks: ' "$work/$name.checkov" || true)
  if [ -z "$counts" ]; then
    cat "$work/$name.checkov" >&2
    echo "check-chart: checkov printed no result for $name" >&2
    exit 1
  fi
  failed=$(sed -E 's/.*Failed checks: ([0-9]+).*/\1/' <<<"$counts")
  if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ]; then
    cat "$work/$name.checkov"
    checkov_failed=1
  fi
  summary+=("$name: $counts${skips[*]:+ (and skipped by checkov-skips.txt: ${skips[*]})}")
done

echo "== the chart refuses bad values"
expect_fail() {
  local what=$1 pattern=$2
  shift 2
  if "$helm" template "$release" "$chart" --namespace "$namespace" "$@" >"$work/bad.out" 2>&1; then
    echo "check-chart: rendered with $what; expected a failure" >&2
    exit 1
  fi
  if ! grep -qF -- "$pattern" "$work/bad.out"; then
    cat "$work/bad.out" >&2
    echo "check-chart: $what failed without the message: $pattern" >&2
    exit 1
  fi
  echo "$what: refused ($(grep -m 1 -oF -- "$pattern" "$work/bad.out"))"
}
expect_fail "client.id=Bad_ID" \
  "client.id \"Bad_ID\" is not a lowercase DNS label (a-z, 0-9, '-', at most 63, starting and ending with a letter or digit)" \
  --set client.id=Bad_ID --set client.kafka.brokers=kafka:9092
expect_fail "client.id of 64 characters" "is not a lowercase DNS label" \
  --set client.id="$(printf 'a%.0s' {1..64})" --set client.kafka.brokers=kafka:9092
expect_fail "client.id=-leading-dash" "is not a lowercase DNS label" \
  --set client.id=-leading-dash --set client.kafka.brokers=kafka:9092
expect_fail "an empty client.id" "client.id is required" \
  --set client.id= --set client.kafka.brokers=kafka:9092
expect_fail "no brokers" "client.kafka.brokers is required" \
  --set client.id=acme --set client.kafka.brokers=
expect_fail "SASL without a password" "neither client.kafka.sasl.password nor client.kafka.sasl.existingSecret" \
  --set client.id=acme --set client.kafka.brokers=kafka:9092 --set client.kafka.sasl.enabled=true
expect_fail "heartbeat.interval=soon" "heartbeat.interval \"soon\" is not a duration" \
  --set client.id=acme --set client.kafka.brokers=kafka:9092 --set heartbeat.interval=soon

echo
echo "== checkov summary"
printf '%s\n' "${summary[@]}"
if [ "$checkov_failed" -ne 0 ]; then
  echo "check-chart: checkov found failed checks (above): fix them, or skip them with a reason" >&2
  exit 1
fi
echo "ok: the chart lints, renders, validates and passes checkov with every values file in $chart/ci"
