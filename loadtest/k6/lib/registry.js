// The pull side of the OCI distribution API as a container runtime drives it:
// a manifest by tag (an index resolved to linux/amd64), then the config and
// every layer, with containerd-like retries, and the checks that tell a
// fast cache from a fast but wrong one.
import http from 'k6/http';
import { check, sleep } from 'k6';
import crypto from 'k6/crypto';
import { Counter, Rate, Trend } from 'k6/metrics';
import { failover, knobs, route } from './config.js';

// Time to first byte of every successful answer, tagged cache (hit|miss|none)
// and kind (manifest|index|config|layer|range).
export const ttfb = new Trend('ttfb', true);
export const pulls = new Counter('pulls');
// true when a pull failed after its retries; the failure-rate threshold.
export const pullFailures = new Rate('pull_failures');
// Bodies (or advertised lengths) that do not match their digest and size.
export const corrupt = new Counter('corrupt');
export const retries = new Counter('retries');
// Whole pull, manifest to last layer, of pulls that succeeded (Date.now():
// millisecond resolution, k6 has no finer clock).
export const pullDuration = new Trend('pull_duration', true);

const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
// All four: a registry answers 404 (or a converted manifest) for a type the
// client does not name.
export const MANIFEST_ACCEPT = [
    OCI_INDEX,
    DOCKER_LIST,
    'application/vnd.oci.image.manifest.v1+json',
    'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

// RFC 9211 Cache-Status as regcache writes it; distribution writes none.
// (k6 canonicalizes header names, whatever case the server used.)
export function cacheClass(res) {
    const v = res.headers['Cache-Status'];
    if (v === undefined) return 'none';
    if (v.includes('; hit')) return 'hit';
    if (v.includes('fwd=miss')) return 'miss';
    return 'none';
}

// Worth a retry, as a runtime sees it: no answer at all, a body cut short (an
// error with a success status), 5xx and 429. A 404 is an answer.
function retryable(res) {
    if (res.status === 0 || res.status === 429 || res.status >= 500) return true;
    return res.status < 400 && res.error_code !== 0;
}

// Exponential backoff: 100 ms, 200 ms, 400 ms, ... capped at 2 s.
function backoffSeconds(attempt) {
    return Math.min(0.1 * 2 ** attempt, 2);
}

// A GET with up to RETRIES retries, each on the next target (failover).
// A retry that reaches another target goes at once, as a new connection
// through a Service lands on another pod; one that can only go back to the
// same target (one target, or every other one failing too) backs off first.
// `first` is an answer already in hand (from http.batch) or undefined.
// Successful answers go into ttfb; kindOf(res) may refine the kind once the
// answer is known.
export function get(url, params, first, kindOf) {
    let res = first || http.get(url, params);
    for (let attempt = 0; attempt < knobs.retries && retryable(res); attempt++) {
        retries.add(1, { kind: params.tags.kind });
        const next = failover(url);
        if (next === url) sleep(backoffSeconds(attempt));
        url = next;
        res = http.get(url, params);
    }
    if (res.status >= 200 && res.status < 300 && res.error_code === 0) {
        const kind = kindOf ? kindOf(res) : params.tags.kind;
        ttfb.add(res.timings.waiting, { cache: cacheClass(res), kind });
    }
    return res;
}

function isIndexType(type) {
    return !!type && (type.startsWith(OCI_INDEX) || type.startsWith(DOCKER_LIST));
}

// From the Content-Type alone: what ttfb records for a manifest GET whose
// body k6 may have discarded. (Request tags are fixed before the answer, so
// a GET by tag is tagged kind=manifest even when an index comes back.)
export function manifestKind(res) {
    return isIndexType(res.headers['Content-Type']) ? 'index' : 'manifest';
}

function parse(res) {
    try {
        return res.json();
    } catch (e) {
        return null;
    }
}

// GET a manifest (by tag or digest) as bytes and check it is what its
// Docker-Content-Digest (and the digest asked for) says. Returns the parsed
// document with isIndex set, or null when the pull must stop.
export function fetchManifest(base, repo, ref) {
    const byDigest = ref.startsWith('sha256:');
    const params = {
        headers: { Accept: MANIFEST_ACCEPT },
        responseType: 'binary', // small; hashed every time
        tags: { kind: 'manifest', name: byDigest ? 'GET manifest by digest' : 'GET manifest by tag' },
    };
    const res = get(`${route(base)}/v2/${repo}/manifests/${ref}`, params, undefined, manifestKind);
    if (!check(res, { 'manifest status 200': (r) => r.status === 200 && r.error_code === 0 })) return null;
    const sent = res.headers['Docker-Content-Digest'];
    if (!check(res, { 'manifest digest header': () => !!sent })) return null;
    const actual = `sha256:${crypto.sha256(res.body, 'hex')}`;
    const good = sent === actual && (!byDigest || actual === ref);
    if (!check(res, { 'manifest digest': () => good })) {
        corrupt.add(1, { kind: 'manifest' });
        return null;
    }
    const doc = parse(res);
    if (!check(doc, { 'manifest parses': (d) => d !== null && typeof d === 'object' })) return null;
    // The body's mediaType is authoritative; without one, the header, then
    // the shape (an index has manifests and no config).
    doc.isIndex =
        isIndexType(doc.mediaType || res.headers['Content-Type']) ||
        (!doc.mediaType && !doc.config && Array.isArray(doc.manifests));
    return doc;
}

// The entry a linux/amd64 node would pull, else the first.
export function pickPlatform(index) {
    const list = index.manifests || [];
    const amd = list.find((m) => m.platform && m.platform.os === 'linux' && m.platform.architecture === 'amd64');
    return amd || list[0];
}

// GET a blob. A CHECK_SHARE fraction is fetched as bytes and hashed; the
// rest is discarded by k6 and checked by its advertised length (k6 reports
// a body shorter than its Content-Length as an error, which fails the status
// check). Returns true when the blob is good.
export function fetchBlob(base, repo, desc, kind) {
    const verify = Math.random() < knobs.checkShare;
    const params = { tags: { kind, name: `GET ${kind} blob` } };
    if (verify) params.responseType = 'binary';
    const res = get(`${route(base)}/v2/${repo}/blobs/${desc.digest}`, params);
    if (!check(res, { 'blob status 200': (r) => r.status === 200 && r.error_code === 0 })) return false;
    const length = res.headers['Content-Length'];
    let good = length === undefined || Number(length) === desc.size;
    check(res, { 'blob size': () => good });
    if (verify) {
        const body = res.body || new ArrayBuffer(0);
        const ok = body.byteLength === desc.size && `sha256:${crypto.sha256(body, 'hex')}` === desc.digest;
        check(res, { 'blob digest': () => ok });
        good = good && ok;
    }
    if (!good) corrupt.add(1, { kind });
    return good;
}

// One image pull as a node does it. Stops at the first failure, as a
// runtime would; counts pulls, pull_failures and pull_duration.
export function pullImage(base, repo, tag) {
    const start = Date.now();
    const ok = pullSteps(base, repo, tag);
    pulls.add(1);
    pullFailures.add(!ok);
    if (ok) pullDuration.add(Date.now() - start);
    return ok;
}

function pullSteps(base, repo, tag) {
    let doc = fetchManifest(base, repo, tag);
    if (doc === null) return false;
    if (doc.isIndex) {
        const entry = pickPlatform(doc);
        if (!check(entry, { 'index has a manifest': (e) => e !== undefined && !!e.digest })) return false;
        doc = fetchManifest(base, repo, entry.digest);
        if (doc === null || !check(doc, { 'platform manifest is an image': (d) => !d.isIndex })) return false;
    }
    if (!check(doc, { 'manifest has config': (d) => !!(d.config && d.config.digest) })) return false;
    if (!fetchBlob(base, repo, doc.config, 'config')) return false;
    for (const layer of doc.layers || []) {
        if (!fetchBlob(base, repo, layer, 'layer')) return false;
    }
    return true;
}
