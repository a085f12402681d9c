#!/usr/bin/env bash
# Builds the images the Docker runtime, the compose stack and the Helm chart use:
#   kg-worker:latest         ENTRYPOINT worker
#   kg-control-plane:latest  ENTRYPOINT control-plane, CMD run
#   kg-rca-agent:latest      ENTRYPOINT kg-rca-agent, CMD run (also tagged with the chart's
#                            appVersion, the tag charts/kg-rca-agent runs by default)
#
# usage: scripts/build-images.sh [--offline|--multi-stage] [--if-missing]
#
#   --offline      (default) no registry needed: builds the release binaries on this host
#                  with cargo, stages them with exactly the shared libraries `ldd` reports
#                  (plus CA bundle, passwd/group, /tmp) and builds compose/Dockerfile.offline
#                  (FROM scratch).
#   --multi-stage  compose/Dockerfile: builds inside rust:1-bookworm and runs on
#                  debian:bookworm-slim; needs a registry to pull those two from.
#   --if-missing   do nothing when both images already exist.
#
# Environment: KG_IMAGE_BUILD=offline|multi-stage chooses the default mode (offline);
# KG_SPEC_VERSION (default 1) is the `kg.spec-version` label, the version of the contract
# between the control plane and its images (entrypoints, user 10001, worker env and port);
# KG_SKIP_CARGO_BUILD=1 (offline) packs the binaries already in target/release, e.g. built
# by CI, instead of running cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_IMAGE=kg-worker:latest
CONTROL_PLANE_IMAGE=kg-control-plane:latest
AGENT_IMAGE=kg-rca-agent:latest
AGENT_CHART_TAG=kg-rca-agent:$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/kg-rca-agent/Chart.yaml)
SPEC_VERSION=${KG_SPEC_VERSION:-1}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

mode=${KG_IMAGE_BUILD:-offline}
if_missing=0
for arg in "$@"; do
  case "$arg" in
    --offline) mode=offline ;;
    --multi-stage) mode=multi-stage ;;
    --if-missing) if_missing=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "build-images: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done
case "$mode" in
  offline | multi-stage) ;;
  *) echo "build-images: KG_IMAGE_BUILD must be offline or multi-stage, not '$mode'" >&2; exit 2 ;;
esac

command -v docker >/dev/null || { echo "build-images: docker is not installed" >&2; exit 1; }
if ! timeout 20 docker info >/dev/null 2>&1; then
  echo "build-images: the Docker engine does not answer (is dockerd running, may you use its socket?)" >&2
  exit 1
fi

if ((if_missing)) && docker image inspect "$WORKER_IMAGE" "$CONTROL_PLANE_IMAGE" "$AGENT_IMAGE" >/dev/null 2>&1; then
  echo "build-images: $WORKER_IMAGE and $CONTROL_PLANE_IMAGE exist, nothing to do"
  exit 0
fi

# ---- labels ----------------------------------------------------------------------------------
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
labels() { # title description
  printf '%s\n' \
    --label "org.opencontainers.image.title=$1" \
    --label "org.opencontainers.image.description=$2" \
    --label "org.opencontainers.image.version=${version:-unknown}" \
    --label "org.opencontainers.image.revision=$revision" \
    --label "org.opencontainers.image.created=$created" \
    --label "org.opencontainers.image.licenses=Apache-2.0" \
    --label "org.opencontainers.image.base.name=$base_name" \
    --label "kg.spec-version=$SPEC_VERSION" \
    --label "kg.image-build=$mode"
}

# build <dockerfile> <context> <target> <tag> <title> <description>
build() {
  local -a label_args
  local old new
  mapfile -t label_args < <(labels "$5" "$6")
  old=$(docker image inspect --format '{{.Id}}' "$4" 2>/dev/null || true)
  echo "build-images: building $4 ($mode, target $3)"
  docker build -f "$1" --target "$3" -t "$4" "${label_args[@]}" "$2"
  new=$(docker image inspect --format '{{.Id}}' "$4")
  # The image this one replaces, now untagged: remove it unless a container still uses it.
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
}

worker_desc="kg-rca per-client worker: normalizes one tenant's Kafka records (--role)"
cp_desc="kg-rca control plane: runs an isolated set of workers for every registered client"
agent_desc="kg-rca agent: registers a client cluster, heartbeats, streams Kubernetes events, state and topology to Kafka"

if [ "$mode" = multi-stage ]; then
  base_name=docker.io/library/debian:bookworm-slim
  build compose/Dockerfile . control-plane "$CONTROL_PLANE_IMAGE" kg-control-plane "$cp_desc"
  build compose/Dockerfile . worker "$WORKER_IMAGE" kg-worker "$worker_desc"
  build compose/Dockerfile . agent "$AGENT_IMAGE" kg-rca-agent "$agent_desc"
