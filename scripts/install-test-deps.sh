#!/usr/bin/env bash
# Installs what the integration tests run for real on a fresh Debian 12
# machine (as root): the upstream registry (docker-registry), the client that
# pushes and pulls images (skopeo), the runtimes pulled through the cache
# (containerd, podman), load tools (wrk) and nginx. Idempotent:
# apt is only touched when something is missing, so repeated runs cost nothing.
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

# skopeo refuses to copy anything without a signature policy.
policy=/etc/containers/policy.json
if [[ ! -e $policy ]]; then
    mkdir -p "$(dirname "$policy")"
    printf '%s\n' '{"default":[{"type":"insecureAcceptAnything"}]}' >"$policy"
    echo "install-test-deps: wrote $policy"
fi
