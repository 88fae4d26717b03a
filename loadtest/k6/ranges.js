// containerd 2.1's parallel blob download: RANGE_PARTS open-ended GETs
// (Range: bytes=OFFSET-) of one blob at once, each part's bytes used up to
// the next part's offset. Each VU walks plan.blobs; one blob is one pull.
// In a CHECK_SHARE share of iterations the parts come back as bytes and the
// blob is hashed from them: that holds every part's body (up to RANGE_PARTS
// times the blob) in memory at once, so keep CHECK_SHARE low for big blobs.
import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import crypto from 'k6/crypto';
import { knobs, plan, targetFor, vus } from './lib/config.js';
import { corrupt, get, pullDuration, pullFailures, pulls } from './lib/registry.js';
import { scenarioOptions } from './lib/summary.js';

export { handleSummary } from './lib/summary.js';

if (plan.blobs.length === 0) throw new Error('PLAN has no blobs');
const parts = Math.max(1, Math.floor(knobs.rangeParts));

export const options = scenarioOptions(
    'ranges',
    { executor: 'constant-vus', vus: vus(4), duration: knobs.duration },
    ['range'],
    // k6 runs at most 6 requests of a batch per host by default.
    { batch: Math.max(20, parts), batchPerHost: Math.max(6, parts) },
);

// i * size / parts, without duplicates (a blob smaller than parts bytes).
function offsets(size) {
    const out = [];
    for (let i = 0; i < parts; i++) {
        const off = Math.floor((i * size) / parts);
        if (off < size && (out.length === 0 || out[out.length - 1] !== off)) out.push(off);
    }
    return out;
}

function fetchRanges(base, blob) {
    const verify = Math.random() < knobs.checkShare;
    const url = `${base}/v2/${blob.repo}/blobs/${blob.digest}`;
    const offs = offsets(blob.size);
    const requests = offs.map((off) => {
        const params = { headers: { Range: `bytes=${off}-` }, tags: { kind: 'range', name: 'GET blob range' } };
        if (verify) params.responseType = 'binary';
        return { method: 'GET', url, params };
    });
    // Every answer goes through get() (ttfb; a failed part is retried on its
    // own) before any is judged.
    const answers = http.batch(requests).map((res, i) => get(url, requests[i].params, res));
    const hasher = verify ? crypto.createHash('sha256') : null;
    for (let i = 0; i < offs.length; i++) {
        const off = offs[i];
        const upTo = i + 1 < offs.length ? offs[i + 1] : blob.size;
        const res = answers[i];
        if (!check(res, { 'range status 206': (r) => r.status === 206 && r.error_code === 0 })) return false;
        const length = res.headers['Content-Length'];
        const rightRange =
            res.headers['Content-Range'] === `bytes ${off}-${blob.size - 1}/${blob.size}` &&
            (length === undefined || Number(length) === blob.size - off) &&
            (!verify || (res.body && res.body.byteLength === blob.size - off));
        if (!check(res, { 'range Content-Range': () => rightRange })) {
            corrupt.add(1, { kind: 'range' });
            return false;
        }
        if (verify) hasher.update(res.body.slice(0, upTo - off));
    }
    if (verify) {
        const good = `sha256:${hasher.digest('hex')}` === blob.digest;
        if (!check(null, { 'blob digest': () => good })) {
            corrupt.add(1, { kind: 'range' });
            return false;
        }
    }
    return true;
}

export default function () {
    const vu = exec.vu.idInTest;
    const blob = plan.blobs[(vu - 1 + exec.vu.iterationInScenario) % plan.blobs.length];
    const start = Date.now();
    const ok = fetchRanges(targetFor(vu), blob);
    pulls.add(1);
    pullFailures.add(!ok);
    if (ok) pullDuration.add(Date.now() - start);
}
