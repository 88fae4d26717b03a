// Tag resolution under load: constant VUs GET a random plan image's manifest
// by tag, bodies discarded. Each GET counts as a pull for pull_failures.
import exec from 'k6/execution';
import { check } from 'k6';
import { knobs, plan, targetFor, vus } from './lib/config.js';
import { get, manifestKind, MANIFEST_ACCEPT, pullFailures, pulls } from './lib/registry.js';
import { scenarioOptions } from './lib/summary.js';

export { handleSummary } from './lib/summary.js';

if (plan.images.length === 0) throw new Error('PLAN has no images');

export const options = scenarioOptions(
    'manifests',
    { executor: 'constant-vus', vus: vus(20), duration: knobs.duration },
    ['manifest', 'index'],
);

const params = {
    headers: { Accept: MANIFEST_ACCEPT },
    tags: { kind: 'manifest', name: 'GET manifest by tag' },
};

export default function () {
    const image = plan.images[Math.floor(Math.random() * plan.images.length)];
    const base = targetFor(exec.vu.idInTest);
    const res = get(`${base}/v2/${image.repo}/manifests/${image.tag}`, params, undefined, manifestKind);
    const ok = check(res, {
        'manifest status 200': (r) => r.status === 200 && r.error_code === 0,
        'manifest digest header': (r) => !!r.headers['Docker-Content-Digest'],
    });
    pulls.add(1);
    pullFailures.add(!ok);
}
