// A fleet's steady state: RATE pulls per second for DURATION, the image of
// each drawn with a Zipf popularity (rank = position in the plan: images[0]
// is the most pulled, with probability proportional to 1/rank^ZIPF_S).
// setup() first pulls every image once through every target, so the
// measured phase is warm; its figures leave the warm-up out.
import exec from 'k6/execution';
import { knobs, plan, targetFor, targets, vus } from './lib/config.js';
import { pullImage } from './lib/registry.js';
import { scenarioOptions } from './lib/summary.js';

export { handleSummary } from './lib/summary.js';

if (plan.images.length === 0) throw new Error('PLAN has no images');

// cdf[i] = P(rank <= i + 1), computed once per VU in the init context.
const cdf = (() => {
    const weights = plan.images.map((_, i) => 1 / Math.pow(i + 1, knobs.zipfS));
    const total = weights.reduce((a, b) => a + b, 0);
    let acc = 0;
    return weights.map((w) => (acc += w / total));
})();

function pickImage() {
    const u = Math.random();
    let lo = 0;
    let hi = cdf.length - 1; // the last entry is 1 up to rounding: always a match
    while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (cdf[mid] >= u) hi = mid;
        else lo = mid + 1;
    }
    return plan.images[lo];
}

const pool = vus(20);

export const options = scenarioOptions(
    'fleet',
    {
        executor: 'constant-arrival-rate',
        rate: knobs.rate,
        timeUnit: '1s',
        duration: knobs.duration,
        // An iteration finding no free VU is dropped (dropped_iterations),
        // which says the targets could not keep up with RATE.
        preAllocatedVUs: pool,
        maxVUs: pool,
    },
    ['manifest', 'index', 'config', 'layer'],
    // The warm-up is images x targets pulls, one at a time.
    { setupTimeout: '30m' },
);

export function setup() {
    if (!knobs.warm) return { warmMs: 0 };
    const start = Date.now();
    let failed = 0;
    for (const base of targets) {
        for (const image of plan.images) {
            if (!pullImage(base, image.repo, image.tag)) failed++;
        }
    }
    if (failed > 0) console.warn(`fleet warm-up: ${failed} pull(s) failed; the measured phase starts partly cold`);
    return { warmMs: Date.now() - start };
}

export default function () {
    const image = pickImage();
    pullImage(targetFor(exec.vu.idInTest), image.repo, image.tag);
}
