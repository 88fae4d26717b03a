// Options every scenario shares (thresholds included) and the end-of-test
// summary: the full data as JSON at $SUMMARY for the driver, and a short
// plain-text report on stdout.
import { knobs, targets } from './config.js';

const CACHE_CLASSES = ['hit', 'miss', 'none'];
// Stats the JSON carries for every Trend; med is p50.
const TREND_STATS = ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'];

// Set by scenarioOptions() in the init context, which k6 also runs in the VU
// that calls handleSummary.
let described = { name: '', executor: '', kinds: [] };

// Measured figures are filtered on the scenario tag so that setup() (the
// fleet's warm-up, which has no scenario tag) stays out of them; corrupt
// is not: a wrong byte is wrong whenever it is served.
function thresholds(name, kinds) {
    const on = (metric, extra) => `${metric}{scenario:${name}${extra ? `,${extra}` : ''}}`;
    const maxRate = knobs.maxFailureRate > 0 ? `rate<${knobs.maxFailureRate}` : 'rate==0';
    const t = {
        corrupt: ['count==0'],
        [on('pull_failures')]: [maxRate],
    };
    // With RETRIES the failed attempts that a retry made good are expected.
    if (knobs.retries === 0) t[on('http_req_failed')] = [maxRate];
    if (knobs.p99Ms > 0) t[on('ttfb')] = [`p(99)<${knobs.p99Ms}`];
    // An empty list makes k6 compute the sub-metric without judging it: the
    // figures the summary prints.
    for (const m of ['iterations', 'http_reqs', 'http_req_failed', 'data_received', 'pulls', 'pull_duration', 'retries', 'ttfb']) {
        if (!t[on(m)]) t[on(m)] = [];
    }
    for (const c of CACHE_CLASSES) t[on('ttfb', `cache:${c}`)] = [];
    for (const k of kinds) t[on('ttfb', `kind:${k}`)] = [];
    return t;
}

// The options of a one-scenario script. kinds: the kind tags its requests
// carry, for per-kind ttfb figures.
export function scenarioOptions(name, scenario, kinds, extra) {
    described = { name, executor: scenario.executor, kinds };
    return Object.assign(
        {
            discardResponseBodies: true, // requests that check a body opt back in
            summaryTrendStats: TREND_STATS,
            scenarios: { [name]: scenario },
            thresholds: thresholds(name, kinds),
        },
        extra || {},
    );
}

function ms(v) {
    if (v === undefined) return '-';
    return v >= 100 ? `${v.toFixed(0)} ms` : `${v.toFixed(2)} ms`;
}

function pct(v) {
    return `${(100 * (v || 0)).toFixed(3)}%`;
}

function pad(s, n) {
    s = String(s);
    return s.length >= n ? s : s + ' '.repeat(n - s.length);
}

// The value a threshold expression judged: "p(99)<500" -> values["p(99)"].
function judged(values, expr) {
    const m = /^\s*([a-z]+(\(\d+(\.\d+)?\))?)/.exec(expr);
    const v = m ? values[m[1]] : undefined;
    if (v === undefined) return '';
    return Number.isInteger(v) ? ` (${v})` : ` (${v.toPrecision(4)})`;
}

function text(data) {
    const name = described.name;
    const metric = (m, extra) => data.metrics[`${m}{scenario:${name}${extra ? `,${extra}` : ''}}`];
    const val = (m, stat, extra) => {
        const x = metric(m, extra);
        return x ? x.values[stat] : undefined;
    };
    // The fleet's warm-up runs before the measured phase: leave it out of
    // per-second figures.
    const warmMs = (data.setup_data && data.setup_data.warmMs) || 0;
    const secs = Math.max((data.state.testRunDurationMs - warmMs) / 1000, 0.001);
    const iters = val('iterations', 'count') || 0;
    const reqs = val('http_reqs', 'count') || 0;
    const nPulls = val('pulls', 'count') || 0;
    const total = (m, stat) => (data.metrics[m] ? data.metrics[m].values[stat] : 0) || 0;
    const failed = val('pull_failures', 'passes') || 0;
    const dropped = total('dropped_iterations', 'count');
    const lines = [];
    lines.push(`k6 ${name} (${described.executor}), ${targets.length} target(s): ${targets.join(' ')}`);
    lines.push(
        `  knobs          RETRIES=${knobs.retries} CHECK_SHARE=${knobs.checkShare}` +
            (warmMs ? `  warm-up ${(warmMs / 1000).toFixed(1)} s (not in the figures)` : ''),
    );
    lines.push(`  iterations     ${iters} (${(iters / secs).toFixed(1)}/s)${dropped ? `, ${dropped} dropped` : ''}`);
    lines.push(
        `  requests       ${reqs} (${(reqs / secs).toFixed(1)}/s), failed ${pct(val('http_req_failed', 'rate'))}` +
            (warmMs ? ` (with the warm-up: ${pct(total('http_req_failed', 'rate'))})` : ''),
    );
    lines.push(`  pulls          ${nPulls}, failed after retries ${failed} (${pct(val('pull_failures', 'rate'))}), retries ${total('retries', 'count')}`);
    if (val('pull_duration', 'count')) {
        lines.push(`  pull time      p50 ${ms(val('pull_duration', 'med'))}  p99 ${ms(val('pull_duration', 'p(99)'))}`);
    }
    const row = (label, extra) => {
        const n = val('ttfb', 'count', extra) || 0;
        return `  ${pad(label, 15)}n=${pad(n, 8)}` + (n ? `p50 ${pad(ms(val('ttfb', 'med', extra)), 10)} p99 ${ms(val('ttfb', 'p(99)', extra))}` : '');
    };
    lines.push(row('ttfb all', ''));
    for (const c of CACHE_CLASSES) lines.push(row(`ttfb ${c}`, `cache:${c}`));
    for (const k of described.kinds) if (val('ttfb', 'count', `kind:${k}`)) lines.push(row(`ttfb ${k}`, `kind:${k}`));
    lines.push(`  corrupt        ${total('corrupt', 'count')}`);
    const failedChecks = (data.root_group.checks || []).filter((c) => c.fails > 0);
    for (const c of failedChecks) lines.push(`  check failed   ${c.name}: ${c.fails} of ${c.passes + c.fails}`);
    lines.push('thresholds');
    for (const key of Object.keys(data.metrics).sort()) {
        const m = data.metrics[key];
        for (const [expr, r] of Object.entries(m.thresholds || {})) {
            lines.push(`  ${pad(r.ok ? 'ok' : 'FAILED', 7)}${key} ${expr}${judged(m.values, expr)}`);
        }
    }
    return `${lines.join('\n')}\n`;
}

export function handleSummary(data) {
    const out = { stdout: text(data) };
    if (knobs.summary) out[knobs.summary] = JSON.stringify(data, null, 1);
    return out;
}
