#!/usr/bin/env bash
# Runs the cache as a user would, for minutes: the embedded default (a group
# of one, local disk) in front of a local docker-registry, pulled with
# skopeo every 15 s (three layers, one served from the disk tier), a new tag
# pushed every minute, readiness and the writable gauge printed on every
# pull, and at the end the status, the proposal counters, the upstream
# requests and every WARN or ERROR line.
# With MEMBERS=3, three members sharing an object directory, each round
# pulling through all of them at once (a new tag is then a cold storm over
# the cluster): at the end, upstream GETs per blob (1 each with peer
# streaming) and the peer counters.
# Needs the packages scripts/install-test-deps.sh installs.
#
#   scripts/user-run/run.sh                  # 4 minutes, target/debug/regcache
#   DURATION=1800 BIN=target/release/regcache scripts/user-run/run.sh
#   MEMBERS=3 scripts/user-run/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# Absolute: the run happens in a work directory.
bin=$(realpath "${BIN:-$root/target/debug/regcache}")
duration=${DURATION:-240}
members=${MEMBERS:-1}
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
pids=()
if ((members == 1)); then
    "$bin" serve --listen 127.0.0.1:15101 --data-dir "$work/data" \
        --upstream docker.io=http://127.0.0.1:15100 >regcache.1.log 2>&1 &
    pids+=($!)
else
    peers=()
    for id in $(seq "$members"); do peers+=(--peer "$id=127.0.0.1:$((15200 + id))"); done
    printf '[storage]\nkind = "fs"\npath = "%s"\n' "$work/objects" >regcache.toml
    for id in $(seq "$members"); do
        "$bin" serve --config regcache.toml --listen "127.0.0.1:$((15100 + id))" \
            --data-dir "$work/data.$id" --upstream docker.io=http://127.0.0.1:15100 \
            --node-id "$id" --cluster-listen "127.0.0.1:$((15200 + id))" "${peers[@]}" \
            >"regcache.$id.log" 2>&1 &
        pids+=($!)
    done
fi
sleep 3
# A cluster elects a leader and sets its owner key first: until a member
# knows the key it fetches every miss itself.
if ((members > 1)); then
    for id in $(seq "$members"); do
        until curl -s "127.0.0.1:$((15100 + id))/status.json" | grep -q '"owner_key":true'; do sleep 0.5; done
    done
fi
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
    pulls=()
    for id in $(seq "$members"); do
        skopeo copy --quiet --src-tls-verify=false "docker://127.0.0.1:$((15100 + id))/library/app:$tag" \
            "dir:pulls/$n.$id" >"pull.$n.$id.log" 2>&1 &
        pulls+=($!)
    done
    for id in $(seq "$members"); do
        if ! wait "${pulls[id - 1]}"; then
            failed=$((failed + 1))
            echo "pull $n through member $id failed:"
            cat "pull.$n.$id.log"
        fi
    done
    ready=$(curl -s 127.0.0.1:15101/readyz | head -n1)
    writable=$(curl -s 127.0.0.1:15101/metrics | awk '/^regcache_raft_writable /{print $2}')
    echo "$(date +%T) pull $n $tag readyz=\"$ready\" writable=$writable"
    sleep 15
done
curl -s 127.0.0.1:15101/status.json
echo
for id in $(seq "$members"); do
    curl -s "127.0.0.1:$((15100 + id))/metrics" |
        grep -E '^regcache_(meta_proposal_seconds_count|raft_writable|stale|index_|peer_)' | sed "s/^/member $id: /" || true
done
echo "upstream manifest GETs: $(grep -c 'GET /v2/library/app/manifests' registry.log || true)"
echo "upstream blob GETs per digest (most first):"
grep -o 'GET /v2/library/app/blobs/sha256:[0-9a-f]*' registry.log | sort | uniq -c | sort -rn | head -5 || true
kill "${pids[@]}"
wait "${pids[@]}" || true
echo "--- WARN and ERROR lines:"
grep -E ' WARN | ERROR ' regcache.*.log || echo "(none)"
echo "--- $n rounds of $members pulls, $failed failed"
((failed == 0))
