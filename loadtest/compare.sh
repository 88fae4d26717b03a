#!/usr/bin/env bash
# Side-by-side benchmark of regcache, distribution's pull-through proxy
# (Debian's docker-registry with proxy.remoteurl) and nginx serving the very
# same blob files. See loadtest/README.md for what is measured and why.
#
#   loadtest/compare.sh [--strict]
#
# Everything runs on 127.0.0.1 free ports inside one temp dir, which is
# removed (and every server started here is killed) when the script exits.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: loadtest/compare.sh [--strict]

Builds regcache (release), starts an upstream docker-registry seeded with a
random image, regcache and distribution's proxy in front of it, and nginx
serving the same blob files; then measures and prints a comparison table.

  --strict   exit 1 when a target is missed (default: report only, exit 0)

Environment (defaults in brackets):
  BIG_MB=400          size of the big blob, MiB
  SMALL_KIB=1024      size of the small blob, KiB
  WRK_DURATION=10s    duration of each wrk run
  WRK_THREADS=2       wrk -t
  WRK_CONNECTIONS=64  wrk -c
  CURL_RUNS=3         single-stream downloads per server (best one counts)
  SKIP_REGCACHE=0     1: don't build or run regcache (measure the peers only)
  KEEP_WORKDIR=0      1: keep the temp dir (configs, logs, wrk output)
EOF
}

STRICT=0
for arg in "$@"; do
    case $arg in
        --strict) STRICT=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

BIG_MB=${BIG_MB:-400}
SMALL_KIB=${SMALL_KIB:-1024}
WRK_DURATION=${WRK_DURATION:-10s}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
CURL_RUNS=${CURL_RUNS:-3}
SKIP_REGCACHE=${SKIP_REGCACHE:-0}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}

# Targets (see README.md).
TARGET_BLOB_RATIO=0.8 # regcache / nginx, both blob figures
TARGET_TAG_RATIO=20   # regcache / distribution, manifest by tag
TARGET_RSS_MIB=150    # regcache VmHWM

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/loadtest
REPO=library/bench
TAG=latest
# The full list: a registry answers 404 for an index unless Accept names it.
ACCEPT='application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json'

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'compare.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'compare.sh: error: %s\n' "$*" >&2
    exit 1
}

# --- process and temp dir bookkeeping ---------------------------------------

WORK=""
PIDS=()      # every server started here, killed at exit
LAST_PID=""  # set by start_bg (a $(...) capture would run it in a subshell)

cleanup() {
    local rc=$? pid i alive
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Give them 5 s to exit cleanly (nginx's master takes its workers down on
    # TERM; a KILLed master would orphan them), then KILL what is left.
    for ((i = 0; i < 50; i++)); do
        alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ -n $WORK ]]; then
        if [[ $KEEP_WORKDIR == 1 ]]; then
            echo "compare.sh: kept $WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg NAME CMD...: run CMD in the background, output to logs/NAME.log.
