#!/usr/bin/env python3
"""Seed a registry with the benchmark image (Python 3 standard library only).

Writes two random blobs (BIG_MB MiB and SMALL_KIB KiB) to files, hashing them
while they are written, pushes them plus a small config to REPO through the
registry HTTP API (monolithic uploads, bodies streamed from the files so a
400 MiB blob never sits in memory), then pushes an OCI image manifest that
references all three under TAG.

Prints KEY=value lines (shell-quoted) on stdout for the calling script to eval:
BIG_FILE, BIG_SIZE, BIG_DIGEST, SMALL_FILE, SMALL_SIZE, SMALL_DIGEST,
CONFIG_DIGEST, MANIFEST_DIGEST. Progress and errors go to stderr.
"""

import argparse
import hashlib
import http.client
import json
import os
import shlex
import sys
import urllib.parse

MIB = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def log(msg):
    print(f"seed: {msg}", file=sys.stderr, flush=True)


def write_random_blob(path, size):
    """Write `size` random bytes to `path` in 1 MiB chunks; return sha256 digest."""
    h = hashlib.sha256()
    left = size
    with open(path, "wb") as f:
        while left > 0:
            chunk = os.urandom(min(MIB, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return "sha256:" + h.hexdigest()


class Registry:
    def __init__(self, base_url):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "http":
            raise SystemExit(f"seed: only http:// registries are supported, got {base_url}")
        self.base = base_url.rstrip("/")
        self.host = u.hostname
        self.port = u.port or 80

    def request(self, method, target, body=None, headers=None, expect=(200,)):
        """One request on a fresh connection; returns (response, body bytes)."""
        # A big blocksize keeps streaming a file body from costing a syscall
        # per 8 KiB.
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600, blocksize=MIB)
        try:
            conn.request(method, target, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status not in expect:
            raise SystemExit(
                f"seed: {method} {target} -> {resp.status} {resp.reason}: {data[:500]!r}"
            )
        return resp, data

    def push_blob(self, repo, digest, size, body):
        """Monolithic upload: POST to open a session, PUT the whole body with ?digest=."""
        resp, _ = self.request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
        location = resp.getheader("Location")
        if not location:
            raise SystemExit("seed: upload POST answered without a Location header")
        # Location may be absolute or relative to the registry.
        loc = urllib.parse.urlsplit(urllib.parse.urljoin(self.base + "/", location))
        sep = "&" if loc.query else "?"
        target = f"{loc.path}?{loc.query}" if loc.query else loc.path
        target += f"{sep}digest={urllib.parse.quote(digest)}"
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        self.request("PUT", target, body=body, headers=headers, expect=(201,))

    def push_manifest(self, repo, tag, media_type, data):
        headers = {"Content-Type": media_type, "Content-Length": str(len(data))}
        resp, _ = self.request("PUT", f"/v2/{repo}/manifests/{tag}", body=data,
                               headers=headers, expect=(201,))
        return resp.getheader("Docker-Content-Digest")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--registry", required=True, help="base URL, e.g. http://127.0.0.1:5000")
    p.add_argument("--repo", default="library/bench")
    p.add_argument("--tag", default="latest")
    p.add_argument("--out-dir", required=True, help="where the blob files are written")
    p.add_argument("--big-mb", type=int, default=400)
    p.add_argument("--small-kib", type=int, default=1024)
    args = p.parse_args()

    os.makedirs(args.out_dir, exist_ok=True)
    reg = Registry(args.registry)
    out = {}
    layers = []
    for name, size in (("BIG", args.big_mb * MIB), ("SMALL", args.small_kib * 1024)):
        path = os.path.join(args.out_dir, f"{name.lower()}.blob")
        log(f"writing {size} random bytes to {path}")
        digest = write_random_blob(path, size)
        log(f"pushing {digest}")
        with open(path, "rb") as f:
            reg.push_blob(args.repo, digest, size, f)
        out[f"{name}_FILE"] = path
        out[f"{name}_SIZE"] = str(size)
        out[f"{name}_DIGEST"] = digest
        layers.append({"mediaType": OCI_LAYER, "digest": digest, "size": size})

    # The layers are random bytes, not gzip tarballs: nothing here unpacks them,
    # and registries do not look inside layers. diff_ids are placeholders.
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }, separators=(",", ":")).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    reg.push_blob(args.repo, config_digest, len(config), config)
    out["CONFIG_DIGEST"] = config_digest

    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": layers,
    }, separators=(",", ":")).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    answered = reg.push_manifest(args.repo, args.tag, OCI_MANIFEST, manifest)
    if answered and answered != manifest_digest:
        raise SystemExit(f"seed: registry says manifest is {answered}, expected {manifest_digest}")
    log(f"pushed {args.repo}:{args.tag} = {manifest_digest}")
    out["MANIFEST_DIGEST"] = manifest_digest

    for key, value in out.items():
        print(f"{key}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
