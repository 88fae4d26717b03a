// The environment interface shared by every scenario (k6 run -e KEY=VALUE).
// Everything here runs in the init context: open() is only allowed there.

function num(name, dflt) {
    const raw = __ENV[name];
    if (raw === undefined || raw === '') return dflt;
    const v = Number(raw);
    if (!Number.isFinite(v)) throw new Error(`${name}=${raw} is not a number`);
    return v;
}

function str(name, dflt) {
    const raw = __ENV[name];
    return raw === undefined || raw === '' ? dflt : raw;
}

// TARGETS: comma-separated base URLs; VU n uses targets[(n-1) % len].
export const targets = str('TARGETS', '')
    .split(',')
    .map((t) => t.trim().replace(/\/+$/, ''))
    .filter((t) => t !== '');
if (targets.length === 0) throw new Error('TARGETS is required, e.g. -e TARGETS=http://127.0.0.1:5000');

export const knobs = {
    checkShare: num('CHECK_SHARE', 0.1), // share of blob bodies hashed and compared with their digest
    retries: num('RETRIES', 0), // retries after the first attempt (fault runs: 4)
    zipfS: num('ZIPF_S', 1.0), // fleet: popularity exponent
    rangeParts: num('RANGE_PARTS', 4), // ranges: parallel open-ended GETs per blob
    maxFailureRate: num('MAX_FAILURE_RATE', 0.001), // pull_failures threshold
    p99Ms: num('P99_MS', 0), // ttfb p99 threshold, only when set
    rate: num('RATE', 10), // fleet: pulls per second
    duration: str('DURATION', '30s'),
    warm: num('WARM', 1), // fleet: 0 skips the warm-up (the driver warmed the targets already)
    summary: str('SUMMARY', ''), // where handleSummary writes the full data as JSON
};

// Each scenario has its own default VU count.
export function vus(dflt) {
    return num('VUS', dflt);
}

// PLAN: {"images": [{repo, tag}], "blobs": [{repo, digest, size}]}. k6's
// open() resolves a relative path against the script's directory, not the
// shell's: resolve it against $PWD (k6 passes the system environment) so
// `-e PLAN=plan.json` means what it says; a driver should pass an absolute path.
function loadPlan() {
    let path = str('PLAN', '');
    if (path === '') throw new Error('PLAN is required: a JSON file {"images": [...], "blobs": [...]}');
    if (!path.startsWith('/') && __ENV.PWD) path = `${__ENV.PWD}/${path}`;
    const plan = JSON.parse(open(path));
    plan.images = plan.images || [];
    plan.blobs = plan.blobs || [];
    return plan;
}

export const plan = loadPlan();

// Targets this VU found refusing, dropping or failing requests, and until
// when (ms) it leaves them alone. A Kubernetes Service takes a dead pod's
// endpoint out within seconds and puts it back once the pod is ready; a VU
// does the same from what it sees: it goes elsewhere for AVOID_MS, then
// tries its own target again.
const AVOID_MS = 10000;
const avoidUntil = {};

function usable(target) {
    return !(avoidUntil[target] > Date.now());
}

// `base` if usable, else the next usable target (or `base` when none is).
export function route(base) {
    const i = targets.indexOf(base);
    if (i < 0 || usable(base)) return base;
    for (let step = 1; step < targets.length; step++) {
        const t = targets[(i + step) % targets.length];
        if (usable(t)) return t;
    }
    return base;
}

export function targetFor(vuId) {
    return route(targets[(Math.max(vuId, 1) - 1) % targets.length]);
}

// The URL of a retry: the target that failed is avoided for a while, and
// the retry goes to the next usable one, as a retry through a Service
// reaches another replica.
export function failover(url) {
    const i = targets.findIndex((t) => url.startsWith(`${t}/`));
    if (i < 0 || targets.length === 1) return url;
    avoidUntil[targets[i]] = Date.now() + AVOID_MS;
    const next = route(targets[(i + 1) % targets.length]);
    return next + url.slice(targets[i].length);
}
