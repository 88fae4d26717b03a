// A rollout: every VU pulls plan.images[0] once, all at the same moment,
// spread over the targets. The driver counts the upstream GETs itself (a
// pull-through cache should make one per blob, whatever VUS is).
import exec from 'k6/execution';
import { plan, targetFor, vus } from './lib/config.js';
import { pullImage } from './lib/registry.js';
import { scenarioOptions } from './lib/summary.js';

export { handleSummary } from './lib/summary.js';

if (plan.images.length === 0) throw new Error('PLAN has no images');

export const options = scenarioOptions(
    'storm',
    {
        // per-vu-iterations starts every (already initialized) VU at once.
        executor: 'per-vu-iterations',
        vus: vus(50),
        iterations: 1,
        // DURATION, when given, bounds the storm instead of k6's 10m.
        maxDuration: __ENV.DURATION || '10m',
    },
    ['manifest', 'index', 'config', 'layer'],
);

export default function () {
    const image = plan.images[0];
    pullImage(targetFor(exec.vu.idInTest), image.repo, image.tag);
}