start_bg() {
    local name=$1
    shift
    "$@" >"$WORK/logs/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# wait_ready NAME PID URL: poll URL until it answers 2xx, or fail with the
# server's log if it died or took more than 60 s.
wait_ready() {
    local name=$1 pid=$2 url=$3 i
    for ((i = 0; i < 600; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$WORK/logs/$name.log" >&2 || true
            die "$name exited during startup (log above)"
        fi
        if curl -sf -o /dev/null --max-time 2 "$url"; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 30 "$WORK/logs/$name.log" >&2 || true
    die "$name not ready at $url after 60 s"
}

# free_ports N: N distinct free TCP ports on 127.0.0.1, one per line. All are
# bound at once so they differ; a tiny race with other programs remains.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# --- setup -------------------------------------------------------------------

check_deps() {
    local cmd missing=()
    for cmd in docker-registry wrk nginx curl python3 sha256sum awk; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    if ((${#missing[@]} > 0)); then
        die "missing ${missing[*]}: run scripts/install-test-deps.sh (as root) first"
    fi
}

build_regcache() {
    local target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir == /* ]] || target_dir=$ROOT/$target_dir
    REGCACHE_BIN=$target_dir/release/regcache
    log "building regcache: cargo build --release -p regcache"
    (cd "$ROOT" && cargo build --release -p regcache) || die "cargo build --release -p regcache failed"
    [[ -x $REGCACHE_BIN ]] || die "no binary at $REGCACHE_BIN after the build"
}

# write_registry_config FILE ROOTDIR PORT [REMOTEURL]: a docker-registry
# config; with REMOTEURL it is a pull-through proxy of that registry.
# Access logs off and level warn so logging stays out of the figures; the
# in-memory blob descriptor cache is distribution's own recommended setting.
write_registry_config() {
    local file=$1 rootdir=$2 port=$3 remote=${4:-}
    cat >"$file" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $rootdir
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
  secret: regcache-loadtest
EOF
    if [[ -n $remote ]]; then
        printf 'proxy:\n  remoteurl: %s\n' "$remote" >>"$file"
    fi
}

start_upstream() {
    mkdir -p "$WORK/upstream"
    write_registry_config "$WORK/upstream/config.yml" "$WORK/upstream/storage" "$UP_PORT"
    start_bg upstream docker-registry serve "$WORK/upstream/config.yml"
    wait_ready upstream "$LAST_PID" "http://127.0.0.1:$UP_PORT/v2/"
}

# Seeds the upstream and sets BIG_*, SMALL_*, CONFIG_DIGEST, MANIFEST_DIGEST.
seed_upstream() {
    local out
    log "seeding upstream with $REPO:$TAG (${BIG_MB} MiB + ${SMALL_KIB} KiB random blobs)"
    out=$(python3 "$HERE/seed.py" --registry "http://127.0.0.1:$UP_PORT" --repo "$REPO" \
        --tag "$TAG" --out-dir "$WORK/blobs" --big-mb "$BIG_MB" --small-kib "$SMALL_KIB") ||
        die "seeding the upstream failed"
    eval "$out"
}

start_nginx() {
    local dir=$WORK/nginx digest file user_line=""
    local blobs=$dir/root/v2/$REPO/blobs
    mkdir -p "$blobs" "$dir/tmp"
    # The same files the upstream got, at the paths a registry client asks for.
    for digest in "$BIG_DIGEST" "$SMALL_DIGEST"; do
        [[ $digest == "$BIG_DIGEST" ]] && file=$BIG_FILE || file=$SMALL_FILE
        ln "$file" "$blobs/$digest" 2>/dev/null || cp "$file" "$blobs/$digest"
    done
    # As root, workers would drop to nobody, who can't enter a 0700 temp dir.
    [[ $(id -u) -eq 0 ]] && user_line="user root;"
    # keepalive_requests: nginx closes a connection after 1000 requests by
    # default, the other two never do; don't make nginx pay reconnects.
    cat >"$dir/nginx.conf" <<EOF
$user_line
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $dir/root;
    }
}
EOF
    start_bg nginx nginx -c "$dir/nginx.conf" -p "$dir/" -g 'daemon off;'
    wait_ready nginx "$LAST_PID" "${BASE[nginx]}/v2/$REPO/blobs/$SMALL_DIGEST"
}

start_regcache() {
    # The embedded default config plus these flags, whatever the caller's
    # REGCACHE_CONFIG says, so that runs are comparable.
    start_bg regcache env -u REGCACHE_CONFIG RUST_LOG=warn "$REGCACHE_BIN" serve \
        --listen "127.0.0.1:$RC_PORT" \
        --data-dir "$WORK/regcache" \
        --upstream "docker.io=http://127.0.0.1:$UP_PORT"
    REGCACHE_PID=$LAST_PID
    wait_ready regcache "$REGCACHE_PID" "${BASE[regcache]}/readyz"
}

start_proxy() {
    mkdir -p "$WORK/distribution"
    write_registry_config "$WORK/distribution/config.yml" "$WORK/distribution/storage" \
        "$PROXY_PORT" "http://127.0.0.1:$UP_PORT"
    start_bg distribution docker-registry serve "$WORK/distribution/config.yml"
    PROXY_PID=$LAST_PID
    wait_ready distribution "$PROXY_PID" "${BASE[distribution]}/v2/"
}

# fetch_verify NAME PATH DIGEST [ACCEPT]: GET PATH from server NAME and check
# the body hashes to DIGEST. A benchmark of wrong bytes is worthless.
fetch_verify() {
    local name=$1 path=$2 digest=$3 accept=${4:-} got
    local args=(-sS -f --max-time 600 -o "$WORK/fetched")
    [[ -n $accept ]] && args+=(-H "Accept: $accept")
    curl "${args[@]}" "${BASE[$name]}$path" || die "GET $path from $name failed"
    got=sha256:$(sha256sum "$WORK/fetched" | cut -d' ' -f1)
    rm -f "$WORK/fetched"
    [[ $got == "$digest" ]] || die "$name served $path with sha256 $got, expected $digest"
}

# Twice through each cache: the first GET fills it from the upstream, the
# second proves the cached copy (what the benchmark measures) is right.
warm_up() {
    local name _
    for name in "${SERVERS[@]}"; do
        log "warming and verifying $name"
        for _ in 1 2; do
            fetch_verify "$name" "/v2/$REPO/blobs/$BIG_DIGEST" "$BIG_DIGEST"
            fetch_verify "$name" "/v2/$REPO/blobs/$SMALL_DIGEST" "$SMALL_DIGEST"
            [[ $name == nginx ]] && break
            fetch_verify "$name" "/v2/$REPO/manifests/$TAG" "$MANIFEST_DIGEST" "$ACCEPT"
            fetch_verify "$name" "/v2/$REPO/blobs/$CONFIG_DIGEST" "$CONFIG_DIGEST"
        done
    done
}

# --- measurements ------------------------------------------------------------
# Results go to FIG[figure:server]; a figure that can't be trusted (non-2xx
# answers) also gets BAD[figure:server]=1 and a line in NOTES.

declare -A BASE=() FIG=() BAD=()
NOTES=()

# measure_stream NAME: best of CURL_RUNS single-stream downloads of the big
# blob, in MiB/s.
measure_stream() {
    local name=$1 i out code size speed best=0
    for ((i = 0; i < CURL_RUNS; i++)); do
        out=$(curl -sS --max-time 600 -o /dev/null -w '%{http_code} %{size_download} %{speed_download}' \
            "${BASE[$name]}/v2/$REPO/blobs/$BIG_DIGEST") || die "big-blob download from $name failed"
        read -r code size speed <<<"$out"
        [[ $code == 200 && $size == "$BIG_SIZE" ]] ||
            die "big-blob download from $name: HTTP $code, $size of $BIG_SIZE bytes"
        best=$(awk -v a="$best" -v b="$speed" 'BEGIN { print (b > a) ? b : a }')
    done
    FIG[stream:$name]=$(awk -v b="$best" 'BEGIN { printf "%.0f", b / 1048576 }')
}

# measure_wrk FIGURE NAME PATH [ACCEPT]: wrk requests/s on PATH.
measure_wrk() {
    local fig=$1 name=$2 path=$3 accept=${4:-} out rps non2xx sockerr
    local args=(-t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$WRK_DURATION")
    [[ -n $accept ]] && args+=(-H "Accept: $accept")
    out=$(wrk "${args[@]}" "${BASE[$name]}$path" 2>&1) || {
        printf '%s\n' "$out" >&2
        die "wrk against $name failed"
    }
    printf '%s\n' "$out" >"$WORK/logs/wrk-$fig-$name.txt"
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    [[ -n $rps ]] || die "no Requests/sec in wrk's output for $name: $out"
    FIG[$fig:$name]=$(awk -v r="$rps" 'BEGIN { printf "%.0f", r }')
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
    sockerr=$(grep -o 'Socket errors:.*' <<<"$out" || true)
    if [[ -n $non2xx ]]; then
        BAD[$fig:$name]=1
        NOTES+=("$fig/$name: $non2xx non-2xx answers: figure invalid")
    fi
    [[ -n $sockerr ]] && NOTES+=("$fig/$name: $sockerr")
    # Blob req/s times size is what wrk had to swallow: shows when it's the limit.
    if [[ $fig == blob ]]; then
        NOTES+=("$fig/$name: $(awk -v r="$rps" -v k="$SMALL_KIB" 'BEGIN { printf "%.0f", r * k / 1024 }') MiB/s of bodies through wrk")
    fi
    return 0
}

# vmhwm_mib PID: peak resident set size of PID in MiB.
vmhwm_mib() {
    awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"
}

# --- report ------------------------------------------------------------------

MISSED=0

# size_label KIB: "1 MiB" for whole MiBs, else "N KiB".
size_label() {
    if (($1 % 1024 == 0)); then echo "$(($1 / 1024)) MiB"; else echo "$1 KiB"; fi
}

# verdict NUM DEN OP TARGET -> "ratio result" (ratio "-" when unmeasured).
# OP is ge (ratio >= target) or lt (NUM itself < target, no DEN).
verdict() {
    local num=$1 den=$2 op=$3 target=$4
    awk -v n="$num" -v d="$den" -v op="$op" -v t="$target" 'BEGIN {
        if (op == "lt") { printf "- %s\n", (n + 0 < t + 0) ? "PASS" : "FAIL"; exit }
        if (d + 0 == 0) { print "- FAIL"; exit }
        r = n / d
        printf "%.2f %s\n", r, (r >= t + 0) ? "PASS" : "FAIL"
    }'
}

# row LABEL FIGURE DEN_SERVER OP TARGET_TEXT TARGET: one table line.
row() {
    local label=$1 fig=$2 den=$3 op=$4 ttext=$5 target=$6 ratio=- result name
    local cells=()
    for name in regcache nginx distribution; do
        if [[ -n ${FIG[$fig:$name]:-} ]]; then
            cells+=("${FIG[$fig:$name]}${BAD[$fig:$name]:+!}")
        elif [[ $name == regcache && $SKIP_REGCACHE == 1 ]]; then
            cells+=(skipped)
        else
            cells+=(-)
        fi
    done
    if [[ $SKIP_REGCACHE == 1 ]]; then
        result=SKIP
    elif [[ -n ${BAD[$fig:regcache]:-} || ( $op == ge && -n ${BAD[$fig:$den]:-} ) ]]; then
        result=INVALID
    else
        read -r ratio result <<<"$(verdict "${FIG[$fig:regcache]}" "${FIG[$fig:$den]:-0}" "$op" "$target")"
    fi
    [[ $result == FAIL || $result == INVALID ]] && MISSED=1
    printf '%-36s %10s %10s %13s %8s %8s  %s\n' "$label" "${cells[@]}" "$ratio" "$ttext" "$result"
}

report() {
    local big_label="${BIG_MB} MiB blob, 1 stream (MiB/s)"
    local small_label
    small_label="$(size_label "$SMALL_KIB") blob, ${WRK_CONNECTIONS} conns (req/s)"
    local tag_label="manifest by tag, ${WRK_CONNECTIONS} conns (req/s)"
    local note
    echo
    echo "regcache vs nginx vs distribution proxy — $(nproc) cores;" \
        "load average $LOAD_AT_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    echo "wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d$WRK_DURATION; single stream = best of $CURL_RUNS curl downloads"
    echo "WARNING: wrk itself is CPU-bound at ~1.1-1.3 GB/s on 2 cores (and shares them with the"
    echo "         servers): the $(size_label "$SMALL_KIB") blob figures may measure the client, not the server."
    echo
    printf '%-36s %10s %10s %13s %8s %8s  %s\n' figure regcache nginx distribution ratio target result
    printf '%-36s %10s %10s %13s %8s %8s  %s\n' "------" "--------" "-----" "------------" "-----" "------" "------"
    row "$big_label" stream nginx ge ">=$TARGET_BLOB_RATIO" "$TARGET_BLOB_RATIO"
    row "$small_label" blob nginx ge ">=$TARGET_BLOB_RATIO" "$TARGET_BLOB_RATIO"
    row "$tag_label" tag distribution ge ">=$TARGET_TAG_RATIO" "$TARGET_TAG_RATIO"
    row "peak RSS, VmHWM (MiB)" rss - lt "<$TARGET_RSS_MIB" "$TARGET_RSS_MIB"
    echo
    echo "ratios: regcache/nginx for the blob rows, regcache/distribution for the tag row;"
    echo "        '!' marks a figure with non-2xx answers (invalid). nginx serves no tags (-)."
    for note in "${NOTES[@]}"; do
        echo "note: $note"
    done
}

# --- main ----------------------------------------------------------------------

main() {
    LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
    check_deps
    if [[ $SKIP_REGCACHE == 1 ]]; then
        warn "SKIP_REGCACHE=1: regcache is neither built nor measured"
    else
        build_regcache
    fi

    WORK=$(mktemp -d "${TMPDIR:-/tmp}/regcache-loadtest.XXXXXX")
    mkdir -p "$WORK/logs"
    local ports
    mapfile -t ports < <(free_ports 4)
    UP_PORT=${ports[0]} RC_PORT=${ports[1]} PROXY_PORT=${ports[2]} NGINX_PORT=${ports[3]}
    BASE=([regcache]=http://127.0.0.1:$RC_PORT [nginx]=http://127.0.0.1:$NGINX_PORT
        [distribution]=http://127.0.0.1:$PROXY_PORT)
    SERVERS=(nginx distribution)
    [[ $SKIP_REGCACHE == 1 ]] || SERVERS=(regcache "${SERVERS[@]}")

    log "upstream docker-registry on 127.0.0.1:$UP_PORT"
    start_upstream
    seed_upstream
    log "nginx on 127.0.0.1:$NGINX_PORT, distribution proxy on 127.0.0.1:$PROXY_PORT"
    start_nginx
    start_proxy
    if [[ $SKIP_REGCACHE != 1 ]]; then
        log "regcache on 127.0.0.1:$RC_PORT"
        start_regcache
    fi
    warm_up

    local name
    for name in "${SERVERS[@]}"; do
        log "single-stream ${BIG_MB} MiB download x$CURL_RUNS: $name"
        measure_stream "$name"
    done
    for name in "${SERVERS[@]}"; do
        log "wrk on the $(size_label "$SMALL_KIB") blob: $name"
        measure_wrk blob "$name" "/v2/$REPO/blobs/$SMALL_DIGEST"
    done
    for name in "${SERVERS[@]}"; do
        [[ $name == nginx ]] && continue # nginx can't resolve tags
        log "wrk on the manifest by tag: $name"
        measure_wrk tag "$name" "/v2/$REPO/manifests/$TAG" "$ACCEPT"
    done

    # A server that died under load makes every figure after it meaningless.
    local pid
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "a server (pid $pid) died during the run; logs in $WORK/logs"
    done
    [[ $SKIP_REGCACHE == 1 ]] || FIG[rss:regcache]=$(vmhwm_mib "$REGCACHE_PID")
    FIG[rss:distribution]=$(vmhwm_mib "$PROXY_PID")

    report
    if ((STRICT && MISSED)); then
        echo "result: a target was missed (--strict)"
        exit 1
    fi
}

main
