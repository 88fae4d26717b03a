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
  S3_RUNS=7           downloads of each kind for the S3 row (best one counts)
  SKIP_REGCACHE=0     1: don't build or run regcache (measure the peers only)
  SKIP_S3=0           1: no S3 server, no "blob from S3" figure
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
S3_RUNS=${S3_RUNS:-7}
SKIP_REGCACHE=${SKIP_REGCACHE:-0}
SKIP_S3=${SKIP_S3:-0}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}

# Targets (see README.md).
TARGET_BLOB_RATIO=0.8 # regcache / nginx, both blob figures; regcache / direct S3 GET
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
ON_DIE="" # a function that prints more context before the script dies
die() {
    printf 'compare.sh: error: %s\n' "$*" >&2
    [[ -z $ON_DIE ]] || "$ON_DIE"
    exit 1
}

# S3 (SeaweedFS `weed mini`) for the "blob from S3" figure.
S3_BUCKET=regcache
S3_REGION=us-east-1

# The servers run without the caller's REGCACHE_* and AWS_* variables: a
# REGCACHE_S3_BUCKET, AWS_PROFILE or AWS_ENDPOINT_URL would change what is
# measured.
CLEAN_ENV=(env)
while read -r var; do
    CLEAN_ENV+=(-u "$var")
done < <(compgen -e | grep -E '^(REGCACHE|AWS)_' || true)

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
    remove_weed_sockets
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
    if [[ $SKIP_S3 != 1 ]] && ! command -v weed >/dev/null 2>&1; then
        missing+=("weed (SeaweedFS; or SKIP_S3=1)")
    fi
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

