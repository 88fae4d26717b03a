// What a node does: each VU pulls the plan's images one after the other for
// DURATION. The first pull of an image through a target is a miss, the
// following ones hits. VUs start at different images so the misses are
// spread rather than a storm on images[0] (storm.js is that).
import exec from 'k6/execution';
import { knobs, plan, targetFor, vus } from './lib/config.js';
import { pullImage } from './lib/registry.js';
import { scenarioOptions } from './lib/summary.js';

export { handleSummary } from './lib/summary.js';

if (plan.images.length === 0) throw new Error('PLAN has no images');

export const options = scenarioOptions(
    'pull',
    { executor: 'constant-vus', vus: vus(10), duration: knobs.duration },
    ['manifest', 'index', 'config', 'layer'],
);

export default function () {
    const vu = exec.vu.idInTest;
    const image = plan.images[(vu - 1 + exec.vu.iterationInScenario) % plan.images.length];
    pullImage(targetFor(vu), image.repo, image.tag);
}
