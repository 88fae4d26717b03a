#!/usr/bin/env bash
# Runs the cache as a user would, for minutes: the embedded default (a group
# of one, local disk) in front of a local docker-registry, pulled with
# skopeo every 15 s, a new tag pushed every minute, readiness and the
# writable gauge printed on every pull, and at the end the status, the
# proposal counters, the upstream requests and every WARN or ERROR line.
# Needs the packages scripts/install-test-deps.sh installs.
#
#   scripts/user-run/run.sh                  # 4 minutes, target/debug/regcache
#   DURATION=1800 BIN=target/release/regcache scripts/user-run/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${BIN:-$root/target/debug/regcache}
duration=${DURATION:-240}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
mkdir pulls
cat >registry.yml <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:15100
log:
  level: info
YAML
docker-registry serve registry.yml >registry.log 2>&1 &
sleep 2
push() {
    python3 "$here/mklayout.py" layout "$1" "$2"
    skopeo copy --quiet --dest-tls-verify=false "oci:layout:$1" "docker://127.0.0.1:15100/library/app:$1"
}
push v1 1
"$bin" serve --listen 127.0.0.1:15101 --data-dir "$work/data" \
    --upstream docker.io=http://127.0.0.1:15100 >regcache.log 2>&1 &
regcache=$!
sleep 2
start=$(date +%s)
n=0
failed=0
while (($(date +%s) - start < duration)); do
    n=$((n + 1))
    tag=v1
    if ((n % 4 == 0)); then
        tag=v$n
        push "$tag" "$n"
    fi
    if ! skopeo copy --quiet --src-tls-verify=false "docker://127.0.0.1:15101/library/app:$tag" "dir:pulls/$n" >"pull.$n.log" 2>&1; then
        failed=$((failed + 1))
        echo "pull $n failed:"
        cat "pull.$n.log"
    fi
    ready=$(curl -s 127.0.0.1:15101/readyz | head -n1)
    writable=$(curl -s 127.0.0.1:15101/metrics | awk '/^regcache_raft_writable /{print $2}')
    echo "$(date +%T) pull $n $tag readyz=\"$ready\" writable=$writable"
    sleep 15
done
curl -s 127.0.0.1:15101/status.json
echo
curl -s 127.0.0.1:15101/metrics | grep -E '^regcache_(meta_proposal_seconds_count|raft_writable|stale|index_)' || true
echo "upstream manifest GETs: $(grep -c 'GET /v2/library/app/manifests' registry.log || true)"
kill "$regcache"
wait "$regcache" || true
echo "--- WARN and ERROR lines:"
grep -E ' WARN | ERROR ' regcache.log || echo "(none)"
echo "--- $n pulls, $failed failed"
((failed == 0))