# The direct-S3 baseline (and the uploader) of the S3 figure.
build_s3_bench() {
    local target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir == /* ]] || target_dir=$ROOT/$target_dir
    S3_BENCH_BIN=$target_dir/release/examples/s3_bench
    log "building the S3 baseline: cargo build --release -p objstore --example s3_bench"
    (cd "$ROOT" && cargo build --release -p objstore --example s3_bench) ||
        die "cargo build --release -p objstore --example s3_bench failed"
    [[ -x $S3_BENCH_BIN ]] || die "no binary at $S3_BENCH_BIN after the build"
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

# nginx_conf DIR SETTINGS: writes DIR/nginx.conf, an nginx with its pid,
# logs and temp files under DIR and SETTINGS inside its http block.
nginx_conf() {
    local dir=$1 user_line=""
    mkdir -p "$dir/tmp"
    # As root, workers would drop to nobody, who can't enter a 0700 temp dir.
    [[ $(id -u) -eq 0 ]] && user_line="user root;"
    cat >"$dir/nginx.conf" <<EOF
$user_line
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
$2
}
EOF
}

start_nginx() {
    local dir=$WORK/nginx digest file
    local blobs=$dir/root/v2/$REPO/blobs
    mkdir -p "$blobs"
    # The same files the upstream got, at the paths a registry client asks for.
    for digest in "$BIG_DIGEST" "$SMALL_DIGEST"; do
        [[ $digest == "$BIG_DIGEST" ]] && file=$BIG_FILE || file=$SMALL_FILE
        ln "$file" "$blobs/$digest" 2>/dev/null || cp "$file" "$blobs/$digest"
    done
    # keepalive_requests: nginx closes a connection after 1000 requests by
    # default, the other two never do; don't make nginx pay reconnects.
    nginx_conf "$dir" "    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $dir/root;
    }"
    start_bg nginx nginx -c "$dir/nginx.conf" -p "$dir/" -g 'daemon off;'
    wait_ready nginx "$LAST_PID" "${BASE[nginx]}/v2/$REPO/blobs/$SMALL_DIGEST"
}

start_regcache() {
    # The embedded default config plus these flags, whatever the caller's
    # REGCACHE_CONFIG (or other REGCACHE_*) says, so that runs are comparable.
    start_bg regcache "${CLEAN_ENV[@]}" RUST_LOG=warn "$REGCACHE_BIN" serve \
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

# download_big NAME [PATH]: one single-stream download of the big blob
# (by default at its registry path) from server NAME; sets SPEED (bytes/s).
download_big() {
    local name=$1 path=${2:-/v2/$REPO/blobs/$BIG_DIGEST} out code size
    out=$(curl -sS --max-time 600 -o /dev/null -w '%{http_code} %{size_download} %{speed_download}' \
        "${BASE[$name]}$path") || die "big-blob download from $name failed"
    read -r code size SPEED <<<"$out"
    [[ $code == 200 && $size == "$BIG_SIZE" ]] ||
        die "big-blob download from $name: HTTP $code, $size of $BIG_SIZE bytes"
}

# max A B
max() {
    awk -v a="$1" -v b="$2" 'BEGIN { print (b > a) ? b : a }'
}

# measure_stream NAME: best of CURL_RUNS single-stream downloads of the big
# blob, in MiB/s.
measure_stream() {
    local name=$1 i best=0
    for ((i = 0; i < CURL_RUNS; i++)); do
        download_big "$name"
        best=$(max "$best" "$SPEED")
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

# --- the blob-from-S3 figure ---------------------------------------------------
# A second regcache, on S3 storage with an empty data dir, serves the big blob
# from the bucket only; the baseline is a plain aws-sdk-s3 GET of the same
# object from the same server (the s3_bench example).

WEED_PORTS=() # every port weed mini listens on (its sockets in /tmp carry them)
S3_ENV=()     # CLEAN_ENV plus the S3 server's credentials, for its clients

# random_hex BYTES
random_hex() {
    od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

# weed_ports: 9 distinct free ports for weed mini: s3, s3 gRPC, master,
# master gRPC, volume, volume gRPC, filer, filer gRPC, admin. The admin
# port's gRPC companion (+10000, which weed's worker dials whatever
# -admin.port.grpc says) is free as well.
weed_ports() {
    python3 - <<'EOF'
import socket
socks = []
def bind(port=0):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    socks.append(s)
    return s.getsockname()[1]
ports = [bind() for _ in range(8)]
while True:
    admin = bind()
    try:
        if admin + 10000 < 65536 and bind(admin + 10000):
            break
    except OSError:
        pass
print("\n".join(map(str, ports + [admin])))
EOF
}

# weed puts gRPC unix sockets in /tmp, named after their ports, whatever
# TMPDIR says.
remove_weed_sockets() {
    local port
    ((${#WEED_PORTS[@]} == 9)) || return 0
    for port in "${WEED_PORTS[@]}" $((WEED_PORTS[8] + 10000)); do
        rm -f /tmp/seaweedfs-*-"$port".sock
    done
}

# start_s3: SeaweedFS (`weed mini`: master, volume server, filer and S3
# gateway in one process) with bucket S3_BUCKET and one access key; every
# port on loopback, telemetry, admin UI, WebDAV, Iceberg and Lance off (the
# flags testkit's S3Server uses).
start_s3() {
    local dir=$WORK/s3 access secret i
    mkdir -p "$dir/data" "$dir/tmp"
    mapfile -t WEED_PORTS < <(weed_ports)
    local s3=${WEED_PORTS[0]} s3_grpc=${WEED_PORTS[1]} master=${WEED_PORTS[2]} master_grpc=${WEED_PORTS[3]}
    local volume=${WEED_PORTS[4]} volume_grpc=${WEED_PORTS[5]} filer=${WEED_PORTS[6]}
    local filer_grpc=${WEED_PORTS[7]} admin=${WEED_PORTS[8]}
    access=LT$(random_hex 9 | tr a-f A-F)
    secret=$(random_hex 20)
    # Anonymous reads are for the nginx relay (loopback only).
    printf '{"identities": [{"name": "loadtest", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}, {"name": "anonymous", "actions": ["Read"]}]}\n' \
        "$access" "$secret" >"$dir/identities.json"
    S3_ENDPOINT=http://127.0.0.1:$s3
    S3_ENV=("${CLEAN_ENV[@]}" AWS_ACCESS_KEY_ID="$access" AWS_SECRET_ACCESS_KEY="$secret"
        AWS_REGION="$S3_REGION" AWS_EC2_METADATA_DISABLED=true)
    log "S3 server (weed mini) on 127.0.0.1:$s3, bucket $S3_BUCKET"
    # weed's own log files go to TMPDIR.
    start_bg s3 "${CLEAN_ENV[@]}" TMPDIR="$dir/tmp" weed mini \
        -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
        -master.port="$master" -master.port.grpc="$master_grpc" \
        -volume.port="$volume" -volume.port.grpc="$volume_grpc" \
        -filer.port="$filer" -filer.port.grpc="$filer_grpc" -filer.localSocket="$dir/filer.sock" \
        -s3.port="$s3" -s3.port.grpc="$s3_grpc" -s3.localSocket="$dir/s3.sock" \
        -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$dir/identities.json" \
        -admin.ui=false -admin.port="$admin" -webdav=false -bucket="$S3_BUCKET"
    S3_PID=$LAST_PID
    # Ready when the filer holds the bucket's directory and the gateway
    # answers (403 to an anonymous request).
    for ((i = 0; i < 600; i++)); do
        if ! kill -0 "$S3_PID" 2>/dev/null; then
            tail -n 30 "$WORK/logs/s3.log" >&2 || true
            die "weed mini exited during startup (log above)"
        fi
        if curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$filer/buckets/$S3_BUCKET/" &&
            curl -s -o /dev/null --max-time 2 "$S3_ENDPOINT/"; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 30 "$WORK/logs/s3.log" >&2 || true
    die "weed mini not ready after 60 s"
}

# The big blob's objects in the bucket: blobs/sha256/<hex>/<upload-id>.
s3_prefix() {
    echo "blobs/sha256/${BIG_DIGEST#sha256:}/"
}

# upload_big_to_s3: puts the big blob where regcache would have (a multipart
# upload by objstore, key blobs/sha256/<hex>/<upload-id>: 16 hex digits of
# unix millis and 8 random ones), for the baseline alone (SKIP_REGCACHE=1).
upload_big_to_s3() {
    local key
    key=$(s3_prefix)$(printf '%016x' "$(date +%s%3N)")$(random_hex 4)
    log "uploading the ${BIG_MB} MiB blob to S3 as $key"
    "${S3_ENV[@]}" "$S3_BENCH_BIN" put --endpoint "$S3_ENDPOINT" --bucket "$S3_BUCKET" \
        --key "$key" --file "$BIG_FILE" >"$WORK/logs/s3-put.log" 2>&1 || {
        tail -n 30 "$WORK/logs/s3-put.log" >&2
        die "uploading the big blob to S3 failed (log above)"
    }
}

# The upstream of the S3-backed regcache: a stub that logs every request and
# answers 200 to the version check (/v2/) and 404 to everything else. A blob
# regcache did not get from S3 can't come from anywhere else, and any try to
# is on record.
TRIPWIRE_PY='
import http.server, sys
class Tripwire(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        with open(sys.argv[2], "a") as log:
            log.write(f"{self.command} {self.path}\n")
        ok = self.path.split("?")[0] in ("/v2", "/v2/")
        body = b"{}" if ok else b""
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Tripwire).serve_forever()
'

start_tripwire() {
    TRIP_LOG=$WORK/logs/s3-upstream-requests.log
    : >"$TRIP_LOG"
    start_bg tripwire python3 -c "$TRIPWIRE_PY" "$TRIP_PORT" "$TRIP_LOG"
    wait_ready tripwire "$LAST_PID" "http://127.0.0.1:$TRIP_PORT/v2/"
    : >"$TRIP_LOG"
}

# Printed when the script dies during the S3 runs.
show_upstream_requests() {
    if [[ -s ${TRIP_LOG:-} ]]; then
        echo "requests regcache (S3 storage) sent its upstream:" >&2
        head -n 20 "$TRIP_LOG" >&2
    fi
}

# start_regcache_s3 UPSTREAM_PORT: regcache on S3 storage, on its data dir
# (made when missing).
start_regcache_s3() {
    mkdir -p "$WORK/regcache-s3"
    start_bg regcache-s3 "${S3_ENV[@]}" RUST_LOG=warn "$REGCACHE_BIN" serve \
        --listen "127.0.0.1:$RC_S3_PORT" \
        --data-dir "$WORK/regcache-s3" \
        --upstream "docker.io=http://127.0.0.1:$1" \
        --s3-bucket "$S3_BUCKET" --s3-endpoint "$S3_ENDPOINT" --s3-region "$S3_REGION" \
        --s3-force-path-style
    RC_S3_PID=$LAST_PID
    wait_ready regcache-s3 "$RC_S3_PID" "${BASE[regcache-s3]}/readyz"
}

# start_relay: nginx relaying the bucket (proxy_pass, unbuffered, anonymous
# reads): what any relay between S3 and a client costs on this machine,
# with no checks and no disk, for the note under the S3 row.
start_relay() {
    local dir=$WORK/relay
    nginx_conf "$dir" "    server {
        listen 127.0.0.1:$RELAY_PORT;
        location / {
            proxy_pass $S3_ENDPOINT/$S3_BUCKET/;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_buffer_size 256k;
            proxy_buffers 4 256k;
        }
    }"
    start_bg relay nginx -c "$dir/nginx.conf" -p "$dir/" -g 'daemon off;'
    wait_ready relay "$LAST_PID" "${BASE[relay]}/$S3_KEY"
}

# prime_s3: the S3-backed regcache pulls the big blob from the upstream
# registry, so the bucket holds it the way a replica stores it (multipart
# upload, verified) and the replica's index records it (key and CRC), as in
# a cluster where another replica fetched it.
prime_s3() {
    log "regcache on S3 storage on 127.0.0.1:$RC_S3_PORT: storing the blob in S3 from the upstream"
    start_regcache_s3 "$UP_PORT"
    fetch_verify regcache-s3 "/v2/$REPO/blobs/$BIG_DIGEST" "$BIG_DIGEST"
    stop "$RC_S3_PID" # waits until the upload is complete and recorded
}

# stop PID: TERM, 10 s to exit, then KILL; PID leaves PIDS.
stop() {
    local pid=$1 i p keep=()
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -KILL "$pid" 2>/dev/null; then
        warn "pid $pid did not exit within 10 s of SIGTERM: killed"
    fi
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# measure_s3: FIG[s3:regcache] (best of S3_RUNS downloads, each from a
# restarted regcache whose disk tier was emptied: the blob is only in S3),
# FIG[s3:s3] (best of S3_RUNS direct GETs) and the relay's figure (best of
# S3_RUNS downloads through nginx), interleaved.
measure_s3() {
    local i out bytes mib best_rc=0 best_s3=0 best_relay=0 peak=0 blob_gets others relay
    if [[ $SKIP_REGCACHE == 1 ]]; then
        upload_big_to_s3
    else
        prime_s3
        start_tripwire
        ON_DIE=show_upstream_requests
    fi
    S3_KEY=$("${S3_ENV[@]}" "$S3_BENCH_BIN" find --endpoint "$S3_ENDPOINT" --bucket "$S3_BUCKET" \
        --prefix "$(s3_prefix)") || die "finding the big blob's object in S3 failed"
    start_relay
    for ((i = 1; i <= S3_RUNS; i++)); do
        if [[ $SKIP_REGCACHE != 1 ]]; then
            log "blob from S3, run $i/$S3_RUNS: regcache (restarted, disk tier emptied)"
            rm -rf "$WORK/regcache-s3/blobs"
            start_regcache_s3 "$TRIP_PORT"
            download_big regcache-s3
            best_rc=$(max "$best_rc" "$SPEED")
            peak=$(max "$peak" "$(vmhwm_mib "$RC_S3_PID")")
            stop "$RC_S3_PID"
        fi
        log "blob from S3, run $i/$S3_RUNS: direct aws-sdk-s3 GET, nginx relay"
        out=$("${S3_ENV[@]}" "$S3_BENCH_BIN" get --endpoint "$S3_ENDPOINT" --bucket "$S3_BUCKET" \
            --key "$S3_KEY" --runs 1) || die "the direct S3 GET failed"
        bytes=$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$out")
        mib=$(sed -n 's/.*best_mib_s=\([0-9.]*\).*/\1/p' <<<"$out")
        [[ $bytes == "$BIG_SIZE" && -n $mib ]] || die "direct S3 GET: '$out', expected $BIG_SIZE bytes"
        best_s3=$(max "$best_s3" "$mib")
        download_big relay "/$S3_KEY"
        best_relay=$(max "$best_relay" "$SPEED")
    done
    relay=$(awk -v b="$best_relay" 'BEGIN { printf "%.0f", b / 1048576 }')
    NOTES+=("s3/relay: nginx relaying the same object (proxy_pass, unbuffered; no check, no disk): $relay MiB/s, $(awk -v r="$relay" -v d="$best_s3" 'BEGIN { printf "%.2f", r / d }') of the direct GET")
    kill -0 "$S3_PID" 2>/dev/null || die "the S3 server died during the run; logs in $WORK/logs"
    FIG[s3:s3]=$(awk -v b="$best_s3" 'BEGIN { printf "%.0f", b }')
    [[ $SKIP_REGCACHE != 1 ]] || return 0

    # Valid only if every byte came from S3.
    blob_gets=$(grep -c '^GET .*/blobs/' "$TRIP_LOG" || true)
    ((blob_gets == 0)) ||
        die "regcache (S3 storage) sent its upstream $blob_gets blob GETs: the S3 figure is invalid"
    others=$(wc -l <"$TRIP_LOG")
    ((others == 0)) || NOTES+=("s3/regcache: $others other upstream requests (in logs/$(basename "$TRIP_LOG")): $(head -n 3 "$TRIP_LOG" | paste -sd ';')")
    ON_DIE=""
    FIG[s3:regcache]=$(awk -v b="$best_rc" 'BEGIN { printf "%.0f", b / 1048576 }')
    NOTES+=("s3/regcache: peak RSS ${peak} MiB while serving from S3 (its own VmHWM, a fresh process per run)")
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
    local label=$1 fig=$2 den=$3 op=$4 ttext=$5 target=$6 ratio=- result name skipped=0
    local cells=() columns=(regcache nginx distribution)
    # The S3 row's baseline, a direct S3 GET, goes in the nginx column, marked *.
    [[ $den == s3 ]] && columns[1]=s3
    [[ $fig == s3 && $SKIP_S3 == 1 ]] && skipped=1
    for name in "${columns[@]}"; do
        if [[ -n ${FIG[$fig:$name]:-} ]]; then
            cells+=("${FIG[$fig:$name]}${BAD[$fig:$name]:+!}")
            [[ $name == s3 ]] && cells[-1]+='*'
        elif [[ ($name == regcache && $SKIP_REGCACHE == 1) || ($skipped == 1 && $name != distribution) ]]; then
            cells+=(skipped)
        else
            cells+=(-)
        fi
    done
    if [[ $SKIP_REGCACHE == 1 || $skipped == 1 ]]; then
        result=SKIP
    elif [[ -n ${BAD[$fig:regcache]:-} || ( $op == ge && -n ${BAD[$fig:$den]:-} ) ]]; then
        result=INVALID
    else
        read -r ratio result <<<"$(verdict "${FIG[$fig:regcache]}" "${FIG[$fig:$den]:-0}" "$op" "$target")"
    fi
    [[ $result == FAIL || $result == INVALID ]] && MISSED=1
    printf '%-40s %10s %10s %13s %8s %8s  %s\n' "$label" "${cells[@]}" "$ratio" "$ttext" "$result"
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
    printf '%-40s %10s %10s %13s %8s %8s  %s\n' figure regcache nginx distribution ratio target result
    printf '%-40s %10s %10s %13s %8s %8s  %s\n' "------" "--------" "-----" "------------" "-----" "------" "------"
    row "$big_label" stream nginx ge ">=$TARGET_BLOB_RATIO" "$TARGET_BLOB_RATIO"
    row "${BIG_MB} MiB blob from S3, 1 stream (MiB/s)" s3 s3 ge ">=$TARGET_BLOB_RATIO" "$TARGET_BLOB_RATIO"
    row "$small_label" blob nginx ge ">=$TARGET_BLOB_RATIO" "$TARGET_BLOB_RATIO"
    row "$tag_label" tag distribution ge ">=$TARGET_TAG_RATIO" "$TARGET_TAG_RATIO"
    row "peak RSS, VmHWM (MiB)" rss - lt "<$TARGET_RSS_MIB" "$TARGET_RSS_MIB"
    echo
    echo "ratios: regcache/nginx for the blob rows, regcache/distribution for the tag row;"
    echo "        '!' marks a figure with non-2xx answers (invalid). nginx serves no tags (-)."
    echo "        S3 row: the blob is only in S3 (SeaweedFS): regcache stored it there from the"
    echo "        upstream, then was restarted with its disk tier emptied (its index, like a"
    echo "        cluster's, still records the object) before each download; * = a direct"
    echo "        aws-sdk-s3 GET of the same object"
    echo "        (not nginx), best of $S3_RUNS; ratio regcache/direct."
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
    [[ $SKIP_S3 == 1 ]] || build_s3_bench

    WORK=$(mktemp -d "${TMPDIR:-/tmp}/regcache-loadtest.XXXXXX")
    mkdir -p "$WORK/logs"
    local ports
    mapfile -t ports < <(free_ports 7)
    UP_PORT=${ports[0]} RC_PORT=${ports[1]} PROXY_PORT=${ports[2]} NGINX_PORT=${ports[3]}
    RC_S3_PORT=${ports[4]} TRIP_PORT=${ports[5]} RELAY_PORT=${ports[6]}
    BASE=([regcache]=http://127.0.0.1:$RC_PORT [nginx]=http://127.0.0.1:$NGINX_PORT
        [distribution]=http://127.0.0.1:$PROXY_PORT [regcache-s3]=http://127.0.0.1:$RC_S3_PORT
        [relay]=http://127.0.0.1:$RELAY_PORT)
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

    # Last, on its own servers: a second regcache whose blob is only in S3.
    if [[ $SKIP_S3 != 1 ]]; then
        start_s3
        measure_s3
    fi

    report
    if ((STRICT && MISSED)); then
        echo "result: a target was missed (--strict)"
        exit 1
    fi
}

main