else
  base_name=scratch
  [ "$(uname -s)" = Linux ] || { echo "build-images: --offline needs a Linux host (its binaries and libraries go into the image); use --multi-stage" >&2; exit 1; }
  for tool in cargo ldd; do
    command -v "$tool" >/dev/null || { echo "build-images: --offline needs $tool on the host" >&2; exit 1; }
  done
  ca_bundle=/etc/ssl/certs/ca-certificates.crt
  [ -s "$ca_bundle" ] || { echo "build-images: $ca_bundle is missing (apt-get install ca-certificates)" >&2; exit 1; }

  if [ "${KG_SKIP_CARGO_BUILD:-0}" = 1 ]; then
    for bin in control-plane worker kg-rca-agent; do
      [ -x "target/release/$bin" ] || { echo "build-images: KG_SKIP_CARGO_BUILD=1 but target/release/$bin is missing" >&2; exit 1; }
    done
    echo "build-images: KG_SKIP_CARGO_BUILD=1: using the binaries already in target/release"
  else
    cargo build --release --bins -p control-plane -p worker -p kg-rca-agent
  fi

  ctx=$(mktemp -d "${TMPDIR:-/tmp}/kg-image-context.XXXXXX")
  trap 'rm -rf "$ctx"' EXIT
  root="$ctx/rootfs"
  mkdir -p "$ctx/bin" "$ctx/data" "$root/etc/ssl/certs" "$root/usr/lib/ssl" "$root/tmp"
  chmod 1777 "$root/tmp"
  chmod 0755 "$ctx/data"

  # The binaries, debug info stripped (symbols stay, so panics still name functions).
  for bin in control-plane worker kg-rca-agent; do
    if command -v strip >/dev/null; then
      strip --strip-debug -o "$ctx/bin/$bin" "target/release/$bin"
    else
      cp "target/release/$bin" "$ctx/bin/$bin"
    fi
  done

  # Every shared object ldd resolves (the closure, the dynamic loader included), copied with
  # its path preserved; anything "not found" stops the build.
  stage_libs() { # files...
    local file out lib
    for file in "$@"; do
      out=$(ldd "$file") || { echo "build-images: ldd failed on $file" >&2; return 1; }
      if grep -q 'not found' <<<"$out"; then
        echo "build-images: $file needs libraries this host does not have:" >&2
        grep 'not found' <<<"$out" >&2
        return 1
      fi
      while read -r lib; do
        [ -n "$lib" ] || continue
        if [ ! -e "$root$lib" ]; then
          mkdir -p "$root$(dirname "$lib")"
          cp -L "$lib" "$root$lib"
          echo "  $lib"
        fi
      done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out")
    done
  }
  echo "build-images: shared libraries staged:"
  stage_libs "$ctx/bin/control-plane" "$ctx/bin/worker" "$ctx/bin/kg-rca-agent"
  # Cyrus SASL loads its mechanism plugins with dlopen, so ldd cannot see them. librdkafka
  # needs one only for GSSAPI (Kerberos); stage it, with its libraries, if the host has it.
  sasl=$(awk '$1 == "libsasl2.so.2" { print $3 }' < <(ldd "$ctx/bin/worker"))
  if [ -n "$sasl" ]; then
    for plugin in "$(dirname "$sasl")"/sasl2/libgssapiv2.so*; do
      [ -f "$plugin" ] || continue
      mkdir -p "$root$(dirname "$plugin")"
      cp -L "$plugin" "$root$plugin"
      echo "  $plugin (GSSAPI plugin)"
      stage_libs "$plugin"
    done
  fi

  cp -L "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
  # Debian's OpenSSL looks in /usr/lib/ssl by default: point it at the bundle.
  ln -s /etc/ssl/certs/ca-certificates.crt "$root/usr/lib/ssl/cert.pem"
  ln -s /etc/ssl/certs "$root/usr/lib/ssl/certs"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'kg:x:10001:10001:kg-rca:/nonexistent:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'kg:x:10001:' >"$root/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$root/etc/nsswitch.conf"
  chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"
  cp compose/Dockerfile.offline "$ctx/Dockerfile"

  build "$ctx/Dockerfile" "$ctx" control-plane "$CONTROL_PLANE_IMAGE" kg-control-plane "$cp_desc"
  build "$ctx/Dockerfile" "$ctx" worker "$WORKER_IMAGE" kg-worker "$worker_desc"
  build "$ctx/Dockerfile" "$ctx" agent "$AGENT_IMAGE" kg-rca-agent "$agent_desc"
fi
docker tag "$AGENT_IMAGE" "$AGENT_CHART_TAG"

# The images must at least start: the loader, the libraries and the entrypoints.
for image in "$WORKER_IMAGE" "$CONTROL_PLANE_IMAGE" "$AGENT_IMAGE"; do
  if ! timeout 60 docker run --rm "$image" --help >/dev/null; then
    echo "build-images: $image does not run (docker run --rm $image --help failed)" >&2
    exit 1
  fi
done
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' | grep -E '^kg-(worker|control-plane|rca-agent):' || true
echo "build-images: built $WORKER_IMAGE, $CONTROL_PLANE_IMAGE and $AGENT_IMAGE (also $AGENT_CHART_TAG) ($mode)"
